"""depthwise_separable_conv2d: MobileNet's depthwise kxk then pointwise 1x1 in one kernel launch.

    y = activation(pw_weight @ mid_activation(depthwise(x, dw_weight) + dw_bias) + pw_bias
                   + residual)

The forward is one launch of `pointwise.pointwise_kernel` with its depthwise stage: each
[pixels, channels] tile of the intermediate is computed on chip and fed to tl.dot, so the
intermediate (as large as the input, and read back once by the unfused pair) never goes to
device memory. The intermediate is rounded to the input's dtype before the 1x1, as the unfused
pair rounds when it stores it.

BatchNorm after either convolution folds in ahead of time (eval mode):
`dw_weight, dw_bias = fold_batchnorm(dw_weight, dw_bias, bn1)` and likewise for the pointwise
weight; `nn.DepthwiseSeparableConv2d.from_modules` does it for a torch block.

It is the operator `torch.ops.foveal.depthwise_separable_conv2d` (fused.py). Backward
recomputes the intermediate with the depthwise kernel rather than storing
it in the forward, then runs the 1x1's and the depthwise convolution's gradients through
conv.py's backward kernels (pointwise GEMM, depthwise adjoint, weight gradients), all Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fused
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .conv import conv_forward, conv_input_grad, conv_weight_grad
from .elementwise import activation_backward, channel_sum
from .epilogue import (
    Activation,
    ActivationArg,
    Epilogue,
    activate,
    epilogue_from,
    parse_activation,
)
from .fused import FusedOp, dense, like_layout
from .geometry import ConvGeometry, PaddingArg, conv_geometry
from .pointwise import DepthwiseStage, launch_pointwise
from .tensors import as_5d, empty_like_layout, pad_front

OP = "depthwise_separable_conv2d"
IntArg = int | tuple[int, int]


def _parse(name: str, activation: ActivationArg) -> Epilogue:
    try:
        return parse_activation(activation)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{OP}: {name}: {error}") from None


def _check_weights(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor) -> None:
    channels = x.shape[-3]
    if dw_weight.shape[0] != channels or dw_weight.shape[1] != 1:
        raise ValueError(f"{OP}: dw_weight must have shape ({channels}, 1, kH, kW), one filter "
                         f"per input channel (channel multiplier 1), got {tuple(dw_weight.shape)}")
    if pw_weight.shape[1] != channels or tuple(pw_weight.shape[2:]) != (1, 1):
        raise ValueError(f"{OP}: pw_weight must have shape (C_out, {channels}, 1, 1), got "
                         f"{tuple(pw_weight.shape)}")


def block_geometry(x, dw_weight, stride, padding, dilation, pad_same) -> ConvGeometry:
    """The depthwise convolution's geometry (the 1x1 keeps its output size)."""
    return conv_geometry(tuple(x.shape), tuple(dw_weight.shape), stride,
                         "same" if pad_same else padding, dilation, x.shape[1], 2)


def block_output_shape(geometry: ConvGeometry, pw_weight: torch.Tensor) -> tuple[int, ...]:
    """The block's (batched) output shape: the 1x1's channels at the depthwise output size."""
    return (geometry.batch, pw_weight.shape[0], *geometry.output_size)


def block_output(x, dw_weight, pw_weight, stride, padding, dilation, pad_same,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty block output in x's memory format (and dtype, unless given)."""
    geometry = block_geometry(x, dw_weight, stride, padding, dilation, pad_same)
    return empty_like_layout(block_output_shape(geometry, pw_weight), x, dtype)


def _output(x, dw_weight, pw_weight, dw_bias, pw_bias, residual, stride, padding, dilation,
            pad_same, *_mid) -> torch.Tensor:
    return block_output(x, dw_weight, pw_weight, stride, padding, dilation, pad_same)


def _launch(out, preact, x, dw_weight, pw_weight, dw_bias, pw_bias, residual, stride, padding,
            dilation, pad_same, mid_activation, mid_negative_slope, epilogue, _) -> None:
    geometry = block_geometry(x, dw_weight, stride, padding, dilation, pad_same)
    launch_pointwise(as_5d(x), as_5d(pw_weight), as_5d(out), stride=pad_front(geometry.stride, 1),
                     bias=pw_bias, residual=None if residual is None else as_5d(residual),
                     preact=None if preact is None else as_5d(preact), epilogue=epilogue,
                     depthwise=DepthwiseStage(as_5d(dw_weight), dw_bias,
                                              pad_front(geometry.padding, 0),
                                              pad_front(geometry.dilation, 1),
                                              epilogue_from(mid_activation, mid_negative_slope)))


def _grads(dz, needs, x, dw_weight, pw_weight, dw_bias, pw_bias, residual, stride, padding,
           dilation, pad_same, mid_activation, mid_negative_slope):
    """Every gradient from dz = dL/d(pre-activation), recomputing the intermediate."""
    geometry = block_geometry(x, dw_weight, stride, padding, dilation, pad_same)
    mid = epilogue_from(mid_activation, mid_negative_slope)
    need_x, need_dw, need_pw, need_dwb, need_pwb, _ = needs
    # Recompute the intermediate m = mid(depthwise(x) + dw_bias) (and its pre-activation
    # when the mid activation's derivative needs it): the forward never stored it.
    m, m_preact = conv_forward(x, dw_weight, dw_bias, geometry, mid,
                               mid.grad_needs_preactivation)
    pointwise = conv_geometry(tuple(m.shape), tuple(pw_weight.shape), 1, 0, 1, 1, 2)
    d_pw = conv_weight_grad(dz, m, pw_weight, pointwise) if need_pw else None
    d_pwb = channel_sum(dz, pw_weight.dtype) if need_pwb else None
    d_x = d_dw = d_dwb = None
    if need_x or need_dw or need_dwb:
        dm = conv_input_grad(dz, pw_weight, m, pointwise)
        if mid.activation is not Activation.NONE:
            dm = activation_backward(dm, m if m_preact is None else m_preact, mid)
        d_x = conv_input_grad(dm, dw_weight, x, geometry) if need_x else None
        d_dw = conv_weight_grad(dm, x, dw_weight, geometry) if need_dw else None
        d_dwb = channel_sum(dm, dw_weight.dtype) if need_dwb else None
    return [d_x, d_dw, d_pw, d_dwb, d_pwb, None]


def _reference(x, dw_weight, pw_weight, dw_bias, pw_bias, residual, stride, padding, dilation,
               pad_same, mid_activation, mid_negative_slope) -> torch.Tensor:
    """The pre-activation with PyTorch's ops (the torch backend)."""
    m = activate(F.conv2d(x, dw_weight, dw_bias, stride, "same" if pad_same else padding,
                          dilation, x.shape[1]),
                 epilogue_from(mid_activation, mid_negative_slope))
    out = F.conv2d(m, pw_weight, pw_bias)
    return out if residual is None else out + residual


OPERATOR, _ = fused.register(FusedOp(
    OP, ("Tensor x", "Tensor dw_weight", "Tensor pw_weight", "Tensor? dw_bias",
         "Tensor? pw_bias", "Tensor? residual"),
    ("int[] stride", "int[] padding", "int[] dilation", "bool pad_same", "str? mid_activation",
     "float mid_negative_slope"),
    _output, _launch, _reference, _grads, (like_layout, dense, dense, dense, dense, like_layout)))


def depthwise_separable_conv2d(
        x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
        dw_bias: torch.Tensor | None = None, pw_bias: torch.Tensor | None = None,
        stride: IntArg = 1, padding: PaddingArg = 0, dilation: IntArg = 1,
        mid_activation: ActivationArg = None, activation: ActivationArg = None,
        residual: torch.Tensor | None = None) -> torch.Tensor:
    """activation(conv1x1(mid_activation(depthwise(x) + dw_bias)) + pw_bias + residual).

    x: (N, C, H, W) or (C, H, W); dw_weight: (C, 1, kH, kW) (channel multiplier 1);
    pw_weight: (C_out, C, 1, 1); dw_bias (C,), pw_bias (C_out,). stride, padding (ints,
    tuples, "same", "valid") and dilation are the depthwise convolution's, as in F.conv2d.
    Equals F.conv2d(x, dw_weight, dw_bias, stride, padding, dilation, groups=C), the mid
    activation, F.conv2d(., pw_weight, pw_bias), the residual and the activation, computed in
    one kernel launch. The output keeps x's memory format.
    """
    mid = _parse("mid_activation", mid_activation)
    epilogue = _parse("activation", activation)
    check_tensor(OP, "x", x, (3, 4))
    check_tensor(OP, "dw_weight", dw_weight, (4,))
    check_tensor(OP, "pw_weight", pw_weight, (4,))
    check_same_device_dtype(OP, x, dw_weight=dw_weight, pw_weight=pw_weight, dw_bias=dw_bias,
                            pw_bias=pw_bias, residual=residual)
    _check_weights(x, dw_weight, pw_weight)
    unbatched = x.dim() == 3
    x4 = x.unsqueeze(0) if unbatched else x
    channels = x4.shape[1]
    geometry = block_geometry(x4, dw_weight, stride, padding, dilation, False)
    out_shape = block_output_shape(geometry, pw_weight)
    check_bias(OP, dw_bias, channels, name="dw_bias")
    check_bias(OP, pw_bias, pw_weight.shape[0], name="pw_bias")
    check_residual(OP, residual, out_shape[1:] if unbatched else out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual

    out = fused.call(OPERATOR, (x4, dw_weight, pw_weight, dw_bias, pw_bias, res),
                     (list(geometry.stride), list(geometry.padding), list(geometry.dilation),
                      padding == "same", mid.name, mid.alpha), epilogue)
    return out.squeeze(0) if unbatched else out
