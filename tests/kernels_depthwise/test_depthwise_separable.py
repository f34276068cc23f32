"""The fused depthwise-separable block against two F.conv2d calls in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foveal.kernels import (
    conv,
    depthwise,
    depthwise_separable,
    depthwise_separable_conv2d,
    pointwise,
    use_backend,
)
from foveal.kernels.nn import DepthwiseSeparableConv2d
from tolerances import assert_close_to_reference

from .helpers import activate, assert_layout_like, make_input

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def reference(x, dw, pw, dw_bias, pw_bias, stride, padding, dilation, mid_activation,
              activation, residual):
    """Depthwise conv, mid activation, 1x1 conv, residual, activation: PyTorch in float64."""
    as64 = lambda t: None if t is None else t.double()
    mid = F.conv2d(x.double(), dw.double(), as64(dw_bias), stride, padding, dilation, x.shape[-3])
    z = F.conv2d(activate(mid, mid_activation), pw.double(), as64(pw_bias))
    return activate(z if residual is None else z + residual.double(), activation)


def make_block(channels, c_out, kernel, dtype=torch.float64, biases=True):
    dw = torch.randn(channels, 1, *kernel, dtype=dtype)
    pw = torch.randn(c_out, channels, 1, 1, dtype=dtype) / channels**0.5
    dw_bias = torch.randn(channels, dtype=dtype) if biases else None
    pw_bias = torch.randn(c_out, dtype=dtype) if biases else None
    return dw, pw, dw_bias, pw_bias


CASES = [
    # size, C, C_out, kernel, stride, padding, dilation, mid, act, layout, biases, residual
    ((8, 9), 5, 7, (3, 3), 1, 1, 1, "relu6", None, "contiguous", True, False),
    ((9, 8), 6, 40, (3, 5), (2, 1), (1, 2), (1, 2), "silu", "relu", "channels_last", True, True),
    ((7, 7), 37, 9, (5, 5), 2, "valid", 1, "hardswish", "gelu", "contiguous", False, False),
    ((8, 7), 3, 5, (4, 2), 1, "same", (1, 2), ("leaky_relu", -0.5), "sigmoid", "strided", True,
     True),
    ((6, 9), 4, 16, (3, 3), (1, 2), (0, 1), (2, 1), None, "hardswish", "channels_last", False,
     True),
    ((7, 8), 7, 3, (1, 1), 1, 0, 1, "gelu", ("leaky_relu", 0.2), "strided", True, False),
]


@pytest.mark.parametrize(("size", "channels", "c_out", "kernel", "stride", "padding", "dilation",
                          "mid_activation", "activation", "layout", "biases", "with_residual"),
                         CASES)
def test_matches_two_convolutions(size, channels, c_out, kernel, stride, padding, dilation,
                                  mid_activation, activation, layout, biases, with_residual):
    x = make_input((2, channels, *size), layout)
    dw, pw, dw_bias, pw_bias = make_block(channels, c_out, kernel, biases=biases)
    shape = reference(x, dw, pw, None, None, stride, padding, dilation, None, None, None).shape
    residual = torch.randn(shape, dtype=torch.float64) if with_residual else None
    out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, stride, padding, dilation,
                                     mid_activation, activation, residual)
    ref = reference(x, dw, pw, dw_bias, pw_bias, stride, padding, dilation, mid_activation,
                    activation, residual)
    assert_close_to_reference(out, ref, reduction=channels * kernel[0] * kernel[1])
    assert_layout_like(out, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype):
    x = make_input((2, 24, 7, 8), "channels_last", dtype)
    dw, pw, dw_bias, pw_bias = make_block(24, 20, (3, 3), dtype)
    out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, 1, 1, 1, "relu6", None)
    ref = reference(x, dw, pw, dw_bias, pw_bias, 1, 1, 1, "relu6", None, None)
    assert out.dtype == dtype
    # The intermediate is rounded to `dtype` (as the unfused pair stores it): its terms are
    # about 3 in size (9 unit products), then 24 of them are summed.
    assert_close_to_reference(out, ref, reduction=24 * 9, scale=3.0)


def test_unbatched_input():
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    dw, pw, dw_bias, pw_bias = make_block(4, 5, (3, 3))
    out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, 2, 1, mid_activation="relu")
    ref = reference(x[None], dw, pw, dw_bias, pw_bias, 2, 1, 1, "relu", None, None)[0]
    assert_close_to_reference(out, ref, reduction=36)


def test_forward_is_one_launch_without_the_depthwise_kernel(monkeypatch):
    calls = []
    launch = depthwise_separable.launch_pointwise

    def counting(*args, **kwargs):
        calls.append(kwargs["depthwise"])
        return launch(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the fused forward ran a separate depthwise launch")

    monkeypatch.setattr(depthwise_separable, "launch_pointwise", counting)
    monkeypatch.setattr(conv, "launch_depthwise", refuse)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    dw, pw, dw_bias, pw_bias = make_block(4, 6, (3, 3))
    out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, padding=1)
    assert len(calls) == 1 and calls[0] is not None
    assert_close_to_reference(out, reference(x, dw, pw, dw_bias, pw_bias, 1, 1, 1, None, None,
                                             None), reduction=36)


@pytest.mark.parametrize(("stride", "mid_activation", "activation"), [
    ((2, 1), "gelu", "sigmoid"),  # both need the pre-activation in backward
    (1, "relu6", None),
])
def test_gradcheck(stride, mid_activation, activation):
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in make_block(3, 4, (3, 3))]
    out_shape = reference(x, *params, stride, 1, 1, None, None, None).shape
    residual = torch.randn(out_shape, dtype=torch.float64, requires_grad=True)

    def op(x, dw, pw, dw_bias, pw_bias, residual):
        return depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, stride, 1, 1,
                                          mid_activation, activation, residual)

    assert torch.autograd.gradcheck(op, (x, *params, residual), fast_mode=True)


def test_backward_float32_matches_float64():
    x = make_input((2, 5, 7, 6), "channels_last", torch.float32).requires_grad_()
    params = [t.requires_grad_() for t in make_block(5, 8, (3, 3), torch.float32)]
    out = depthwise_separable_conv2d(x, *params, 2, 1, 1, "silu", "relu")
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, *params), grad)
    leaves = [t.detach().double().requires_grad_() for t in (x, *params)]
    ref = reference(*leaves, 2, 1, 1, "silu", "relu", None)
    expected = torch.autograd.grad(ref, leaves, grad.double())
    assert_layout_like(grads[0], x)
    positions = 2 * out.shape[2] * out.shape[3]
    for got, want, reduction in zip(grads, expected, (8 * 9, positions * 9, positions,
                                                      positions, positions), strict=True):
        assert_close_to_reference(got, want, reduction=reduction, scale=3.0)


def test_int64_indexing_path(monkeypatch):
    for module in (pointwise, depthwise):
        monkeypatch.setattr(module, "needs_int64", lambda *tensors: True)
    x = make_input((1, 3, 6, 5), "channels_last").requires_grad_()
    params = [t.requires_grad_() for t in make_block(3, 4, (3, 3))]
    out = depthwise_separable_conv2d(x, *params, 2, 1, 1, "relu", None)
    grads = torch.autograd.grad(out.sum(), (x, *params))
    leaves = [t.detach().requires_grad_() for t in (x, *params)]
    ref = reference(*leaves, 2, 1, 1, "relu", None, None)
    expected = torch.autograd.grad(ref.sum(), leaves)
    assert_close_to_reference(out, ref, reduction=27)
    for got, want in zip(grads, expected, strict=True):
        assert_close_to_reference(got, want, reduction=27, scale=3.0)


def test_torch_backend_matches():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    dw, pw, dw_bias, pw_bias = make_block(4, 5, (3, 3))
    with use_backend("torch"):
        out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, 2, "valid", 1, "relu",
                                         "silu")
    ref = reference(x, dw, pw, dw_bias, pw_bias, 2, 0, 1, "relu", "silu", None)
    assert_close_to_reference(out, ref, reduction=36)


def test_module_with_folded_batchnorms_equals_the_torch_block():
    torch.manual_seed(0)
    dw_conv = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False).double()
    pw_conv = nn.Conv2d(6, 10, 1, bias=False).double()
    bn1, bn2 = nn.BatchNorm2d(6).double(), nn.BatchNorm2d(10).double()
    for bn in (bn1, bn2):  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    block = nn.Sequential(dw_conv, bn1, nn.ReLU6(), pw_conv, bn2).eval()
    fused = DepthwiseSeparableConv2d.from_modules(dw_conv, pw_conv, bn1, bn2,
                                                  mid_activation="relu6")
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close_to_reference(fused(x), block(x), reduction=54)


def test_module_forward_backward_and_residual():
    module = DepthwiseSeparableConv2d(4, 6, 3, padding=1, mid_activation="relu",
                                      activation="relu", dtype=torch.float64)
    assert module.dw_weight.shape == (4, 1, 3, 3) and module.pw_weight.shape == (6, 4, 1, 1)
    assert module.dw_bias.shape == (4,) and module.pw_bias.shape == (6,)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    residual = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    out = module(x, residual)
    ref = reference(x, module.dw_weight.detach(), module.pw_weight.detach(),
                    module.dw_bias.detach(), module.pw_bias.detach(), 1, 1, 1, "relu", "relu",
                    residual)
    assert_close_to_reference(out, ref, reduction=36)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _call(**overrides):
    args = dict(x=torch.randn(1, 4, 6, 6), dw_weight=torch.randn(4, 1, 3, 3),
                pw_weight=torch.randn(5, 4, 1, 1))
    args.update(overrides)
    return depthwise_separable_conv2d(**args)


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (dict(x=torch.randn(4, 6)), ValueError, "x must be 3-D or 4-D"),
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(dw_weight=torch.randn(4, 3, 3)), ValueError, "dw_weight must be 4-D"),
    (dict(dw_weight=torch.randn(8, 1, 3, 3)), ValueError,
     r"dw_weight must have shape \(4, 1, kH, kW\).*channel multiplier 1"),
    (dict(dw_weight=torch.randn(4, 2, 3, 3)), ValueError, r"dw_weight must have shape"),
    (dict(pw_weight=torch.randn(5, 3, 1, 1)), ValueError,
     r"pw_weight must have shape \(C_out, 4, 1, 1\)"),
    (dict(pw_weight=torch.randn(5, 4, 3, 3)), ValueError, r"pw_weight must have shape"),
    (dict(pw_weight=torch.randn(5, 4, 1, 1, dtype=torch.float64)), ValueError,
     "pw_weight has dtype torch.float64 but input has torch.float32"),
    (dict(dw_bias=torch.randn(5)), ValueError, r"dw_bias must have shape \(4,\)"),
    (dict(pw_bias=torch.randn(4)), ValueError, r"pw_bias must have shape \(5,\)"),
    (dict(residual=torch.randn(1, 5, 6, 6)), ValueError,
     r"residual must have the output's shape \(1, 5, 4, 4\)"),
    (dict(mid_activation="swish"), ValueError, "mid_activation: activation must be None or"),
    (dict(activation="tanh"), ValueError, "depthwise_separable_conv2d: activation: "),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(dw_weight=torch.randn(4, 1, 9, 9)), ValueError, "kernel larger than the padded input"),
    (dict(padding="same", stride=2), ValueError, "padding='same' is not supported for strided"),
])
def test_bad_arguments_are_named(overrides, error, message):
    with pytest.raises(error, match=message):
        _call(**overrides)


def test_from_modules_rejects_what_it_cannot_fuse():
    dw_conv = nn.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match="depthwise must be a Conv2d with groups == in_channels"):
        DepthwiseSeparableConv2d.from_modules(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 6, 1))
    with pytest.raises(ValueError, match="pointwise must be a 1x1 Conv2d over 4 channels"):
        DepthwiseSeparableConv2d.from_modules(dw_conv, nn.Conv2d(4, 6, 3))
    with pytest.raises(ValueError, match="pointwise must be a 1x1 Conv2d over 4 channels"):
        DepthwiseSeparableConv2d.from_modules(dw_conv, nn.Conv2d(4, 6, 1, stride=2))


# MobileNetV2 inverted-residual tails (depthwise 3x3 + projection) and EfficientNet-B0 5x5
# blocks at batch 32, fp16, channels_last; `make gpu-check` runs them.
GPU_BLOCKS = [
    # batch, channels, c_out, size, kernel, stride
    (32, 32, 16, 112, 3, 1),
    (32, 96, 24, 112, 3, 2),
    (32, 144, 32, 56, 3, 2),
    (32, 384, 64, 14, 3, 1),
    (32, 960, 320, 7, 3, 1),
    (32, 240, 80, 28, 3, 2),
    (32, 672, 192, 14, 5, 2),
]


@pytest.mark.gpu
@pytest.mark.parametrize(("batch", "channels", "c_out", "size", "kernel", "stride"), GPU_BLOCKS)
def test_gpu_real_blocks(batch, channels, c_out, size, kernel, stride):
    x = torch.randn(batch, channels, size, size, device="cuda", dtype=torch.float16)
    x = x.to(memory_format=torch.channels_last)
    dw, pw, dw_bias, pw_bias = (t.cuda() for t in make_block(channels, c_out, (kernel, kernel),
                                                             torch.float16))
    out = depthwise_separable_conv2d(x, dw, pw, dw_bias, pw_bias, stride, kernel // 2, 1,
                                     "relu6", None)
    ref = reference(x, dw, pw, dw_bias, pw_bias, stride, kernel // 2, 1, "relu6", None, None)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref, reduction=channels * kernel * kernel, scale=kernel)
