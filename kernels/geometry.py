"""Convolution geometry: argument normalisation, the output-size formulas and layer costs.

Every op in foveal derives its output size from this module, so the arithmetic lives in one
place (`conv_output_length`, `transposed_output_length`). Nothing here touches tensors, which
lets `foveal shapes` and the service reason about layers without importing a GPU stack.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass

PaddingArg = int | Sequence[int] | str


def _is_int(v: object) -> bool:
    """An int, or a symbolic one (torch.SymInt: a dynamic size while torch.compile traces)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return True
    torch = sys.modules.get("torch")  # never imported here: see the module docstring
    return torch is not None and isinstance(v, torch.SymInt)


def expand(value: int | Sequence[int], n: int, name: str, *,
           minimum: int | None = None) -> tuple[int, ...]:
    """Turn an int or a length-`n` sequence into an n-tuple, naming `name` on bad input."""
    if _is_int(value):
        items = (int(value),) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) == 1 and n > 1:
            items = items * n
        if len(items) != n or not all(_is_int(v) for v in items):
            raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
        items = tuple(int(v) for v in items)
    else:
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, "
                        f"got {type(value).__name__}")
    if minimum is not None and any(v < minimum for v in items):
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return items


def conv_output_length(size: int, kernel: int, stride: int = 1, padding: int = 0,
                       dilation: int = 1, *, padding_after: int | None = None) -> int:
    """floor((W + P_before + P_after - D*(F-1) - 1) / S) + 1: the one convolution size formula.

    `padding` pads both ends unless `padding_after` gives the far end separately (as
    padding="same" does for even kernels).
    """
    after = padding if padding_after is None else padding_after
    return (size + padding + after - dilation * (kernel - 1) - 1) // stride + 1


def transposed_output_length(size: int, kernel: int, stride: int = 1, padding: int = 0,
                             dilation: int = 1, output_padding: int = 0) -> int:
    """(I-1)*S - 2P + D*(F-1) + output_padding + 1: the inverse of `conv_output_length`."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def output_shape(input_size: int | Sequence[int], kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: PaddingArg = 0,
                 dilation: int | Sequence[int] = 1, *, transposed: bool = False,
                 output_padding: int | Sequence[int] = 0) -> tuple[int, ...]:
    """Spatial output size of a convolution (or transposed convolution) with PyTorch's rules.

    >>> output_shape((227, 227), 11, stride=4)
    (55, 55)
    """
    sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    n = len(sizes)
    kernel = expand(kernel_size, n, "kernel_size", minimum=1)
    stride_t = expand(stride, n, "stride", minimum=1)
    dilation_t = expand(dilation, n, "dilation", minimum=1)
    if transposed:
        if isinstance(padding, str):
            raise ValueError("padding must be an int or a tuple for a transposed convolution, "
                             f"got {padding!r}")
        pad = expand(padding, n, "padding", minimum=0)
        out_pad = expand(output_padding, n, "output_padding", minimum=0)
        return tuple(transposed_output_length(*args) for args in
                     zip(sizes, kernel, stride_t, pad, dilation_t, out_pad, strict=True))
    before, after = resolve_padding(padding, kernel, stride_t, dilation_t)
    return tuple(conv_output_length(s, k, st, b, d, padding_after=a) for s, k, st, b, a, d in
                 zip(sizes, kernel, stride_t, before, after, dilation_t, strict=True))


def resolve_padding(padding: PaddingArg, kernel: tuple[int, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padding before and after each spatial axis, resolving "same" and "valid" as PyTorch does."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * n, (0,) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}); use an explicit padding")
            total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
            before = tuple(t // 2 for t in total)
            return before, tuple(t - b for t, b in zip(total, before, strict=True))
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    pad = expand(padding, n, "padding", minimum=0)
    return pad, pad


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a kernel launch needs to know about one convolution's shape.

    Spatial tuples have one entry per spatial axis (1, 2 or 3). For a transposed convolution
    `input_size`/`output_size` are the transposed op's own input and output sizes.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    output_size: tuple[int, ...]
    transposed: bool = False
    output_padding: tuple[int, ...] | None = None

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel_size)

    @property
    def taps(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.output_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_per_group, *self.kernel_size)
        return (self.out_channels, self.in_per_group, *self.kernel_size)

    def macs(self) -> int:
        """Multiply-accumulates of the dense computation (zeros of a transposed conv excluded)."""
        if self.transposed:
            positions = self.batch * math.prod(self.input_size)
            return positions * self.in_channels * self.out_per_group * self.taps
        positions = self.batch * math.prod(self.output_size)
        return positions * self.out_channels * self.in_per_group * self.taps

    def flops(self) -> int:
        return 2 * self.macs()

    def min_bytes(self, itemsize: int) -> int:
        """Fewest bytes moved: input, weight and output each once."""
        elements = (self.batch * self.in_channels * math.prod(self.input_size)
                    + math.prod(self.weight_shape) + math.prod(self.output_shape))
        return elements * itemsize


def _check_groups(groups: object) -> None:
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")


def conv_geometry(input_shape: Sequence[int], weight_shape: Sequence[int], stride, padding,
                  dilation, groups: int, spatial_dims: int) -> ConvGeometry:
    """Validate a convolution's shapes and return its geometry.

    Shapes are batched: (N, C, *spatial) and (C_out, C_in/groups, *kernel). Every rule raises a
    ValueError or TypeError naming the argument, as PyTorch would refuse the same call.
    """
    n = spatial_dims
    _check_groups(groups)
    batch, in_channels, *size = input_shape
    out_channels, weight_in, *kernel = weight_shape
    stride_t = expand(stride, n, "stride", minimum=1)
    dilation_t = expand(dilation, n, "dilation", minimum=1)
    kernel_t = tuple(kernel)
    if any(k < 1 for k in kernel_t):
        raise ValueError(f"weight has an empty kernel: shape {tuple(weight_shape)}")
    if in_channels % groups:
        raise ValueError(f"input channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"weight.shape[0] (out channels, {out_channels}) must be divisible by "
                         f"groups ({groups})")
    if weight_in * groups != in_channels:
        raise ValueError(f"weight.shape[1] * groups must equal the input channels: "
                         f"{weight_in} * {groups} != {in_channels} (input shape "
                         f"{tuple(input_shape)}, weight shape {tuple(weight_shape)})")
    before, after = resolve_padding(padding, kernel_t, stride_t, dilation_t)
    for axis, (s, k, d, b, a) in enumerate(zip(size, kernel_t, dilation_t, before, after,
                                               strict=True)):
        if d * (k - 1) + 1 > s + b + a:
            raise ValueError(
                f"kernel larger than the padded input on spatial axis {axis}: dilated kernel "
                f"{d * (k - 1) + 1} > input {s} + padding {b + a}")
    out = tuple(conv_output_length(s, k, st, b, d, padding_after=a) for s, k, st, b, a, d in
                zip(size, kernel_t, stride_t, before, after, dilation_t, strict=True))
    return ConvGeometry(batch=batch, in_channels=in_channels, out_channels=out_channels,
                        groups=groups, input_size=tuple(size), kernel_size=kernel_t,
                        stride=stride_t, padding=before, dilation=dilation_t, output_size=out)


def transposed_conv_geometry(input_shape: Sequence[int], weight_shape: Sequence[int], stride,
                             padding, output_padding, groups: int, dilation,
                             spatial_dims: int) -> ConvGeometry:
    """Validate a transposed convolution's shapes and return its geometry.

    Shapes are batched: (N, C_in, *spatial) and (C_in, C_out/groups, *kernel), as in PyTorch.
    """
    n = spatial_dims
    _check_groups(groups)
    batch, in_channels, *size = input_shape
    weight_in, out_per_group, *kernel = weight_shape
    stride_t = expand(stride, n, "stride", minimum=1)
    dilation_t = expand(dilation, n, "dilation", minimum=1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transposed convolution "
                         f"(PyTorch has no 'same'/'valid' here), got {padding!r}")
    pad = expand(padding, n, "padding", minimum=0)
    out_pad = expand(output_padding, n, "output_padding", minimum=0)
    kernel_t = tuple(kernel)
    if any(k < 1 for k in kernel_t):
        raise ValueError(f"weight has an empty kernel: shape {tuple(weight_shape)}")
    if weight_in != in_channels:
        raise ValueError(f"weight.shape[0] must equal the input channels for a transposed "
                         f"convolution (weight layout (C_in, C_out/groups, *kernel)): "
                         f"{weight_in} != {in_channels}")
    if in_channels % groups:
        raise ValueError(f"input channels ({in_channels}) must be divisible by groups ({groups})")
    for axis, (op, st, d) in enumerate(zip(out_pad, stride_t, dilation_t, strict=True)):
        if op >= st and op >= d:
            raise ValueError(f"output_padding must be smaller than either stride or dilation on "
                             f"spatial axis {axis}: output_padding {op}, stride {st}, "
                             f"dilation {d}")
    out = tuple(transposed_output_length(*args) for args in
                zip(size, kernel_t, stride_t, pad, dilation_t, out_pad, strict=True))
    if any(o < 1 for o in out):
        raise ValueError(f"padding {pad} is too large: the transposed convolution's output "
                         f"size would be {out}")
    return ConvGeometry(batch=batch, in_channels=in_channels,
                        out_channels=out_per_group * groups, groups=groups,
                        input_size=tuple(size), kernel_size=kernel_t, stride=stride_t,
                        padding=pad, dilation=dilation_t, output_size=out, transposed=True,
                        output_padding=out_pad)


@dataclass(frozen=True)
class TilingAdvice:
    """How a kernel's placements cover one spatial axis, and what would make them tile evenly."""

    leftover: int  # input positions (padding included) after the last window, never read
    paddings: tuple[int, ...]  # symmetric paddings that tile evenly
    extra_padding: int  # or this much more padding in total, split before/after
    input_sizes: tuple[int, ...]  # or the nearest input sizes that tile evenly
    strides: tuple[int, ...]  # or these strides


def tiling_advice(size: int, kernel: int, stride: int = 1, padding: int = 0,
                  dilation: int = 1) -> TilingAdvice:
    """Check whether windows of a kernel, `stride` apart, end exactly at the padded input's edge."""
    span = dilation * (kernel - 1) + 1
    reach = size + 2 * padding - span  # distance the first window can move
    leftover = reach % stride if reach >= 0 else 0
    if leftover == 0:
        return TilingAdvice(0, (padding,), 0, (size,), (stride,))
    paddings = tuple(p for p in range(0, span + stride)
                     if (size + 2 * p - span) >= 0 and (size + 2 * p - span) % stride == 0)[:3]
    sizes = tuple(s for s in (size - leftover, size + stride - leftover) if s + 2 * padding >= span)
    strides = tuple(s for s in range(1, 2 * stride + 1) if reach % s == 0 and s != stride)
    near = sorted(strides, key=lambda s: (abs(s - stride), s))[:3]
    return TilingAdvice(leftover, paddings, stride - leftover, sizes, tuple(sorted(near)))
