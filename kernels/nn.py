"""nn modules mirroring torch.nn's convolutions, running foveal's kernels.

Each subclasses its torch.nn counterpart, so state_dicts, initialisation and `repr` are
PyTorch's; `activation` adds the fused epilogue and `forward(x, residual=None)` the residual.
DeformConv2d mirrors torchvision.ops.DeformConv2d (parameters and call) and adds a predictor.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from . import conv, deform
from .epilogue import ActivationArg, parse_activation
from .geometry import expand


class _FusedConvMixin:
    """Shared forward: non-zero padding modes pad first, as torch.nn's convolutions do."""

    _functional = staticmethod(conv.conv2d)
    activation: ActivationArg

    def _init_activation(self, activation: ActivationArg) -> None:
        parse_activation(activation)  # validate early
        self.activation = activation

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._functional(input, self.weight, self.bias, self.stride, padding,
                                self.dilation, self.groups, activation=self.activation,
                                residual=residual)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    @classmethod
    def from_torch(cls, module: nn.Module, activation: ActivationArg = None):
        """A foveal module sharing `module`'s parameters (no copy: optimisers keep working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in module.__dict__.items()
                             if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        new._modules = dict(module._modules)
        new._init_activation(activation)
        return new


class Conv1d(_FusedConvMixin, nn.Conv1d):
    _functional = staticmethod(conv.conv1d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class Conv2d(_FusedConvMixin, nn.Conv2d):
    _functional = staticmethod(conv.conv2d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class Conv3d(_FusedConvMixin, nn.Conv3d):
    _functional = staticmethod(conv.conv3d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


# torch.nn type -> foveal replacement; later kernels add their modules here.
REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
}


def patch(model: nn.Module) -> nn.Module:
    """Swap every torch.nn (and torchvision) convolution in `model` for its foveal module, in place.

    Parameters are shared, not copied, so the model's outputs, state_dict and any optimiser
    holding its parameters are unchanged. Returns `model` for chaining.
    """
    _register_torchvision()
    for name, child in list(model.named_children()):
        replacement = REPLACEMENTS.get(type(child))
        if replacement is not None:
            setattr(model, name, replacement.from_torch(child))
        else:
            patch(child)
    return model


def _pair(value: int | tuple[int, ...], name: str, minimum: int) -> tuple[int, int]:
    return expand(value, 2, name, minimum=minimum)  # type: ignore[return-value]


class DeformConv2d(nn.Module):
    """Deformable convolution (DCNv2 by default) with its own offset/mask predictor.

    `weight` and `bias` have torchvision.ops.DeformConv2d's names, shapes and initialisation, so
    its state_dict loads here (the predictor then keeps its initialisation). The predictor
    `offset_conv` is a foveal Conv2d over the same input with the layer's kernel, stride,
    padding and dilation; it predicts 2*G*kH*kW offsets (and G*kH*kW modulation logits when
    `modulated`) and starts at zero, as in DCNv2, so the layer starts as the plain convolution:
    offsets 0 and modulation 2*sigmoid(0) = 1. (DCNv2's own sigmoid would start at 0.5: half the
    plain convolution.)

    `forward(input, offset=None, mask=None, residual=None)`: offsets (and mask) passed in, as
    torchvision's module takes them, replace the predictor's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 offset_groups: int = 1, modulated: bool = True, predict_offsets: bool = True,
                 activation: ActivationArg = None, device=None, dtype=None):
        super().__init__()
        for name, value, divisor in (("in_channels", in_channels, groups),
                                     ("out_channels", out_channels, groups),
                                     ("in_channels", in_channels, offset_groups)):
            if divisor < 1 or value % divisor:
                what = "groups" if divisor is groups else "offset_groups"
                raise ValueError(f"DeformConv2d: {name} ({value}) must be divisible by {what} "
                                 f"({divisor})")
        parse_activation(activation)  # validate early
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.offset_groups, self.modulated, self.activation = offset_groups, modulated, activation
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        self.offset_conv = None
        if predict_offsets:
            self.offset_conv = Conv2d(in_channels, self._predicted_channels(), self.kernel_size,
                                      self.stride, self.padding, self.dilation, **factory)
            nn.init.zeros_(self.offset_conv.weight)
            nn.init.zeros_(self.offset_conv.bias)

    def reset_parameters(self) -> None:
        """torchvision's (and torch.nn.Conv2d's) initialisation of weight and bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def _taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def _predicted_channels(self) -> int:
        return (3 if self.modulated else 2) * self.offset_groups * self._taps

    def forward(self, input: torch.Tensor, offset: torch.Tensor | None = None,
                mask: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        if offset is None:
            if mask is not None:
                raise ValueError("DeformConv2d: a mask was passed without offsets; pass both, or "
                                 "neither to use the predictor")
            if self.offset_conv is None:
                raise ValueError("DeformConv2d was built with predict_offsets=False: pass "
                                 "offset (and mask) to forward")
            prediction = self.offset_conv(input)
            split = 2 * self.offset_groups * self._taps
            offset = prediction[:, :split]
            if self.modulated:
                mask = 2 * torch.sigmoid(prediction[:, split:])
        return deform.deform_conv2d(input, offset, self.weight, self.bias, self.stride,
                                    self.padding, self.dilation, mask,
                                    activation=self.activation, residual=residual)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A torchvision DeformConv2d's state has no predictor: keep ours as it is.
        predictor = prefix + "offset_conv."
        if self.offset_conv is not None and not any(k.startswith(predictor) for k in state_dict):
            for name, value in self.offset_conv.state_dict().items():
                state_dict[predictor + name] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, offset_groups={self.offset_groups}, "
                f"modulated={self.modulated}, bias={self.bias is not None}")
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    @classmethod
    def from_torchvision(cls, module: nn.Module, *, offset_groups: int = 1,
                         modulated: bool = True, predict_offsets: bool = True,
                         activation: ActivationArg = None) -> DeformConv2d:
        """A foveal DeformConv2d sharing a torchvision DeformConv2d's weight and bias (no copy).

        With `predict_offsets` it gains a zero-initialised predictor (it starts as the plain
        convolution); without, it keeps torchvision's call `forward(input, offset, mask)`.
        """
        weight = module.weight
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                  module.padding, module.dilation, module.groups, module.bias is not None,
                  offset_groups=offset_groups, modulated=modulated,
                  predict_offsets=predict_offsets, activation=activation, device=weight.device,
                  dtype=weight.dtype)
        new.weight = weight
        new.bias = module.bias
        return new

    @classmethod
    def from_torch(cls, module: nn.Module, activation: ActivationArg = None) -> DeformConv2d:
        """`patch()`'s swap: same parameters, same state_dict, same forward(input, offset, mask)."""
        return cls.from_torchvision(module, predict_offsets=False, activation=activation)


def _register_torchvision() -> None:
    """torchvision's DeformConv2d joins REPLACEMENTS once torchvision is loaded.

    torchvision is optional and slow to import, so it is never imported here: a model holding
    its DeformConv2d has loaded it already.
    """
    module = sys.modules.get("torchvision.ops.deform_conv")
    if module is not None:
        REPLACEMENTS.setdefault(module.DeformConv2d, DeformConv2d)
