"""One phase of `make gpu-check`, run in its own process by `foveal.bench.gpu_check`:

    python -m foveal.bench.gpu_phases PHASE --record R --work W --out O --suite S --stop-at T

Each phase writes what it finishes at once: findings into the record, benchmark cases into its
own result file under --out, kernels loaded into --work. --stop-at is when the phase will be
interrupted (SIGINT): a benchmark phase starts no case it cannot finish by then. With
--resume, what the earlier record measured is left out. Exit status: 0 when everything ran
and passed, 1 when something failed or was wrong, 3 when stopped by its time limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gpu_plan import (
    BENCH_PHASES,
    GPU_TESTS,
    PHASE_NAMES,
    SELFCHECK_DTYPES,
    Case,
    case_key,
    layer_cases,
    model_cases,
)
from .gpu_record import Previous, Record, load_previous

STOPPED = 3
CASE_MARGIN_S = 10  # a benchmark case rarely takes longer: none starts closer to the limit
NO_KERNELS = ("no compiled kernel was loaded (under Triton's interpreter nothing is compiled): "
              "nothing to compare")


@dataclass
class Context:
    phase: str
    record: Record
    work: Path
    out: Path
    suite: str
    stop_at: float
    workers: int
    previous: Previous | None

    def kernel_dumps(self) -> list[Path]:
        return sorted(self.work.glob("kernels-*.json"))


def _selfcheck(ctx: Context) -> int:
    import torch

    from foveal.kernels.selfcheck import checks_for

    from .gpu_selfcheck import format_row, run_checks
    from .loaded_kernels import kernel_id
    from .report import write_json

    done = _done(ctx)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tasks = [(name, dtype) for name in checks_for(device) for dtype in SELFCHECK_DTYPES
             if f"{name} {dtype}" not in done]
    kernels: dict[str, dict[str, Any]] = {}
    failed = []

    def on_result(row: dict[str, Any], loaded: list[dict[str, Any]]) -> None:
        ctx.record.append("selfcheck", row)
        print(format_row(row), flush=True)
        if not row["passed"]:
            failed.append(row)
        kernels.update((kernel_id(k), {**k, "seen_in": "selfcheck"}) for k in loaded)
        write_json({"kernels": list(kernels.values())}, ctx.work / "kernels-selfcheck.json")

    run_checks(tasks, ctx.workers, on_result)
    print(f"selfcheck: {len(tasks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _tests(ctx: Context) -> int:
    import pytest

    done = _done(ctx)
    todo = [t for t in GPU_TESTS if t not in done]
    if not todo:
        return 0
    os.environ.update(FOVEAL_GPU_CHECK_RECORD=str(ctx.record.path),
                      FOVEAL_GPU_CHECK_LOCK=str(ctx.record.lock_path),
                      FOVEAL_GPU_CHECK_WORK=str(ctx.work))
    args = [*todo, "-p", "foveal.bench.gpu_pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
            "--timeout", str(max(30, int(ctx.stop_at - time.time())))]
    if ctx.workers > 1:
        args += ["-n", str(min(ctx.workers, len(todo)))]
    code = pytest.main(args)
    return 0 if code == 0 else STOPPED if code == 2 else 1  # 2: interrupted


def _kernels(ctx: Context) -> int:
    import triton

    from . import kernel_compare as kc
    from . import offline_compiler as oc
    from .compile_report import kept_result
    from .loaded_kernels import kernel_id, merge

    earlier = ctx.previous.kernel_entries() if ctx.previous else []
    entries = merge(ctx.kernel_dumps(), earlier)
    reused = ctx.previous.kernel_rows() if ctx.previous else {}
    kept = {arch: kept_result(triton.__version__, arch) for arch in {e["arch"] for e in entries}
            if arch}
    rows: dict[str, dict[str, Any]] = {}
    pending = []
    for entry in entries:
        found = kept.get(entry["arch"])
        jobs = [j for j in found[1]["jobs"] if kc.job_matches(j, entry)] if found else []
        key = kernel_id(entry)
        if jobs:
            rows[key] = kc.row(entry, kc.against_jobs(entry, jobs, f"kept {found[0].name}"))
        elif reused.get(key, {}).get("verdict", "unmatched") != "unmatched":
            rows[key] = reused[key]
        else:
            rows[key] = kc.row(entry)
            if entry["arch"] not in oc.ARCHS:
                rows[key]["detail"] = f"no offline target for {entry['arch']}"
            elif entry["registers"] is None:
                rows[key]["detail"] = "the device did not load it: no figures to compare"
            else:
                pending.append(entry)

    def write() -> None:
        note = None if entries else NO_KERNELS
        section = {"triton": triton.__version__, "note": note,
                   "kept_results": {a: str(k[0]) if k else None for a, k in kept.items()},
                   "summary": kc.summary(list(rows.values())), "rows": list(rows.values()),
                   "loaded": entries}
        ctx.record.update(lambda doc: doc.__setitem__("kernels", section))

    def on_result(entry: dict[str, Any], result: Any) -> None:
        rows[kernel_id(entry)] = kc.row(entry, kc.against_compiled(entry, result))
        write()

    write()
    workers = max(ctx.workers, os.cpu_count() or 1)  # the GPU idles: every core compiles
    print(f"kernels: {len(entries)} loaded kernel(s); {len(rows) - len(pending)} compared "
          f"already, {len(pending)} to compile offline with {workers} process(es)", flush=True)
    kc.compile_offline(pending, workers, ctx.stop_at, on_result)
    write()
    if rows:
        print(kc.table(list(rows.values())))
    counts = kc.summary(list(rows.values()))
    print("kernels: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not entries:
        print(f"kernels: {NO_KERNELS}")
    broken = [r for r in rows.values() if r["verdict"] == "differs"
              or r["detail"].startswith("offline compile failed")]
    return 1 if broken else 0


def _done(ctx: Context) -> set[str]:
    """What the run resumed from (and the runs it resumed) measured of this phase."""
    done = ctx.previous.done(ctx.phase) if ctx.previous else set()
    if done:
        print(f"{ctx.phase}: {len(done)} case(s) measured in {ctx.previous.path} or the runs "
              "it resumed: not repeated", flush=True)
    return done


def _budget_minutes(ctx: Context) -> float:
    return max(0.0, ctx.stop_at - time.time() - CASE_MARGIN_S) / 60


def _bench_cases(ctx: Context, planned: Sequence[Case]) -> tuple[list[Case], Callable]:
    """The planned cases not yet measured, and what writes the phase's result file (named in
    the record) whole after each case."""
    from .report import write_json

    done = _done(ctx)
    path = ctx.out / f"{ctx.phase}.json"
    ctx.record.update(lambda doc: doc.setdefault("files", {}).__setitem__(ctx.phase, path.name))

    def write(document: dict[str, Any]) -> None:
        document["gpu_check"] = {"phase": ctx.phase, "record": ctx.record.path.name,
                                 "resumed_from": str(ctx.previous.path) if ctx.previous
                                 else None}
        write_json(document, path)

    return [c for c in planned if case_key(c) not in done], write


def _verdict(report: Any) -> int:
    return STOPPED if report.interrupted else 1 if report.failures else 0


def _layers(ctx: Context) -> int:
    from .device import default_timer, select_device
    from .harness import Settings, print_progress, run_benchmark
    from .report import to_json

    device = select_device(None)
    cases, write = _bench_cases(ctx, layer_cases(ctx.phase, ctx.suite))
    if not cases:
        return 0
    # On a CPU torch.compile traces with dynamo's eager backend: inductor would build C++ for
    # minutes, and no timing there means anything anyway.
    directions = {d for _, _, d in cases}
    settings = Settings(device=device, label=ctx.phase, forward="forward" in directions,
                        backward="backward" in directions, compile=ctx.phase == "compile",
                        compile_backend="inductor" if device.type == "cuda" else "eager",
                        max_minutes=_budget_minutes(ctx))
    workloads = list({w.name: w for w, _, _ in cases}.values())
    report = run_benchmark(workloads, settings, cases=cases, progress=print_progress,
                           timer=default_timer(device), checkpoint=lambda r: write(to_json(r)))
    return _verdict(report)


def _models(ctx: Context) -> int:
    from . import models as bm
    from .device import default_timer, select_device
    from .harness import print_progress

    device = select_device(None)
    cases, write = _bench_cases(ctx, model_cases(ctx.suite))
    if not cases:
        return 0
    settings = bm.model_settings(device, compile=False, max_minutes=_budget_minutes(ctx))
    run = bm.run_model_benchmark([w for w, _, _ in cases], settings, cases=cases,
                                 progress=print_progress, timer=default_timer(device, 100, 1000),
                                 on_document=write)
    return _verdict(run.report)


RUNNERS = {"selfcheck": _selfcheck, "tests": _tests, "kernels": _kernels,
           **dict.fromkeys(BENCH_PHASES, _layers), "models": _models}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foveal.bench.gpu_phases",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=PHASE_NAMES)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--suite", choices=("full", "smoke"), required=True)
    parser.add_argument("--stop-at", type=float, required=True, help="Unix time of the SIGINT")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--resume", type=Path)
    args = parser.parse_args(argv)
    ctx = Context(args.phase, Record(args.record, args.lock), args.work, args.out, args.suite,
                  args.stop_at, max(1, args.workers),
                  load_previous(args.resume) if args.resume else None)
    try:
        return RUNNERS[args.phase](ctx)
    except KeyboardInterrupt:
        print(f"{args.phase}: stopped at its time limit; what finished is recorded",
              flush=True)
        return STOPPED


if __name__ == "__main__":
    sys.exit(main())
