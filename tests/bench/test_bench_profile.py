"""`foveal profile`'s reading of Triton's autotuner: a real autotuned kernel (timed by a stand-in
benchmark function, since the interpreter has no GPU events), older timing formats, and the
launches of foveal's own conv kernels."""

from __future__ import annotations

import inspect

import pytest
import torch
import triton
import triton.language as tl

from foveal.bench.ops import ADAPTERS
from foveal.bench.profile import (
    Launch,
    config_dict,
    format_report,
    observe_kernels,
    profile_op,
    summarize_tuning,
)
from foveal.bench.workloads import load_workloads, select

_TIMES = {16: 0.25, 32: 0.5}  # ms the stand-in benchmark reports per BLOCK


def _fake_bench(kernel_call, quantiles):
    """Runs the candidate (so it really compiles/launches) and reports a time set by BLOCK."""
    kernel_call()
    block = _fake_bench.block
    return [_TIMES[block], 0.9 * _TIMES[block], 1.1 * _TIMES[block]]


@pytest.fixture
def autotuned_add():
    if "do_bench" not in inspect.signature(triton.autotune).parameters:
        pytest.skip("this Triton's autotune takes no do_bench (added after 3.2)")

    def remember_block(nargs):
        _fake_bench.block = nargs["BLOCK"]

    configs = [triton.Config({"BLOCK": b}, num_warps=w, pre_hook=remember_block)
               for b, w in ((16, 2), (32, 4))]

    @triton.autotune(configs=configs, key=["n"], do_bench=_fake_bench)
    @triton.jit
    def add_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + 1.0, mask=mask)

    return add_one


def _launch(kernel, n):
    x = torch.randn(n)
    y = torch.empty_like(x)
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n)
    assert torch.equal(y, x + 1.0)


def test_candidates_times_and_choice_of_a_real_autotuner(autotuned_add):
    with observe_kernels([("toy.add_one", autotuned_add)]) as observer:
        _launch(autotuned_add, 100)
        _launch(autotuned_add, 100)  # same key: cached
    first, second = observer.launches
    assert first.kernel == "toy.add_one" and first.autotuned
    assert first.key["n"] == 100 and "float32" in first.key["dtypes"]
    by_block = {c.config["BLOCK"]: c for c in first.candidates}
    assert set(by_block) == {16, 32}
    assert by_block[16].time_ms == 0.25 and by_block[32].time_ms == 0.5
    assert by_block[16].p20_ms == pytest.approx(0.225)
    assert all(c.status == "timed" for c in first.candidates)
    assert [c.config["BLOCK"] for c in first.candidates if c.chosen] == [16]  # the fastest
    assert by_block[32].config["num_warps"] == 4
    assert "tuned earlier" in second.note
    assert "run" not in vars(autotuned_add)  # the observer put everything back


def test_older_timing_formats_and_failed_candidates():
    fast, failed, slow = (triton.Config({"BLOCK": b}, num_warps=4, num_stages=s)
                          for b, s in ((64, 2), (128, 3), (256, 4)))
    launch = Launch("k", autotuned=True)
    summarize_tuning(launch, [fast, failed, slow],
                     {fast: 0.5, failed: float("inf"), slow: [0.9, 0.8, 1.0]}, fast)
    status = {c.config["BLOCK"]: (c.status, c.time_ms, c.chosen) for c in launch.candidates}
    assert status == {64: ("timed", 0.5, True), 128: ("failed", None, False),
                      256: ("timed", 0.9, False)}
    assert config_dict(slow) == {"BLOCK": 256, "num_warps": 4, "num_stages": 4}

    pruned = Launch("k", autotuned=True)
    summarize_tuning(pruned, [fast, slow], None, fast)
    assert [c.config["BLOCK"] for c in pruned.candidates] == [64]
    assert pruned.pruned == [config_dict(slow)]
    assert "pruned to a single candidate" in pruned.note


def test_profile_of_a_foveal_conv_on_the_interpreter():
    from foveal.kernels.igemm import igemm_kernel

    [workload] = select(load_workloads(), names=["smoke.conv2d.bottleneck"])
    report = profile_op(ADAPTERS["conv2d"], workload, "float32", torch.device("cpu"),
                        backward=True)
    kernels = [launch.kernel for launch in report.launches]
    assert kernels[0] == "igemm.igemm_kernel"
    assert {"igemm.igemm_kernel", "wgrad.wgrad_kernel"} <= set(kernels)
    forward = report.launches[0]
    assert forward.key["HAS_RESIDUAL"] is True and forward.key["C_G"] == 6
    [chosen] = [c for c in forward.candidates if c.chosen]
    assert chosen.config == config_dict(igemm_kernel.configs[0])
    assert chosen.resources is None and "interpreter" in forward.note
    assert report.backend == "interpreter"
    text = format_report(report)
    assert "<- chosen" in text and "wgrad.wgrad_kernel" in text
