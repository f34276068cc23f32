"""The harness and the profiler on a real GPU (skipped without one; run by make gpu-check)."""

from __future__ import annotations

import pytest
import torch

from foveal.bench.harness import Settings, run_benchmark
from foveal.bench.ops import ADAPTERS, ConvAdapter
from foveal.bench.profile import profile_op
from foveal.bench.report import to_json
from foveal.bench.workloads import load_workloads, select

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
WORKLOADS = load_workloads()


def _quick(**kwargs) -> Settings:
    return Settings(device=CUDA, max_input_sets=3, **kwargs)


def test_gpu_bench_real_layers_forward_and_backward():
    chosen = select(WORKLOADS, names=["resnet50.layer1.0.conv2", "r3d18.layer3.0.conv2.0"])
    report = run_benchmark(chosen, _quick(dtypes=("float16",), backward=True))
    doc = to_json(report)
    assert doc["meaningful"] is True and doc["environment"]["backend"] == "triton"
    ceilings = doc["ceilings"]
    assert 1e11 < ceilings["copy_bytes_per_s"] < 2e13  # 100 GB/s .. 20 TB/s
    assert 1e13 < ceilings["matmul_flops_per_s"]["float16"] < 1e16
    for row in doc["results"]:
        where = f"{row['workload']} {row['direction']}"
        assert row["status"] == "ok", (where, row["variants"]["foveal"]["message"])
        for name, v in row["variants"].items():
            assert v["status"] == "ok", (where, name, v["message"])
            assert v["timing_meaningful"] is True and v["time_ms"] > 0, (where, name)
            assert v["peak_memory_bytes"] > 0, (where, name)
            assert 0 < v["fraction_of_roofline"] < 1.5, (where, name)
        assert row["speedup"]["pytorch"] > 0
        assert 2 <= row["input_sets"] <= 3


class _OffByOne(ConvAdapter):
    def foveal(self, workload, inputs):
        out = super().foveal(workload, inputs).clone()
        out[(0,) * out.dim()] += 1.0
        return out


def test_gpu_wrong_output_is_not_timed():
    chosen = select(WORKLOADS, names=["resnext50.layer3.1.conv2"])
    report = run_benchmark(chosen, _quick(dtypes=("bfloat16",)),
                           adapters={**ADAPTERS, "conv2d": _OffByOne(2)})
    foveal = report.cases[0].variants["foveal"]
    assert foveal.status == "wrong" and foveal.timing is None


def test_gpu_profile_reports_candidates_and_compiled_resources():
    [workload] = select(WORKLOADS, names=["resnet50.layer3.1.conv2"])
    report = profile_op(ADAPTERS["conv2d"], workload, "float16", CUDA)
    forward = report.launches[0]
    assert forward.kernel == "igemm.igemm_kernel" and forward.autotuned
    timed = [c for c in forward.candidates if c.status == "timed"]
    assert len(timed) >= 2, forward.note
    [chosen] = [c for c in forward.candidates if c.chosen]
    assert chosen.time_ms == min(c.time_ms for c in timed)
    resources = chosen.resources
    assert resources is not None and resources.registers > 0
    assert resources.shared_bytes > 0 and resources.spills is not None
    assert resources.num_warps == chosen.config["num_warps"]
