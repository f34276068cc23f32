"""conv2d_fp8, conv3d_fp8 and depthwise_separable_conv2d_fp8 through Triton's interpreter.

Each output is checked twice against float64 PyTorch: tightly against the convolution of the
dequantized operands (what the kernel computes: exact FP8 products, FP32 sums, one rounding to
out_dtype), and against the convolution of the unquantized operands within the documented
FP8 tolerance (fp8_reference.QUANTIZED_TOLERANCE).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fp8_reference import FP8, QUANTIZED_TOLERANCE, dequantized, relative_error

import foveal.kernels as fk
from foveal.kernels.quantize import round_fp8
from tolerances import assert_close_to_reference

ACTIVATIONS = {None: lambda z: z, "relu": F.relu, "silu": F.silu,
               ("leaky_relu", 0.1): lambda z: F.leaky_relu(z, 0.1)}
FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.to(memory_format=FORMATS[t.dim()])
    if layout == "strided":  # every other channel of a larger tensor
        return torch.cat([t, t], dim=1)[:, ::2]
    return t


# (spatial dims, batch, C_in, C_out, size, kernel, stride, padding, dilation, groups)
CASES = {
    "3x3": (2, 2, 16, 24, (9, 8), (3, 3), 1, 1, 1, 1),
    "3x3-stride-dilation": (2, 2, 19, 13, (11, 10), (3, 2), (2, 1), (1, 2), (1, 2), 1),
    "5x5-same": (2, 1, 8, 16, (7, 7), (5, 5), 1, "same", 1, 1),
    "grouped": (2, 2, 32, 24, (8, 8), (3, 3), 1, 1, 1, 4),
    "stem-3-channels": (2, 2, 3, 16, (12, 12), (7, 7), 2, 3, 1, 1),
    "1x1": (2, 2, 40, 48, (6, 7), (1, 1), 1, 0, 1, 1),
    "1x1-stride2": (2, 2, 32, 17, (9, 9), (1, 1), 2, 0, 1, 1),
    "3d-3x3x3": (3, 1, 16, 8, (4, 6, 5), (3, 3, 3), 1, 1, 1, 1),
    "3d-1x1x1": (3, 2, 24, 16, (2, 5, 5), (1, 1, 1), 1, 0, 1, 1),
}


def _operands(case, layout):
    n, batch, c_in, c_out, size, kernel, stride, padding, dilation, groups = CASES[case]
    fan_in = c_in // groups * torch.Size(kernel).numel()
    x = _layout(torch.randn(batch, c_in, *size), layout)
    w = torch.randn(c_out, c_in // groups, *kernel) / fan_in**0.5
    return n, x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _run(n, x8, x_scale, w8, w_scale, bias, residual, args, activation, out_dtype):
    op = fk.conv2d_fp8 if n == 2 else fk.conv3d_fp8
    return op(x8, x_scale, w8, w_scale, bias, **args, activation=activation, residual=residual,
              out_dtype=out_dtype)


def _reference(n, x, w, bias, residual, args, activation):
    conv = F.conv2d if n == 2 else F.conv3d
    y = conv(x, w, None if bias is None else bias.double(), **args)
    if residual is not None:
        y = y + residual.double()
    return ACTIVATIONS[activation](y)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_against_float64(case, layout):
    n, x, w, args = _operands(case, layout)
    bias = torch.randn(w.shape[0])
    x8, x_scale = fk.quantize_fp8(x)
    w8, w_scale = fk.quantize_weight_fp8(w)
    out = _run(n, x8, x_scale, w8, w_scale, bias, None, args, "relu", torch.float32)
    ref = _reference(n, dequantized(x8, x_scale), dequantized(w8, w_scale, 0), bias, None, args,
                     "relu")
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=FORMATS[x.dim()]) == (layout == "channels_last")
    assert_close_to_reference(out, ref, reduction=w[0].numel())
    exact = _reference(n, x.double(), w.double(), bias, None, args, "relu")
    assert relative_error(out, exact) <= QUANTIZED_TOLERANCE


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS, key=str))
def test_epilogue_after_descaling(out_dtype, activation):
    """Bias (fp32), residual (fp16) and activation apply to the de-scaled product, then one
    rounding to out_dtype; a strided input is read as it is."""
    n, x, w, args = _operands("3x3-stride-dilation", "strided")
    x8, x_scale = fk.quantize_fp8(x, 0.02)
    w8, w_scale = fk.quantize_weight_fp8(w)
    bias = torch.randn(w.shape[0])
    shape = F.conv2d(x, w, **args).shape
    residual = torch.randn(shape, dtype=torch.float16)
    out = _run(n, x8, x_scale, w8, w_scale, bias, residual, args, activation, out_dtype)
    assert out.dtype == out_dtype and out.shape == shape
    ref = _reference(n, dequantized(x8, x_scale), dequantized(w8, w_scale, 0), bias, residual,
                     args, activation)
    assert_close_to_reference(out, ref, reduction=w[0].numel())
    exact = _reference(n, x.double(), w.double(), bias, residual, args, activation)
    assert relative_error(out, exact) <= QUANTIZED_TOLERANCE


def test_unbatched_input_and_empty_batch():
    w8, w_scale = fk.quantize_weight_fp8(torch.randn(8, 16, 3, 3) / 12)
    x8, x_scale = fk.quantize_fp8(torch.randn(16, 6, 6))
    out = fk.conv2d_fp8(x8, x_scale, w8, w_scale, padding=1)
    batched = fk.conv2d_fp8(x8[None], x_scale, w8, w_scale, padding=1)
    assert out.shape == (8, 6, 6) and out.dtype == torch.float16
    assert torch.equal(out, batched[0])
    bias = torch.randn(8)
    empty = fk.conv2d_fp8(x8[None][:0], x_scale, w8, w_scale, bias, padding=1,
                          activation="relu")
    assert empty.shape == (0, 8, 6, 6) and empty.dtype == torch.float16


@pytest.mark.parametrize("case", ["3x3-stride-dilation", "grouped", "1x1", "3d-3x3x3"])
def test_torch_backend_computes_the_same(case):
    """PyTorch's FP32 convolution of the FP8 values: the same products and FP32 sums."""
    n, x, w, args = _operands(case, "channels_last")
    x8, x_scale = fk.quantize_fp8(x)
    w8, w_scale = fk.quantize_weight_fp8(w)
    bias = torch.randn(w.shape[0])
    kernel = _run(n, x8, x_scale, w8, w_scale, bias, None, args, "silu", torch.float32)
    with fk.use_backend("torch"):
        torch_ops = _run(n, x8, x_scale, w8, w_scale, bias, None, args, "silu", torch.float32)
    assert torch_ops.shape == kernel.shape
    assert (torch_ops - kernel).abs().max() <= 1e-5 * kernel.abs().max()


@pytest.mark.parametrize("out_dtype", [None, torch.float32])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 2, 2)])
def test_depthwise_separable_fp8(out_dtype, stride, padding, dilation):
    """The fused block with its 1x1 in FP8: the intermediate quantized on chip with mid_scale,
    exactly as quantize_fp8 would quantize it."""
    x = torch.randn(2, 24, 11, 10, dtype=torch.float16).to(memory_format=torch.channels_last)
    dw = (torch.randn(24, 1, 3, 3) / 3).half()
    dw_bias = (torch.randn(24) * 0.1).half()
    pw = torch.randn(40, 24, 1, 1) / 24**0.5
    pw_bias, residual_shape = torch.randn(40), None
    pw8, pw_scale = fk.quantize_weight_fp8(pw)
    mid = F.relu6(F.conv2d(x.float(), dw.float(), dw_bias.float(), stride, padding, dilation, 24))
    mid_scale = mid.abs().max() / 448
    residual_shape = (2, 40, *mid.shape[2:])
    residual = torch.randn(residual_shape, dtype=torch.float16)
    out = fk.depthwise_separable_conv2d_fp8(
        x, dw, pw8, pw_scale, mid_scale, dw_bias, pw_bias, stride, padding, dilation,
        mid_activation="relu6", activation="silu", residual=residual, out_dtype=out_dtype)
    assert out.dtype == (out_dtype or torch.float16) and out.shape == residual_shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    mid8 = round_fp8(mid, mid_scale)
    ref = F.silu(F.conv2d(dequantized(mid8, mid_scale), dequantized(pw8, pw_scale, 0),
                          pw_bias.double()) + residual.double())
    assert_close_to_reference(out, ref, reduction=24)
    exact_mid = F.relu6(F.conv2d(x.double(), dw.double(), dw_bias.double(), stride, padding,
                                 dilation, 24))
    exact = F.silu(F.conv2d(exact_mid, pw.double(), pw_bias.double()) + residual.double())
    assert relative_error(out, exact) <= QUANTIZED_TOLERANCE
    with fk.use_backend("torch"):
        torch_ops = fk.depthwise_separable_conv2d_fp8(
            x, dw, pw8, pw_scale, mid_scale, dw_bias, pw_bias, stride, padding, dilation,
            mid_activation="relu6", activation="silu", residual=residual,
            out_dtype=torch.float32)
    assert_close_to_reference(torch_ops, ref, reduction=24)


def test_scales_reach_the_kernel_per_channel():
    """A weight whose channels differ by 10**4 in magnitude keeps each channel's precision."""
    x8, x_scale = fk.quantize_fp8(torch.randn(1, 32, 5, 5))
    w = torch.randn(4, 32, 1, 1) * torch.tensor([1e-3, 1.0, 10.0, 1e-1]).reshape(4, 1, 1, 1)
    w8, w_scale = fk.quantize_weight_fp8(w)
    out = fk.conv2d_fp8(x8, x_scale, w8, w_scale, out_dtype=torch.float32)
    exact = F.conv2d(dequantized(x8, x_scale), w.double())
    for c in range(4):
        assert relative_error(out[:, c], exact[:, c]) <= QUANTIZED_TOLERANCE
    assert w8.dtype == FP8
