"""Depthwise convolution (groups == C_in) through conv1d/2d/3d against PyTorch in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foveal.kernels import conv, conv1d, conv2d, conv3d, depthwise
from tolerances import assert_close_to_reference

from .helpers import activate, assert_layout_like, make_input

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

OURS = {1: conv1d, 2: conv2d, 3: conv3d}
TORCH = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def reference(x, w, bias, stride, padding, dilation, activation, residual):
    """PyTorch in float64: conv with groups = C_in, bias, residual, activation."""
    spatial = x.dim() - 2
    z = TORCH[spatial](x.double(), w.double(), None if bias is None else bias.double(), stride,
                       padding, dilation, x.shape[1])
    if residual is not None:
        z = z + residual.double()
    return activate(z, activation)


def run_case(size, channels, multiplier, kernel, stride, padding, dilation, activation,
             layout="contiguous", with_bias=True, with_residual=False, dtype=torch.float64,
             batch=2):
    spatial = len(size)
    x = make_input((batch, channels, *size), layout, dtype)
    w = torch.randn(channels * multiplier, 1, *kernel, dtype=dtype)
    bias = torch.randn(channels * multiplier, dtype=dtype) if with_bias else None
    ref_shape = reference(x, w, None, stride, padding, dilation, None, None).shape
    residual = torch.randn(ref_shape, dtype=dtype) if with_residual else None
    out = OURS[spatial](x, w, bias, stride, padding, dilation, channels,
                        activation=activation, residual=residual)
    ref = reference(x, w, bias, stride, padding, dilation, activation, residual)
    assert_close_to_reference(out, ref, reduction=math.prod(kernel))
    assert out.dtype == dtype
    assert_layout_like(out, x)


CASES_2D = [
    # size, C, M, kernel, stride, padding, dilation, activation, layout, bias, residual
    ((7, 9), 3, 1, (3, 3), 1, 1, 1, None, "contiguous", True, False),
    ((9, 8), 5, 2, (3, 5), (2, 1), (1, 2), (1, 2), "relu6", "channels_last", True, False),
    ((10, 11), 7, 3, (5, 5), 2, "valid", 1, "silu", "contiguous", False, True),
    ((8, 9), 4, 1, (4, 2), 1, "same", (2, 1), ("leaky_relu", 0.2), "strided", True, True),
    ((9, 10), 6, 1, (7, 7), (1, 2), 3, 1, "hardswish", "channels_last", True, True),
    ((6, 7), 3, 4, (1, 1), 1, 0, 1, "gelu", "contiguous", True, False),
    ((7, 6), 5, 1, (3, 3), (3, 2), (0, 1), (2, 1), "sigmoid", "strided", False, False),
    ((9, 9), 2, 2, (5, 3), 1, (2, 1), 1, ("leaky_relu", -0.5), "channels_last", True, True),
    ((9, 9), 17, 1, (3, 3), 2, 1, 1, "relu", "channels_last", True, False),  # > BLOCK_C
]


@pytest.mark.parametrize(("size", "channels", "multiplier", "kernel", "stride", "padding",
                          "dilation", "activation", "layout", "with_bias", "with_residual"),
                         CASES_2D)
def test_depthwise_conv2d_matches_pytorch(size, channels, multiplier, kernel, stride, padding,
                                          dilation, activation, layout, with_bias,
                                          with_residual):
    run_case(size, channels, multiplier, kernel, stride, padding, dilation, activation, layout,
             with_bias, with_residual)


def test_depthwise_conv1d_long_kernel_and_multiplier():
    run_case((40,), 3, 2, (31,), 1, "same", 1, "relu", with_residual=True)
    run_case((23,), 5, 1, (4,), 2, 2, 3, None, layout="strided")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_conv3d(layout):
    run_case((4, 6, 5), 3, 2, (3, 2, 3), (1, 2, 1), (1, 0, 2), (1, 1, 2), "silu", layout,
             with_residual=True)


def test_large_kernel_31x31_same_padding():
    """RepLKNet's 31x31 depthwise: a runtime tap loop over 961 taps."""
    run_case((6, 7), 3, 1, (31, 31), 1, "same", 1, None, "channels_last", dtype=torch.float32,
             batch=1)


def test_unbatched_input():
    x = torch.randn(5, 8, 9, dtype=torch.float64)
    w = torch.randn(10, 1, 3, 3, dtype=torch.float64)
    out = conv2d(x, w, stride=2, padding=1, groups=5)
    ref = F.conv2d(x, w, stride=2, padding=1, groups=5)
    assert_close_to_reference(out, ref, reduction=9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype):
    run_case((9, 8), 6, 2, (3, 3), 1, 1, 1, "relu6", "channels_last", dtype=dtype,
             with_residual=True)


def test_dispatches_to_the_depthwise_kernel(monkeypatch):
    """groups == C_in must never reach the implicit GEMM, forward or backward."""
    def refuse(*args, **kwargs):
        raise AssertionError("the implicit-GEMM kernel ran for a depthwise convolution")

    monkeypatch.setattr(conv, "launch_igemm", refuse)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    out = conv2d(x, w, stride=2, padding=1, groups=4)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    x64, w64 = x.detach().requires_grad_(), w.detach().requires_grad_()
    rx, rw = torch.autograd.grad(F.conv2d(x64, w64, None, 2, 1, 1, 4).sum(), (x64, w64))
    assert_close_to_reference(gx, rx, reduction=18)
    assert_close_to_reference(gw, rw, reduction=9)


@pytest.mark.parametrize(("spatial", "kernel", "stride", "padding", "dilation", "multiplier",
                          "activation"), [
    (2, (3, 3), (2, 1), (1, 0), (1, 2), 2, "silu"),
    (1, (5,), 2, 2, 1, 3, "relu"),
    (3, (2, 3, 1), (1, 2, 1), (1, 1, 0), 1, 1, "gelu"),
])
def test_gradcheck(spatial, kernel, stride, padding, dilation, multiplier, activation):
    channels = 3
    size = {1: (9,), 2: (5, 6), 3: (3, 4, 3)}[spatial]
    x = torch.randn(1, channels, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(channels * multiplier, 1, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels * multiplier, dtype=torch.float64, requires_grad=True)
    out_shape = TORCH[spatial](x, w, None, stride, padding, dilation, channels).shape
    r = torch.randn(out_shape, dtype=torch.float64, requires_grad=True)

    def op(x, w, b, r):
        return OURS[spatial](x, w, b, stride, padding, dilation, channels, activation=activation,
                             residual=r)

    assert torch.autograd.gradcheck(op, (x, w, b, r), fast_mode=True)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_backward_float32_matches_float64(layout):
    x = make_input((2, 5, 9, 8), layout, torch.float32).requires_grad_()
    w = torch.randn(10, 1, 5, 3, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    out = conv2d(x, w, b, (2, 1), (2, 1), (1, 2), 5, activation="hardswish")
    grad = torch.randn_like(out)
    gx, gw, gb = torch.autograd.grad(out, (x, w, b), grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.hardswish(F.conv2d(x64, w64, b64, (2, 1), (2, 1), (1, 2), 5))
    rx, rw, rb = torch.autograd.grad(ref, (x64, w64, b64), grad.double())
    assert_layout_like(gx, x)
    assert_close_to_reference(gx, rx, reduction=30)
    assert_close_to_reference(gw, rw, reduction=2 * out.shape[2] * out.shape[3])
    assert_close_to_reference(gb, rb, reduction=2 * out.shape[2] * out.shape[3])


def test_int64_indexing_path(monkeypatch):
    """The widened offsets used for tensors past 2**31 elements, on a small problem."""
    monkeypatch.setattr(depthwise, "needs_int64", lambda *tensors: True)
    x = make_input((2, 3, 6, 7), "channels_last").requires_grad_()
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    out = conv2d(x, w, None, 2, 1, 1, 3, activation="relu")
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    x64, w64 = x.detach().requires_grad_(), w.detach().requires_grad_()
    ref = F.relu(F.conv2d(x64, w64, None, 2, 1, 1, 3))
    rx, rw = torch.autograd.grad(ref.sum(), (x64, w64))
    assert_close_to_reference(out, ref, reduction=9)
    assert_close_to_reference(gx, rx, reduction=18)
    assert_close_to_reference(gw, rw, reduction=24)


def test_bad_arguments_are_named():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"weight.shape\[1\] \* groups must equal"):
        conv2d(x, torch.randn(4, 2, 3, 3), groups=4)
    with pytest.raises(ValueError, match=r"out channels, 6\) must be divisible by groups \(4\)"):
        conv2d(x, torch.randn(6, 1, 3, 3), groups=4)
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        conv2d(x, torch.randn(4, 1, 31, 31), groups=4)


# Real layer sizes, run by `make gpu-check`: MobileNetV2 and EfficientNet-B0 depthwise layers
# (fp16, channels_last) and RepLKNet's 31x31.
GPU_LAYERS = [
    # batch, channels, size, kernel, stride
    (32, 32, 112, 3, 1),
    (32, 96, 112, 3, 2),
    (32, 144, 56, 3, 1),
    (32, 192, 28, 3, 1),
    (32, 384, 14, 3, 1),
    (32, 960, 7, 3, 1),
    (32, 144, 56, 5, 2),  # EfficientNet-B0 5x5
    (32, 240, 28, 5, 1),
    (32, 672, 14, 5, 1),
    (8, 128, 56, 31, 1),  # RepLKNet-31B stage 1
]


@pytest.mark.gpu
@pytest.mark.parametrize(("batch", "channels", "size", "kernel", "stride"), GPU_LAYERS)
def test_gpu_real_layers(batch, channels, size, kernel, stride):
    x = torch.randn(batch, channels, size, size, device="cuda", dtype=torch.float16)
    x = x.to(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, kernel, kernel, device="cuda", dtype=torch.float16)
    b = torch.randn(channels, device="cuda", dtype=torch.float16)
    out = conv2d(x, w, b, stride, kernel // 2, 1, channels, activation="relu6")
    ref = F.relu6(F.conv2d(x.double(), w.double(), b.double(), stride, kernel // 2, 1, channels))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref, reduction=kernel * kernel)


@pytest.mark.gpu
def test_gpu_backward_mobilenet_layer():
    x = torch.randn(32, 144, 56, 56, device="cuda", requires_grad=True)
    w = torch.randn(144, 1, 3, 3, device="cuda", requires_grad=True)
    out = conv2d(x, w, None, 2, 1, 1, 144)
    grad = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x64, w64, None, 2, 1, 1, 144), (x64, w64),
                                 grad.double())
    assert_close_to_reference(gx, rx, reduction=9)
    assert_close_to_reference(gw, rw, reduction=32 * 28 * 28)
