"""Inputs in every layout and PyTorch activations for the depthwise-family tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAYOUTS = ("contiguous", "channels_last", "strided")

# The activations the kernels fuse, written with PyTorch's own functions.
ACTIVATIONS = {
    None: lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
    ("leaky_relu", 0.2): lambda z: F.leaky_relu(z, 0.2),
    ("leaky_relu", -0.5): lambda z: F.leaky_relu(z, -0.5),
}


def activate(z: torch.Tensor, activation) -> torch.Tensor:
    return ACTIVATIONS[activation](z)


def make_input(shape: tuple[int, ...], layout: str = "contiguous",
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random tensor of `shape`: contiguous, channels_last(_3d) or a non-contiguous view."""
    if layout == "contiguous":
        return torch.randn(shape, dtype=dtype)
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[len(shape)]
        return torch.randn(shape, dtype=dtype).to(memory_format=fmt)
    if layout == "strided":  # every other channel and last-axis element of a larger tensor
        big = torch.randn(shape[0], 2 * shape[1], *shape[2:-1], 2 * shape[-1], dtype=dtype)
        view = big[:, ::2, ..., 1::2]
        assert not view.is_contiguous()
        return view
    raise ValueError(layout)


def expected_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format PyTorch gives a convolution's output for input `x`."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def assert_layout_like(out: torch.Tensor, x: torch.Tensor) -> None:
    assert out.is_contiguous(memory_format=expected_format(x)), (
        f"output strides {out.stride()} do not follow the input's memory format")
