"""nn modules mirroring torch.nn's convolutions, running foveal's kernels.

Each subclasses its torch.nn counterpart, so state_dicts, initialisation and `repr` are
PyTorch's; `activation` adds the fused epilogue and `forward(x, residual=None)` the residual.
DeformConv2d mirrors torchvision.ops.DeformConv2d (parameters and call) and adds a predictor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import conv, deform
from .batchnorm import fold_batchnorm
from .depthwise_separable import depthwise_separable_conv2d
from .epilogue import ActivationArg, parse_activation
from .geometry import PaddingArg, conv_geometry, expand
from .local_conv import local_conv2d


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


def _uniform_(tensor: torch.Tensor, fan_in: int) -> None:
    """torch.nn.Conv2d's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(tensor, -bound, bound)


class DepthwiseSeparableConv2d(nn.Module):
    """MobileNet's depthwise kxk then pointwise 1x1 block, run as one fused kernel launch.

    forward(x, residual=None) = activation(pw(mid_activation(dw(x) + dw_bias)) + pw_bias
    + residual); see `depthwise_separable_conv2d`. Parameters: dw_weight (C_in, 1, kH, kW),
    dw_bias (C_in,), pw_weight (C_out, C_in, 1, 1), pw_bias (C_out,). `from_modules` builds one
    from a torch depthwise conv, pointwise conv and their BatchNorms (folded, eval mode).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: PaddingArg = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True,
                 mid_activation: ActivationArg = None, activation: ActivationArg = None,
                 device=None, dtype=None):
        super().__init__()
        parse_activation(mid_activation)
        parse_activation(activation)
        kernel = expand(kernel_size, 2, "kernel_size", minimum=1)
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.mid_activation, self.activation = mid_activation, activation
        self.dw_weight = nn.Parameter(torch.empty(in_channels, 1, *kernel, **factory))
        self.pw_weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **factory))
        self.dw_bias = nn.Parameter(torch.empty(in_channels, **factory)) if bias else None
        self.pw_bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight, bias, fan_in in ((self.dw_weight, self.dw_bias, math.prod(self.kernel_size)),
                                     (self.pw_weight, self.pw_bias, self.in_channels)):
            _uniform_(weight, fan_in)
            if bias is not None:
                _uniform_(bias, fan_in)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return depthwise_separable_conv2d(
            input, self.dw_weight, self.pw_weight, self.dw_bias, self.pw_bias, self.stride,
            self.padding, self.dilation, mid_activation=self.mid_activation,
            activation=self.activation, residual=residual)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.dw_bias is not None}, mid_activation={self.mid_activation!r}, "
                f"activation={self.activation!r}")

    @classmethod
    def from_modules(cls, depthwise: nn.Conv2d, pointwise: nn.Conv2d,
                     depthwise_bn: nn.Module | None = None, pointwise_bn: nn.Module | None = None,
                     mid_activation: ActivationArg = None, activation: ActivationArg = None):
        """The fused block equal (in eval mode) to depthwise -> [bn] -> mid -> pointwise -> [bn].

        BatchNorms fold into the weights and biases with their running statistics, so the
        result matches the torch block in eval mode; the parameters are new tensors.
        """
        channels = depthwise.in_channels
        if (depthwise.groups != channels or depthwise.out_channels != channels
                or depthwise.padding_mode != "zeros"):
            raise ValueError("depthwise must be a Conv2d with groups == in_channels == "
                             "out_channels and padding_mode='zeros', got "
                             f"{depthwise!r}")
        if (pointwise.kernel_size != (1, 1) or pointwise.stride != (1, 1) or pointwise.groups != 1
                or pointwise.padding not in ((0, 0), "valid")
                or pointwise.in_channels != channels):
            raise ValueError(f"pointwise must be a 1x1 Conv2d over {channels} channels with "
                             f"stride 1, no padding and groups 1, got {pointwise!r}")
        block = cls(channels, pointwise.out_channels, depthwise.kernel_size, depthwise.stride,
                    depthwise.padding, depthwise.dilation, True, mid_activation, activation,
                    device=depthwise.weight.device, dtype=depthwise.weight.dtype)
        with torch.no_grad():
            for (weight, bias), conv, bn in (((block.dw_weight, block.dw_bias), depthwise,
                                              depthwise_bn),
                                             ((block.pw_weight, block.pw_bias), pointwise,
                                              pointwise_bn)):
                w, b = conv.weight, conv.bias
                if bn is not None:
                    w, b = fold_batchnorm(w, b, bn)
                weight.copy_(w)
                bias.copy_(b if b is not None else torch.zeros_like(bias))
        return block


class LocalConv2d(nn.Module):
    """Locally connected (unshared) 2-D convolution for a fixed input size; see `local_conv2d`.

    Parameters: weight (H_out, W_out, C_out, C_in/groups, kH, kW) and a per-pixel bias
    (C_out, H_out, W_out), initialised as torch.nn.Conv2d initialises a convolution's.
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: int | tuple[int, int],
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: PaddingArg = 0, dilation: int | tuple[int, int] = 1, groups: int = 1,
                 bias: bool = True, activation: ActivationArg = None, device=None, dtype=None):
        super().__init__()
        parse_activation(activation)
        kernel = expand(kernel_size, 2, "kernel_size", minimum=1)
        geometry = conv_geometry((1, in_channels, *expand(input_size, 2, "input_size")),
                                 (out_channels, in_channels // max(1, groups), *kernel), stride,
                                 padding, dilation, groups, 2)
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.input_size, self.output_size = geometry.input_size, geometry.output_size
        self.kernel_size, self.stride, self.padding, self.dilation = (kernel, stride, padding,
                                                                      dilation)
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(*geometry.output_size, out_channels,
                                               in_channels // groups, *kernel, **factory))
        self.bias = (nn.Parameter(torch.empty(out_channels, *geometry.output_size, **factory))
                     if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        _uniform_(self.weight, fan_in)
        if self.bias is not None:
            _uniform_(self.bias, fan_in)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return local_conv2d(input, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups, activation=self.activation,
                            residual=residual)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
                f"activation={self.activation!r}")


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
