"""`make gpu-check` run end to end on the CPU (smoke suite, Triton's interpreter): a run killed
midway keeps every finished case, a resumed run skips them, phases keep to their limits, and
the output stays within what the GPU machine hands back (8 files under $OUT)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foveal.bench.gpu_check import Tee, run_limited
from foveal.bench.gpu_plan import GPU_TESTS, layer_cases
from foveal.bench.gpu_record import finished
from foveal.bench.report import load_json

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="runs the CPU (smoke) path of make gpu-check")


def _env(out: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "BENCH_SUITE": "smoke",
            **extra}


def _keys(document) -> set[str]:
    return {f"{r['workload']} {r['dtype']} {r['direction']}" for r in document["results"]}


def _finished_cases(path: Path) -> set[str]:
    try:
        document = load_json(path)
    except (OSError, ValueError):
        return set()
    return {f"{r['workload']} {r['dtype']} {r['direction']}" for r in document["results"]
            if finished(r)}


def _kill_session(session: int) -> None:
    """SIGKILL every process of a session (the run and every phase process it started)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # stat's 6th field, the session id
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def test_a_killed_run_keeps_its_finished_cases_and_a_resumed_run_skips_them(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    process = subprocess.Popen(["bash", str(SCRIPT)], env=_env(first, GPU_CHECK_PHASES="headline"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_finished_cases(first / "headline.json")) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no case finished in time"
            time.sleep(0.2)
    finally:
        _kill_session(process.pid)  # the lease's hard stop: nothing gets to clean up
        process.wait()
    everything = {f"{w.name} {d} {x}" for w, d, x in layer_cases("headline", "smoke")}
    kept = _finished_cases(first / "headline.json")
    assert 2 <= len(kept) < len(everything) and kept <= everything
    assert _keys(load_json(first / "headline.json")) == kept  # only finished cases are written
    record = json.loads((first / "gpu_check.json").read_text())
    assert record["phases"]["headline"]["status"] == "running"  # killed before its verdict
    assert record["files"] == {"headline": "headline.json"}

    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600,
                          env=_env(second, GPU_CHECK_PHASES="headline",
                                   GPU_CHECK_RESUME=str(first / "gpu_check.json")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (f"headline: {len(kept)} case(s) measured in {first / 'gpu_check.json'} or the runs "
            "it resumed: not repeated") in done.stdout
    resumed = load_json(second / "headline.json")
    assert _keys(resumed).isdisjoint(kept) and _keys(resumed) | kept == everything
    assert resumed["gpu_check"]["resumed_from"] == str(first / "gpu_check.json")
    assert resumed["meaningful"] is False  # interpreter timings are marked, never a speed
    record = json.loads((second / "gpu_check.json").read_text())
    assert record["phases"]["headline"]["status"] == "ok"
    assert record["resumed_from"] == str(first / "gpu_check.json")
    assert set(record["carried"]["headline"]) == kept  # a third call would skip them too
    assert "* not meaningful: no GPU" in done.stdout  # the closing headline table


def test_correctness_and_kernel_phases_record_what_they_found(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600,
                          env=_env(tmp_path, GPU_CHECK_PHASES="tests kernels"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["meaningful"] is False and record["environment"]["backend"] == "interpreter"
    assert [p["name"] for p in record["plan"]] == ["tests", "kernels"]
    assert {p["status"] for p in record["phases"].values()} == {"ok"}
    tests = record["tests"]
    assert len(tests) == record["plan"][0]["cases"] == len(GPU_TESTS)
    assert {t["outcome"] for t in tests} == {"skipped"}  # honest: these need a GPU
    assert all("needs a CUDA GPU" in t["message"] or "needs a GPU with FP8" in t["message"]
               for t in tests)
    assert record["kernels"]["rows"] == [] and "interpreter" in record["kernels"]["note"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "tests      ok" in log and f"({len(GPU_TESTS)} skipped)" in log and "total: " in log


def test_the_full_suite_is_refused_without_a_gpu(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env=_env(tmp_path, BENCH_SUITE="full"))
    assert done.returncode == 2 and "BENCH_SUITE=smoke runs the same plan" in done.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_phase_past_its_limit_is_interrupted_then_killed(tmp_path):
    log = tmp_path / "log"
    with log.open("w") as handle:
        say = Tee(handle)
        polite = [sys.executable, "-c", "import time\nprint('started', flush=True)\n"
                  "try:\n time.sleep(60)\nexcept KeyboardInterrupt:\n print('saved')\n"]
        code, ended, seconds = run_limited(polite, 4, dict(os.environ), say, grace_s=2)
        assert ended == "stopped at its limit" and code == 0 and 1.5 < seconds < 4
        stubborn = [sys.executable, "-c", "import signal, time\n"
                    "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"]
        code, ended, seconds = run_limited(stubborn, 3, dict(os.environ), say, grace_s=1)
        assert ended == "killed at its limit" and code == -signal.SIGKILL and seconds < 10
    assert log.read_text().splitlines() == ["started", "saved"]
