"""conv1d/2d/3d and conv_transpose1d/2d/3d: PyTorch's semantics on one implicit-GEMM kernel.

A convolution and a transposed convolution are each other's input gradient, so both run on
`igemm_kernel` (its direct and transposed modes) and share one autograd Function:
- forward: the op's own mode, with the fused epilogue;
- dL/dinput: the other mode applied to dL/dz with the same weight;
- dL/dweight: `wgrad_kernel`, with the roles of input and dL/dz swapped for a transposed op;
- dL/dbias: a channel sum of dL/dz; dL/dresidual: dL/dz itself.

Two convolution shapes take a specialised kernel with the same contract, in both directions:
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
from .geometry import ConvGeometry, PaddingArg, conv_geometry, transposed_conv_geometry
from .igemm import launch_igemm
from .pointwise import launch_pointwise
from .tensors import as_5d, empty_like_layout, pad_front
from .weights import gemm_weight
from .wgrad import weight_grad

IntArg = int | tuple[int, ...]


def is_depthwise(geometry: ConvGeometry) -> bool:
    """groups == C_in: every output channel reads one input channel (depthwise.py's kernel)."""
    return not geometry.transposed and geometry.in_per_group == 1


def is_pointwise(geometry: ConvGeometry) -> bool:
    """A dense 1x1 convolution without padding: a plain GEMM (pointwise.py's kernel)."""
    return (not geometry.transposed and geometry.groups == 1 and geometry.taps == 1
            and not any(geometry.padding))


def _window(geometry: ConvGeometry) -> dict[str, tuple[int, int, int]]:
    """The geometry's stride, padding and dilation over the 5-D view's three axes."""
    return dict(stride=pad_front(geometry.stride, 1), padding=pad_front(geometry.padding, 0),
                dilation=pad_front(geometry.dilation, 1))


def _launch(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, geometry: ConvGeometry,
            transposed: bool, cache_weight: bool = False, **epilogue_args) -> torch.Tensor:
    """`igemm_kernel` in the given mode with the geometry's stride, padding and dilation.

    The kernel's output channels index weight dim 1 in transposed mode, dim 0 otherwise.
    """
    w6 = gemm_weight(weight, geometry.groups, 1 if transposed else 0, cache=cache_weight)
    launch_igemm(as_5d(x), w6, as_5d(out), groups=geometry.groups, transposed=transposed,
                 **_window(geometry), **epilogue_args)
    return out


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 residual: torch.Tensor | None, geometry: ConvGeometry, epilogue: Epilogue,
                 keep_preactivation: bool, inference: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's output (and its pre-activation if asked), on the kernel that fits its shape.

    `inference` (no autograd) lets the weight's packed GEMM layout be cached.
    """
    out = empty_like_layout(geometry.output_shape, x)
    preact = torch.empty_like(out) if keep_preactivation else None
    epilogue_args = dict(bias=bias, residual=None if residual is None else as_5d(residual),
                         preact=None if preact is None else as_5d(preact), epilogue=epilogue)
    if is_depthwise(geometry):
        launch_depthwise(as_5d(x), as_5d(weight), as_5d(out), groups=geometry.groups,
                         transposed=False, **_window(geometry), **epilogue_args)
    elif is_pointwise(geometry):
        launch_pointwise(as_5d(x), as_5d(weight), as_5d(out),
                         stride=pad_front(geometry.stride, 1), **epilogue_args)
    else:
        _launch(x, weight, out, geometry, geometry.transposed, cache_weight=inference,
                **epilogue_args)
    return out, preact


def conv_input_grad(dz: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                    geometry: ConvGeometry) -> torch.Tensor:
    """dL/dx: the op of the opposite direction applied to dL/dz, in x's layout."""
    dx = empty_like_layout(tuple(x.shape), x)
    if is_pointwise(geometry) and all(s == 1 for s in geometry.stride):
        launch_pointwise(as_5d(dz), as_5d(weight).transpose(0, 1), as_5d(dx), stride=(1, 1, 1))
    elif is_depthwise(geometry):
        launch_depthwise(as_5d(dz), as_5d(weight), as_5d(dx), groups=geometry.groups,
                         transposed=True, **_window(geometry))
    else:
        _launch(dz, weight, dx, geometry, not geometry.transposed)
    return dx


def conv_weight_grad(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     geometry: ConvGeometry) -> torch.Tensor:
    """dL/dW in the weight's shape and dtype."""
    if is_depthwise(geometry):
        grad = depthwise_weight_grad(as_5d(dz), as_5d(x), as_5d(weight).shape,
                                     dtype=weight.dtype, **_window(geometry))
        return grad.reshape(weight.shape)
    # A transposed op's input plays the part of a convolution's output gradient.
    dy_role, x_role = (x, dz) if geometry.transposed else (dz, x)
    grad = weight_grad(as_5d(dy_role), as_5d(x_role), as_5d(weight).shape,
                       groups=geometry.groups, dtype=weight.dtype, **_window(geometry))
    return grad.reshape(weight.shape)


class _ConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, geometry: ConvGeometry, epilogue: Epilogue):
        keep_preact = epilogue.grad_needs_preactivation
        out, preact = conv_forward(x, weight, bias, residual, geometry, epilogue, keep_preact)
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


_TORCH_OPS = {
    (1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
    (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d,
}


def _run(op: str, spatial_dims: int, input: torch.Tensor, weight: torch.Tensor,
         bias: torch.Tensor | None, activation: ActivationArg, residual: torch.Tensor | None,
         geometry_of, torch_args: tuple) -> torch.Tensor:
    """Shared pipeline: validate, pick the backend, run (with autograd only when needed)."""
    epilogue = parse_activation(activation)
    check_tensor(op, "input", input, (spatial_dims + 1, spatial_dims + 2))
    check_tensor(op, "weight", weight, (spatial_dims + 2,))
    check_same_device_dtype(op, input, weight=weight, bias=bias, residual=residual)
    unbatched = input.dim() == spatial_dims + 1
    x = input.unsqueeze(0) if unbatched else input
    geometry: ConvGeometry = geometry_of(tuple(x.shape), tuple(weight.shape))
    out_shape = geometry.output_shape[1:] if unbatched else geometry.output_shape
    check_bias(op, bias, geometry.out_channels)
    check_residual(op, residual, out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual

    if backend_for(x.device) == "torch":
        torch_op = _TORCH_OPS[spatial_dims, geometry.transposed]
        out = apply_epilogue(torch_op(x, weight, bias, *torch_args), None, res, epilogue)
    elif x.numel() == 0 or weight.numel() == 0:
        out = apply_epilogue(empty_like_layout(geometry.output_shape, x).zero_(), bias, res,
                             epilogue)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                         for t in (x, weight, bias, res)):
        out = _ConvFunction.apply(x, weight, bias, res, geometry, epilogue)
    else:
        out, _ = conv_forward(x, weight, bias, res, geometry, epilogue, False, inference=True)
    return out.squeeze(0) if unbatched else out


def _convnd(op: str, spatial_dims: int, input, weight, bias, stride, padding, dilation, groups,
            activation, residual) -> torch.Tensor:
    return _run(op, spatial_dims, input, weight, bias, activation, residual,
                lambda xs, ws: conv_geometry(xs, ws, stride, padding, dilation, groups,
                                             spatial_dims),
                (stride, padding, dilation, groups))


def _conv_transposend(op: str, spatial_dims: int, input, weight, bias, stride, padding,
                      output_padding, groups, dilation, activation, residual) -> torch.Tensor:
    return _run(op, spatial_dims, input, weight, bias, activation, residual,
                lambda xs, ws: transposed_conv_geometry(xs, ws, stride, padding, output_padding,
                                                        groups, dilation, spatial_dims),
                (stride, padding, output_padding, groups, dilation))


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


def conv_transpose1d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntArg = 1, padding: IntArg = 0, output_padding: IntArg = 0,
                     groups: int = 1, dilation: IntArg = 1, *, activation: ActivationArg = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv_transpose1d with a fused epilogue."""
    return _conv_transposend("conv_transpose1d", 1, input, weight, bias, stride, padding,
                             output_padding, groups, dilation, activation, residual)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntArg = 1, padding: IntArg = 0, output_padding: IntArg = 0,
                     groups: int = 1, dilation: IntArg = 1, *, activation: ActivationArg = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv_transpose2d with a fused epilogue."""
    return _conv_transposend("conv_transpose2d", 2, input, weight, bias, stride, padding,
                             output_padding, groups, dilation, activation, residual)


def conv_transpose3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntArg = 1, padding: IntArg = 0, output_padding: IntArg = 0,
                     groups: int = 1, dilation: IntArg = 1, *, activation: ActivationArg = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.conv_transpose3d with a fused epilogue."""
    return _conv_transposend("conv_transpose3d", 3, input, weight, bias, stride, padding,
                             output_padding, groups, dilation, activation, residual)
