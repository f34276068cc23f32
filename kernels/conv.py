"""conv1d / conv2d / conv3d: PyTorch's semantics on foveal's implicit-GEMM kernel, with autograd.

Forward: `igemm_kernel` with the fused epilogue. Backward: the input gradient is a transposed
convolution (the same kernel in its transposed mode), the weight gradient `wgrad_kernel`, the
bias gradient a channel sum and the residual's gradient is dL/dz itself.

Two shapes take a specialised kernel with the same contract, in both directions:
- depthwise (groups == C_in, any channel multiplier): the direct FMA kernel of depthwise.py
  (forward, its adjoint for dL/dx, and its own weight gradient);
- pointwise (1x1, no padding, groups == 1): the plain GEMM of pointwise.py (forward, and dL/dx
  as the GEMM with the transposed weight when the stride is 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import backend_for
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .depthwise import depthwise_weight_grad, launch_depthwise
from .elementwise import activation_backward, channel_sum
from .epilogue import Activation, ActivationArg, Epilogue, apply_epilogue, parse_activation
from .geometry import ConvGeometry, PaddingArg, conv_geometry
from .igemm import launch_igemm
from .pointwise import launch_pointwise
from .tensors import as_5d, empty_like_layout, pad_front
from .wgrad import weight_grad

IntArg = int | tuple[int, ...]


def is_depthwise(geometry: ConvGeometry) -> bool:
    """groups == C_in: every output channel reads one input channel (depthwise.py's kernel)."""
    return not geometry.transposed and geometry.in_per_group == 1


def is_pointwise(geometry: ConvGeometry) -> bool:
    """A dense 1x1 convolution without padding: a plain GEMM (pointwise.py's kernel)."""
    return (not geometry.transposed and geometry.groups == 1 and geometry.taps == 1
            and not any(geometry.padding))


def _launch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor | None, geometry: ConvGeometry, epilogue: Epilogue,
                    keep_preactivation: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = empty_like_layout(geometry.output_shape, x)
    preact = torch.empty_like(out) if keep_preactivation else None
    args = (as_5d(x), as_5d(weight), as_5d(out))
    common = dict(stride=pad_front(geometry.stride, 1), bias=bias,
                  residual=None if residual is None else as_5d(residual),
                  preact=None if preact is None else as_5d(preact), epilogue=epilogue)
    if is_depthwise(geometry):
        launch_depthwise(*args, groups=geometry.groups, padding=pad_front(geometry.padding, 0),
                         dilation=pad_front(geometry.dilation, 1), transposed=False, **common)
    elif is_pointwise(geometry):
        launch_pointwise(*args, **common)
    else:
        launch_igemm(*args, groups=geometry.groups, padding=pad_front(geometry.padding, 0),
                     dilation=pad_front(geometry.dilation, 1), transposed=False, **common)
    return out, preact


def conv_input_grad(dz: torch.Tensor, weight: torch.Tensor, like: torch.Tensor,
                    geometry: ConvGeometry) -> torch.Tensor:
    """dL/dx of a convolution: the transposed convolution of dL/dz, in x's layout."""
    dx = empty_like_layout(tuple(like.shape), like)
    dz5, w5, dx5 = as_5d(dz), as_5d(weight), as_5d(dx)
    if is_pointwise(geometry) and all(s == 1 for s in geometry.stride):
        launch_pointwise(dz5, w5.transpose(0, 1), dx5, stride=(1, 1, 1))
        return dx
    launch = launch_depthwise if is_depthwise(geometry) else launch_igemm
    launch(dz5, w5, dx5, groups=geometry.groups, stride=pad_front(geometry.stride, 1),
           padding=pad_front(geometry.padding, 0), dilation=pad_front(geometry.dilation, 1),
           transposed=True)
    return dx


def conv_weight_grad(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     geometry: ConvGeometry) -> torch.Tensor:
    """dL/dW of a convolution, in the weight's shape and dtype."""
    kwargs = dict(stride=pad_front(geometry.stride, 1), padding=pad_front(geometry.padding, 0),
                  dilation=pad_front(geometry.dilation, 1), dtype=weight.dtype)
    if is_depthwise(geometry):
        grad = depthwise_weight_grad(as_5d(dz), as_5d(x), as_5d(weight).shape, **kwargs)
    else:
        grad = weight_grad(as_5d(dz), as_5d(x), as_5d(weight).shape, groups=geometry.groups,
                           **kwargs)
    return grad.reshape(weight.shape)


class _ConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, geometry: ConvGeometry, epilogue: Epilogue):
        keep_preact = epilogue.grad_needs_preactivation
        out, preact = _launch_forward(x, weight, bias, residual, geometry, epilogue, keep_preact)
        ctx.geometry, ctx.epilogue = geometry, epilogue
        ctx.save_for_backward(x, weight, preact if keep_preact else out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, saved = ctx.saved_tensors
        geometry, epilogue = ctx.geometry, ctx.epilogue
        dz = grad_out
        if epilogue.activation is not Activation.NONE:
            dz = activation_backward(grad_out, saved, epilogue)
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        dx = conv_input_grad(dz, weight, x, geometry) if need_x else None
        dw = conv_weight_grad(dz, x, weight, geometry) if need_w else None
        db = channel_sum(dz, weight.dtype) if need_b else None
        return dx, dw, db, dz if need_r else None, None, None


_TORCH_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _convnd(op: str, spatial_dims: int, input: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None, stride: IntArg, padding: PaddingArg, dilation: IntArg,
            groups: int, activation: ActivationArg, residual: torch.Tensor | None) -> torch.Tensor:
    epilogue = parse_activation(activation)
    check_tensor(op, "input", input, (spatial_dims + 1, spatial_dims + 2))
    check_tensor(op, "weight", weight, (spatial_dims + 2,))
    check_same_device_dtype(op, input, weight=weight, bias=bias, residual=residual)
    unbatched = input.dim() == spatial_dims + 1
    x = input.unsqueeze(0) if unbatched else input
    geometry = conv_geometry(tuple(x.shape), tuple(weight.shape), stride, padding, dilation,
                             groups, spatial_dims)
    out_shape = geometry.output_shape[1:] if unbatched else geometry.output_shape
    check_bias(op, bias, geometry.out_channels)
    check_residual(op, residual, out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual

    if backend_for(x.device) == "torch":
        out = _TORCH_CONVS[spatial_dims](x, weight, bias, stride, padding, dilation, groups)
        out = apply_epilogue(out, None, res, epilogue)
    elif x.numel() == 0 or weight.numel() == 0 or 0 in geometry.output_shape:
        out = apply_epilogue(empty_like_layout(geometry.output_shape, x).zero_(), bias, res,
                             epilogue)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                         for t in (x, weight, bias, res)):
        out = _ConvFunction.apply(x, weight, bias, res, geometry, epilogue)
    else:
        out, _ = _launch_forward(x, weight, bias, res, geometry, epilogue, False)
    return out.squeeze(0) if unbatched else out


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntArg = 1, padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1, *,
           activation: ActivationArg = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv1d with a fused epilogue: activation(conv + bias + residual)."""
    return _convnd("conv1d", 1, input, weight, bias, stride, padding, dilation, groups,
                   activation, residual)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntArg = 1, padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1, *,
           activation: ActivationArg = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv2d with a fused epilogue: activation(conv + bias + residual)."""
    return _convnd("conv2d", 2, input, weight, bias, stride, padding, dilation, groups,
                   activation, residual)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntArg = 1, padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1, *,
           activation: ActivationArg = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv3d with a fused epilogue: activation(conv + bias + residual)."""
    return _convnd("conv3d", 3, input, weight, bias, stride, padding, dilation, groups,
                   activation, residual)
