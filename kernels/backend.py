"""Which implementation runs an op: Triton on CUDA, Triton's interpreter, or PyTorch's own ops.

The choice is explicit and reportable, never a silent fallback:
- CUDA tensors run the Triton kernels (unless the caller asked for "torch").
- CPU tensors run the same kernels through Triton's interpreter when TRITON_INTERPRET=1 was
  set before foveal.kernels was imported (that is how the tests run).
- Otherwise CPU tensors need the PyTorch reference backend, requested with
  `set_backend("torch")`, `with use_backend("torch"):` or FOVEAL_BACKEND=torch; without it they
  raise `BackendUnavailable` saying so.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Literal

import torch

BackendName = Literal["triton", "interpreter", "torch"]
Preference = Literal["auto", "triton", "torch"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Fixed at import: triton.jit reads the same variable when our kernels are decorated."""

_PREFERENCES = ("auto", "triton", "torch")
_env_preference = os.environ.get("FOVEAL_BACKEND", "auto")
if _env_preference not in _PREFERENCES:
    raise ValueError(f"FOVEAL_BACKEND must be one of {_PREFERENCES}, got {_env_preference!r}")
_preference: contextvars.ContextVar[str] = contextvars.ContextVar(
    "foveal_backend", default=_env_preference)


class BackendUnavailable(RuntimeError):
    """No backend can run this op on this device with the current preference."""


def _check(preference: str) -> None:
    if preference not in _PREFERENCES:
        raise ValueError(f"backend must be one of {_PREFERENCES}, got {preference!r}")


def set_backend(preference: Preference) -> None:
    """Set the backend preference for this context (thread or task): auto, triton or torch."""
    _check(preference)
    _preference.set(preference)


def get_backend_preference() -> str:
    return _preference.get()


@contextlib.contextmanager
def use_backend(preference: Preference) -> Iterator[None]:
    """Run the body with another backend preference, restoring the old one afterwards."""
    _check(preference)
    token = _preference.set(preference)
    try:
        yield
    finally:
        _preference.reset(token)


def backend_for(device: torch.device | str) -> BackendName:
    """The backend an op on `device` will run with now; raises if none can."""
    device = torch.device(device)
    preference = _preference.get()
    if preference == "torch":
        return "torch"
    if device.type == "cuda":
        return "interpreter" if INTERPRETED else "triton"
    from .launch import is_planned  # launch imports this module

    if is_planned(device):  # meta tensors standing for a GPU's (foveal compilecheck)
        return "triton"
    if INTERPRETED:
        return "interpreter"
    raise BackendUnavailable(
        f"foveal's Triton kernels need a CUDA tensor, got one on {device}. Use a CUDA device, "
        "set TRITON_INTERPRET=1 before importing foveal to run the kernels in Triton's "
        "interpreter (slow; for tests), or ask for PyTorch's ops with "
        "foveal.kernels.set_backend('torch') or FOVEAL_BACKEND=torch.")
