"""Kernels that break each compile-check rule, and one that keeps them all.

Run as a script (without TRITON_INTERPRET: the real compiler is the point), it compiles each
for sm_90 and sm_80 through foveal's offline compiler and prints, as JSON, the rules each one
breaks according to `foveal.bench.compile_report.job_violations`.
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def tile_product(a_ptr, b_ptr, c_ptr, IEEE_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STEPS: tl.constexpr,
                 AS_FP16: tl.constexpr = False):
    """c = a @ b for one [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] product, STEPS times over K.

    IEEE_FP32 upcasts the fp16 tiles and multiplies in IEEE fp32: no tensor cores. AS_FP16
    upcasts FP8 tiles to fp16: fp16 tensor cores, not FP8 ones.
    """
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in tl.range(0, STEPS):
        a = tl.load(a_ptr + rm[:, None] * (BLOCK_K * STEPS) + step * BLOCK_K + rk[None, :])
        b = tl.load(b_ptr + (step * BLOCK_K + rk)[:, None] * BLOCK_N + rn[None, :])
        if IEEE_FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        elif AS_FP16:
            acc = tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
        else:
            acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BLOCK_N + rn[None, :], acc)


@triton.jit
def mismatched_product(a_ptr, c_ptr, BLOCK: tl.constexpr):
    """tl.dot of a [BLOCK, BLOCK] tile with a [2*BLOCK, BLOCK] one: a compile error."""
    r = tl.arange(0, BLOCK)
    r2 = tl.arange(0, 2 * BLOCK)
    a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :])
    b = tl.load(a_ptr + r2[:, None] * BLOCK + r[None, :])
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, b))


def _product(block_m: int, block_n: int, block_k: int, steps: int = 4, ieee: bool = False,
             warps: int = 4, stages: int = 3, dtype: torch.dtype = torch.float16,
             as_fp16: bool = False):
    """Launch arguments of tile_product on meta tensors."""
    a = torch.empty(block_m * block_k * steps, dtype=dtype, device="meta")
    b = torch.empty(block_k * steps * block_n, dtype=dtype, device="meta")
    c = torch.empty(block_m * block_n, dtype=torch.float32, device="meta")
    return tile_product, (a, b, c), dict(IEEE_FP32=ieee, BLOCK_M=block_m, BLOCK_N=block_n,
                                         BLOCK_K=block_k, STEPS=steps, AS_FP16=as_fp16,
                                         num_warps=warps, num_stages=stages)


FP8 = torch.float8_e4m3fn


CASES = {
    "good": lambda: _product(64, 64, 32),
    "compile": lambda: (mismatched_product,
                        (torch.empty(1024, dtype=torch.float16, device="meta"),
                         torch.empty(256, dtype=torch.float32, device="meta")), dict(BLOCK=16)),
    # 4 stages of 128x256 + 256x128 fp16 tiles: 512 KiB of shared memory.
    "shared-memory": lambda: _product(128, 128, 256, stages=4, warps=8),
    "tensor-cores": lambda: _product(64, 64, 32, ieee=True),
    # A 256x256 fp32 accumulator on 2 warps: 1024 registers a thread.
    "spill": lambda: _product(256, 256, 16, steps=2, warps=2, stages=2),
}
# FP8 exists from sm_89: these compile for sm_90 alone, as FP8 cases of the check do.
FP8_CASES = {
    "good-fp8": lambda: _product(64, 64, 64, dtype=FP8),
    "fp8-tensor-cores": lambda: _product(64, 64, 64, dtype=FP8, as_fp16=True),
}


def main() -> int:
    from foveal.bench import compile_report
    from foveal.bench import offline_compiler as oc
    from foveal.bench.compilecheck import Job

    found: dict[str, dict[str, list[str]]] = {}
    for cases, archs, dtype in ((CASES, ("sm_90", "sm_80"), "float16"),
                                (FP8_CASES, ("sm_90",), "float8_e4m3fn")):
        for name, make in cases.items():
            kernel, args, constexprs = make()
            for arch in archs:
                ((_, spec),) = oc.specialize(kernel, args, constexprs, oc.ARCHS[arch])
                job = Job(spec, spec.name, {}, dict(constexprs), {dtype}, oc.compile_job(spec))
                found.setdefault(name, {})[arch] = [rule for rule, _ in
                                                    compile_report.job_violations(job)]
    json.dump(found, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
