"""What a compile check found: the rules' verdicts, the per-kernel and per-launch tables, and
the result files kept under bench/results/compile/ (bench/README.md shows them through
`foveal.bench.compile_page`)."""

from __future__ import annotations

import datetime
import json
import platform
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import offline_compiler as oc
from .compile_page import HEADERS, table_rows
from .compilecheck import FP8_DTYPES, TENSOR_CORE_DTYPES, CompileRun, Job
from .table import render_plain

KIND = "foveal-compilecheck"
_CASES_SHOWN = 3  # cases named per violation


@dataclass(frozen=True)
class Violation:
    """A rule a compiled kernel broke, with the config and the cases that launch it."""

    rule: str  # compile | shared-memory | tensor-cores | fp8-tensor-cores | spill | planning
    kernel: str
    arch: str
    config: dict[str, Any]
    detail: str
    cases: tuple[str, ...]

    def line(self) -> str:
        config = " ".join(f"{k}={v}" for k, v in self.config.items()) or "-"
        cases = ", ".join(self.cases)
        return f"{self.rule}: {self.kernel} {self.arch} [{config}] {self.detail} (in {cases})"


def _job_cases(run: CompileRun) -> dict[int, list[str]]:
    used: dict[int, list[str]] = defaultdict(list)
    for case, launches in run.cases:
        for candidates in launches:
            for index in candidates:
                if len(used[index]) < _CASES_SHOWN and case.label not in used[index]:
                    used[index].append(case.label)
    return used


def job_violations(job: Job) -> list[tuple[str, str]]:
    """(rule, detail) for each rule this compiled kernel breaks."""
    result, arch = job.result, oc.ARCHS[job.spec.arch]
    if result.error is not None:
        return [("compile", result.error.splitlines()[0])]
    found = []
    if result.shared_bytes is not None and result.shared_bytes > arch.shared_per_block:
        found.append(("shared-memory", f"{result.shared_bytes} bytes > {arch.shared_per_block} "
                                       f"per block on {arch.name}"))
    if result.dot and result.tensor_cores is None and job.dtypes & set(TENSOR_CORE_DTYPES):
        found.append(("tensor-cores", "tl.dot on " + "/".join(sorted(job.dtypes))
                      + " without wgmma or mma instructions"))
    if result.dot and job.dtypes & set(FP8_DTYPES):
        wanted = "wgmma" if "wgmma.mma_async" in arch.tensor_core_ops else "mma"
        if result.tensor_cores != wanted or result.tensor_core_operands != "e4m3":
            found.append(("fp8-tensor-cores", f"tl.dot on FP8 without FP8 {wanted} (got "
                          f"{result.tensor_cores or 'none'} on "
                          f"{result.tensor_core_operands or 'nothing'})"))
    if result.spill_store_bytes is None or result.spill_load_bytes is None:
        found.append(("spill", "ptxas reported no spill figures"))
    elif result.spill_store_bytes or result.spill_load_bytes:
        found.append(("spill", f"{result.spill_store_bytes} bytes stored, "
                               f"{result.spill_load_bytes} loaded; {result.registers} "
                               f"registers, {result.stack_bytes} bytes stack"))
    return found


def violations(run: CompileRun) -> list[Violation]:
    used = _job_cases(run)
    found = [Violation("planning", case.workload.op, case.arch, {}, error, (case.label,))
             for case, error in run.planning_errors]
    for index, job in enumerate(run.jobs):
        found += [Violation(rule, job.kernel, job.spec.arch, job.config, detail,
                            tuple(used[index])) for rule, detail in job_violations(job)]
    return found


@dataclass
class KernelSummary:
    """One kernel on one arch in one dtype: its distinct compiled configs in figures."""

    kernel: str
    arch: str
    dtype: str
    compiled: int = 0
    failed: int = 0
    spill_free: int = 0
    max_registers: int = 0
    worst_stack_bytes: int = 0
    max_shared_bytes: int = 0
    tensor_cores: str = "-"
    widest_load_bytes: str = "-"
    min_blocks_per_sm: int | None = None
    compile_seconds: float = 0.0


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _tensor_cores(result: oc.Compiled) -> str:
    """"wgmma e4m3", "mma f16", or "none" for a tl.dot kernel."""
    if result.tensor_cores is None:
        return "none"
    operands = result.tensor_core_operands
    return f"{result.tensor_cores} {operands}" if operands else result.tensor_cores


def summarize(run: CompileRun) -> list[KernelSummary]:
    groups: dict[tuple[str, str, str], list[Job]] = defaultdict(list)
    for job in run.jobs:
        for dtype in job.dtypes:
            groups[job.kernel, job.spec.arch, dtype].append(job)
    rows = []
    for (kernel, arch, dtype), jobs in sorted(groups.items()):
        row = KernelSummary(kernel, arch, dtype)
        ok = [j.result for j in jobs if j.result.error is None]
        row.compiled, row.failed = len(ok), len(jobs) - len(ok)
        row.spill_free = sum(1 for r in ok if r.spill_store_bytes == 0 == r.spill_load_bytes)
        row.max_registers = max((r.registers or 0 for r in ok), default=0)
        row.worst_stack_bytes = max((r.stack_bytes or 0 for r in ok), default=0)
        row.max_shared_bytes = max((r.shared_bytes or 0 for r in ok), default=0)
        if any(r.dot for r in ok):
            kinds = sorted({_tensor_cores(r) for r in ok if r.dot})
            row.tensor_cores = "+".join(kinds)
        row.widest_load_bytes = _span([r.widest_load_bytes for r in ok
                                       if r.widest_load_bytes is not None])
        blocks = [r.blocks_per_sm for r in ok if r.blocks_per_sm is not None]
        row.min_blocks_per_sm = min(blocks) if blocks else None
        row.compile_seconds = sum(j.result.compile_seconds for j in jobs)
        rows.append(row)
    return rows


def format_report(run: CompileRun, found: Sequence[Violation]) -> str:
    lines = [render_plain(HEADERS, table_rows(summarize(run))), ""]
    lines.append(f"{len(run.jobs)} distinct kernels compiled for {', '.join(run.archs)} with "
                 f"Triton {run.triton} in {run.seconds:.0f} s; {len(found)} rule violation(s)")
    lines += [f"  {v.line()}" for v in found]
    lines += _skipped_lines(run)
    return "\n".join(lines)


def _skipped_lines(run: CompileRun) -> list[str]:
    """The skipped cases, one line per reason."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for case, why in run.skipped:
        by_reason[why].append(case.label)
    return [f"skipped {len(labels)} case(s): {why} ({', '.join(labels[:_CASES_SHOWN])}"
            f"{', ...' if len(labels) > _CASES_SHOWN else ''})"
            for why, labels in by_reason.items()]


LAUNCH_HEADERS = ["config", "regs", "spill st/ld B", "stack B", "smem KiB", "tensor cores",
                  "widest load B", "blocks/SM", "compile s", "verdict"]


def _config_text(config: dict[str, Any]) -> str:
    short = {"num_warps": "w", "num_stages": "s"}
    return " ".join(f"{short.get(k, k + '=')}{v}" for k, v in config.items()) or "(not tuned)"


def format_launches(run: CompileRun) -> str:
    """Every launch of every case, with each candidate config's compiled resources."""
    lines = []
    for case, launches in run.cases:
        lines.append(f"{case.label}: {len(launches)} kernel launch(es)")
        for number, candidates in enumerate(launches, 1):
            kernel = run.jobs[candidates[0]].kernel if candidates else "?"
            lines.append(f"  launch {number}: {kernel}, {len(candidates)} candidate config(s)")
            rows = []
            for index in candidates:
                job, r = run.jobs[index], run.jobs[index].result
                broken = [rule for rule, _ in job_violations(job)]
                rows.append([
                    _config_text(job.config), str(r.registers or "-"),
                    f"{r.spill_store_bytes}/{r.spill_load_bytes}", str(r.stack_bytes),
                    "-" if r.shared_bytes is None else f"{r.shared_bytes / 1024:.0f}",
                    r.tensor_cores or ("none" if r.dot else "-"),
                    str(r.widest_load_bytes or "-"), str(r.blocks_per_sm or "-"),
                    f"{r.compile_seconds:.1f}", ", ".join(broken) or "ok"])
            table = render_plain(LAUNCH_HEADERS, rows)
            lines += ["    " + line for line in table.splitlines()]
    for case, error in run.planning_errors:
        lines.append(f"{case.label}: planning failed: {error}")
    for case, why in run.skipped:
        lines.append(f"{case.label}: skipped: {why}")
    return "\n".join(lines)


# -- result files ------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch
    import triton

    from .environment import git_commit, source_digest

    commit, dirty = git_commit()
    return {"triton": triton.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "git_dirty": dirty, "source_digest": source_digest()}


def document(run: CompileRun, arch: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One architecture's results as JSON-ready data: summary, every job, every case."""
    indices = [i for i, job in enumerate(run.jobs) if job.spec.arch == arch]
    renumber = {old: new for new, old in enumerate(indices)}
    found = [v for v in violations(run) if v.arch == arch]
    jobs = [{"kernel": run.jobs[i].kernel, "key": run.jobs[i].key, "config": run.jobs[i].config,
             "constexprs": run.jobs[i].constexprs, "dtypes": sorted(run.jobs[i].dtypes),
             **run.jobs[i].result.to_json()} for i in indices]
    cases = [{"workload": case.workload.name, "dtype": case.dtype, "mode": case.mode,
              "launches": [[renumber[i] for i in candidates] for candidates in launches]}
             for case, launches in run.cases if case.arch == arch]
    skipped = [{"workload": case.workload.name, "dtype": case.dtype, "mode": case.mode,
                "reason": why} for case, why in run.skipped if case.arch == arch]
    return {"kind": KIND, "arch": asdict(oc.ARCHS[arch]), "environment": environment(),
            "settings": settings, "seconds": round(run.seconds, 1),
            "summary": {"jobs": len(jobs), "violations": len(found),
                        "compile_errors": sum(v.rule == "compile" for v in found),
                        "spilling": sum(v.rule == "spill" for v in found)},
            "kernels": [asdict(s) for s in summarize(run) if s.arch == arch],
            "violations": [asdict(v) for v in found], "jobs": jobs, "cases": cases,
            "skipped": skipped}


def result_name(triton_version: str, arch: str) -> str:
    return f"triton-{triton_version}_{arch}.json"


def kept_result(triton_version: str, arch: str,
                directory: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The kept result for this Triton and arch (bench/results/compile/), if there is one."""
    from .compile_page import RESULTS_DIR

    path = (directory or RESULTS_DIR) / result_name(triton_version, arch)
    return (path, json.loads(path.read_text())) if path.is_file() else None


def write_results(run: CompileRun, directory: Path, settings: dict[str, Any]) -> list[Path]:
    """One file per architecture, named by Triton version and arch (a rerun replaces it)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for arch in run.archs:
        path = directory / result_name(run.triton, arch)
        path.write_text(json.dumps(document(run, arch, settings), indent=1) + "\n")
        written.append(path)
    return written
