"""`foveal profile`: what the autotuner tried for one op call, what it chose, and what the
compiled kernels cost in registers, spills and shared memory.

The op runs once with every Triton kernel of foveal.kernels observed: each autotuned launch
records its key, its candidate configs with their times (`Autotuner.configs_timings`), the
chosen one (`best_config`), and each launch of a compiled kernel gives its resources
(`n_regs`, `n_spills`, `metadata.shared`, `num_warps`, `num_stages`). Only attributes present
across Triton 3.2-3.8 are read, each through getattr, so a missing one shows as unknown. Under
Triton's interpreter there is a single config and no compiled kernel; that is said, not hidden.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import pkgutil
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .device import synchronize
from .harness import as_leaves
from .ops import OpAdapter
from .workloads import Workload

NVTX_RANGE = "foveal_profile"  # the final, profiled call runs inside this NVTX push/pop range
_INTERPRETER_NOTE = ("Triton interpreter: one config, nothing compiled; tuning and resources "
                     "exist only on a GPU")


@dataclass
class Resources:
    """What the compiled kernel uses per program; None where this Triton does not say."""

    name: str | None = None
    registers: int | None = None
    spills: int | None = None
    shared_bytes: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    max_threads: int | None = None


@dataclass
class Candidate:
    config: dict[str, Any]
    time_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    status: str = "not benchmarked"  # timed | failed (out of resources) | not benchmarked
    chosen: bool = False
    resources: Resources | None = None


@dataclass
class Launch:
    kernel: str
    autotuned: bool
    key: dict[str, Any] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    pruned: list[dict[str, Any]] = field(default_factory=list)
    tuning_seconds: float | None = None
    note: str = ""


@dataclass
class ProfileReport:
    op: str
    workload: dict[str, Any]
    dtype: str
    device: str
    backend: str
    direction: str
    launches: list[Launch]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- reading Triton's objects ------------------------------------------------------------------
def config_dict(config: Any) -> dict[str, Any]:
    """A triton.Config as plain data: its meta-parameters plus warps and stages."""
    data = dict(getattr(config, "kwargs", {}))
    for attr in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        value = getattr(config, attr, None)
        if value is not None and not (attr == "num_ctas" and value == 1):
            data[attr] = value
    return data


def _matches(config: dict[str, Any], launch_kwargs: dict[str, Any]) -> bool:
    return all(launch_kwargs.get(k, v) == v for k, v in config.items())


def resources_of(kernel: Any) -> Resources | None:
    """Resources of a CompiledKernel; None for the interpreter (nothing compiled)."""
    if kernel is None or not hasattr(kernel, "metadata"):
        return None
    init = getattr(kernel, "_init_handles", None)  # loads the binary: sets n_regs, n_spills
    if callable(init):
        with contextlib.suppress(Exception):
            init()
    meta = kernel.metadata
    get = meta.get if isinstance(meta, dict) else (lambda k: getattr(meta, k, None))
    return Resources(name=getattr(kernel, "name", None) or get("name"),
                     registers=getattr(kernel, "n_regs", None),
                     spills=getattr(kernel, "n_spills", None), shared_bytes=get("shared"),
                     num_warps=get("num_warps"), num_stages=get("num_stages"),
                     max_threads=getattr(kernel, "n_max_threads", None))


def _timing(value: Any) -> tuple[float | None, float | None, float | None]:
    """configs_timings values: [median, p20, p80] (Triton 3.x) or a bare float."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    floats = [float(v) for v in values[:3]] + [None] * (3 - len(values[:3]))
    return floats[0], floats[1], floats[2]


Run = tuple[dict[str, Any], Any]  # (launch kwargs, compiled kernel or None) of one JIT run


def summarize_tuning(launch: Launch, configs: Sequence[Any], timings: dict | None,
                     chosen: Any, runs: Sequence[Run] = (), cache_hit: bool = False) -> None:
    """Fill `launch.candidates`/`pruned` from the autotuner's state after its run.

    `runs` are the JIT function's runs during this launch (their compiled kernels give each
    candidate's resources); `cache_hit`: the key was tuned earlier in this process, so
    nothing was measured now.
    """
    considered = list(timings) if timings else ([chosen] if chosen is not None else [])
    chosen_dict = config_dict(chosen) if chosen is not None else None
    for config in considered:
        data = config_dict(config)
        candidate = Candidate(data, chosen=data == chosen_dict)
        if timings:
            candidate.time_ms, candidate.p20_ms, candidate.p80_ms = _timing(timings[config])
            finite = candidate.time_ms is not None and math.isfinite(candidate.time_ms)
            candidate.status = "timed" if finite else "failed"
            if not finite:
                candidate.time_ms = candidate.p20_ms = candidate.p80_ms = None
        kernels = [k for kwargs, k in runs if _matches(data, kwargs)]
        candidate.resources = resources_of(kernels[-1]) if kernels else None
        launch.candidates.append(candidate)
    if cache_hit:
        launch.note = "tuned earlier in this process for the same key: timings not repeated"
        return
    kept = [c.config for c in launch.candidates]
    launch.pruned = [config_dict(c) for c in configs if config_dict(c) not in kept]
    if not timings:
        launch.note = ("a single config: nothing to tune" if len(configs) <= 1
                       else "pruned to a single candidate: nothing to tune")


# -- observing launches ------------------------------------------------------------------------
def _kernel_objects() -> list[tuple[str, Any]]:
    """Every Triton kernel object defined in foveal.kernels' modules, by qualified name."""
    from triton.runtime.jit import KernelInterface

    import foveal.kernels as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
    found: dict[int, tuple[str, Any]] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(package.__name__ + "."):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, KernelInterface) and id(value) not in found:
                found[id(value)] = (f"{module_name.rsplit('.', 1)[-1]}.{attr}", value)
    return list(found.values())


def _innermost(kernel: Any) -> Any:
    """The JIT (or interpreted) function under autotune/heuristics wrappers."""
    while hasattr(kernel, "fn") and hasattr(kernel.fn, "run"):
        kernel = kernel.fn
    return kernel


class _Observer:
    """Wraps `run` of each kernel object (as an instance attribute) and records launches."""

    def __init__(self) -> None:
        self.launches: list[Launch] = []
        self._active: list[list[Run]] = []  # runs of the JIT functions under each open launch
        self._undo: list[Callable[[], None]] = []

    def _patch(self, obj: Any, wrapper: Callable[..., Any]) -> None:
        obj.run = wrapper
        self._undo.append(lambda: obj.__dict__.pop("run", None))

    def watch_autotuner(self, name: str, tuner: Any) -> None:
        original = tuner.run
        arg_names = list(getattr(tuner, "arg_names", []))
        key_names = list(getattr(tuner, "keys", []))

        def run(*args, **kwargs):
            named = {**dict(zip(arg_names, args, strict=False)), **kwargs}
            key = {k: named[k] for k in key_names if k in named}
            dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in named.values()
                             if isinstance(v, torch.Tensor)})
            launch = Launch(name, autotuned=True, key={**key, "dtypes": dtypes})
            tuner.configs_timings = None  # so timings seen afterwards belong to this launch
            runs: list[Run] = []
            self._active.append(runs)
            cached_keys = len(tuner.cache)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._active.pop()
                launch.tuning_seconds = time.perf_counter() - start
                timings = getattr(tuner, "configs_timings", None)
                cache_hit = len(tuner.configs) > 1 and not timings and (
                    len(tuner.cache) == cached_keys)
                summarize_tuning(launch, tuner.configs, timings,
                                 getattr(tuner, "best_config", None), runs, cache_hit)
                self.launches.append(launch)

        self._patch(tuner, run)

    def watch_jit(self, name: str, fn: Any) -> None:
        original = fn.run

        def run(*args, **kwargs):
            kernel = original(*args, **kwargs)
            if self._active:
                self._active[-1].append((kwargs, kernel))
            else:  # a plain (not autotuned) kernel: one launch, its own resources
                config = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
                launch = Launch(name, autotuned=False)
                launch.candidates.append(Candidate(config, status="not autotuned", chosen=True,
                                                   resources=resources_of(kernel)))
                self.launches.append(launch)
            return kernel

        self._patch(fn, run)

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


@contextlib.contextmanager
def observe_kernels(kernels: Sequence[tuple[str, Any]] | None = None) -> Iterator[_Observer]:
    """Record launches of `kernels` (default: all of foveal.kernels) with fresh tuning."""
    from triton.runtime.autotuner import Autotuner

    observer = _Observer()
    try:
        for name, obj in kernels if kernels is not None else _kernel_objects():
            if isinstance(obj, Autotuner):
                obj.cache.clear()  # tune again, so this call's candidates are measured
                observer.watch_autotuner(name, obj)
                inner = _innermost(obj)
                if "run" not in vars(inner):
                    observer.watch_jit(name, inner)
            elif "run" not in vars(obj):
                observer.watch_jit(name, obj)
        yield observer
    finally:
        observer.restore()


def profile_op(adapter: OpAdapter, workload: Workload, dtype: str, device: torch.device, *,
               backward: bool = False) -> ProfileReport:
    """Run the op once (forward, or forward and backward) and report its kernel launches.

    On CUDA it then runs once more inside the NVTX range `NVTX_RANGE`, tuned and compiled,
    which is the call `ncu_command` asks Nsight Compute to profile.
    """
    from foveal.kernels.backend import INTERPRETED, backend_for

    adapter.check(workload)
    torch_dtype = getattr(torch, dtype)

    def call() -> None:
        inputs = adapter.make_inputs(workload, torch_dtype, device)
        if backward:
            leaves = as_leaves(inputs)
            out = adapter.foveal(workload, leaves)
            wrt = [v for v in leaves.values() if v.requires_grad]
            torch.autograd.grad(out, wrt, torch.randn_like(out))
        else:
            with torch.no_grad():
                adapter.foveal(workload, inputs)
        synchronize(device)

    with observe_kernels() as observer:
        call()
    if device.type == "cuda" and not INTERPRETED:
        torch.cuda.nvtx.range_push(NVTX_RANGE)
        try:
            call()
        finally:
            torch.cuda.nvtx.range_pop()
    for launch in observer.launches:
        if INTERPRETED:
            launch.note = "; ".join(filter(None, [launch.note, _INTERPRETER_NOTE]))
    return ProfileReport(op=workload.op, workload=workload.describe(), dtype=dtype,
                         device=str(device), backend=backend_for(device),
                         direction="forward+backward" if backward else "forward",
                         launches=observer.launches)


def _format_value(value: Any) -> str:
    """The inverse of workloads.parse_value: [56, 56] -> 56x56, True -> true."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def ncu_command(workload: Workload, dtype: str, *, backward: bool = False,
                device: str | None = None) -> str:
    """The Nsight Compute command that profiles this layer's final call (NVTX range)."""
    args = ["profile", workload.op, "--batch", str(workload.batch), "--dtype", dtype,
            "--layout", workload.layout, "--shape",
            *(f"{k}={_format_value(v)}" for k, v in workload.args.items())]
    if backward:
        args.append("--backward")
    if device:
        args += ["--device", device]
    return shlex.join(["ncu", "--nvtx", "--nvtx-include", f"{NVTX_RANGE}/", "--set", "full",
                       "-f", "-o", "foveal_profile", sys.executable, "-m", "foveal.clients.cli",
                       *args])


# -- text output -------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_report(report: ProfileReport) -> str:
    """One block per launch: key, candidates with times and resources, the chosen one marked."""
    lines = [f"foveal profile: {report.op} {report.direction}, {report.dtype}, "
             f"{report.device} ({report.backend})",
             "workload: " + ", ".join(f"{k}={v}" for k, v in report.workload["args"].items())
             + f", batch={report.workload['batch']}, layout={report.workload['layout']}"]
    if not report.launches:
        lines.append("no Triton kernel was launched")
    for i, launch in enumerate(report.launches, 1):
        kind = "autotuned" if launch.autotuned else "not autotuned"
        lines.append("")
        lines.append(f"[{i}] {launch.kernel} ({kind})"
                     + (f", tuning took {launch.tuning_seconds:.2f} s"
                        if launch.tuning_seconds is not None else ""))
        if launch.key:
            lines.append("    key: " + ", ".join(f"{k}={v}" for k, v in launch.key.items()))
        meta = sorted({k for c in launch.candidates for k in c.config})
        headers = [*meta, "median ms", "p20", "p80", "status", "regs", "spills", "smem B", ""]
        rows = []
        for c in launch.candidates:
            r = c.resources or Resources()
            rows.append([*(_cell(c.config.get(k)) for k in meta), _cell(c.time_ms),
                         _cell(c.p20_ms), _cell(c.p80_ms), c.status, _cell(r.registers),
                         _cell(r.spills), _cell(r.shared_bytes), "<- chosen" if c.chosen else ""])
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
        for row in [headers, *rows]:
            lines.append("    " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths,
                                                                           strict=True)))
        if launch.pruned:
            lines.append(f"    pruned before tuning: {len(launch.pruned)} config(s): "
                         + "; ".join(" ".join(f"{k}={v}" for k, v in p.items())
                                     for p in launch.pruned))
        if launch.note:
            lines.append(f"    note: {launch.note}")
    return "\n".join(lines)
