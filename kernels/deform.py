"""deform_conv2d: torchvision.ops.deform_conv2d's semantics on foveal's Triton kernels + autograd.

Pipeline, as for conv2d: parse the activation -> check tensors -> geometry (the convolution's,
then the offset and mask shapes against it) -> bias/residual checks -> the operator
`torch.ops.foveal.deform_conv2d` (fused.py): foveal's kernels, or torchvision's on the torch
backend. The kernels are in `deform_kernels`.
"""

from __future__ import annotations

import torch
from torch import empty_like

from . import fused
from .backend import BackendUnavailable
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .deform_gather import input_grad_deterministic
from .deform_kernels import data_grad, launch_forward, weight_grad
from .elementwise import channel_sum
from .epilogue import ActivationArg, parse_activation
from .fused import FusedOp, dense, like_layout
from .geometry import ConvGeometry, conv_geometry, expand
from .tensors import empty_like_layout, unit_channel_stride

OP = "deform_conv2d"
IntPair = int | tuple[int, int]


def deform_geometry(input_shape: tuple[int, ...], offset_shape: tuple[int, ...],
                    weight_shape: tuple[int, ...], mask_shape: tuple[int, ...] | None,
                    stride: IntPair, padding: IntPair, dilation: IntPair
                    ) -> tuple[ConvGeometry, int]:
    """Validate a deformable convolution's shapes; return its geometry and offset groups.

    Weight groups are C_in / weight.shape[1] and offset groups offset.shape[1] / (2*kH*kW), as
    torchvision infers them.
    """
    in_channels = input_shape[1]
    per_group = weight_shape[1]
    if per_group < 1 or in_channels % per_group:
        raise ValueError(f"{OP}: weight.shape[1] ({per_group}, input channels per group) must "
                         f"divide the input channels ({in_channels}); groups = C_in / "
                         "weight.shape[1]")
    # torchvision takes an int or a pair for padding ("same"/"valid" are conv2d's extensions).
    expand(padding, 2, "padding", minimum=0)
    geometry = conv_geometry(input_shape, weight_shape, stride, padding, dilation,
                             in_channels // per_group, 2)
    kh, kw = geometry.kernel_size
    taps = geometry.taps
    offset_channels = offset_shape[1]
    if offset_channels < 1 or offset_channels % (2 * taps):
        raise ValueError(f"{OP}: offset.shape[1] must be 2 * offset_groups * kH * kW, a positive "
                         f"multiple of {2 * taps} for a {kh}x{kw} kernel (a (dy, dx) pair per "
                         f"tap), got {offset_channels}")
    offset_groups = offset_channels // (2 * taps)
    if in_channels % offset_groups:
        raise ValueError(f"{OP}: input channels ({in_channels}) must be divisible by the offset "
                         f"groups ({offset_groups} = offset.shape[1] / (2 * {kh} * {kw}))")
    _check_per_position("offset", offset_shape, geometry)
    if mask_shape is not None:
        if mask_shape[1] != offset_groups * taps:
            raise ValueError(f"{OP}: mask.shape[1] must be offset_groups * kH * kW = "
                             f"{offset_groups} * {kh} * {kw} = {offset_groups * taps} (offset "
                             f"has {offset_channels} channels), got {mask_shape[1]}")
        _check_per_position("mask", mask_shape, geometry)
    return geometry, offset_groups


def _check_per_position(name: str, shape: tuple[int, ...], geometry: ConvGeometry) -> None:
    """offset and mask hold one entry per output position of every image in the batch."""
    if shape[0] != geometry.batch:
        raise ValueError(f"{OP}: {name}.shape[0] ({shape[0]}) must equal the batch size "
                         f"({geometry.batch})")
    if tuple(shape[2:]) != geometry.output_size:
        raise ValueError(
            f"{OP}: {name}'s spatial size {tuple(shape[2:])} must equal the output size "
            f"{geometry.output_size} (input {geometry.input_size}, kernel {geometry.kernel_size}, "
            f"stride {geometry.stride}, padding {geometry.padding}, dilation "
            f"{geometry.dilation})")


def _geometry(input, offset, weight, mask, stride, padding, dilation
              ) -> tuple[ConvGeometry, int]:
    return deform_geometry(tuple(input.shape), tuple(offset.shape), tuple(weight.shape),
                           None if mask is None else tuple(mask.shape), stride, padding,
                           dilation)


def _output(input, offset, weight, bias, mask, residual, *options) -> torch.Tensor:
    geometry, _ = _geometry(input, offset, weight, mask, *options)
    return empty_like_layout(geometry.output_shape, input)


def _launch(out, preact, input, offset, weight, bias, mask, residual, *rest) -> None:
    *options, epilogue, _ = rest
    geometry, offset_groups = _geometry(input, offset, weight, mask, *options)
    # Sampling reads a pixel's channels as one vector: NCHW operands spilled every 32-channel
    # tile (foveal compilecheck, dcnv2.res4.nchw), so they are read from a channels-last copy.
    launch_forward(unit_channel_stride(input), offset, mask, weight, out, geometry, offset_groups,
                   bias=bias, residual=residual, preact=preact, epilogue=epilogue)


def _grads(dz, needs, x, offset, weight, bias, mask, residual, *options):
    """dL/d(input, offset, weight, bias, mask) from dz = dL/d(pre-activation)."""
    geometry, offset_groups = _geometry(x, offset, weight, mask, *options)
    need_x, need_offset, need_w, need_b, need_mask, _ = needs
    given = x  # dL/dx takes its layout, whatever layout the kernels read
    x, dz = unit_channel_stride(x), unit_channel_stride(dz)
    # The input gradient's atomic scatter is fast but its rounding order varies between
    # runs; deterministic mode gathers each element in a fixed order instead.
    gather_input = need_x and torch.are_deterministic_algorithms_enabled()
    dx = doffset = dmask = None
    if (need_x and not gather_input) or need_offset or need_mask:
        dx, doffset, dmask = data_grad(dz, x, offset, mask, weight, geometry, offset_groups,
                                       need_input=need_x and not gather_input,
                                       need_offset=need_offset, need_mask=need_mask)
    if gather_input:
        dx = input_grad_deterministic(dz, x, offset, mask, weight, geometry, offset_groups)
    dw = (weight_grad(dz, x, offset, mask, geometry, offset_groups, weight.dtype)
          if need_w else None)
    db = channel_sum(dz, weight.dtype) if need_b else None
    if dx is not None and dx.stride() != given.stride():
        dx = like_layout(given).copy_(dx)
    return [dx, doffset, dw, db, dmask, None]


def _torchvision():
    try:
        import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError as error:
        raise BackendUnavailable(f"{OP}: the 'torch' backend runs torchvision.ops.deform_conv2d, "
                                 "and torchvision is not installed (pip install torchvision)"
                                 ) from error
    return torch.ops.torchvision


def _reference(x, offset, weight, bias, mask, residual, stride, padding, dilation):
    """The pre-activation with torchvision's deform_conv2d (the torch backend)."""
    out = _torchvision().deform_conv2d(x, weight, offset, *_torchvision_arguments(
        x, offset, weight, bias, mask, stride, padding, dilation))
    return out if residual is None else out + residual


def _reference_grads(dz, needs, x, offset, weight, bias, mask, residual, *options):
    """torchvision's own backward of `_reference`: torch.func cannot differentiate its op."""
    mask_, bias_, *arguments = _torchvision_arguments(x, offset, weight, bias, mask, *options)
    dx, dw, doffset, dmask, db = _torchvision()._deform_conv2d_backward(
        dz, x, weight, offset, mask_, bias_, *arguments)
    return [dx, doffset, dw, db if bias is not None else None,
            dmask if mask is not None else None, None]


def _torchvision_arguments(x, offset, weight, bias, mask, stride, padding, dilation) -> tuple:
    """torchvision's operator's arguments after (input, weight, offset): mask, bias, ints."""
    geometry, offset_groups = _geometry(x, offset, weight, mask, stride, padding, dilation)
    mask_ = mask if mask is not None else x.new_zeros(x.shape[0], 1)
    bias_ = bias if bias is not None else x.new_zeros(weight.shape[0])
    return (mask_, bias_, *geometry.stride, *geometry.padding, *geometry.dilation,
            geometry.groups, offset_groups, mask is not None)


OPERATOR, _ = fused.register(FusedOp(
    OP, ("Tensor input", "Tensor offset", "Tensor weight", "Tensor? bias", "Tensor? mask",
         "Tensor? residual"), ("int[] stride", "int[] padding", "int[] dilation"),
    _output, _launch, _reference, _grads, (like_layout, empty_like, dense, dense, empty_like,
                                           like_layout), _reference_grads))


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride: IntPair = 1, padding: IntPair = 0,
                  dilation: IntPair = 1, mask: torch.Tensor | None = None, *,
                  activation: ActivationArg = None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision.ops.deform_conv2d with a fused epilogue: activation(dconv + bias + residual).

    offset: (N, 2 * G * kH * kW, H_out, W_out), a (dy, dx) pair per kernel tap (row-major) per
    offset group G; mask: (N, G * kH * kW, H_out, W_out) modulation (DCNv2) or None (DCNv1).
    Weight groups are C_in / weight.shape[1].
    """
    epilogue = parse_activation(activation)
    check_tensor(OP, "input", input, (4,))
    check_tensor(OP, "offset", offset, (4,))
    check_tensor(OP, "weight", weight, (4,))
    if mask is not None:
        check_tensor(OP, "mask", mask, (4,))
    check_same_device_dtype(OP, input, offset=offset, weight=weight, bias=bias, mask=mask,
                            residual=residual)
    geometry, _ = _geometry(input, offset, weight, mask, stride, padding, dilation)
    check_bias(OP, bias, geometry.out_channels)
    check_residual(OP, residual, geometry.output_shape)
    return fused.call(OPERATOR, (input, offset, weight, bias, mask, residual),
                      (list(geometry.stride), list(geometry.padding), list(geometry.dilation)),
                      epilogue)
