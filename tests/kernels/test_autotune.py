"""The GPU autotuning space and its pruning (the pruner only runs with several configs, so
never under the interpreter: these tests call it directly with real launch arguments)."""

from __future__ import annotations

import torch

import foveal.kernels.igemm as igemm
import foveal.kernels.wgrad as wgrad
from foveal.kernels.autotune import prune_tiles, tile_configs


def _blocks(configs):
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in configs}


def test_interpreter_uses_one_config_and_gpu_several():
    assert len(tile_configs(interpreted=True)) == 1
    assert len(tile_configs(interpreted=False)) > 4


def test_prune_drops_tiles_larger_than_the_problem():
    kept = _blocks(prune_tiles(tile_configs(False), m=100_000, n=24, k=9 * 3, element_size=2))
    assert kept and all(n <= 32 and k <= 32 for _, n, k in kept)


def test_prune_keeps_one_config_for_tiny_problems():
    assert len(prune_tiles(tile_configs(False), m=1, n=1, k=1, element_size=4)) >= 1


def test_prune_respects_shared_memory_for_fp32():
    for c in prune_tiles(tile_configs(False), 10**6, 4096, 4096, element_size=4):
        kw = c.kwargs
        assert (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * 4 * c.num_stages <= 200 * 1024


def _igemm_args(**overrides):
    args = dict(BATCH=32, J_D=1, J_H=56, J_W=56, C_G=64, COUT_G=64, MAX_TAPS=9, TAP_MAJOR=True,
                x_ptr=torch.empty(1, dtype=torch.float16, device="meta"))
    args.update(overrides)
    return args


def test_igemm_pruner_reads_constexpr_keyword_arguments():
    # TAP_MAJOR arrives as a keyword argument at launch; the merged dict must carry it.
    wide = _blocks(igemm._prune(tile_configs(False), _igemm_args(TAP_MAJOR=False, C_G=3)))
    narrow = _blocks(igemm._prune(tile_configs(False), _igemm_args(TAP_MAJOR=True, C_G=3)))
    assert max(k for *_, k in narrow) == 16 and max(k for *_, k in wide) >= 32


def test_wgrad_pruner():
    args = dict(COUT_G=4, C_G=4, K_PER_SPLIT=10_000,
                x_ptr=torch.empty(1, dtype=torch.bfloat16, device="meta"))
    kept = _blocks(wgrad._prune(tile_configs(False), args))
    assert kept and all(m <= 16 and n <= 16 for m, n, _ in kept)
