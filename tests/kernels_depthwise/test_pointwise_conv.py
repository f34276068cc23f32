"""Pointwise (1x1) convolutions: the GEMM fast path of conv1d/2d/3d against PyTorch in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foveal.kernels import conv, conv1d, conv2d, conv3d, pointwise
from tolerances import assert_close_to_reference

from .helpers import activate, assert_layout_like, make_input

OURS = {1: conv1d, 2: conv2d, 3: conv3d}
TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def refuse(*args, **kwargs):
    raise AssertionError("the implicit-GEMM kernel ran for a pointwise convolution")


@pytest.mark.parametrize(("size", "c_in", "c_out", "stride", "activation", "layout",
                          "with_residual"), [
    ((7, 9), 5, 7, 1, "relu", "contiguous", False),
    ((6, 5), 37, 33, (2, 1), "silu", "channels_last", True),  # several K and N blocks
    ((9, 7), 3, 4, 2, ("leaky_relu", 0.2), "strided", True),
    ((5,), 6, 9, 1, "gelu", "contiguous", True),
    ((3, 4, 5), 4, 6, (1, 2, 2), "hardswish", "channels_last", False),
])
def test_pointwise_matches_pytorch(monkeypatch, size, c_in, c_out, stride, activation, layout,
                                   with_residual):
    monkeypatch.setattr(conv, "launch_igemm", refuse)
    spatial = len(size)
    x = make_input((2, c_in, *size), layout)
    w = torch.randn(c_out, c_in, *([1] * spatial), dtype=torch.float64)
    b = torch.randn(c_out, dtype=torch.float64)
    z = TORCH[spatial](x, w, b, stride)
    residual = torch.randn_like(z) if with_residual else None
    out = OURS[spatial](x, w, b, stride, activation=activation, residual=residual)
    ref = activate(z if residual is None else z + residual, activation)
    assert_close_to_reference(out, ref, reduction=c_in)
    assert_layout_like(out, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype):
    x = make_input((2, 24, 6, 7), "channels_last", dtype)
    w = torch.randn(40, 24, 1, 1, dtype=dtype)
    b = torch.randn(40, dtype=dtype)
    out = conv2d(x, w, b, activation="relu6")
    ref = F.relu6(F.conv2d(x.double(), w.double(), b.double()))
    assert_close_to_reference(out, ref, reduction=24)
    assert out.dtype == dtype


def test_padded_1x1_takes_the_general_kernel():
    """Padding puts bias-only pixels around the output: not a plain GEMM, still right."""
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 1, 1, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    assert_close_to_reference(conv2d(x, w, b, padding=(1, 2)), F.conv2d(x, w, b, padding=(1, 2)),
                              reduction=3)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck(stride):
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv2d(x, w, b, stride, activation="gelu"), (x, w, b), fast_mode=True)


def test_stride_one_backward_stays_on_the_gemm_path(monkeypatch):
    monkeypatch.setattr(conv, "launch_igemm", refuse)
    x = make_input((2, 20, 5, 6), "channels_last", torch.float32).requires_grad_()
    w = torch.randn(36, 20, 1, 1, requires_grad=True)
    out = conv2d(x, w, activation="sigmoid")
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(torch.sigmoid(F.conv2d(x64, w64)), (x64, w64), grad.double())
    assert_layout_like(gx, x)
    assert_close_to_reference(gx, rx, reduction=36)
    assert_close_to_reference(gw, rw, reduction=60)


def test_int64_indexing_path(monkeypatch):
    monkeypatch.setattr(pointwise, "needs_int64", lambda *tensors: True)
    x = make_input((2, 5, 4, 6), "strided")
    w = torch.randn(7, 5, 1, 1, dtype=torch.float64)
    r = torch.randn(2, 7, 4, 6, dtype=torch.float64)
    out = conv2d(x, w, residual=r, activation="silu")
    assert_close_to_reference(out, F.silu(F.conv2d(x, w) + r), reduction=5)


@pytest.mark.gpu
@pytest.mark.parametrize(("batch", "c_in", "c_out", "size"), [
    (32, 32, 16, 112),  # MobileNetV2 block 1 projection
    (32, 144, 24, 56),
    (32, 192, 1152, 7),
    (32, 320, 1280, 7),  # the last 1x1
])
def test_gpu_mobilenet_pointwise_layers(batch, c_in, c_out, size):
    x = torch.randn(batch, c_in, size, size, device="cuda", dtype=torch.float16)
    x = x.to(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, 1, 1, device="cuda", dtype=torch.float16)
    out = conv2d(x, w, activation="relu6")
    ref = F.relu6(F.conv2d(x.double(), w.double()))
    assert_close_to_reference(out, ref, reduction=c_in)
