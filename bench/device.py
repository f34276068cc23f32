"""Timing, device ceilings and peak memory: the measuring instruments of the harness.

On CUDA, times come from `triton.testing.do_bench` (CUDA events, warm-up, the median of many
runs, the L2 cache flushed before each run). On a CPU the kernels run in Triton's interpreter,
so a time is recorded only to exercise the same code path and is marked not meaningful.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

NOT_MEANINGFUL = "not meaningful on CPU"
_DEFAULT_L2_BYTES = 50 * 2**20  # H100's L2, used when the device does not report its own


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: the median and the 20th/80th percentiles."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    meaningful: bool


class Timer(Protocol):
    def __call__(self, fn: Callable[[], object]) -> Timing: ...


@dataclass(frozen=True)
class GpuTimer:
    """`triton.testing.do_bench`; warm-up and repetition are milliseconds, as do_bench takes."""

    warmup_ms: int = 25
    rep_ms: int = 100

    def __call__(self, fn: Callable[[], object]) -> Timing:
        from triton.testing import do_bench

        median, p20, p80 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms,
                                    quantiles=[0.5, 0.2, 0.8])
        return Timing(float(median), float(p20), float(p80), meaningful=True)


@dataclass(frozen=True)
class CpuTimer:
    """Wall-clock time of a few calls: only proves the path runs (interpreted kernels)."""

    reps: int = 1

    def __call__(self, fn: Callable[[], object]) -> Timing:
        samples = []
        for _ in range(self.reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
        return Timing(statistics.median(samples), pick(0.2), pick(0.8), meaningful=False)


def select_device(name: str | None) -> torch.device:
    """The device for a command (default: CUDA if present). Without CUDA the kernels run in
    Triton's interpreter, which must be switched on before foveal.kernels is first imported
    (triton.jit reads TRITON_INTERPRET when the kernels are decorated)."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    if device.type != "cuda":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return device


def kernels_interpreted() -> bool:
    from foveal.kernels.backend import INTERPRETED

    return INTERPRETED


def default_timer(device: torch.device, warmup_ms: int = 25, rep_ms: int = 100) -> Timer:
    """CUDA events through do_bench for compiled kernels; otherwise a marked wall clock."""
    if device.type == "cuda" and not kernels_interpreted():
        return GpuTimer(warmup_ms, rep_ms)
    return CpuTimer()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_cache_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_L2_BYTES
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or _DEFAULT_L2_BYTES)


def free_memory_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes allocated at the peak of one call beyond what was allocated before it (CUDA)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return int(peak)


def poison_allocator(nbytes: int, device: torch.device) -> None:
    """Fill a block of `nbytes` with NaN and free it, so the next allocation of that size
    (the op's output, from PyTorch's caching allocator) starts as NaN, not as an old result.
    An element the kernel never writes then shows up as NaN in the correctness check."""
    if device.type != "cuda" or nbytes <= 0:
        return
    block = torch.full((max(1, nbytes // 4),), float("nan"), device=device)
    del block


@dataclass
class Ceilings:
    """The device's measured limits: copy bandwidth (bytes read + written per second) and
    matrix-multiply rate per dtype (FLOP/s)."""

    copy_bytes_per_s: float | None = None
    copy_bytes: int = 0
    matmul_flops_per_s: dict[str, float] = field(default_factory=dict)
    matmul_size: int = 0
    meaningful: bool = False

    def flops_ceiling(self, dtype: str) -> float | None:
        return self.matmul_flops_per_s.get(dtype)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _matmul_precision_for(dtype: torch.dtype) -> str:
    """fp32 matmuls use TF32 exactly when foveal's fp32 convolutions do, so the ceiling is
    the one those convolutions can reach."""
    from foveal.kernels.igemm import fp32_convolutions_use_tf32

    if dtype == torch.float32 and fp32_convolutions_use_tf32():
        return "high"
    return "highest"


def measure_ceilings(device: torch.device, dtypes: list[str], timer: Timer) -> Ceilings:
    """A large device-to-device copy and a large matmul per dtype, on random data (zeros can
    run faster than real data)."""
    cuda = device.type == "cuda"
    copy_elems = (256 if cuda else 8) * 2**20  # 1 GiB of float32 on a GPU, 32 MiB on a CPU
    free = free_memory_bytes(device)
    if free is not None:
        copy_elems = min(copy_elems, free // 16)
    src = torch.rand(copy_elems, device=device)
    dst = torch.empty_like(src)
    timing = timer(lambda src=src, dst=dst: dst.copy_(src))
    ceilings = Ceilings(meaningful=timing.meaningful)
    ceilings.copy_bytes = 2 * src.numel() * src.element_size()
    ceilings.copy_bytes_per_s = ceilings.copy_bytes / (timing.median_ms * 1e-3)
    del src, dst

    n = 8192 if cuda else 256
    ceilings.matmul_size = n
    previous = torch.get_float32_matmul_precision()
    try:
        for name in dict.fromkeys(dtypes):
            dtype = getattr(torch, name)
            if dtype == torch.float64:
                continue
            torch.set_float32_matmul_precision(_matmul_precision_for(dtype))
            matmul = _matmul(n, device, dtype)
            if matmul is None:
                continue
            timing = timer(matmul)
            ceilings.matmul_flops_per_s[name] = 2 * n**3 / (timing.median_ms * 1e-3)
            del matmul
    finally:
        torch.set_float32_matmul_precision(previous)
    return ceilings


def _matmul(n: int, device: torch.device, dtype: torch.dtype) -> Callable[[], Any] | None:
    """An n x n x n matmul in `dtype` on random data; None where PyTorch has none (FP8 is
    torch._scaled_mm, which GPUs without FP8 tensor cores lack)."""
    if dtype != torch.float8_e4m3fn:
        a, b, c = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))
        return lambda: torch.mm(a, b, out=c)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype).t()  # column-major, as _scaled_mm wants
    one = torch.ones((), device=device)
    try:
        torch._scaled_mm(a, b, one, one, out_dtype=torch.float16)
    except RuntimeError:  # no FP8 tensor cores
        return None
    return lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.float16)
