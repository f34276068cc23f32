"""Triton's real compiler for a GPU this machine does not have, and what its output tells.

Triton lowers a kernel to PTX and a cubin for any NVIDIA architecture without a GPU or CUDA
driver; only the *current target* comes from the driver. `OfflineDriver` answers that question
for a chosen architecture, so Triton's own argument binder specialises a launch exactly as it
would on that GPU (integer divisibility, pointer alignment, constexprs, the backend's options).

Two steps, so that many launches can be compiled in parallel processes and each distinct
kernel only once:
1. `specialize(plan, arch)`: in this process, the autotuner's own pruning picks the configs a
   GPU run could choose between, and Triton's binder turns each into its specialization data
   (Triton's JSON for `JITFunction.preload`); nothing is compiled.
2. `compile_job(job)`: in a worker, `preload` compiles that specialization through PTX to a
   cubin, ptxas reports registers, spills and stack, and the PTX shows which tensor-core and
   load instructions were emitted.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver


@dataclass(frozen=True)
class Arch:
    """A target architecture and the per-SM limits that decide occupancy."""

    name: str  # "sm_90"
    capability: int
    gpu: str  # the GPU whose SM count plans split-K reductions
    multiprocessors: int
    shared_per_block: int  # bytes a block may opt in to
    shared_per_sm: int
    registers_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    reserved_shared_per_block: int = 1024  # the driver's own, per resident block
    tensor_core_ops: tuple[str, ...] = ("mma.sync",)

    def target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)


ARCHS: dict[str, Arch] = {
    "sm_90": Arch("sm_90", 90, "H100/H200", 132, shared_per_block=232448,
                  shared_per_sm=233472, tensor_core_ops=("wgmma.mma_async", "mma.sync")),
    "sm_80": Arch("sm_80", 80, "A100", 108, shared_per_block=166912, shared_per_sm=167936),
}


class OfflineDriver:
    """Stands in for Triton's CUDA driver: names the target, and never touches a device.

    The device id is the capability, so Triton keeps one binder (and one cache) per target.
    """

    def __init__(self, arch: Arch):
        self.arch = arch

    def get_current_target(self) -> GPUTarget:
        return self.arch.target()

    def get_current_device(self) -> int:
        return self.arch.capability

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def targeting(arch: Arch) -> Iterator[None]:
    """Make `arch` Triton's current target for the body.

    The previous driver is put back as it was (none, on a machine without a GPU: asking
    Triton for its default there would fail).
    """
    previous = getattr(driver, "_active", None)
    driver.set_active(OfflineDriver(arch))
    try:
        yield
    finally:
        driver._active = previous


def jit_function(kernel: Any) -> Any:
    """The JITFunction under an autotuner."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def candidate_configs(kernel: Any, args: tuple, constexprs: dict[str, Any]) -> list[Any]:
    """The configs the autotuner would time for these arguments, after its own pruning."""
    if not isinstance(kernel, triton.runtime.Autotuner):
        return [None]
    kernel.nargs = dict(zip(kernel.arg_names, args, strict=False))
    try:
        return list(kernel.prune_configs(constexprs))
    finally:
        kernel.nargs = None


@dataclass(frozen=True)
class CompileJob:
    """One distinct kernel specialization to compile for one architecture."""

    arch: str
    module: str
    name: str
    specialization: str  # Triton's specialization data (JSON), as `JITFunction.preload` takes


def specialize(kernel: Any, args: tuple, constexprs: dict[str, Any],
               arch: Arch) -> list[tuple[Any, CompileJob]]:
    """(config, job) for each config the autotuner keeps, specialised as on `arch`."""
    from triton import knobs

    fn = jit_function(kernel)
    captured: list[str] = []

    def capture(**kwargs: Any) -> bool:
        captured.append(kwargs["compile"]["specialization_data"])
        return True  # skip the compile: the workers do it

    jobs = []
    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = capture
    try:
        with targeting(arch):
            for config in candidate_configs(kernel, args, constexprs):
                captured.clear()
                extra = config.all_kwargs() if config is not None else {}
                fn.warmup(*args, grid=(1,), **constexprs, **extra)
                if len(captured) != 1:
                    raise RuntimeError(f"{fn.__name__}: expected one specialization, "
                                       f"got {len(captured)}")
                jobs.append((config, CompileJob(arch.name, fn.__module__, fn.__name__,
                                                captured[0])))
    finally:
        knobs.runtime.jit_cache_hook = previous
    return jobs


@dataclass
class Compiled:
    """What the machine code of one job uses; `error` is set when it did not compile."""

    registers: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    dot: bool = False  # the kernel multiplies tiles with tl.dot
    tensor_cores: str | None = None  # "wgmma", "mma" or None
    tensor_core_operands: str | None = None  # their operand types: "f16", "e4m3", "bf16+tf32"
    widest_load_bytes: int | None = None  # widest global load or async copy per thread
    blocks_per_sm: int | None = None
    compile_seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
# Global loads (plain or vector) and asynchronous global-to-shared copies with their width.
_LOAD = re.compile(r"\bld\.global(?:\.[a-zA-Z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")
_ASYNC_COPY = re.compile(r"\bcp\.async\.c[ag]\.shared\.global[^\[]*\[[^\]]*\],\s*\[[^\]]*\],"
                         r"\s*(0x[0-9a-fA-F]+|\d+)")


def widest_load(ptx: str) -> int | None:
    """Bytes moved by the widest global load or cp.async in the PTX (TMA counts as 16)."""
    widths = [int(vec or 1) * int(bits) // 8 for vec, bits in _LOAD.findall(ptx)]
    widths += [int(size, 0) for size in _ASYNC_COPY.findall(ptx)]
    if "cp.async.bulk" in ptx:
        widths.append(16)
    return max(widths) if widths else None


# The A operand's type in wgmma (".f32.e4m3.e4m3": accumulator, A, B) and mma.sync
# (".row.col.f32.f16.f16.f32": layouts, D, A, B, C) instructions.
_TENSOR_CORE_OPERANDS = re.compile(
    r"\bwgmma\.mma_async(?:\.sp)?\.sync\.aligned\.m\d+n\d+k\d+\.\w+\.(\w+)\.\w+"
    r"|\bmma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col\.\w+\.(\w+)\.\w+")


def tensor_core_operands(ptx: str) -> str | None:
    """The operand types the tensor-core instructions multiply ("e4m3", "f16+tf32"...)."""
    found = {wgmma or mma for wgmma, mma in _TENSOR_CORE_OPERANDS.findall(ptx)}
    return "+".join(sorted(found)) or None


def tensor_core_kind(ptx: str) -> str | None:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync\b", ptx):
        return "mma"
    return None


def blocks_per_sm(arch: Arch, registers: int, num_warps: int, shared_bytes: int) -> int:
    """Resident blocks per SM allowed by registers, threads and shared memory.

    Registers are allocated per warp in units of 256; shared memory per block adds the
    driver's reserve.
    """
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = (arch.registers_per_sm // max(1, per_warp)) // num_warps
    by_threads = arch.max_threads_per_sm // (32 * num_warps)
    by_shared = (arch.shared_per_sm // (shared_bytes + arch.reserved_shared_per_block)
                 if shared_bytes else arch.max_blocks_per_sm)
    return max(0, min(by_registers, by_threads, by_shared, arch.max_blocks_per_sm))


def _first_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:count])


def compile_job(job: CompileJob) -> Compiled:
    """Compile one job through ptxas and read its resources. Runs in a worker process."""
    from triton import knobs

    arch = ARCHS[job.arch]
    fn = jit_function(getattr(importlib.import_module(job.module), job.name))
    knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and its report
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with targeting(arch), contextlib.redirect_stdout(log):
            kernel = fn.preload(job.specialization)
    except Exception as err:  # a compiler failure is a finding, not a crash
        return Compiled(compile_seconds=time.perf_counter() - start,
                        error=f"{type(err).__name__}: {_first_lines(str(err))}")
    result = Compiled(compile_seconds=time.perf_counter() - start)
    report = log.getvalue()
    if (stack := _STACK.search(report)) is not None:
        result.stack_bytes, result.spill_store_bytes, result.spill_load_bytes = (
            int(v) for v in stack.groups())
    if (registers := _REGISTERS.search(report)) is not None:
        result.registers = int(registers.group(1))
    meta = kernel.metadata
    result.shared_bytes = int(meta.shared)
    result.num_warps, result.num_stages = int(meta.num_warps), int(meta.num_stages)
    ptx = kernel.asm.get("ptx", "")
    result.dot = re.search(r"\btt\.dot\b", kernel.asm.get("ttir", "")) is not None
    result.tensor_cores = tensor_core_kind(ptx)
    result.tensor_core_operands = tensor_core_operands(ptx)
    result.widest_load_bytes = widest_load(ptx)
    if result.registers is not None:
        result.blocks_per_sm = blocks_per_sm(arch, result.registers, result.num_warps,
                                             result.shared_bytes)
    return result
