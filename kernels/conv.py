"""conv1d/2d/3d and conv_transpose1d/2d/3d: PyTorch's semantics on one implicit-GEMM kernel.

A convolution and a transposed convolution are each other's input gradient, so both run on
`igemm_kernel` (its direct and transposed modes), and each of the six is an operator
(`torch.ops.foveal.conv2d`, ..., see fused.py) with its backward operator:
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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import fused
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .depthwise import depthwise_weight_grad, launch_depthwise
from .elementwise import channel_sum
from .epilogue import ActivationArg, Epilogue, parse_activation
from .fused import CONV_TENSORS, FusedOp, dense, like_layout
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


def window(geometry: ConvGeometry) -> dict[str, tuple[int, int, int]]:
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
                 **window(geometry), **epilogue_args)
    return out


def launch_conv(out: torch.Tensor, preact: torch.Tensor | None, x: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                geometry: ConvGeometry, epilogue: Epilogue, inference: bool = False) -> None:
    """Write the op's output (and its pre-activation if given) with the kernel that fits its shape.

    `inference` (no backward will follow) lets the weight's packed GEMM layout be cached.
    """
    epilogue_args = dict(bias=bias, residual=None if residual is None else as_5d(residual),
                         preact=None if preact is None else as_5d(preact), epilogue=epilogue)
    if is_depthwise(geometry):
        launch_depthwise(as_5d(x), as_5d(weight), as_5d(out), groups=geometry.groups,
                         transposed=False, **window(geometry), **epilogue_args)
    elif is_pointwise(geometry):
        launch_pointwise(as_5d(x), as_5d(weight), as_5d(out),
                         stride=pad_front(geometry.stride, 1), **epilogue_args)
    else:
        _launch(x, weight, out, geometry, geometry.transposed, cache_weight=inference,
                **epilogue_args)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 geometry: ConvGeometry, epilogue: Epilogue, keep_preactivation: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op's output in x's layout (and its pre-activation if asked)."""
    out = empty_like_layout(geometry.output_shape, x)
    preact = torch.empty_like(out) if keep_preactivation else None
    launch_conv(out, preact, x, weight, bias, None, geometry, epilogue)
    return out, preact


def conv_input_grad(dz: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                    geometry: ConvGeometry) -> torch.Tensor:
    """dL/dx: the op of the opposite direction applied to dL/dz, in x's layout."""
    dx = empty_like_layout(tuple(x.shape), x)
    if is_pointwise(geometry) and all(s == 1 for s in geometry.stride):
        launch_pointwise(as_5d(dz), as_5d(weight).transpose(0, 1), as_5d(dx), stride=(1, 1, 1))
    elif is_depthwise(geometry):
        launch_depthwise(as_5d(dz), as_5d(weight), as_5d(dx), groups=geometry.groups,
                         transposed=True, **window(geometry))
    else:
        _launch(dz, weight, dx, geometry, not geometry.transposed)
    return dx


def conv_weight_grad(dz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     geometry: ConvGeometry) -> torch.Tensor:
    """dL/dW in the weight's shape and dtype."""
    if is_depthwise(geometry):
        grad = depthwise_weight_grad(as_5d(dz), as_5d(x), as_5d(weight).shape,
                                     dtype=weight.dtype, **window(geometry))
        return grad.reshape(weight.shape)
    # A transposed op's input plays the part of a convolution's output gradient.
    dy_role, x_role = (x, dz) if geometry.transposed else (dz, x)
    grad = weight_grad(as_5d(dy_role), as_5d(x_role), as_5d(weight).shape,
                       groups=geometry.groups, dtype=weight.dtype, **window(geometry))
    return grad.reshape(weight.shape)


def _conv_grads(dz: torch.Tensor, needs: list[bool], x: torch.Tensor, weight: torch.Tensor,
                geometry: ConvGeometry) -> list[torch.Tensor | None]:
    """dL/dx, dL/dW and dL/dbias (as `needs` asks) from dz = dL/d(pre-activation)."""
    need_x, need_w, need_b, _ = needs
    return [conv_input_grad(dz, weight, x, geometry) if need_x else None,
            conv_weight_grad(dz, x, weight, geometry) if need_w else None,
            channel_sum(dz, weight.dtype) if need_b else None, None]


@dataclass(frozen=True)
class _ConvKind:
    """A convolution op's arguments: the public function's, and its operator's options."""

    spatial_dims: int
    transposed: bool

    @property
    def name(self) -> str:
        return f"conv{'_transpose' if self.transposed else ''}{self.spatial_dims}d"

    @property
    def options(self) -> tuple[str, ...]:
        if self.transposed:
            return ("int[] stride", "int[] padding", "int[] output_padding", "int groups",
                    "int[] dilation")
        return "int[] stride", "int[] padding", "int[] dilation", "int groups", "bool pad_same"

    def geometry(self, input_shape, weight_shape, stride, padding, third, groups,
                 fourth) -> ConvGeometry:
        """The geometry of a batched call, from the public arguments or the operator's options.

        (third, fourth) are (dilation, padding "same" or not) for a convolution and
        (output_padding, dilation) for a transposed one, in their arguments' order.
        """
        if self.transposed:
            return transposed_conv_geometry(input_shape, weight_shape, stride, padding, third,
                                            groups, fourth, self.spatial_dims)
        return conv_geometry(input_shape, weight_shape, stride, "same" if fourth else padding,
                             third, groups, self.spatial_dims)

    def operator_options(self, geometry: ConvGeometry, padding: PaddingArg) -> tuple:
        """The operator's options for a call with this geometry and `padding` argument."""
        stride, dilation = list(geometry.stride), list(geometry.dilation)
        if self.transposed:
            return (stride, list(geometry.padding), list(geometry.output_padding),
                    geometry.groups, dilation)
        return stride, list(geometry.padding), dilation, geometry.groups, padding == "same"

    def torch_args(self, stride, padding, third, groups, fourth) -> tuple:
        """The operator's options as PyTorch's function takes them (the torch backend)."""
        if self.transposed:
            return stride, padding, third, groups, fourth
        return stride, "same" if fourth else padding, third, groups

    def fused_op(self) -> FusedOp:
        torch_op = _TORCH_OPS[self.spatial_dims, self.transposed]

        def geometry(x, weight, *options) -> ConvGeometry:
            return self.geometry(tuple(x.shape), tuple(weight.shape), *options)

        def output(x, weight, bias, residual, *options):
            return empty_like_layout(geometry(x, weight, *options).output_shape, x)

        def launch(out, preact, x, weight, bias, residual, *rest):
            *options, epilogue, inference = rest
            launch_conv(out, preact, x, weight, bias, residual, geometry(x, weight, *options),
                        epilogue, inference)

        def reference(x, weight, bias, residual, *options):
            out = torch_op(x, weight, bias, *self.torch_args(*options))
            return out if residual is None else out + residual

        def backward(dz, needs, x, weight, bias, residual, *options):
            return _conv_grads(dz, needs, x, weight, geometry(x, weight, *options))

        return FusedOp(self.name, CONV_TENSORS, self.options, output, launch, reference, backward,
                       grads=(like_layout, dense, dense, like_layout))


_TORCH_OPS = {
    (1, False): F.conv1d, (2, False): F.conv2d, (3, False): F.conv3d,
    (1, True): F.conv_transpose1d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d,
}
_KINDS = {(dims, transposed): _ConvKind(dims, transposed) for dims, transposed in _TORCH_OPS}
OPERATORS = {kind: fused.register(kind.fused_op())[0] for kind in _KINDS.values()}


def convolution_kind(spatial_dims: int) -> _ConvKind:
    """A (not transposed) convolution's geometry and operator options, for ops built on it."""
    return _KINDS[spatial_dims, False]


def _run(op: str, kind: _ConvKind, input: torch.Tensor, weight: torch.Tensor,
         bias: torch.Tensor | None, activation: ActivationArg, residual: torch.Tensor | None,
         arguments: tuple) -> torch.Tensor:
    """Shared pipeline: validate, then call the operator on a batched input."""
    spatial_dims = kind.spatial_dims
    epilogue = parse_activation(activation)
    check_tensor(op, "input", input, (spatial_dims + 1, spatial_dims + 2))
    check_tensor(op, "weight", weight, (spatial_dims + 2,))
    check_same_device_dtype(op, input, weight=weight, bias=bias, residual=residual)
    unbatched = input.dim() == spatial_dims + 1
    x = input.unsqueeze(0) if unbatched else input
    geometry = kind.geometry(tuple(x.shape), tuple(weight.shape), *arguments)
    out_shape = geometry.output_shape[1:] if unbatched else geometry.output_shape
    check_bias(op, bias, geometry.out_channels)
    check_residual(op, residual, out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual
    out = fused.call(OPERATORS[kind], (x, weight, bias, res),
                     kind.operator_options(geometry, arguments[1]), epilogue)
    return out.squeeze(0) if unbatched else out


def _convnd(op: str, spatial_dims: int, input, weight, bias, stride, padding, dilation, groups,
            activation, residual) -> torch.Tensor:
    return _run(op, _KINDS[spatial_dims, False], input, weight, bias, activation, residual,
                (stride, padding, dilation, groups, False))


def _conv_transposend(op: str, spatial_dims: int, input, weight, bias, stride, padding,
                      output_padding, groups, dilation, activation, residual) -> torch.Tensor:
    return _run(op, _KINDS[spatial_dims, True], input, weight, bias, activation, residual,
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
