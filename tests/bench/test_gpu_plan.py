"""The plan of `make gpu-check`: phases in priority order inside the budget, the cases of each,
and `bash bench/gpu_check.sh --plan` printing it without a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from foveal.bench.gpu_plan import (
    DEFAULT_BUDGET_S,
    GPU_TESTS,
    MIN_PHASE_S,
    PHASES,
    allocate,
    layer_cases,
    make_plan,
)
from foveal.bench.headline import ROWS, headline_cases
from foveal.bench.ops import ADAPTERS
from foveal.bench.workloads import load_workloads

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
WORKLOADS = {w.name: w for w in load_workloads()}


def _plan_output(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True,
                          timeout=300, check=False,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_default_plan_fits_480_s_and_covers_the_first_three_priorities():
    done = _plan_output()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu-check plan: budget 480 s, suite full, at most 2 "
                               "autotuning configs per launch")
    limits = {m[2]: (int(m[1]), int(m[3])) for line in lines
              if (m := re.match(r"\[(\d)\] (\w+) \((\d+) s\)", line))}
    assert [name for name in limits] == [p.name for p in PHASES]
    for priority in (1, 2, 3):
        assert any(p == priority and s >= MIN_PHASE_S for p, s in limits.values()), priority
    total = int(re.fullmatch(r"total: (\d+) s", lines[-1])[1])
    assert total == sum(s for _, s in limits.values()) <= 480
    text = " ".join(done.stdout.split())  # lines are wrapped
    for row in ROWS:  # every headline row is listed with its workload and baseline
        assert f"{row.title}: {row.workload} {row.dtype}" in text
        assert f"(vs {row.baseline})" in text
    assert all(test in text for test in GPU_TESTS)
    assert "conv2d backward: float16 bfloat16 float32" in text  # a selfcheck case


def test_plan_follows_the_environment():
    done = _plan_output(GPU_CHECK_BUDGET_S="300", BENCH_SUITE="smoke",
                        GPU_CHECK_PHASES="headline suite", GPU_CHECK_AUTOTUNE_CONFIGS="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu-check plan: budget 300 s, suite smoke, autotuning not "
                                  "capped")
    assert "smoke.deform_conv2d.dcnv2 float32 forward+backward" in done.stdout
    assert "selfcheck" not in done.stdout and done.stdout.rstrip().endswith("total: 300 s")
    bad = _plan_output(GPU_CHECK_BUDGET_S="soon")
    assert bad.returncode == 2 and "GPU_CHECK_BUDGET_S must be a whole number" in bad.stderr
    bad = _plan_output(GPU_CHECK_PHASES="headline warmup")
    assert bad.returncode == 2 and "unknown phase(s) ['warmup']" in bad.stderr


def test_allocation_drops_the_lowest_priorities_first():
    wanted = {p.name: p.wanted_s for p in PHASES}
    assert allocate(DEFAULT_BUDGET_S, PHASES) == wanted
    small = allocate(300, PHASES)
    assert sum(small.values()) <= 300
    assert all(small[p.name] == p.wanted_s for p in PHASES if p.priority <= 2)
    assert small["headline"] == 300 - sum(wanted[p.name] for p in PHASES if p.priority <= 2)
    assert small["suite"] == small["models"] == small["compile"] == 0
    large = allocate(900, PHASES)
    assert sum(large.values()) == 900
    assert all(large[p.name] == p.wanted_s for p in PHASES if p.priority <= 3)
    assert all(large[p.name] > p.wanted_s for p in PHASES if p.priority == 4)
    tiny = allocate(MIN_PHASE_S - 1, PHASES)
    assert set(tiny.values()) == {0}
    with pytest.raises(ValueError, match="must not be negative"):
        allocate(-1, PHASES)


def _kind(workload) -> tuple:
    """What makes a headline row's kernel: op, depthwise, 1x1, grouped, large kernel, DCNv2
    mask, transposed stride."""
    args = workload.args
    kernel = max(args["kernel"]) if isinstance(args["kernel"], list) else args["kernel"]
    groups = args.get("groups", 1)
    transposed = args.get("stride", 1) if workload.op.startswith("conv_transpose") else None
    return (workload.op, groups > 1 and groups == args["in_channels"], kernel == 1, groups > 1,
            kernel >= 7, args.get("mask", False), transposed)


@pytest.mark.parametrize("row", ROWS, ids=[r.title for r in ROWS])
def test_headline_rows_are_real_layers_with_smoke_stand_ins_of_the_same_kind(row):
    full, smoke = WORKLOADS[row.workload], WORKLOADS[row.smoke]
    assert full.suite == "full" and smoke.suite == "smoke"
    fp8 = full.op.endswith("_fp8")
    assert row.dtype == ("float8_e4m3fn" if fp8 else "float16") in full.dtypes
    assert full.layout == "channels_last"
    assert _kind(full) == _kind(smoke)
    assert row.baseline == ("torchvision" if full.op == "deform_conv2d"
                            else "cuDNN fp16" if fp8 else "cuDNN")


def test_headline_covers_the_performance_table():
    titles = " | ".join(r.title for r in ROWS)
    for kind in ("ResNet-50 3x3", "ResNet-50 1x1", "ResNeXt", "MobileNetV2 depthwise",
                 "depthwise-separable", "31x31", "conv_transpose 4x4 stride 2", "R3D-18",
                 "DCNv2 forward", "DCNv2 forward+backward", "FP8"):
        assert kind in titles
    cases = headline_cases(WORKLOADS.values(), "full")
    keys = [(w.name, d, direction) for w, d, direction in cases]
    assert len(keys) == len(set(keys)) == 11  # DCNv2's forward is measured once for two rows
    assert keys[-1] == ("dcnv2.res4", "float16", "backward")


def test_suite_and_compile_phases_leave_out_what_others_measure():
    headline = {(w.name, d, x) for w, d, x in layer_cases("headline", "full")}
    suite = [(w.name, d, x) for w, d, x in layer_cases("suite", "full")]
    assert headline.isdisjoint(suite) and len(suite) == len(set(suite))
    first_backward = next(i for i, (_, _, x) in enumerate(suite) if x == "backward")
    assert all(WORKLOADS[n].dtypes[0] == d for n, d, _ in suite[:first_backward])
    compile_cases = layer_cases("compile", "full")
    assert compile_cases and all(ADAPTERS[w.op].compiles and x == "forward"
                                 for w, _, x in compile_cases)
    plan = {p.name: p for p in make_plan(DEFAULT_BUDGET_S, "smoke")}
    assert plan["headline"].count == 11 and plan["models"].count == 3


def test_every_planned_gpu_test_exists():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *GPU_TESTS], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{len(GPU_TESTS)} tests collected" in done.stdout


def test_bench_readme_shows_the_default_plan():
    done = _plan_output()
    heads = [line for line in done.stdout.splitlines() if not line.startswith("    ")
             and not line.startswith("      ")]
    readme = (REPO / "bench" / "README.md").read_text()
    block = readme.split("### The default plan")[1].split("```")[1].strip().splitlines()
    assert block == heads
