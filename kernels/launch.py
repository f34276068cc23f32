"""The one place foveal launches a Triton kernel, and the planning mode that records launches.

Every launcher works out its launch from shapes, strides and dtypes alone (host-side tables
and scratch buffers included) and hands it to `launch` as a `LaunchPlan`. On a GPU the plan is
launched. Inside `planning(target)` it is recorded instead, and the launchers may be given
meta tensors: `foveal compilecheck` runs the ops that way on a machine without a GPU and
compiles exactly the launches a GPU run would make, with the same host decisions, constexprs
and autotuner configs.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .backend import INTERPRETED
from .library import RealImplementations

Grid = tuple[int, ...] | Callable[[dict[str, Any]], tuple[int, ...]]


@dataclass(frozen=True)
class PlanningTarget:
    """The GPU a planned launch is meant for: what host decisions depend on."""

    name: str
    capability: int  # e.g. 90 for sm_90
    multiprocessors: int
    shared_memory_per_block: int  # bytes a block may opt in to


@dataclass
class LaunchPlan:
    """One kernel launch: the kernel object (autotuned or plain), its grid and arguments."""

    kernel: Any
    grid: Grid
    args: tuple[Any, ...]
    constexprs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The Triton function's name (under any autotuner)."""
        fn = self.kernel
        while not hasattr(fn, "__name__") and hasattr(fn, "fn"):
            fn = fn.fn
        return getattr(fn, "__name__", type(fn).__name__)


@dataclass
class _Recorder:
    target: PlanningTarget
    plans: list[LaunchPlan] = field(default_factory=list)


_recorder: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "foveal_planning", default=None)


def launch(kernel: Any, grid: Grid, *args: Any, **constexprs: Any) -> None:
    """Launch `kernel[grid](*args, **constexprs)`, or record it inside `planning`.

    Triton launches on the current CUDA device, so the tensors' own device is made current
    for the launch: a model on cuda:1 then runs there whatever the caller's current device.
    """
    plan = LaunchPlan(kernel, grid, args, constexprs)
    recorder = _recorder.get()
    if recorder is not None:
        recorder.plans.append(plan)
        return
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda" and not INTERPRETED:
        with torch.cuda.device(device):
            kernel[grid](*args, **constexprs)
    else:
        kernel[grid](*args, **constexprs)


@contextlib.contextmanager
def planning(target: PlanningTarget) -> Iterator[list[LaunchPlan]]:
    """Record launches instead of running them; meta tensors then stand for `target`'s.

    foveal's operators run their real implementations here, forward and backward, even on
    meta tensors, whose dispatch would otherwise reach the fake implementations.
    """
    if INTERPRETED:
        raise RuntimeError("planning GPU launches needs the real Triton compiler: unset "
                           "TRITON_INTERPRET before foveal.kernels is imported")
    recorder = _Recorder(target)
    token = _recorder.set(recorder)
    try:
        with RealImplementations():
            yield recorder.plans
    finally:
        _recorder.reset(token)


def planning_target() -> PlanningTarget | None:
    """The target being planned for, or None when launches run."""
    recorder = _recorder.get()
    return recorder.target if recorder is not None else None


def is_planned(device: torch.device) -> bool:
    """True for a meta tensor's device inside `planning`: it stands for a GPU's."""
    return device.type == "meta" and _recorder.get() is not None


def multiprocessor_count(device: torch.device) -> int | None:
    """SMs of the GPU that will run a kernel on `device`; None when no GPU runs it.

    Launchers size split-K reductions with it; under the interpreter they use one split.
    """
    if INTERPRETED:
        return None
    target = planning_target()
    if target is not None and device.type == "meta":
        return target.multiprocessors
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return None


def compute_capability(device: torch.device) -> int | None:
    """The GPU's compute capability as 80, 90...; None when no GPU runs `device`'s kernels."""
    target = planning_target()
    if target is not None and device.type == "meta":
        return target.capability
    if device.type == "cuda" and not INTERPRETED:
        major, minor = torch.cuda.get_device_capability(device)
        return major * 10 + minor
    return None


def shared_memory_per_block(device: torch.device) -> int:
    """Bytes of shared memory one block may use on the GPU that runs `device`'s kernels.

    Autotuners drop tiles past it. Without a GPU (the interpreter) there is no limit.
    """
    target = planning_target()
    if target is not None and device.type == "meta":
        return target.shared_memory_per_block
    if device.type == "cuda" and not INTERPRETED:
        return torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return 2**31


def upcast_operands(dtype: torch.dtype) -> bool:
    """Whether dot kernels convert their operands to the accumulator's dtype first.

    Only under Triton's interpreter, which multiplies bf16 tiles wrongly; the conversion is
    exact, so results match the GPU's. On a GPU it would cost the tensor cores.
    """
    return INTERPRETED and dtype != torch.float64
