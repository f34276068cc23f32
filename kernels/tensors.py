"""Small tensor utilities shared by the launchers: layouts, views and index-width checks."""

from __future__ import annotations

import torch

INT32_LIMIT = 2**31 - 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format PyTorch's convolutions give their output for input `t`.

    Channels-last (2D or 3D) when the tensor is laid out that way and not also plainly
    contiguous (shapes with C == 1 or a 1x1 image are both, and count as contiguous).
    """
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def empty_like_layout(shape: tuple[int, ...], like: torch.Tensor,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor of `shape` in `like`'s memory format, device and dtype."""
    fmt = memory_format_of(like)
    if len(shape) != like.dim():
        fmt = torch.contiguous_format
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype, memory_format=fmt)


def unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    """`t` (4-D or 5-D) with unit channel stride: itself, or a channels-last copy.

    For kernels that read a pixel's channels as one vector: with another layout every element
    needs its own address in registers (FP8 tiles and the deformable kernels spilled).
    """
    if t.stride(1) == 1 or t.shape[1] == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4
                        else torch.channels_last_3d)


def as_5d(t: torch.Tensor) -> torch.Tensor:
    """View an (N, C, *spatial) tensor with 1-3 spatial axes as (N, C, D, H, W) without copying."""
    while t.dim() < 5:
        t = t.unsqueeze(2)
    return t


def pad_front(values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    """Left-pad a per-axis tuple to the three axes (D, H, W) of the 5-D view."""
    return (fill,) * (3 - len(values)) + tuple(values)  # type: ignore[return-value]


def needs_int64(*tensors: torch.Tensor | None) -> bool:
    """True when an element offset of any tensor can exceed a signed 32-bit index."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(),
                                                                     strict=True))
        if span >= INT32_LIMIT or t.numel() >= INT32_LIMIT:
            return True
    return False
