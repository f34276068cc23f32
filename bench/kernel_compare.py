"""Phase 2 of `make gpu-check`: the kernels loaded on the GPU beside the CPU compile check.

For each distinct kernel the earlier phases compiled and loaded (kernel, config, constexprs,
dtype, specialization; `loaded_kernels`), the figures the device reports (registers, local
memory per thread, shared memory) are set beside the compile check's for the same kernel:

1. from the kept compile-check result for this Triton and architecture
   (bench/results/compile/triton-<version>_<arch>.json) when there is one: its jobs of the same
   kernel, dtype, config (blocks, warps, stages) and launcher constexprs. Those were compiled
   for the benchmark workloads' shapes, so integer divisibility may differ: the device's figure
   is judged "in range" or "out of range" of theirs;
2. for every other kernel, by compiling its own specialization on this machine's CPU with the
   compile check's compiler (`offline_compiler.compile_job`, through PTX and ptxas), in
   parallel processes until the phase's time runs out: the same code, so the figures must be
   "same" (a difference is a finding about the compile check, and fails the phase).

A kernel with neither is "unmatched" (time ran out, the compile failed, or no offline target
for the GPU's architecture), and the output says so. ptxas's stack frame is compared with the
device's local memory per thread (`n_spills` * 4 bytes): spills live there.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import offline_compiler as oc
from .loaded_kernels import kernel_id
from .table import render_plain

Entry = dict[str, Any]
HEADERS = ["kernel", "dtype", "config", "GPU regs", "CPU regs", "GPU local B", "CPU stack B",
           "GPU smem B", "CPU smem B", "source", "verdict"]


def job_matches(job: dict[str, Any], entry: Entry) -> bool:
    """Whether a compile-check job is the loaded kernel's kernel, dtype, config and constexprs
    (the job's launcher constexprs are a subset of the kernel's: defaults are not passed)."""
    if job["kernel"] != entry["kernel"] or entry["dtype"] not in job["dtypes"]:
        return False
    wanted = {**job["config"], **job["constexprs"]}
    have = {**entry["config"], **entry["constexprs"]}
    return all(k in have and have[k] == v for k, v in wanted.items())


def _span(values: list[Any]) -> tuple[Any, Any] | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


def _text(span: tuple[Any, Any] | None) -> str:
    if span is None:
        return "?"
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def against_jobs(entry: Entry, jobs: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The loaded kernel against the kept jobs of the same kernel, config and constexprs."""
    cpu = {"registers": _span([j["registers"] for j in jobs]),
           "stack_bytes": _span([j["stack_bytes"] for j in jobs]),
           "shared_bytes": _span([j["shared_bytes"] for j in jobs])}
    gpu = {"registers": entry["registers"], "stack_bytes": entry["local_bytes"],
           "shared_bytes": entry["shared_bytes"]}
    outside = [name for name, span in cpu.items()
               if span is None or gpu[name] is None or not span[0] <= gpu[name] <= span[1]]
    return {"cpu": {k: _text(v) for k, v in cpu.items()},
            "source": f"{source} ({len(jobs)} job(s))",
            "verdict": "out of range" if outside else "in range",
            "detail": ", ".join(outside)}


def against_compiled(entry: Entry, result: oc.Compiled) -> dict[str, Any]:
    """The loaded kernel against the same specialization compiled offline."""
    source = "compiled here from the same specialization"
    if result.error is not None:
        return {"cpu": {}, "source": source, "verdict": "unmatched",
                "detail": f"offline compile failed: {result.error.splitlines()[0]}"}
    cpu = {"registers": result.registers, "stack_bytes": result.stack_bytes,
           "shared_bytes": result.shared_bytes}
    gpu = {"registers": entry["registers"], "stack_bytes": entry["local_bytes"],
           "shared_bytes": entry["shared_bytes"]}
    differ = [f"{name} GPU {gpu[name]} vs CPU {cpu[name]}" for name in cpu
              if gpu[name] != cpu[name]]
    return {"cpu": {**{k: str(v) for k, v in cpu.items()},
                    "spill_store_bytes": str(result.spill_store_bytes),
                    "spill_load_bytes": str(result.spill_load_bytes)},
            "source": source, "verdict": "differs" if differ else "same",
            "detail": "; ".join(differ)}


def row(entry: Entry, comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    comparison = comparison or {"cpu": {}, "source": None, "verdict": "unmatched",
                                "detail": "no compile-check figures (yet)"}
    return {"id": kernel_id(entry), "kernel": entry["kernel"], "dtype": entry["dtype"],
            "arch": entry["arch"], "config": entry["config"], "constexprs": entry["constexprs"],
            "seen_in": entry.get("seen_in"),
            "gpu": {"registers": entry["registers"], "local_bytes": entry["local_bytes"],
                    "shared_bytes": entry["shared_bytes"]}, **comparison}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {"loaded": len(rows)}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return counts


def table(rows: Sequence[dict[str, Any]]) -> str:
    def config(r):
        short = {"num_warps": "w", "num_stages": "s"}
        return " ".join(f"{short.get(k, k + '=')}{v}" for k, v in r["config"].items()) or "-"

    cells = [[r["kernel"], str(r["dtype"]), config(r), str(r["gpu"]["registers"]),
              r["cpu"].get("registers", "-"), str(r["gpu"]["local_bytes"]),
              r["cpu"].get("stack_bytes", "-"), str(r["gpu"]["shared_bytes"]),
              r["cpu"].get("shared_bytes", "-"), r["source"] or "-",
              r["verdict"] + (f": {r['detail']}" if r["detail"] else "")] for r in rows]
    return render_plain(HEADERS, cells)


def compile_offline(entries: Sequence[Entry], workers: int, stop_at: float,
                    on_result: Callable[[Entry, oc.Compiled], None]) -> None:
    """Compile each entry's specialization for its architecture in `workers` processes,
    handing over each result as it comes; what is not done by `stop_at` is left."""
    jobs = {oc.CompileJob(e["arch"], e["module"], e["kernel"], e["specialization"]): e
            for e in entries}
    if not jobs:
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = {pool.submit(oc.compile_job, job): e for job, e in jobs.items()}
        timeout = max(0.0, stop_at - time.time())
        for future in concurrent.futures.as_completed(futures, timeout=timeout):
            try:
                result = future.result()
            except Exception as err:  # the worker could not even load the kernel
                result = oc.Compiled(error=f"{type(err).__name__}: {err}")
            on_result(futures[future], result)
    except concurrent.futures.TimeoutError:
        print(f"kernels: time is up with {sum(not f.done() for f in futures)} kernel(s) not "
              "compiled offline", flush=True)
    finally:
        workers_left = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_left:  # a compile still running would outlive the phase
            if process.is_alive():
                process.kill()
