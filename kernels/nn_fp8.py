"""Inference modules running FP8 convolutions: what `optimize(model, precision="fp8")` puts in
place of a fused convolution (or the 1x1 half of a fused depthwise-separable block).

Each holds its FP8 weight, per-channel weight scales, FP32 bias and (when calibrated) its input
scale as buffers that follow the model's device but never its dtype: `model.half()` leaves an
FP8 weight FP8 and a scale FP32 (casting a scale would round it). The output takes the input's
dtype, so the rest of the model runs as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .epilogue import ActivationArg
from .fp8 import conv2d_fp8, conv3d_fp8, depthwise_separable_conv2d_fp8
from .quantize import quantize_fp8, quantize_weight_fp8


class _Fp8Module(nn.Module):
    """Keeps the buffers named in _FIXED in their dtype through .to(dtype), .half(), ..."""

    _FIXED: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        fixed = {name: self._buffers[name] for name in self._FIXED
                 if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, tensor in fixed.items():  # where fn sends tensors, in their own dtype
            self._buffers[name] = tensor.to(fn(torch.empty(0, device=tensor.device)).device)
        return self

    def _scale_text(self, scale: torch.Tensor | None) -> str:
        return "dynamic" if scale is None else f"{scale.item():.4g}"


class _ConvFp8(_Fp8Module):
    """activation(conv_fp8(quantize_fp8(x, input_scale), weight) + bias + residual), x's dtype.

    `input_scale` None quantizes each input with its own amax (dynamic).
    """

    _FIXED = ("weight", "weight_scale", "bias", "input_scale")
    _functional: Callable[..., torch.Tensor] = staticmethod(conv2d_fp8)
    launches = 2  # quantize the input, then the convolution (a dynamic scale adds its amax)

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None, input_scale: torch.Tensor | None, *,
                 stride, padding, dilation, groups: int, activation: ActivationArg = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.register_buffer("input_scale", input_scale)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = activation
        if input_scale is None:
            self.launches += 1

    @classmethod
    def quantized(cls, conv: nn.Module, input_scale: torch.Tensor | None) -> _ConvFp8:
        """From a foveal Conv2d/Conv3d (its weight quantized per output channel)."""
        weight, scale = quantize_weight_fp8(conv.weight)
        bias = None if conv.bias is None else conv.bias.detach().float()
        return cls(weight, scale, bias, input_scale, stride=conv.stride, padding=conv.padding,
                   dilation=conv.dilation, groups=conv.groups, activation=conv.activation)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x, scale = quantize_fp8(input, self.input_scale)
        return self._functional(x, scale, self.weight, self.weight_scale, self.bias, self.stride,
                                self.padding, self.dilation, self.groups,
                                activation=self.activation, residual=residual,
                                out_dtype=input.dtype)

    def extra_repr(self) -> str:
        out, per_group = self.weight.shape[:2]
        return (f"{per_group * self.groups}, {out}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, activation={self.activation!r}, "
                f"input_scale={self._scale_text(self.input_scale)}")


class Conv2dFp8(_ConvFp8):
    _functional = staticmethod(conv2d_fp8)


class Conv3dFp8(_ConvFp8):
    _functional = staticmethod(conv3d_fp8)


class DepthwiseSeparableConv2dFp8(_Fp8Module):
    """A fused depthwise-separable block with its 1x1 in FP8 (depthwise_separable_conv2d_fp8):
    the depthwise weight and bias stay in the model's dtype; the on-chip intermediate is
    quantized with the calibrated `mid_scale`."""

    _FIXED = ("pw_weight", "pw_weight_scale", "pw_bias", "mid_scale")
    launches = 1

    def __init__(self, block: nn.Module, mid_scale: torch.Tensor):
        """From a foveal DepthwiseSeparableConv2d (its 1x1 weight quantized per channel)."""
        super().__init__()
        self.stride, self.padding, self.dilation = block.stride, block.padding, block.dilation
        self.mid_activation, self.activation = block.mid_activation, block.activation
        self.register_buffer("dw_weight", block.dw_weight.detach().clone())
        self.register_buffer("dw_bias", None if block.dw_bias is None
                             else block.dw_bias.detach().clone())
        weight, scale = quantize_weight_fp8(block.pw_weight)
        self.register_buffer("pw_weight", weight)
        self.register_buffer("pw_weight_scale", scale)
        self.register_buffer("pw_bias", None if block.pw_bias is None
                             else block.pw_bias.detach().float())
        self.register_buffer("mid_scale", mid_scale)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return depthwise_separable_conv2d_fp8(
            input, self.dw_weight, self.pw_weight, self.pw_weight_scale, self.mid_scale,
            self.dw_bias, self.pw_bias, self.stride, self.padding, self.dilation,
            mid_activation=self.mid_activation, activation=self.activation, residual=residual)

    def extra_repr(self) -> str:
        return (f"{self.dw_weight.shape[0]}, {self.pw_weight.shape[0]}, "
                f"kernel_size={tuple(self.dw_weight.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"mid_activation={self.mid_activation!r}, activation={self.activation!r}, "
                f"mid_scale={self._scale_text(self.mid_scale)}")
