"""deform_conv2d: torchvision.ops.deform_conv2d's semantics on foveal's Triton kernels + autograd.

Pipeline, as for conv2d: parse the activation -> check tensors -> geometry (the convolution's,
then the offset and mask shapes against it) -> bias/residual checks -> backend: PyTorch
reference (torchvision) | autograd Function | direct launch when no gradient is needed.
The kernels are in `deform_kernels`.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backend import BackendUnavailable, backend_for
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .deform_gather import input_grad_deterministic
from .deform_kernels import data_grad, launch_forward, weight_grad
from .elementwise import activation_backward, channel_sum
from .epilogue import Activation, ActivationArg, Epilogue, apply_epilogue, parse_activation
from .geometry import ConvGeometry, conv_geometry, expand
from .tensors import empty_like_layout

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


def _launch_forward(x, offset, mask, weight, bias, residual, geometry: ConvGeometry,
                    offset_groups: int, epilogue: Epilogue, keep_preactivation: bool):
    out = empty_like_layout(geometry.output_shape, x)
    preact = torch.empty_like(out) if keep_preactivation else None
    launch_forward(x, offset, mask, weight, out, geometry, offset_groups, bias=bias,
                   residual=residual, preact=preact, epilogue=epilogue)
    return out, preact


class _DeformConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offset, weight, bias, mask, residual, geometry: ConvGeometry,
                offset_groups: int, epilogue: Epilogue):
        keep_preact = epilogue.grad_needs_preactivation
        out, preact = _launch_forward(x, offset, mask, weight, bias, residual, geometry,
                                      offset_groups, epilogue, keep_preact)
        ctx.geometry, ctx.offset_groups, ctx.epilogue = geometry, offset_groups, epilogue
        ctx.save_for_backward(x, offset, weight, mask, preact if keep_preact else out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, offset, weight, mask, saved = ctx.saved_tensors
        geometry, offset_groups, epilogue = ctx.geometry, ctx.offset_groups, ctx.epilogue
        dz = grad_out
        if epilogue.activation is not Activation.NONE:
            dz = activation_backward(grad_out, saved, epilogue)
        need_x, need_offset, need_w, need_b, need_mask, need_r = ctx.needs_input_grad[:6]
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
        return dx, doffset, dw, db, dmask, dz if need_r else None, None, None, None


def _torch_reference(x, offset, weight, stride, padding, dilation, mask):
    try:
        from torchvision.ops import deform_conv2d as torchvision_deform_conv2d
    except ImportError as error:
        raise BackendUnavailable(f"{OP}: the 'torch' backend runs torchvision.ops.deform_conv2d, "
                                 "and torchvision is not installed (pip install torchvision)"
                                 ) from error
    return torchvision_deform_conv2d(x, offset, weight, None, stride, padding, dilation, mask)


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
    geometry, offset_groups = deform_geometry(
        tuple(input.shape), tuple(offset.shape), tuple(weight.shape),
        None if mask is None else tuple(mask.shape), stride, padding, dilation)
    check_bias(OP, bias, geometry.out_channels)
    check_residual(OP, residual, geometry.output_shape)

    if backend_for(input.device) == "torch":
        out = _torch_reference(input, offset, weight, geometry.stride, geometry.padding,
                               geometry.dilation, mask)
        return apply_epilogue(out, bias, residual, epilogue)
    if input.numel() == 0 or weight.numel() == 0 or 0 in geometry.output_shape:
        return apply_epilogue(empty_like_layout(geometry.output_shape, input).zero_(), bias,
                              residual, epilogue)
    tensors = (input, offset, weight, bias, mask, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _DeformConvFunction.apply(*tensors, geometry, offset_groups, epilogue)
    out, _ = _launch_forward(input, offset, mask, weight, bias, residual, geometry,
                             offset_groups, epilogue, False)
    return out
