"""The benchmark loop: check every output against float64 PyTorch, then time what is right.

For each workload, dtype and direction (forward, and backward with --backward) every variant
(foveal, PyTorch eager, the adapter's extra baselines, torch.compile when asked) is first run
on fresh random inputs and compared with a float64 reference; a wrong or failing variant is
reported and never timed. The right ones are timed rotating among several input sets (so no
cache holds a previous call's data), and their peak memory is measured. A variant that does not
apply raises `SkipVariant` and is reported as skipped with its reason. An interrupt (Ctrl-C, or
the SIGINT of a time limit) stops the run but keeps what was measured: the rest is skipped.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .device import (
    Ceilings,
    Timer,
    Timing,
    default_timer,
    free_memory_bytes,
    l2_cache_bytes,
    measure_ceilings,
    peak_memory,
    poison_allocator,
    synchronize,
)
from .ops import ADAPTERS, Inputs, OpAdapter, OpFunction
from .workloads import Workload, WorkloadError

FOVEAL, PYTORCH, COMPILED = "foveal", "pytorch", "torch.compile"

# ||out - ref|| / ||ref|| allowed per dtype (float64 reference). fp32 covers TF32 (~3e-4);
# fp16 and bf16 cover rounding of inputs and outputs. A wrong index gives errors near 1.
# FP8 ops are checked against float64 on their dequantized operands; e4m3 rounding of what
# they quantize themselves (an intermediate) is allowed its RMS bound, 2**-4 sqrt(2/3)
# (docs/kernels.md, FP8 numerics).
TOLERANCE = {"float64": 1e-9, "float32": 2e-3, "float16": 5e-3, "bfloat16": 2e-2,
             "float8_e4m3fn": 5.1e-2}
INTERRUPTED = "interrupted (Ctrl-C or the time limit's SIGINT)"


class SkipVariant(Exception):
    """Raised by a variant that cannot or should not run here; the message says why. The variant
    is reported as skipped, which is not a failure (e.g. torch.compile not run on a CPU)."""


def skipped(reason: str) -> OpFunction:
    """A variant that is listed, never run, and reported as skipped for `reason`."""
    def skip(_inputs: Inputs) -> torch.Tensor:
        raise SkipVariant(reason)
    return skip


@dataclass
class Settings:
    device: torch.device
    dtypes: tuple[str, ...] | None = None  # overrides each workload's own dtypes
    forward: bool = True
    backward: bool = False
    compile: bool = False
    # No CUDA graphs: they would copy every rotated input into static buffers, timing a copy
    # foveal does not do; kernel selection is the same as mode "max-autotune".
    compile_mode: str = "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"
    max_input_sets: int = 8
    max_minutes: float | None = None
    seed: int = 0
    label: str = "bench"
    # ||out - ref|| / ||ref|| allowed per dtype; None: TOLERANCE (one op). Whole networks
    # accumulate rounding over dozens of layers and pass their own.
    tolerances: Mapping[str, float] | None = None

    def tolerance(self, dtype: str) -> float:
        return (self.tolerances or TOLERANCE)[dtype]

    def to_json(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtypes": list(self.dtypes or []),
                "forward": self.forward, "backward": self.backward, "compile": self.compile,
                "compile_mode": self.compile_mode if self.compile else None,
                "compile_backend": (self.compile_backend if isinstance(self.compile_backend, str)
                                    else "custom") if self.compile else None,
                "max_input_sets": self.max_input_sets, "max_minutes": self.max_minutes,
                "seed": self.seed, "label": self.label,
                "tolerances": dict(self.tolerances or TOLERANCE)}


def compiled(fn: Callable[..., Any], settings: Settings) -> Callable[..., Any]:
    """torch.compile of `fn` with the run's backend and mode, from a fresh cache (so no
    recompile limit is reached across cases). Compiles on its first call."""
    torch.compiler.reset()
    options: dict[str, Any] = {"backend": settings.compile_backend, "dynamic": False}
    if settings.compile_backend == "inductor":
        options["mode"] = settings.compile_mode
    return torch.compile(fn, **options)


@dataclass
class VariantResult:
    """One implementation on one case. status: ok, wrong, error or skipped."""

    status: str
    error: float | None = None
    errors: dict[str, float] = field(default_factory=dict)
    tolerance: float | None = None
    timing: Timing | None = None
    peak_memory_bytes: int | None = None
    message: str = ""


@dataclass
class CaseResult:
    workload: Workload
    dtype: str
    direction: str  # "forward" or "backward"
    flops: int
    bytes: int
    input_sets: int = 0
    variants: dict[str, VariantResult] = field(default_factory=dict)
    message: str = ""

    @property
    def status(self) -> str:
        """foveal's status decides the case; a case without a foveal result was skipped."""
        foveal = self.variants.get(FOVEAL)
        return foveal.status if foveal else "skipped"


@dataclass
class BenchReport:
    environment: dict[str, Any]
    ceilings: Ceilings
    settings: Settings
    cases: list[CaseResult]
    interrupted: bool = False

    @property
    def meaningful(self) -> bool:
        """Timings mean something only for compiled kernels on a GPU."""
        return self.environment.get("backend") == "triton"

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if any(v.status in ("wrong", "error")
                                             for v in c.variants.values())]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64; NaN or inf anywhere, or a wrong shape, gives inf."""
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf
    out64 = out.detach().to(device=ref.device, dtype=torch.float64)
    if not bool(torch.isfinite(out64).all()):
        return math.inf
    scale = torch.linalg.vector_norm(ref).item()
    return torch.linalg.vector_norm(out64 - ref).item() / max(scale, 1e-300)


def _mismatch(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], tolerance: float) -> str:
    """Why outputs failed the check: a wrong shape, or their relative errors."""
    problems = []
    for name, (out, ref) in pairs.items():
        if tuple(out.shape) != tuple(ref.shape):
            problems.append(f"{name} shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
        elif not (error := relative_error(out, ref)) <= tolerance:
            problems.append(f"{name} relative error {error:.3g} > tolerance {tolerance:.0e}")
    return "; ".join(problems) + ": not timed"


def _to_float64(inputs: Inputs, requires_grad: bool = False) -> Inputs:
    return {k: v.detach().double().requires_grad_(requires_grad and v.is_floating_point())
            for k, v in inputs.items()}


def as_leaves(inputs: Inputs) -> Inputs:
    """Fresh autograd leaves sharing the inputs' storage."""
    return {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}


def describe_error(err: BaseException) -> str:
    """The error's type and first line, short enough for a table note."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


class _Runner:
    """Runs the cases of one benchmark with fixed settings, timer and adapters."""

    def __init__(self, settings: Settings, adapters: Mapping[str, OpAdapter], timer: Timer):
        self.settings = settings
        self.adapters = adapters
        self.timer = timer
        self.device = settings.device
        self.interrupted = False

    # -- inputs ----------------------------------------------------------------------------
    def input_sets(self, adapter: OpAdapter, workload: Workload, dtype: torch.dtype,
                   first: Inputs) -> list[Inputs]:
        """Enough input sets that one round of calls overflows the L2 cache four times over,
        bounded by `max_input_sets` and by a quarter of the free memory. One on a CPU, where
        nothing is timed for real and each interpreted call is slow."""
        if self.device.type != "cuda":
            return [first]
        per_set = sum(t.numel() * t.element_size() for t in first.values())
        wanted = math.ceil(4 * l2_cache_bytes(self.device) / max(per_set, 1))
        free = free_memory_bytes(self.device) or 0
        fits = max(1, free // (4 * max(per_set, 1)))
        count = max(1, min(self.settings.max_input_sets, wanted, fits))
        return [first] + [adapter.make_inputs(workload, dtype, self.device)
                          for _ in range(count - 1)]

    def variants(self, adapter: OpAdapter, workload: Workload) -> dict[str, OpFunction]:
        eager = functools.partial(adapter.eager, workload)
        found: dict[str, OpFunction] = {FOVEAL: functools.partial(adapter.foveal, workload),
                                        PYTORCH: eager}
        found.update(adapter.baselines(workload))
        if self.settings.compile and adapter.compiles:
            found[COMPILED] = compiled(eager, self.settings)
        return found

    # -- one variant -----------------------------------------------------------------------
    def forward(self, fn: OpFunction, sets: list[Inputs], ref: torch.Tensor,
                tolerance: float, itemsize: int) -> VariantResult:
        with torch.no_grad():
            poison_allocator(ref.numel() * itemsize, self.device)
            out = fn(sets[0])
            synchronize(self.device)
            error = relative_error(out, ref)
            result = VariantResult("ok", error, {"output": error}, tolerance)
            if not error <= tolerance:
                result.status = "wrong"
                result.message = _mismatch({"output": (out, ref)}, tolerance)
                return result
            del out
            result.peak_memory_bytes = peak_memory(lambda: fn(sets[0]), self.device)
            rotation = itertools.cycle(sets)
            result.timing = self.timer(lambda: fn(next(rotation)))
        return result

    def backward(self, fn: OpFunction, sets: list[Inputs], grads_out: list[torch.Tensor],
                 ref_grads: dict[str, torch.Tensor], tolerance: float,
                 itemsize: int) -> VariantResult:
        graphs = []
        for inputs, grad_out in zip(sets, grads_out, strict=True):
            leaves = as_leaves(inputs)
            out = fn(leaves)
            wrt = [leaves[name] for name in ref_grads]
            graphs.append((out, wrt, grad_out))

        def step(graph=None):
            out, wrt, grad_out = graph or next(rotation)
            return torch.autograd.grad(out, wrt, grad_out, retain_graph=True)

        poison_allocator(max(g.numel() for g in ref_grads.values()) * itemsize, self.device)
        grads = step(graphs[0])
        synchronize(self.device)
        pairs = {f"grad_{name}": (g, ref_grads[name])
                 for name, g in zip(ref_grads, grads, strict=True)}
        errors = {name: relative_error(*pair) for name, pair in pairs.items()}
        worst = max(errors.values())
        result = VariantResult("ok", worst, errors, tolerance)
        if not worst <= tolerance:
            result.status = "wrong"
            result.message = _mismatch(pairs, tolerance)
            return result
        del grads
        result.peak_memory_bytes = peak_memory(lambda: step(graphs[0]), self.device)
        rotation = itertools.cycle(graphs)
        result.timing = self.timer(step)
        return result

    # -- one case --------------------------------------------------------------------------
    def run_case(self, workload: Workload, dtype_name: str, direction: str) -> CaseResult:
        adapter = self.adapters[workload.op]
        dtype = getattr(torch, dtype_name)
        cost = adapter.cost(workload, dtype, backward=direction == "backward")
        case = CaseResult(workload, dtype_name, direction, cost.flops, cost.bytes)
        tolerance = self.settings.tolerance(dtype_name)
        itemsize = torch.empty((), dtype=dtype).element_size()
        torch.manual_seed(self.settings.seed)
        try:
            first = adapter.make_inputs(workload, dtype, self.device)
            sets = self.input_sets(adapter, workload, dtype, first)
            case.input_sets = len(sets)
            variants = self.variants(adapter, workload)
            if direction == "forward":
                with torch.no_grad():
                    ref = adapter.reference(workload, _to_float64(first))
                measure = lambda fn: self.forward(fn, sets, ref, tolerance, itemsize)
            else:
                ref64_inputs = _to_float64(first, requires_grad=True)
                ref_out = adapter.reference(workload, ref64_inputs)
                with torch.no_grad():
                    like = adapter.eager(workload, first)
                grads_out = [torch.randn_like(like) for _ in sets]
                wrt = {k: v for k, v in ref64_inputs.items() if v.requires_grad}
                ref_grads = dict(zip(wrt, torch.autograd.grad(
                    ref_out, list(wrt.values()), grads_out[0].double()), strict=True))
                del ref_out, like
                measure = lambda fn: self.backward(fn, sets, grads_out, ref_grads, tolerance,
                                                   itemsize)
        except Exception as err:  # inputs or reference failed: nothing can be checked
            case.message = f"could not prepare the case: {describe_error(err)}"
            case.variants[FOVEAL] = VariantResult("error", message=case.message)
            return case
        for name, fn in variants.items():
            if self.interrupted:
                case.variants[name] = VariantResult("skipped", message=INTERRUPTED)
                continue
            try:
                case.variants[name] = measure(fn)
            except SkipVariant as err:
                case.variants[name] = VariantResult("skipped", message=str(err))
            except KeyboardInterrupt:  # keep what was measured; skip the rest
                self.interrupted = True
                case.variants[name] = VariantResult("skipped", message=INTERRUPTED)
            except Exception as err:
                case.variants[name] = VariantResult("error", tolerance=tolerance,
                                                    message=describe_error(err))
        return case


ProgressFn = Callable[[int, int, CaseResult], None]


def print_progress(index: int, total: int, case: CaseResult) -> None:
    """A progress line per finished case on stderr: each variant's median time (marked * when
    not meaningful: the CPU interpreter) or its status."""
    parts = []
    for name, v in case.variants.items():
        shown = (f"{v.timing.median_ms:.4g} ms" + ("" if v.timing.meaningful else "*")
                 if v.timing else v.status)
        parts.append(f"{name} {shown}")
    print(f"[{index + 1}/{total}] {case.workload.name} {case.dtype} {case.direction}: "
          + (", ".join(parts) or case.message), file=sys.stderr, flush=True)


CheckpointFn = Callable[["BenchReport"], None]
Case = tuple[Workload, str, str]  # (workload, dtype, direction)


def plan(workloads: Sequence[Workload], settings: Settings,
         adapters: Mapping[str, OpAdapter] = ADAPTERS) -> list[Case]:
    """The (workload, dtype, direction) cases of a run: every forward case first, so a time
    budget that runs out cuts backward cases before any forward one. Cases an op does not
    have (an FP8 op's backward, a float16 op in FP8) are left out."""
    directions = [d for d, on in (("forward", settings.forward),
                                  ("backward", settings.backward)) if on]
    return [(w, dtype, direction) for direction in directions for w in workloads
            for dtype in (settings.dtypes or w.dtypes)
            if adapters[w.op].runs(dtype, direction == "backward")]


def check_workloads(workloads: Sequence[Workload],
                    adapters: Mapping[str, OpAdapter] = ADAPTERS) -> None:
    """Every workload names a known op and has valid arguments: fail before measuring."""
    for w in workloads:
        if w.op not in adapters:
            raise WorkloadError(f"workload {w.name!r}: no benchmark adapter for op {w.op!r}; "
                                f"known ops: {sorted(adapters)}")
        adapters[w.op].check(w)


def run_benchmark(workloads: Sequence[Workload], settings: Settings, *,
                  adapters: Mapping[str, OpAdapter] = ADAPTERS, timer: Timer | None = None,
                  progress: ProgressFn | None = None,
                  environment: dict[str, Any] | None = None,
                  cases: Sequence[Case] | None = None,
                  checkpoint: CheckpointFn | None = None) -> BenchReport:
    """Measure the device's ceilings, then check and time every case.

    `cases` (of `workloads`) replaces the cases `plan` makes of them (e.g. a resumed run leaves
    out what an earlier one measured). `checkpoint` receives the report so far after every case
    that ran and after the last one, so a run killed at a time limit has already handed over
    everything it measured.
    """
    from foveal.kernels.backend import backend_for

    from .environment import environment as describe

    check_workloads(workloads, adapters)
    cases = list(cases) if cases is not None else plan(workloads, settings, adapters)
    if backend_for(settings.device) == "torch":
        raise ValueError("the backend preference is 'torch' (FOVEAL_BACKEND or set_backend): "
                         "the benchmark would time PyTorch against itself")
    timer = timer or default_timer(settings.device)
    ceilings = measure_ceilings(settings.device, sorted({d for _, d, _ in cases}), timer)
    deadline = (time.monotonic() + 60 * settings.max_minutes
                if settings.max_minutes is not None else None)
    runner = _Runner(settings, adapters, timer)
    results: list[CaseResult] = []
    report = BenchReport(environment or describe(settings.device), ceilings, settings, results)
    for index, (workload, dtype, direction) in enumerate(cases):
        skip = None
        if runner.interrupted:
            skip = f"skipped: {INTERRUPTED}"
        elif deadline is not None and time.monotonic() >= deadline:
            skip = f"skipped: time budget of {settings.max_minutes} min used up"
        else:
            try:
                case = runner.run_case(workload, dtype, direction)
            except KeyboardInterrupt:  # while preparing the case: skip it and the rest
                runner.interrupted = True
                skip = f"skipped: {INTERRUPTED}"
        if skip is not None:
            adapter = adapters[workload.op]
            cost = adapter.cost(workload, getattr(torch, dtype), direction == "backward")
            case = CaseResult(workload, dtype, direction, cost.flops, cost.bytes, message=skip)
        results.append(case)
        report.interrupted = runner.interrupted
        if checkpoint and (skip is None or index == len(cases) - 1):
            checkpoint(report)
        if progress:
            progress(index, len(cases), case)
    return report
