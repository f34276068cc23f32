"""Unshared (locally connected) convolution against torch's unfold plus einsum in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foveal.kernels import local_conv, local_conv2d, output_shape, use_backend
from foveal.kernels.nn import LocalConv2d
from tolerances import assert_close_to_reference

from .helpers import activate, assert_layout_like, make_input

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def reference(x, weight, bias, stride, padding, dilation, groups):
    """unfold gives every pixel's receptive field; einsum applies that pixel's own filters."""
    x = x.double()
    h_out, w_out, c_out, c_g, k_h, k_w = weight.shape
    if padding == "same":  # total padding d*(k-1), the extra element after (as PyTorch does)
        total_h, total_w = dilation[0] * (k_h - 1), dilation[1] * (k_w - 1)
        x = F.pad(x, (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2))
        padding = 0
    cols = F.unfold(x, (k_h, k_w), dilation=dilation, padding=padding, stride=stride)
    cols = cols.reshape(x.shape[0], groups, c_g * k_h * k_w, h_out, w_out)
    w = weight.double().reshape(h_out, w_out, groups, c_out // groups, c_g * k_h * k_w)
    out = torch.einsum("ngkhw,hwgok->ngohw", cols, w).reshape(x.shape[0], c_out, h_out, w_out)
    if bias is not None:
        out = out + (bias.double() if bias.dim() == 3 else bias.double()[:, None, None])
    return out


def make_case(size, c_in, c_out, kernel, stride, padding, dilation, groups, bias_kind,
              layout="contiguous", dtype=torch.float64, batch=2):
    x = make_input((batch, c_in, *size), layout, dtype)
    h_out, w_out = output_shape(size, kernel, stride, padding, dilation)
    weight = torch.randn(h_out, w_out, c_out, c_in // groups, *kernel, dtype=dtype)
    bias = {None: None, "shared": torch.randn(c_out, dtype=dtype),
            "per_pixel": torch.randn(c_out, h_out, w_out, dtype=dtype)}[bias_kind]
    return x, weight, bias


CASES = [
    # size, C_in, C_out, kernel, stride, padding, dilation, groups, bias, act, layout, residual
    ((6, 7), 3, 5, (3, 3), (1, 1), 0, (1, 1), 1, "per_pixel", None, "contiguous", False),
    ((7, 8), 4, 6, (3, 2), (2, 1), (1, 2), (1, 2), 2, "shared", "relu", "channels_last", True),
    ((8, 7), 6, 3, (2, 3), (1, 1), "same", (2, 1), 3, "per_pixel", "silu", "strided", True),
    ((7, 7), 5, 7, (3, 3), (2, 2), (1, 1), (1, 1), 1, None, ("leaky_relu", -0.5), "channels_last",
     False),
    ((5, 6), 2, 4, (1, 1), (1, 1), 0, (1, 1), 2, "shared", "hardswish", "contiguous", True),
]


@pytest.mark.parametrize(("size", "c_in", "c_out", "kernel", "stride", "padding", "dilation",
                          "groups", "bias_kind", "activation", "layout", "with_residual"), CASES)
def test_matches_unfold_einsum(size, c_in, c_out, kernel, stride, padding, dilation, groups,
                               bias_kind, activation, layout, with_residual):
    x, weight, bias = make_case(size, c_in, c_out, kernel, stride, padding, dilation, groups,
                                bias_kind, layout)
    z = reference(x, weight, bias, stride, padding, dilation, groups)
    residual = torch.randn_like(z) if with_residual else None
    out = local_conv2d(x, weight, bias, stride, padding, dilation, groups, activation=activation,
                       residual=residual)
    ref = activate(z if residual is None else z + residual, activation)
    assert_close_to_reference(out, ref, reduction=c_in // groups * kernel[0] * kernel[1])
    assert_layout_like(out, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype):
    x, weight, bias = make_case((6, 6), 4, 6, (3, 3), (1, 1), 1, (1, 1), 1, "per_pixel",
                                "channels_last", dtype)
    out = local_conv2d(x, weight, bias, padding=1, activation="gelu")
    ref = F.gelu(reference(x, weight, bias, (1, 1), 1, (1, 1), 1))
    assert out.dtype == dtype
    assert_close_to_reference(out, ref, reduction=36)


def test_unbatched_input():
    x, weight, bias = make_case((5, 6), 3, 4, (3, 3), (1, 1), 0, (1, 1), 1, "shared", batch=1)
    out = local_conv2d(x[0], weight, bias)
    assert out.shape == (4, 3, 4)
    assert_close_to_reference(out, reference(x, weight, bias, (1, 1), 0, (1, 1), 1)[0],
                              reduction=27)


def test_torch_backend_matches():
    x, weight, bias = make_case((7, 6), 4, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, "per_pixel")
    with use_backend("torch"):
        out = local_conv2d(x, weight, bias, (2, 1), (1, 0), (1, 2), 2, activation="relu")
    ref = F.relu(reference(x, weight, bias, (2, 1), (1, 0), (1, 2), 2))
    assert_close_to_reference(out, ref, reduction=12)


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups", "bias_kind", "activation"), [
    ((1, 1), (1, 0), (1, 1), 1, "per_pixel", "gelu"),
    ((2, 1), (0, 1), (1, 2), 2, "shared", "sigmoid"),
])
def test_gradcheck(stride, padding, dilation, groups, bias_kind, activation):
    x, weight, bias = make_case((3, 4), 2, 2, (2, 2), stride, padding, dilation, groups,
                                bias_kind, batch=1)
    z_shape = reference(x, weight, bias, stride, padding, dilation, groups).shape
    residual = torch.randn(z_shape, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, weight, bias, residual)]

    def op(x, weight, bias, residual):
        return local_conv2d(x, weight, bias, stride, padding, dilation, groups,
                            activation=activation, residual=residual)

    assert torch.autograd.gradcheck(op, leaves, fast_mode=True)


@pytest.mark.parametrize("bias_kind", ["per_pixel", "shared"])
def test_backward_float32_matches_float64(bias_kind):
    x, weight, bias = make_case((7, 6), 4, 6, (3, 3), (2, 1), 1, (1, 1), 2, bias_kind,
                                "channels_last", torch.float32, batch=3)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    out = local_conv2d(*leaves, (2, 1), 1, 1, 2, activation="silu")
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = F.silu(reference(*leaves64, (2, 1), 1, (1, 1), 2))
    expected = torch.autograd.grad(ref, leaves64, grad.double())
    assert_layout_like(grads[0], x)
    reductions = (3 * 9, 3, 3 if bias_kind == "per_pixel" else 3 * out.shape[2] * out.shape[3])
    for got, want, reduction in zip(grads, expected, reductions, strict=True):
        assert_close_to_reference(got, want, reduction=reduction)


def test_int64_indexing_path(monkeypatch):
    monkeypatch.setattr(local_conv, "needs_int64", lambda *tensors: True)
    x, weight, bias = make_case((4, 5), 2, 3, (2, 2), (1, 2), 1, (1, 1), 1, "per_pixel",
                                "channels_last", batch=1)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    out = local_conv2d(*leaves, (1, 2), 1)
    grads = torch.autograd.grad(out.sum(), leaves)
    leaves64 = [t.detach().requires_grad_() for t in leaves]
    ref = reference(*leaves64, (1, 2), 1, (1, 1), 1)
    expected = torch.autograd.grad(ref.sum(), leaves64)
    assert_close_to_reference(out, ref, reduction=8)
    for got, want in zip(grads, expected, strict=True):
        assert_close_to_reference(got, want, reduction=8)


def test_module():
    module = LocalConv2d(3, 4, (6, 7), 3, stride=(1, 2), padding=1, dtype=torch.float64,
                         activation="relu")
    assert module.output_size == (6, 4)
    assert module.weight.shape == (6, 4, 4, 3, 3, 3) and module.bias.shape == (4, 6, 4)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    out = module(x)
    ref = F.relu(reference(x, module.weight.detach(), module.bias.detach(), (1, 2), 1, (1, 1),
                           1))
    assert_close_to_reference(out, ref, reduction=27)
    out.sum().backward()
    assert module.weight.grad.abs().sum() > 0 and module.bias.grad.abs().sum() > 0


def _call(**overrides):
    args = dict(input=torch.randn(1, 4, 6, 6), weight=torch.randn(4, 4, 5, 4, 3, 3))
    args.update(overrides)
    return local_conv2d(**args)


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (dict(input=torch.randn(6, 6)), ValueError, "input must be 3-D or 4-D"),
    (dict(weight=torch.randn(5, 4, 3, 3)), ValueError, "weight must be 6-D"),
    (dict(weight=torch.randn(5, 4, 5, 4, 3, 3)), ValueError,
     r"weight.shape\[:2\] must be the output size \(H_out, W_out\) = \(4, 4\)"),
    (dict(weight=torch.randn(4, 4, 5, 4, 3, 3), stride=2), ValueError,
     r"output size \(H_out, W_out\) = \(2, 2\)"),
    (dict(weight=torch.randn(4, 4, 5, 3, 3, 3)), ValueError,
     r"weight.shape\[1\] \* groups must equal the input channels"),
    (dict(weight=torch.randn(4, 4, 5, 2, 3, 3), groups=2), ValueError,
     r"weight.shape\[0\] \(out channels, 5\) must be divisible by groups \(2\)"),
    (dict(bias=torch.randn(5, 4)), ValueError,
     r"bias must have shape \(5,\) or \(5, 4, 4\) \(C_out, H_out, W_out\)"),
    (dict(bias=torch.randn(4)), ValueError, r"bias must have shape \(5,\)"),
    (dict(residual=torch.randn(1, 5, 6, 6)), ValueError,
     r"residual must have the output's shape \(1, 5, 4, 4\)"),
    (dict(weight=torch.randn(4, 4, 5, 4, 3, 3, dtype=torch.float64)), ValueError,
     "weight has dtype torch.float64 but input has torch.float32"),
    (dict(weight=torch.randn(1, 1, 5, 4, 7, 7)), ValueError, "kernel larger than the padded"),
    (dict(activation="swish"), ValueError, "activation must be None or one of"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
])
def test_bad_arguments_are_named(overrides, error, message):
    with pytest.raises(error, match=message):
        _call(**overrides)


@pytest.mark.gpu
def test_gpu_face_verification_layer():
    """A DeepFace-style locally connected layer: batch 64, 16 -> 16 channels, 3x3 on 25x25."""
    x, weight, bias = make_case((25, 25), 16, 16, (3, 3), (1, 1), 0, (1, 1), 1, "per_pixel",
                                "channels_last", torch.float16, batch=64)
    x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    out = local_conv2d(x, weight, bias, activation="relu")
    ref = F.relu(reference(x, weight, bias, (1, 1), 0, (1, 1), 1))
    assert_close_to_reference(out, ref, reduction=16 * 9)
    grad = torch.randn_like(out)
    x.requires_grad_()
    weight.requires_grad_()
    gx, gw = torch.autograd.grad(local_conv2d(x, weight, bias), (x, weight), grad)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, weight))
    rx, rw = torch.autograd.grad(reference(x64, w64, None, (1, 1), 0, (1, 1), 1), (x64, w64),
                                 grad.double())
    assert_close_to_reference(gx, rx, reduction=16 * 9)
    assert_close_to_reference(gw, rw, reduction=64)
