"""The GPU autotuning space and its pruning (the pruner only runs with several configs, so
never under the interpreter: these tests call it directly with real launch arguments)."""

from __future__ import annotations

import torch

import foveal.kernels.autotune as autotune
import foveal.kernels.igemm as igemm
import foveal.kernels.wgrad as wgrad
from foveal.kernels.autotune import prune_tiles, tile_configs

A100_SHARED_MEMORY = 166912  # bytes per block (opt-in)


def _blocks(configs):
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in configs}


def test_interpreter_uses_one_config_and_gpu_several():
    assert len(tile_configs(interpreted=True)) == 1
    assert len(tile_configs(interpreted=False)) > 4


def _operand(dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(1, dtype=dtype, device="meta")


def test_prune_drops_tiles_larger_than_the_problem():
    kept = _blocks(prune_tiles(tile_configs(interpreted=False), m=100_000, n=24, k=9 * 3,
                               operand=_operand(torch.float16)))
    assert kept and all(n <= 32 and k <= 32 for _, n, k in kept)


def test_prune_keeps_one_config_for_tiny_problems():
    configs = prune_tiles(tile_configs(interpreted=False), m=1, n=1, k=1,
                          operand=_operand(torch.float32))
    assert len(configs) >= 1


def test_prune_respects_the_devices_shared_memory(monkeypatch):
    monkeypatch.setattr(autotune, "shared_memory_per_block", lambda device: A100_SHARED_MEMORY)
    everything = tile_configs(interpreted=False)
    kept = prune_tiles(everything, 10**6, 4096, 4096, operand=_operand(torch.float32))
    assert kept and len(kept) < len(everything)  # 128x128x64 in 3 fp32 stages needs 192 KiB
    for c in kept:
        kw = c.kwargs
        assert (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * 4 * c.num_stages <= (
            A100_SHARED_MEMORY)


def _igemm_args(**overrides):
    args = dict(BATCH=32, J_D=1, J_H=56, J_W=56, C_G=64, COUT_G=64, MAX_TAPS=9, TAP_MAJOR=True,
                x_ptr=torch.empty(1, dtype=torch.float16, device="meta"))
    args.update(overrides)
    return args


def test_igemm_pruner_reads_constexpr_keyword_arguments():
    # TAP_MAJOR arrives as a keyword argument at launch; the merged dict must carry it.
    configs = tile_configs(interpreted=False)
    wide = _blocks(igemm._prune(configs, _igemm_args(TAP_MAJOR=False, C_G=3)))
    narrow = _blocks(igemm._prune(configs, _igemm_args(TAP_MAJOR=True, C_G=3)))
    assert max(k for *_, k in narrow) == 16 and max(k for *_, k in wide) >= 32


def test_wgrad_pruner():
    args = dict(COUT_G=4, C_G=4, K_PER_SPLIT=10_000,
                x_ptr=torch.empty(1, dtype=torch.bfloat16, device="meta"))
    kept = _blocks(wgrad._prune(tile_configs(interpreted=False), args))
    assert kept and all(m <= 16 and n <= 16 for m, n, _ in kept)


def test_prune_drops_tiles_too_narrow_for_a_large_problem():
    kept = _blocks(prune_tiles(tile_configs(interpreted=False), m=100_000, n=256, k=576,
                               operand=_operand(torch.float16)))
    assert kept and all(m >= 64 and n >= 32 for m, n, _ in kept)
    narrow = _blocks(prune_tiles(tile_configs(interpreted=False), m=100_000, n=8, k=72,
                                 operand=_operand(torch.float16)))
    assert narrow and all(n == 16 for _, n, _ in narrow)


def _per_thread(config, rows: str, cols: str) -> float:
    return config.kwargs[rows] * config.kwargs[cols] / (32 * config.num_warps)


def test_within_registers_keeps_light_tiles_or_all_when_none_is():
    configs = tile_configs(interpreted=False)
    kept = autotune.within_registers(configs, acc_per_thread=32, max_block_m=64, max_block_k=32)
    assert kept and len(kept) < len(configs)
    assert all(_per_thread(c, "BLOCK_M", "BLOCK_N") <= 32 and c.kwargs["BLOCK_M"] <= 64
               and c.kwargs["BLOCK_K"] <= 32 for c in kept)
    assert autotune.within_registers(configs, a_per_thread=0) == configs  # a choice is kept


def test_at_most_stages_cuts_pipelines_and_keeps_register_budgets():
    configs = tile_configs(interpreted=False)
    cut = autotune.at_most_stages(configs, 3)
    assert all(c.num_stages <= 3 for c in cut) and _blocks(cut) == _blocks(configs)
    keys = [(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in cut]
    assert len(keys) == len(set(keys))
    assert all(c.maxnreg == min(255, 65536 // (32 * c.num_warps)) for c in cut)


def test_unaligned_channels_limit_the_accumulator():
    """R(2+1)D's 460 channels: no 16-element alignment, so 64x128 tiles and larger spilled."""
    configs = tile_configs(interpreted=False)
    aligned = igemm._prune(configs, _igemm_args(C_G=256, COUT_G=448))
    odd = igemm._prune(configs, _igemm_args(C_G=256, COUT_G=460))
    assert any(_per_thread(c, "BLOCK_M", "BLOCK_N") > 32 for c in aligned)
    assert odd and all(_per_thread(c, "BLOCK_M", "BLOCK_N") <= 32 for c in odd)
    wgrad_args = dict(COUT_G=256, C_G=460, K_PER_SPLIT=10_000,
                      x_ptr=torch.empty(1, dtype=torch.float32, device="meta"))
    kept = wgrad._prune(configs, wgrad_args)
    assert kept and all(_per_thread(c, "BLOCK_M", "BLOCK_N") <= 32 and c.kwargs["BLOCK_K"] <= 32
                        for c in kept)
