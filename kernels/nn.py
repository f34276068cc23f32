"""nn modules mirroring torch.nn's convolutions, running foveal's kernels.

Each subclasses its torch.nn counterpart, so state_dicts, initialisation and `repr` are
PyTorch's; `activation` adds the fused epilogue and `forward(x, residual=None)` the residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import conv
from .epilogue import ActivationArg, parse_activation


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
    """Swap every torch.nn convolution in `model` for its foveal module, in place.

    Parameters are shared, not copied, so the model's outputs, state_dict and any optimiser
    holding its parameters are unchanged. Returns `model` for chaining.
    """
    for name, child in list(model.named_children()):
        replacement = REPLACEMENTS.get(type(child))
        if replacement is not None:
            setattr(model, name, replacement.from_torch(child))
        else:
            patch(child)
    return model
