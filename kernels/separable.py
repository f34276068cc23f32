"""Spatially separable convolution: a kH x 1 convolution then a per-channel 1 x kW convolution.

    separable_conv2d(x, weight_col, weight_row) == conv2d(x, W) with
    W[o, i, h, w] = weight_col[o, i, h, 0] * weight_row[o, 0, 0, w]

weight_col (C_out, C_in/groups, kH, 1) is a full (grouped) column convolution from C_in to
C_out channels; weight_row (C_out, 1, 1, kW) filters each of those C_out channels along the
rows (a depthwise 1 x kW convolution). So every output channel's filters share one horizontal
profile: a per-output-channel rank-1 kernel, which `factorize_separable` finds by SVD. Sobel,
Scharr, box and Gaussian filters are exactly of this form; a general filter gets its best
rank-1 approximation and the relative error says how good that is.

A multiply-accumulate count of (C_in/groups * kH + kW) per output instead of
C_in/groups * kH * kW. It runs as two launches of the core kernels (the implicit GEMM, or the
depthwise kernel when groups == C_in, then the depthwise kernel with the fused epilogue); the
intermediate (N, C_out, H_out, W) goes through device memory, because a single kernel would
have to recompute the column convolution for each of the kW row taps, losing the saving. The
operator `torch.ops.foveal.separable_conv2d` is that composition of two `foveal::conv2d`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import library
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .conv import conv2d
from .epilogue import ActivationArg, epilogue_from, parse_activation
from .geometry import PaddingArg, conv_geometry

OP = "separable_conv2d"
IntArg = int | tuple[int, int]


class SeparableFactors(NamedTuple):
    """The factors of a filter bank for `separable_conv2d` and how far they are from it."""

    weight_col: torch.Tensor  # (C_out, C_in/groups, kH, 1)
    weight_row: torch.Tensor  # (C_out, 1, 1, kW)
    relative_error: float  # ||W - col * row||_F / ||W||_F; 0 for a separable W


def factorize_separable(weight: torch.Tensor) -> SeparableFactors:
    """Best rank-1 factors (in the Frobenius norm) of each output channel's filters, by SVD.

    For output channel o the (C_in/groups * kH) x kW matrix W[o] (rows: input channel and
    filter row, columns: filter column) is replaced by its leading singular pair, split as
    sqrt(s) * u and sqrt(s) * v so both factors have the same scale. Computed in float64;
    the factors come back in the weight's dtype and device.
    """
    check_tensor("factorize_separable", "weight", weight, (4,))
    c_out, c_in, k_h, k_w = weight.shape
    if weight.numel() == 0:
        raise ValueError(f"factorize_separable: weight is empty, shape {tuple(weight.shape)}")
    matrices = weight.detach().double().reshape(c_out, c_in * k_h, k_w)
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    scale = s[:, :1].sqrt()
    col = u[:, :, 0] * scale
    row = vh[:, 0, :] * scale
    # A deterministic sign: each row profile's largest entry is positive.
    sign = torch.sign(row.gather(1, row.abs().argmax(dim=1, keepdim=True)))
    sign[sign == 0] = 1
    col, row = col * sign, row * sign
    total = matrices.square().sum()
    residual = s[:, 1:].square().sum()
    error = float((residual / total).sqrt()) if total > 0 else 0.0
    return SeparableFactors(col.reshape(c_out, c_in, k_h, 1).to(weight.dtype),
                            row.reshape(c_out, 1, 1, k_w).to(weight.dtype), error)


def _check_factors(weight_col: torch.Tensor, weight_row: torch.Tensor) -> None:
    if weight_col.shape[3] != 1:
        raise ValueError(f"{OP}: weight_col must have shape (C_out, C_in/groups, kH, 1), got "
                         f"{tuple(weight_col.shape)}")
    c_out = weight_col.shape[0]
    if weight_row.shape[0] != c_out or weight_row.shape[1:3] != (1, 1):
        raise ValueError(f"{OP}: weight_row must have shape ({c_out}, 1, 1, kW) (one row filter "
                         f"per output channel of weight_col), got {tuple(weight_row.shape)}")


def separable_conv2d(input: torch.Tensor, weight_col: torch.Tensor, weight_row: torch.Tensor,
                     bias: torch.Tensor | None = None, stride: IntArg = 1,
                     padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1, *,
                     activation: ActivationArg = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d with the filter W[o, i, h, w] = weight_col[o, i, h, 0] * weight_row[o, 0, 0, w].

    Arguments as `conv2d` (stride, padding including "same", dilation and groups are those of
    the equivalent kH x kW convolution); the column pass takes the H components, the row pass
    the W components, the bias and the fused epilogue. Differentiable.
    """
    epilogue = parse_activation(activation)
    check_tensor(OP, "input", input, (3, 4))
    check_tensor(OP, "weight_col", weight_col, (4,))
    check_tensor(OP, "weight_row", weight_row, (4,))
    check_same_device_dtype(OP, input, weight_col=weight_col, weight_row=weight_row, bias=bias,
                            residual=residual)
    _check_factors(weight_col, weight_row)
    unbatched = input.dim() == 3
    shape = (1, *input.shape) if unbatched else tuple(input.shape)
    c_out, c_g, k_h, _ = weight_col.shape
    # Validates the equivalent convolution (channels, groups, kernel against padded input).
    geometry = conv_geometry(shape, (c_out, c_g, k_h, weight_row.shape[3]), stride, padding,
                             dilation, groups, 2)
    check_bias(OP, bias, c_out)
    check_residual(OP, residual, geometry.output_shape[1:] if unbatched
                   else geometry.output_shape)
    x = input.unsqueeze(0) if unbatched else input
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual
    out = OPERATOR(x, weight_col, weight_row, bias, res, list(geometry.stride),
                   list(geometry.padding), list(geometry.dilation), groups, padding == "same",
                   epilogue.name, epilogue.alpha)
    return out.squeeze(0) if unbatched else out


def _separable(input, weight_col, weight_row, bias, residual, stride, padding, dilation, groups,
               pad_same, activation, negative_slope):
    """The column pass, then the row pass with the bias and the epilogue: two conv2d ops."""
    pad_col, pad_row = ("same", "same") if pad_same else ((padding[0], 0), (0, padding[1]))
    columns = conv2d(input, weight_col, None, (stride[0], 1), pad_col, (dilation[0], 1), groups)
    epilogue = epilogue_from(activation, negative_slope)
    return conv2d(columns, weight_row, bias, (1, stride[1]), pad_row, (1, dilation[1]),
                  weight_col.shape[0], activation=epilogue.argument, residual=residual)


OPERATOR = library.composite_op(
    OP, "(Tensor input, Tensor weight_col, Tensor weight_row, Tensor? bias, Tensor? residual, "
        "int[] stride, int[] padding, int[] dilation, int groups, bool pad_same, "
        "str? activation, float negative_slope) -> Tensor", _separable)
