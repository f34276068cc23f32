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

Backward (autograd) recomputes the intermediate with the depthwise kernel rather than storing
it in the forward, then runs the 1x1's and the depthwise convolution's gradients through
conv.py's backward kernels (pointwise GEMM, depthwise adjoint, weight gradients), all Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import backend_for
from .checks import check_bias, check_residual, check_same_device_dtype, check_tensor
from .conv import conv_forward, conv_input_grad, conv_weight_grad
from .elementwise import activation_backward, channel_sum
from .epilogue import (
    Activation,
    ActivationArg,
    Epilogue,
    activate,
    apply_epilogue,
    parse_activation,
)
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


def _launch_fused(x, dw_weight, pw_weight, dw_bias, pw_bias, residual, geometry, mid, epilogue,
                  keep_preactivation: bool):
    out = empty_like_layout((geometry.batch, pw_weight.shape[0], *geometry.output_size), x)
    preact = torch.empty_like(out) if keep_preactivation else None
    launch_pointwise(as_5d(x), as_5d(pw_weight), as_5d(out), stride=pad_front(geometry.stride, 1),
                     bias=pw_bias, residual=None if residual is None else as_5d(residual),
                     preact=None if preact is None else as_5d(preact), epilogue=epilogue,
                     depthwise=DepthwiseStage(as_5d(dw_weight), dw_bias,
                                              pad_front(geometry.padding, 0),
                                              pad_front(geometry.dilation, 1), mid))
    return out, preact


class _DepthwiseSeparableFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dw_weight, pw_weight, dw_bias, pw_bias, residual,
                geometry: ConvGeometry, mid: Epilogue, epilogue: Epilogue):
        keep = epilogue.grad_needs_preactivation
        out, preact = _launch_fused(x, dw_weight, pw_weight, dw_bias, pw_bias, residual,
                                    geometry, mid, epilogue, keep)
        ctx.geometry, ctx.mid, ctx.epilogue = geometry, mid, epilogue
        ctx.save_for_backward(x, dw_weight, pw_weight, dw_bias, preact if keep else out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, dw_weight, pw_weight, dw_bias, saved = ctx.saved_tensors
        geometry, mid, epilogue = ctx.geometry, ctx.mid, ctx.epilogue
        need_x, need_dw, need_pw, need_dwb, need_pwb, need_r = ctx.needs_input_grad[:6]
        dz = grad_out
        if epilogue.activation is not Activation.NONE:
            dz = activation_backward(grad_out, saved, epilogue)
        # Recompute the intermediate m = mid(depthwise(x) + dw_bias) (and its pre-activation
        # when the mid activation's derivative needs it): the forward never stored it.
        m, m_preact = conv_forward(x, dw_weight, dw_bias, None, geometry, mid,
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
        return d_x, d_dw, d_pw, d_dwb, d_pwb, dz if need_r else None, None, None, None


def _torch_ops(x, dw_weight, pw_weight, dw_bias, pw_bias, residual, geometry, mid, epilogue,
               stride, padding, dilation):
    """PyTorch's own ops, for the torch backend (serving on a CPU)."""
    m = activate(F.conv2d(x, dw_weight, dw_bias, stride, padding, dilation, geometry.groups), mid)
    return apply_epilogue(F.conv2d(m, pw_weight, pw_bias), None, residual, epilogue)


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
    geometry = conv_geometry(tuple(x4.shape), tuple(dw_weight.shape), stride, padding, dilation,
                             channels, 2)
    out_shape = (geometry.batch, pw_weight.shape[0], *geometry.output_size)
    check_bias(OP, dw_bias, channels, name="dw_bias")
    check_bias(OP, pw_bias, pw_weight.shape[0], name="pw_bias")
    check_residual(OP, residual, out_shape[1:] if unbatched else out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual

    if backend_for(x4.device) == "torch":
        out = _torch_ops(x4, dw_weight, pw_weight, dw_bias, pw_bias, res, geometry, mid, epilogue,
                         stride, padding, dilation)
    elif x4.numel() == 0 or 0 in out_shape:
        out = apply_epilogue(empty_like_layout(out_shape, x4).zero_(), pw_bias, res, epilogue)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in
                                         (x4, dw_weight, pw_weight, dw_bias, pw_bias, res)):
        out = _DepthwiseSeparableFunction.apply(x4, dw_weight, pw_weight, dw_bias, pw_bias, res,
                                                geometry, mid, epilogue)
    else:
        out, _ = _launch_fused(x4, dw_weight, pw_weight, dw_bias, pw_bias, res, geometry, mid,
                               epilogue, False)
    return out.squeeze(0) if unbatched else out
