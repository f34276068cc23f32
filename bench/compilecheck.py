"""`foveal compilecheck`: every kernel launch of the benchmark workloads, compiled for real GPUs
on a machine without one, with what the machine code uses and the rules it must keep.

For each workload, dtype and target architecture, the op runs on meta tensors inside
`foveal.kernels.launch.planning`: the launchers make the same host-side decisions as on that GPU
(kernel choice, tap tables, split-K counts, constexprs) and record their launches instead of
running them. Each launch is specialised by Triton's own binder for every config its autotuner
keeps after pruning (`offline_compiler.specialize`), the distinct specializations are compiled in
parallel processes (`offline_compiler.compile_job`), and the rules below are checked:

- it compiles;
- its shared memory fits one block of the architecture;
- a tl.dot kernel running fp16/bf16 uses tensor-core instructions (wgmma or mma);
- a tl.dot kernel running FP8 (e4m3) uses FP8 tensor-core instructions (wgmma on sm_90);
- no config the autotuner can pick spills registers.

Three modes per case: inference (no autograd: the service's path), training (forward with
autograd, then the backward), and training under `torch.use_deterministic_algorithms`; an
inference-only op (FP8) is checked in inference whatever modes are asked. A dtype an
architecture cannot run (FP8 before sm_89) is not compiled for it: the case is reported as
skipped, with the reason.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import offline_compiler as oc
from .workloads import Workload

MODES = ("inference", "training", "deterministic")
# The quick subset's modes: training launches the forward kernels too (with the same
# specializations as inference for every gate workload's activation).
QUICK_MODES = ("training", "deterministic")
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")
TENSOR_CORE_DTYPES = ("float16", "bfloat16")
# Checked where a workload lists them (FP8 ops run in nothing else), on sm_89 and newer.
FP8_DTYPES = ("float8_e4m3fn",)
CHECKABLE_DTYPES = (*DEFAULT_DTYPES, *FP8_DTYPES)
GATE_TAG = "compile-gate"  # workloads.toml tag of the quick subset `make test` checks
CACHE_ENV = "FOVEAL_COMPILE_CACHE"


@dataclass(frozen=True)
class Case:
    workload: Workload
    dtype: str
    mode: str
    arch: str

    @property
    def label(self) -> str:
        return f"{self.workload.name} {self.dtype} {self.mode} {self.arch}"


@dataclass
class Job:
    """One distinct kernel specialization: what it is, who used it, and what it compiled to."""

    spec: oc.CompileJob
    kernel: str
    config: dict[str, Any]  # the autotuner's config ({} for a plain kernel)
    constexprs: dict[str, Any]  # the launcher's own constexprs (activation, layout flags...)
    dtypes: set[str] = field(default_factory=set)  # the dtypes of the cases that launch it
    result: oc.Compiled = field(default_factory=oc.Compiled)
    key: str = ""  # `_cache_key`: where its result is cached and kept


@dataclass
class CompileRun:
    """Everything one check compiled: distinct jobs, and for each case the jobs it launches
    (one list per kernel launch: the candidates the autotuner can pick from)."""

    archs: list[str]
    triton: str
    jobs: list[Job] = field(default_factory=list)
    cases: list[tuple[Case, list[list[int]]]] = field(default_factory=list)
    planning_errors: list[tuple[Case, str]] = field(default_factory=list)
    skipped: list[tuple[Case, str]] = field(default_factory=list)  # (case, why not compiled)
    seconds: float = 0.0


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@dataclass
class PlannedLaunch:
    """One launch of a case: its kernel, and (config, specialization) per candidate config."""

    kernel: str
    constexprs: dict[str, Any]
    candidates: list[tuple[Any, oc.CompileJob]]


def plan_case(case: Case) -> list[PlannedLaunch]:
    """The launches the op makes for this case on its architecture, from meta tensors.

    Specialised inside the planning context, so the autotuners' pruners see the target (its
    shared memory per block) as they would on that GPU.
    """
    from foveal.kernels.launch import PlanningTarget, planning

    from .harness import as_leaves
    from .ops import ADAPTERS

    arch = oc.ARCHS[case.arch]
    adapter = ADAPTERS[case.workload.op]
    target = PlanningTarget(arch.gpu, arch.capability, arch.multiprocessors,
                            arch.shared_per_block)
    with planning(target) as plans:
        inputs = adapter.make_inputs(case.workload, getattr(torch, case.dtype),
                                     torch.device("meta"))
        if case.mode == "inference":
            with torch.no_grad():
                adapter.foveal(case.workload, inputs)
        else:
            with _deterministic(case.mode == "deterministic"):
                leaves = as_leaves(inputs)
                out = adapter.foveal(case.workload, leaves)
                wanted = [v for v in leaves.values() if v.requires_grad]
                torch.autograd.grad(out, wanted, torch.empty_like(out))
        return [PlannedLaunch(plan.name, dict(plan.constexprs),
                              oc.specialize(plan.kernel, plan.args, plan.constexprs, arch))
                for plan in plans]


def config_dict(config: Any) -> dict[str, Any]:
    """A triton.Config (or None for a plain kernel) as plain data."""
    if config is None:
        return {}
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def case_dtypes(workload: Workload, dtypes: Sequence[str] | None) -> list[str]:
    """The dtypes to check `workload` in: `dtypes` (default: DEFAULT_DTYPES and the FP8 dtypes
    the workload lists) that its op runs."""
    from .ops import ADAPTERS

    if dtypes is None:
        dtypes = [*DEFAULT_DTYPES, *(d for d in FP8_DTYPES if d in workload.dtypes)]
    return [d for d in dtypes if d in ADAPTERS[workload.op].dtypes]


def case_modes(workload: Workload, modes: Sequence[str]) -> list[str]:
    """`modes`, or inference alone for an op without a backward."""
    from .ops import ADAPTERS

    if ADAPTERS[workload.op].differentiable:
        return list(modes)
    return ["inference"] if modes else []


def unsupported(dtype: str, arch: str) -> str | None:
    """Why `arch` cannot run `dtype` (None: it can)."""
    from foveal.kernels.fp8 import FP8_MIN_CAPABILITY

    capability = oc.ARCHS[arch].capability
    if dtype in FP8_DTYPES and capability < FP8_MIN_CAPABILITY:
        return (f"{dtype} needs FP8 tensor cores (sm_{FP8_MIN_CAPABILITY} or newer); {arch} "
                "has none: not compiled")
    return None


def cases_for(workloads: Sequence[Workload], dtypes: Sequence[str] | None, archs: Sequence[str],
              modes: Sequence[str] = MODES) -> tuple[list[Case], list[tuple[Case, str]]]:
    """(cases to compile, cases skipped with the reason): per workload its `case_dtypes` and
    `case_modes`, on every architecture that can run the dtype."""
    cases, skipped = [], []
    for arch in archs:
        for w in workloads:
            for dtype in case_dtypes(w, dtypes):
                for mode in case_modes(w, modes):
                    case, why = Case(w, dtype, mode, arch), unsupported(dtype, arch)
                    if why is None:
                        cases.append(case)
                    else:
                        skipped.append((case, why))
    return cases, skipped


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "foveal" / "compilecheck")


def _cache_key(job: oc.CompileJob, triton_version: str) -> str:
    """Triton's version, the arch, the kernel's source hash (callees included) and the
    specialization: a kernel edit or another Triton never reuses a stale result."""
    import importlib

    fn = oc.jit_function(getattr(importlib.import_module(job.module), job.name))
    text = "\n".join((triton_version, job.arch, fn.cache_key, _portable(job.specialization)))
    return hashlib.sha256(text.encode()).hexdigest()


def _portable(specialization: str) -> str:
    """The specialization without this machine's paths: Triton records where its libdevice
    lies (inside the virtual environment), which the compiled code does not depend on, so a
    clone elsewhere finds the kept results."""
    data = json.loads(specialization)
    options = data.get("options") or {}
    if options.get("extern_libs"):
        options["extern_libs"] = [[name, Path(path).name] for name, path in options["extern_libs"]]
    return json.dumps(data, sort_keys=True)


Planned = list[tuple[str, dict[str, Any], list[tuple[dict[str, Any], oc.CompileJob]]]]


def _plan_in_worker(case: Case) -> Planned | str:
    """Plan one case in a worker process: each launch's kernel, constexprs and candidates
    (configs as plain data, so the result pickles), or the error that stopped it."""
    try:
        return [(launch.kernel, launch.constexprs,
                 [(config_dict(config), spec) for config, spec in launch.candidates])
                for launch in plan_case(case)]
    except Exception as err:  # a case that cannot plan is a finding, not a crash
        return f"{type(err).__name__}: {err}"


def _cached(key: str) -> oc.Compiled | None:
    path = _cache_dir() / f"{key}.json"
    return oc.Compiled(**json.loads(path.read_text())) if path.is_file() else None


def kept_results(triton_version: str) -> dict[str, oc.Compiled]:
    """The results kept under bench/results/compile/ for this Triton, by cache key.

    The key covers the kernel's source (callees and line number included), the
    specialization and Triton's version, so a clean checkout compiles only the kernels changed
    since the results were kept, not the ~40 minutes of a cold run.
    """
    from .compile_page import RESULTS_DIR
    from .compile_report import result_name

    names = {f.name for f in fields(oc.Compiled)}
    kept = {}
    for path in sorted(RESULTS_DIR.glob(result_name(triton_version, "*"))):
        for job in json.loads(path.read_text()).get("jobs", []):
            if job.get("key") and job.get("error") is None:
                kept[job["key"]] = oc.Compiled(**{k: v for k, v in job.items() if k in names})
    return kept


def _store(key: str, result: oc.Compiled) -> None:
    if result.error is None:  # a failure is compiled again next time, with its message
        _cache_dir().mkdir(parents=True, exist_ok=True)
        (_cache_dir() / f"{key}.json").write_text(json.dumps(result.to_json()))


def run_check(workloads: Sequence[Workload], *, dtypes: Sequence[str] | None = None,
              archs: Sequence[str] = tuple(oc.ARCHS), modes: Sequence[str] = MODES,
              workers: int | None = None, use_cache: bool = True,
              progress: Callable[[str], None] = lambda _: None) -> CompileRun:
    """Plan, specialise and compile every case of `workloads` in `workers` processes
    (`dtypes` None: each workload's default, see `case_dtypes`).

    Cases are planned in parallel, then each distinct specialization is compiled once (or
    read from the cache); jobs are numbered in case order, so results are reproducible.
    """
    import triton

    for arch in archs:
        if arch not in oc.ARCHS:
            raise ValueError(f"arch must be one of {sorted(oc.ARCHS)}, got {arch!r}")
    start = time.perf_counter()
    run = CompileRun(archs=list(archs), triton=triton.__version__)
    cases, run.skipped = cases_for(workloads, dtypes, archs, modes)
    workers = workers or os.cpu_count() or 1
    progress(f"planning {len(cases)} cases ({len(workloads)} workloads, their dtypes and "
             f"modes, {len(archs)} archs; {len(run.skipped)} skipped) in {workers} process(es)")
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        planned = list(pool.map(_plan_in_worker, cases, chunksize=8))
        todo = _index_jobs(run, cases, planned, use_cache)
        progress(f"{len(run.jobs)} distinct kernels: {len(run.jobs) - len(todo)} cached, "
                 f"{len(todo)} to compile")
        futures = {pool.submit(oc.compile_job, run.jobs[i].spec): (i, key) for i, key in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            i, key = futures[future]
            run.jobs[i].result = future.result()
            _store(key, run.jobs[i].result)
            if done % 50 == 0 or done == len(futures):
                progress(f"compiled {done}/{len(futures)}")
    run.seconds = time.perf_counter() - start
    return run


def _index_jobs(run: CompileRun, cases: Sequence[Case], planned: Sequence[Planned | str],
                use_cache: bool) -> list[tuple[int, str]]:
    """Number the distinct specializations in case order, record which case launches which,
    take cached results; returns (job index, cache key) of the jobs left to compile."""
    index: dict[oc.CompileJob, int] = {}
    todo = []
    kept = kept_results(run.triton) if use_cache else {}
    for case, result in zip(cases, planned, strict=True):
        if isinstance(result, str):
            run.planning_errors.append((case, result))
            continue
        launches = []
        for kernel, constexprs, candidates in result:
            for config, spec in candidates:
                if spec not in index:
                    index[spec] = len(run.jobs)
                    key = _cache_key(spec, run.triton)
                    run.jobs.append(Job(spec, kernel, config, constexprs, key=key))
                    cached = (kept.get(key) or _cached(key)) if use_cache else None
                    if cached is None:
                        todo.append((index[spec], key))
                    else:
                        run.jobs[-1].result = cached
                run.jobs[index[spec]].dtypes.add(case.dtype)
            launches.append([index[spec] for _, spec in candidates])
        run.cases.append((case, launches))
    return todo
