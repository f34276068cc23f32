"""The one autotuning setup for foveal's tiled (tl.dot) kernels.

Key policy, for every kernel: the batch never enters a key exactly. Either it only sizes the
grid (left out) or it sets a GEMM extent (entered rounded up to a power of two). A server then
tunes each layer once per power-of-two bucket, which its warm-up covers, instead of once per
batch size it happens to see.

On a GPU each kernel tries a small set of tile shapes per distinct problem (the key lists every
argument that changes the best choice: sizes, strides, so the memory layout, and the tile-loop
mode; Triton adds the tensors' dtypes itself). Under Triton's interpreter tuning would only
repeat slow CPU runs, so a single mid-sized config is used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch
import triton

from .backend import INTERPRETED
from .launch import shared_memory_per_block

Tile = tuple[int, int, int, int, int]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): shapes that do well for implicit GEMM
# convolutions on Ampere/Hopper; the pruning below drops those that do not fit a problem.
# Every tile a pruner keeps compiles without register spills on sm_90 and sm_80 in fp16, bf16
# and fp32 for every benchmark workload, with Triton 3.6 and 3.8 (`foveal compilecheck`).
# Left out for spilling: 128x128x32 on 4 warps (its fp32 accumulator alone takes 128 registers
# a thread), 128x256x32 and 256x128x32 on 8 warps (at the 255-register ceiling in fp32 and in
# 3-D convolutions); the 8-warp 128x128x32, 256x64 and 64x256 tiles cover the same large
# problems. 64x16x64 runs on 4 warps: on 2 it spilled where the reduction is flattened over
# (tap, channel).
_GPU_TILES: tuple[Tile, ...] = (
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (256, 64, 32, 8, 3),
    (64, 256, 32, 8, 3),
    (64, 64, 64, 4, 3),
    (64, 32, 32, 4, 4),
    (32, 64, 32, 4, 4),
    (32, 32, 32, 2, 4),
    # large tiles with light threads, for the register limits of igemm's pruner (fp32 on
    # Ampere, flattened reductions)
    (128, 64, 32, 8, 4),
    (64, 128, 32, 8, 4),
    # narrow problems: few channels per group (ResNeXt), RGB stems, small weight gradients
    (128, 16, 32, 4, 4),
    (64, 16, 64, 4, 3),
    (64, 16, 32, 4, 4),
    (128, 16, 32, 8, 4),
    (64, 16, 64, 8, 3),
    (16, 16, 64, 2, 3),
    (128, 64, 16, 4, 4),
    (64, 64, 16, 4, 4),
)
# FP8 (e4m3) operands, for Hopper's FP8 wgmma (sm_89+ only: they are never compiled for sm_80).
# One-byte operands halve each stage's shared memory, so BLOCK_K takes 64-128; rows stay >= 64
# and warps a multiple of 4 (one warpgroup per 64 rows), the shapes Triton lowers to wgmma.
FP8_TILES: tuple[Tile, ...] = (
    (128, 128, 128, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 64, 128, 4, 3),
    (64, 128, 128, 4, 3),
    (256, 64, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 64, 128, 4, 3),
    (64, 64, 64, 4, 4),
    (128, 32, 64, 4, 4),
    (64, 32, 128, 4, 3),
    (64, 32, 64, 4, 4),
    # narrow problems: few channels per group, few output channels
    (64, 16, 128, 4, 3),
    (64, 16, 64, 4, 4),
)
_INTERPRETER_TILE: Tile = (64, 32, 32, 4, 1)
# FP8 layers are whole networks' worth of long reductions in the CPU tests: fewer, larger
# interpreted steps.
FP8_INTERPRETER_TILE: Tile = (64, 64, 128, 4, 1)


_REGISTER_FILE = 65536  # 32-bit registers per SM on Ampere and Hopper
_MAX_REGISTERS = 255  # per thread


def make_config(blocks: dict[str, int], num_warps: int, num_stages: int) -> triton.Config:
    """A config with an explicit register budget: what one block of `num_warps` may hold.

    Without one, ptxas 13 (Triton 3.8) trades a few spills for occupancy on its own (seen: 80
    registers and 24 bytes spilled where 103 registers need none); with one it spills only when
    the code needs more than the budget. Every foveal config comes from here.
    """
    budget = min(_MAX_REGISTERS, _REGISTER_FILE // (32 * num_warps))
    return triton.Config(dict(blocks), num_warps=num_warps, num_stages=num_stages,
                         maxnreg=budget)


def _config(tile: Tile) -> triton.Config:
    m, n, k, warps, stages = tile
    return make_config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, warps, stages)


def tile_configs(tiles: tuple[Tile, ...] = _GPU_TILES, interpreted: bool = INTERPRETED,
                 interpreter_tile: Tile = _INTERPRETER_TILE) -> list[triton.Config]:
    """Configs of `tiles` on a GPU; under the interpreter the single `interpreter_tile`."""
    return [_config(t) for t in ((interpreter_tile,) if interpreted else tiles)]


def _fits(limit: int) -> int:
    """Largest useful block for an extent: a power of two >= extent, and at least 16 (tl.dot)."""
    return max(16, triton.next_power_of_2(max(1, limit)))


# Smallest row, column and reduction blocks worth trying where the problem is at least that
# large: narrower tiles only multiply programs, reload operands and shorten the pipelined
# steps (the narrow tiles are for narrow problems).
_NARROWEST = (64, 32, 32)
_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
# For curated tile lists, which hold only tiles meant for their kernel: no narrowing.
ANY_WIDTH = (16, 16, 16)


def prune_tiles(configs: Sequence[triton.Config], m: int, n: int, k: int,
                operand: torch.Tensor, *, blocks: tuple[str, str, str] = _BLOCKS,
                narrowest: tuple[int, int, int] = _NARROWEST) -> list[triton.Config]:
    """Keep the tiles that suit the problem's M (rows), N (columns) and K (reduction) extents
    and fit shared memory.

    `blocks` names the config's row, column and reduction blocks. A tile is dropped when it is
    larger than an extent (past its power of two), narrower than `narrowest` along an extent
    that is not, or when the software pipeline's shared memory (num_stages copies of the A and
    B tiles of `operand`'s element size) passes the limit per block of the GPU that runs
    `operand`'s kernels (A100: 163 KiB, H100: 227 KiB). Fewer candidates also mean less
    autotuning time on the GPU.
    """
    element_size = operand.element_size()
    budget = shared_memory_per_block(operand.device)
    extents = (m, n, k)
    least = [min(floor, _fits(extent)) for floor, extent in zip(narrowest, extents, strict=True)]
    kept = []
    for config in configs:
        rows, cols, depth = (config.kwargs[name] for name in blocks)
        smem = (rows + cols) * depth * element_size * config.num_stages
        if smem <= budget and all(low <= block <= _fits(extent) for low, block, extent
                                  in zip(least, (rows, cols, depth), extents, strict=True)):
            kept.append(config)
    if kept:
        return kept
    return [min(configs, key=lambda c: math.prod(c.kwargs[name] for name in blocks))]


def within_registers(configs: Sequence[triton.Config], *, a_per_thread: int | None = None,
                     acc_per_thread: int | None = None, max_block_m: int | None = None,
                     max_block_k: int | None = None) -> list[triton.Config]:
    """The configs whose A tile (BLOCK_M x BLOCK_K) and accumulator (BLOCK_M x BLOCK_N) hold at
    most these many elements per thread, and whose BLOCK_M and BLOCK_K are at most these.

    Register limits past which ptxas spilled (foveal compilecheck); each caller says which
    problem shapes need them. All of `configs` when none is within: the autotuner keeps a
    choice, and the compile check reports the spill.
    """
    def light(config: triton.Config) -> bool:
        kw, threads = config.kwargs, 32 * config.num_warps
        return ((a_per_thread is None or kw["BLOCK_M"] * kw["BLOCK_K"] <= a_per_thread * threads)
                and (acc_per_thread is None
                     or kw["BLOCK_M"] * kw["BLOCK_N"] <= acc_per_thread * threads)
                and (max_block_m is None or kw["BLOCK_M"] <= max_block_m)
                and (max_block_k is None or kw["BLOCK_K"] <= max_block_k))
    return [c for c in configs if light(c)] or list(configs)


def at_most_stages(configs: Sequence[triton.Config], stages: int) -> list[triton.Config]:
    """`configs` with their software pipelines cut to `stages` (each in-flight stage holds
    its loads' registers), the first of any duplicates kept."""
    kept: dict[tuple, triton.Config] = {}
    for config in configs:
        if config.num_stages > stages:
            config = make_config(config.kwargs, config.num_warps, stages)
        kept.setdefault((tuple(sorted(config.kwargs.items())), config.num_warps,
                         config.num_stages), config)
    return list(kept.values())


def unaligned(*extents: int) -> bool:
    """Whether a channel count is not a multiple of 16: Triton then cannot assume 16-element
    aligned strides, loads and stores go element by element, and every element holds its own
    address in registers."""
    return any(extent % 16 for extent in extents)


# At most this many configs per autotuned launch when set to N > 0 (`make gpu-check` sets it:
# on a short GPU lease each config tried costs a compile). Applied after a kernel's own
# pruning, it keeps the first N that pruning kept: every config list is ordered most suitable
# first (the large, general-purpose tiles before the narrow ones for narrow problems).
MAX_CONFIGS_ENV = "FOVEAL_AUTOTUNE_MAX_CONFIGS"


def cap_configs(configs: list[triton.Config]) -> list[triton.Config]:
    """The first `FOVEAL_AUTOTUNE_MAX_CONFIGS` of `configs` (all of them when unset or 0)."""
    text = os.environ.get(MAX_CONFIGS_ENV, "").strip()
    if not text:
        return configs
    if not text.isdigit():
        raise ValueError(f"{MAX_CONFIGS_ENV} must be a whole number of configs, got {text!r}")
    return configs[:int(text)] if int(text) else configs


def autotuned(key: Sequence[str], prune: Callable[..., list[triton.Config]],
              configs: Sequence[triton.Config] | None = None,
              reset_to_zero: Sequence[str] = ()):
    """Decorator: Triton's autotuner over `configs` (default `tile_configs()`) with a pruner.

    `prune(configs, args)` receives every launch argument by name: Triton passes positional
    arguments as `named_args` and keyword ones (the constexprs) separately, and runs the
    pruner only when there is more than one config (so only on a GPU), and what it keeps is
    capped by `cap_configs`.
    Kernels whose blocks are not (BLOCK_M, BLOCK_N, BLOCK_K) pass their own `configs`; a
    pruner that returns exactly one config skips benchmarking. `reset_to_zero` names the output
    buffers a kernel accumulates into (atomics): the tuner zeroes them before each trial run and
    after the last, so the real launch starts from zeros.
    """
    def early_prune(configs, named_args, **kwargs):
        return cap_configs(prune(configs, {**named_args, **kwargs}))

    chosen = tile_configs() if configs is None else list(configs)
    return triton.autotune(configs=chosen, key=list(key),
                           prune_configs_by={"early_config_prune": early_prune},
                           reset_to_zero=list(reset_to_zero) or None)
