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


class _FusedConvTransposeMixin(_FusedConvMixin):
    """forward(x, output_size=None, residual=None), as torch.nn.ConvTranspose*d plus residual."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}")
        spatial_dims = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, spatial_dims, self.dilation)
        return self._functional(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation,
                                activation=self.activation, residual=residual)


class ConvTranspose1d(_FusedConvTransposeMixin, nn.ConvTranspose1d):
    _functional = staticmethod(conv.conv_transpose1d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class ConvTranspose2d(_FusedConvTransposeMixin, nn.ConvTranspose2d):
    _functional = staticmethod(conv.conv_transpose2d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class ConvTranspose3d(_FusedConvTransposeMixin, nn.ConvTranspose3d):
    _functional = staticmethod(conv.conv_transpose3d)

    def __init__(self, *args, activation: ActivationArg = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class Conv2Plus1d(nn.Module):
    """R(2+1)D's factorised 3D convolution: a (1, k, k) spatial conv, then a (t, 1, 1) temporal one.

    Each is one foveal conv3d launch with its epilogue fused: the spatial conv carries the
    (folded) BatchNorm as its bias and `mid_activation`; the temporal conv takes `activation`
    and an optional residual.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int,
                 kernel_size: tuple[int, int] = (3, 3), stride: int = 1, padding: int = 1, *,
                 mid_activation: ActivationArg = "relu", activation: ActivationArg = None,
                 bias: bool = False):
        super().__init__()
        t, k = kernel_size
        self.spatial = Conv3d(in_channels, mid_channels, (1, k, k), stride=(1, stride, stride),
                              padding=(0, padding, padding), bias=True,
                              activation=mid_activation)
        self.temporal = Conv3d(mid_channels, out_channels, (t, 1, 1), stride=(stride, 1, 1),
                               padding=(padding, 0, 0), bias=bias, activation=activation)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.temporal(self.spatial(input), residual=residual)

    @classmethod
    @torch.no_grad()
    def from_torchvision(cls, block: nn.Sequential) -> Conv2Plus1d:
        """Build from torchvision's Conv2Plus1D (conv, BatchNorm3d, ReLU, conv) for inference.

        The BatchNorm's running statistics fold into the spatial conv, as in eval mode.
        """
        from .batchnorm import fold_batchnorm

        spatial, bn, _, temporal = block
        new = cls(spatial.in_channels, temporal.out_channels, spatial.out_channels,
                  (temporal.kernel_size[0], spatial.kernel_size[1]), spatial.stride[1],
                  spatial.padding[1], bias=temporal.bias is not None)
        new.to(device=spatial.weight.device, dtype=spatial.weight.dtype)
        weight, bias = fold_batchnorm(spatial.weight, spatial.bias, bn)
        new.spatial.weight.copy_(weight)
        new.spatial.bias.copy_(bias)
        new.temporal.weight.copy_(temporal.weight)
        if temporal.bias is not None:
            new.temporal.bias.copy_(temporal.bias)
        return new


# torch.nn type -> foveal replacement; later kernels add their modules here.
REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
    nn.ConvTranspose1d: ConvTranspose1d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.ConvTranspose3d: ConvTranspose3d,
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
