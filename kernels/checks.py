"""Tensor argument checks shared by every op, run before any launch.

Each failure names the op, the argument and the rule it broke.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, t: object, dims: tuple[int, ...] | None = None) -> None:
    """`t` must be a floating tensor of a supported dtype, with one of `dims` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported are float16, bfloat16, "
                        "float32 and float64")
    if dims is not None and t.dim() not in dims:
        wanted = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{op}: {name} must be {wanted}, got shape {tuple(t.shape)}")


def check_same_device_dtype(op: str, reference: torch.Tensor,
                            **others: torch.Tensor | None) -> None:
    """Every tensor in `others` must share `reference`'s (the input's) device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(f"{op}: {name} is on {t.device} but input is on {reference.device}; "
                             "move them to one device")
        if t.dtype != reference.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but input has {reference.dtype}; "
                             "they must match")


def check_bias(op: str, bias: torch.Tensor | None, channels: int, name: str = "bias") -> None:
    if bias is None:
        return
    check_tensor(op, name, bias)
    if bias.dim() != 1 or bias.shape[0] != channels:
        raise ValueError(f"{op}: {name} must have shape ({channels},) (one per output channel), "
                         f"got {tuple(bias.shape)}")


def check_residual(op: str, residual: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
    if residual is None:
        return
    check_tensor(op, "residual", residual)
    if tuple(residual.shape) != tuple(output_shape):
        raise ValueError(f"{op}: residual must have the output's shape {tuple(output_shape)}, "
                         f"got {tuple(residual.shape)}")
