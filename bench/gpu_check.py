"""`make gpu-check` (bench/gpu_check.sh): the plan's phases on a lent GPU inside a time budget.

    python -m foveal.bench.gpu_check --plan     # the phases, their cases and limits; no GPU
    python -m foveal.bench.gpu_check            # run them (settings from the environment)
    python -m foveal.bench.gpu_check keep DIR   # keep a fetched run's results in bench/results/

Settings (environment): GPU_CHECK_BUDGET_S (default 480), BENCH_SUITE (full; smoke runs the
same plan on tiny shapes, e.g. on a CPU through Triton's interpreter), GPU_CHECK_PHASES (a
subset, space-separated), GPU_CHECK_RESUME (an earlier run's gpu_check.json: what it measured
is not measured again), GPU_CHECK_AUTOTUNE_CONFIGS (configs tried per autotuned launch,
default 2, 0 for all), GPU_CHECK_WORKERS (processes for compile-bound phases), OUT (where the
log and results go, default bench/out).

Each phase runs in its own process group under its limit: SIGINT shortly before it (what
finished is already written), SIGKILL at it. A phase that fails or is stopped does not stop
the next; unused seconds pass on to the next phase. Exit status 0 when every phase passed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .gpu_plan import (
    DEFAULT_BUDGET_S,
    MIN_PHASE_S,
    PHASE_NAMES,
    PlannedPhase,
    format_plan,
    make_plan,
)
from .gpu_record import RECORD_NAME, Record, load_previous, phase_findings
from .headline import headline_table
from .report import load_json

DEFAULT_AUTOTUNE_CONFIGS = 2
STARTED = time.monotonic()  # the budget runs from here: start-up and planning count
LOG_NAME = "gpu_check.log"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CheckSettings:
    budget_s: int
    suite: str
    phases: tuple[str, ...] | None
    resume: Path | None
    autotune_configs: int
    workers: int | None
    out: Path

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> CheckSettings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: int | None) -> int | None:
            text = env.get(name, "").strip()
            if not text:
                return default
            if not text.isdigit():
                raise ValueError(f"{name} must be a whole number, got {text!r}")
            return int(text)

        phases = env.get("GPU_CHECK_PHASES", "").split()
        resume = env.get("GPU_CHECK_RESUME", "").strip()
        return cls(budget_s=number("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S),
                   suite=env.get("BENCH_SUITE", "").strip() or "full",
                   phases=tuple(phases) or None, resume=Path(resume) if resume else None,
                   autotune_configs=number("GPU_CHECK_AUTOTUNE_CONFIGS",
                                           DEFAULT_AUTOTUNE_CONFIGS),
                   workers=number("GPU_CHECK_WORKERS", None),
                   out=Path(env.get("OUT", "").strip() or REPO / "bench" / "out"))


class Tee:
    """Lines to the terminal and the log file."""

    def __init__(self, log: IO[str]):
        self.log = log
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            self.log.write(line + "\n")
            self.log.flush()


def run_limited(command: list[str], limit_s: float, env: dict[str, str], say: Tee,
                grace_s: float) -> tuple[int, str, float]:
    """Run `command` in its own process group, its output through `say`: SIGINT at
    `limit_s - grace_s`, SIGKILL to the group at `limit_s`. Returns (exit status, how it
    ended, seconds)."""
    start = time.monotonic()
    # Its own process group (to signal it with its workers), in this session: whatever ends
    # the session (the GPU machine's limit on the command) ends the phase too.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace",
                               preexec_fn=os.setpgrp)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            say(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    ended = "finished"
    try:
        process.wait(timeout=max(0.0, limit_s - grace_s))
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        ended = "stopped at its limit"
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            ended = "killed at its limit"
        if isinstance(stop, KeyboardInterrupt):
            raise
    finally:
        if process.poll() is None or ended != "finished":
            with contextlib.suppress(ProcessLookupError):  # leftover workers of the group too
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)
    return process.returncode, ended, time.monotonic() - start


def _device() -> tuple[Any, bool]:
    import torch

    cuda = torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu"), cuda


def _child_env(settings: CheckSettings, cuda: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if settings.autotune_configs:
        env["FOVEAL_AUTOTUNE_MAX_CONFIGS"] = str(settings.autotune_configs)
    if cuda:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels only: interpreted timings mislead
        env["TRITON_CACHE_AUTOTUNING"] = "1"  # a later phase reuses an earlier one's tuning
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


def _workers(settings: CheckSettings, cuda: bool) -> int:
    if settings.workers:
        return settings.workers
    return max(1, min(8, (os.cpu_count() or 1) // 2)) if cuda else 1


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running phase is stopped, then this run


def run(settings: CheckSettings) -> int:
    device, cuda = _device()
    if not cuda and settings.suite == "full":
        print("gpu_check: no CUDA GPU: the full suite would run for hours in Triton's "
              "interpreter; BENCH_SUITE=smoke runs the same plan on tiny shapes", file=sys.stderr)
        return 2
    if not cuda:  # before foveal.kernels first loads (the plan reads its checks)
        os.environ["TRITON_INTERPRET"] = "1"
    plan = make_plan(settings.budget_s, settings.suite, settings.phases)
    previous = load_previous(settings.resume) if settings.resume else None
    signal.signal(signal.SIGTERM, _interrupt)
    settings.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="foveal-gpu-check-"))
    env = _child_env(settings, cuda)
    record = Record(settings.out / RECORD_NAME, work / "record.lock")
    deadline = STARTED + settings.budget_s  # the budget counts this process's start-up too
    with (settings.out / LOG_NAME).open("w") as log:
        say = Tee(log)
        say(format_plan(plan, settings.budget_s, settings.suite, settings.autotune_configs))
        if not cuda:
            say("gpu_check: no CUDA GPU: kernels run in Triton's interpreter; timings are not "
                "meaningful")
        record.create(_record_start(settings, plan, device, previous))
        summary: list[str] = []
        try:
            _run_phases(plan, settings, record, work, env, deadline, say, cuda, summary)
        except KeyboardInterrupt:
            summary.append("interrupted: the phases after this one did not run")
        environment = record.read()["environment"]
        say(f"\ngpu_check summary ({environment['device']}, commit "
            f"{environment.get('git_commit') or 'unknown'}):")
        for line in summary:
            say(f"  {line}")
        say(f"  output: {settings.out}")
        headline = settings.out / record.read()["files"].get("headline", "-")
        if headline.is_file():
            say(f"\nheadline ({'' if cuda else '* not meaningful: no GPU; '}"
                f"{settings.out / headline.name}):")
            say(headline_table([(headline, load_json(headline))]))
    shutil.rmtree(work, ignore_errors=True)
    verdicts = [p["status"] for p in record.read()["phases"].values()]
    return 0 if all(v == "ok" for v in verdicts) else 1


def _record_start(settings: CheckSettings, plan: Sequence[PlannedPhase], device: Any,
                  previous: Any) -> dict[str, Any]:
    from .environment import environment

    environment_now = environment(device)
    return {"meaningful": environment_now["backend"] == "triton",
            "environment": environment_now, "budget_s": settings.budget_s,
            "suite": settings.suite, "autotune_max_configs": settings.autotune_configs or None,
            "resumed_from": str(previous.path) if previous else None,
            "carried": previous.carried([p for p in PHASE_NAMES if p != "kernels"])
            if previous else {},
            "plan": [{"name": p.name, "priority": p.spec.priority, "title": p.spec.title,
                      "limit_s": p.limit_s, "cases": p.count, "items": p.lines} for p in plan],
            "phases": {p.name: {"status": "pending", "limit_s": p.limit_s} for p in plan},
            "files": {}}


def _run_phases(plan: Sequence[PlannedPhase], settings: CheckSettings, record: Record,
                work: Path, env: dict[str, str], deadline: float, say: Tee, cuda: bool,
                summary: list[str]) -> None:
    """Each phase under its limit; a line per phase goes into `summary` as it ends."""
    slack = 0.0
    for phase in plan:
        left = deadline - time.monotonic()
        given = min(phase.limit_s + slack, left) if phase.limit_s else 0
        if given < MIN_PHASE_S / 2:
            status = "not run: no time left in the budget"
            record.update(lambda d, n=phase.name, s=status: d["phases"][n].update(status=s))
            summary.append(f"{phase.name:<10} {status}")
            say(f"=== {phase.name}: {status}")
            continue
        grace = min(15.0, given / 4)
        command = [sys.executable, "-m", "foveal.bench.gpu_phases", phase.name,
                   "--record", str(record.path), "--lock", str(record.lock_path),
                   "--work", str(work), "--out", str(settings.out), "--suite", settings.suite,
                   "--stop-at", f"{time.time() + given - grace:.1f}",
                   "--workers", str(_workers(settings, cuda))]
        if settings.resume:
            command += ["--resume", str(settings.resume)]
        say(f"=== {phase.name} (priority {phase.spec.priority}, limit {given:.0f} s): "
            f"{phase.spec.title}")
        record.update(lambda d, n=phase.name: d["phases"][n].update(status="running"))
        code, ended, seconds = run_limited(command, given, env, say, grace)
        status = ("ok" if code == 0 and ended == "finished" else
                  f"timed out ({ended})" if ended != "finished" or code == 3 else
                  f"failed (exit {code})")
        record.update(lambda d, n=phase.name, s=status, c=code, t=seconds, g=given:
                      d["phases"][n].update(status=s, exit=c, seconds=round(t, 1),
                                            given_s=round(g, 1)))
        findings = phase_findings(phase.name, record.read())
        say(f"=== {phase.name}: {status} after {seconds:.0f} s{findings}")
        summary.append(f"{phase.name:<10} {status:<28} {seconds:5.0f} s of {given:3.0f}"
                       f"{findings}")
        slack = max(0.0, given - seconds)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = CheckSettings.from_environment()
        if argv == ["--plan"]:
            plan = make_plan(settings.budget_s, settings.suite, settings.phases)
            print(format_plan(plan, settings.budget_s, settings.suite,
                              settings.autotune_configs))
            return 0
        if argv[:1] == ["keep"] and len(argv) == 2:
            from .gpu_keep import keep

            return keep(Path(argv[1]))
        if argv:
            print(__doc__, file=sys.stderr)
            return 2
        return run(settings)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
