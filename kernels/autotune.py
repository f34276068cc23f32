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

from collections.abc import Callable, Sequence

import triton

from .backend import INTERPRETED

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): shapes that do well for implicit GEMM
# convolutions on Ampere/Hopper; the pruning below drops those that do not fit a problem.
_GPU_TILES: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (128, 256, 32, 8, 3),
    (256, 128, 32, 8, 3),
    (64, 64, 64, 4, 3),
    (64, 32, 32, 4, 4),
    (32, 64, 32, 4, 4),
    (32, 32, 32, 2, 4),
    # narrow problems: few channels per group (ResNeXt), RGB stems, small weight gradients
    (128, 16, 32, 4, 4),
    (64, 16, 64, 2, 3),
    (16, 16, 64, 2, 3),
    (128, 64, 16, 4, 4),
    (64, 64, 16, 4, 4),
)
_INTERPRETER_TILE = (64, 32, 32, 4, 1)
_SHARED_MEMORY_BUDGET = 200 * 1024  # bytes; H100 allows 227 KiB per block, A100 163 KiB


def _config(tile: tuple[int, int, int, int, int]) -> triton.Config:
    m, n, k, warps, stages = tile
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps,
                         num_stages=stages)


def tile_configs(interpreted: bool = INTERPRETED) -> list[triton.Config]:
    tiles = (_INTERPRETER_TILE,) if interpreted else _GPU_TILES
    return [_config(t) for t in tiles]


def _fits(limit: int) -> int:
    """Largest useful block for an extent: a power of two >= extent, and at least 16 (tl.dot)."""
    return max(16, triton.next_power_of_2(max(1, limit)))


def prune_tiles(configs: Sequence[triton.Config], m: int, n: int, k: int,
                element_size: int) -> list[triton.Config]:
    """Drop tiles much larger than the problem's M, N, K extents or than shared memory."""
    kept = []
    for config in configs:
        kw = config.kwargs
        smem = (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * element_size * config.num_stages
        if (kw["BLOCK_M"] <= _fits(m) and kw["BLOCK_N"] <= _fits(n) and kw["BLOCK_K"] <= _fits(k)
                and smem <= _SHARED_MEMORY_BUDGET):
            kept.append(config)
    if kept:
        return kept
    return [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]
                * c.kwargs["BLOCK_K"])]


def autotuned(key: Sequence[str], prune: Callable[..., list[triton.Config]],
              configs: Sequence[triton.Config] | None = None,
              reset_to_zero: Sequence[str] = ()):
    """Decorator: Triton's autotuner over `configs` (default `tile_configs()`) with a pruner.

    `prune(configs, args)` receives every launch argument by name: Triton passes positional
    arguments as `named_args` and keyword ones (the constexprs) separately, and runs the
    pruner only when there is more than one config (so only on a GPU).
    Kernels whose blocks are not (BLOCK_M, BLOCK_N, BLOCK_K) pass their own `configs`; a
    pruner that returns exactly one config skips benchmarking. `reset_to_zero` names the output
    buffers a kernel accumulates into (atomics): the tuner zeroes them before each trial run and
    after the last, so the real launch starts from zeros.
    """
    def early_prune(configs, named_args, **kwargs):
        return prune(configs, {**named_args, **kwargs})

    chosen = tile_configs() if configs is None else list(configs)
    return triton.autotune(configs=chosen, key=list(key),
                           prune_configs_by={"early_config_prune": early_prune},
                           reset_to_zero=list(reset_to_zero) or None)
