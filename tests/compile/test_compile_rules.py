"""The compile check's rules, each shown failing on a deliberately bad kernel (tests/compile/
bad_kernels.py) and passing on a good one, and its figures read from real compiler output.

The kernels are compiled for sm_90 and sm_80 by Triton's real compiler in a subprocess: these
tests run under TRITON_INTERPRET, where triton.jit makes interpreted functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foveal.bench import offline_compiler as oc

HERE = Path(__file__).resolve().parent


def real_compiler_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def verdicts() -> dict[str, dict[str, list[str]]]:
    done = subprocess.run([sys.executable, str(HERE / "bad_kernels.py")], env=real_compiler_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("rule", ["compile", "shared-memory", "tensor-cores", "spill"])
def test_each_rule_fails_its_bad_kernel(verdicts, rule, arch):
    assert verdicts[rule][arch] == [rule]


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_a_good_kernel_breaks_no_rule(verdicts, arch):
    assert verdicts["good"][arch] == []


def test_fp8_products_must_use_fp8_wgmma_on_hopper(verdicts):
    assert verdicts["good-fp8"]["sm_90"] == []
    assert verdicts["fp8-tensor-cores"]["sm_90"] == ["fp8-tensor-cores"]  # fp16 wgmma instead


def test_widest_load_reads_vector_loads_and_async_copies():
    ptx = "\n".join([
        "ld.global.b32 { %r1 }, [ %rd1 + 0 ];",
        "@%p1 ld.global.v2.b32 { %r2, %r3 }, [ %rd2 + 0 ];",
        "cp.async.cg.shared.global [ %r4 + 0 ], [ %rd3 + 0 ], 0x10, %r5;",
    ])
    assert oc.widest_load(ptx) == 16
    assert oc.widest_load("ld.global.nc.v4.b16 { %rs1, %rs2, %rs3, %rs4 }, [ %rd1 ];") == 8
    assert oc.widest_load("mov.u32 %r1, 0;") is None


def test_tensor_core_kind():
    assert oc.tensor_core_kind("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16") == "wgmma"
    assert oc.tensor_core_kind("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") == "mma"
    assert oc.tensor_core_kind("fma.rn.f32 %f1, %f2, %f3, %f4;") is None


def test_tensor_core_operands():
    wgmma = "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%f1}, %rd1, %rd2;"
    assert oc.tensor_core_operands(wgmma) == "e4m3"
    mixed = "\n".join([wgmma, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f1};",
                        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f2};"])
    assert oc.tensor_core_operands(mixed) == "bf16+e4m3+tf32"
    assert oc.tensor_core_operands("fma.rn.f32 %f1, %f2, %f3, %f4;") is None


def test_blocks_per_sm_takes_the_tightest_limit():
    h100 = oc.ARCHS["sm_90"]
    # 128 threads at 128 registers: 64 Ki registers hold 4 blocks.
    assert oc.blocks_per_sm(h100, registers=128, num_warps=4, shared_bytes=0) == 4
    # 100 KiB of shared memory (plus 1 KiB reserved) per block: two fit in 228 KiB.
    assert oc.blocks_per_sm(h100, registers=32, num_warps=4, shared_bytes=100 * 1024) == 2
    # Tiny blocks stop at the architecture's 32 resident blocks.
    assert oc.blocks_per_sm(h100, registers=16, num_warps=1, shared_bytes=0) == 32
