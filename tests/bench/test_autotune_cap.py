"""make gpu-check's cap on the configs each autotuned launch tries (FOVEAL_AUTOTUNE_MAX_CONFIGS),
applied after a kernel's own pruning and keeping its first (most suitable) configs."""

from __future__ import annotations

import pytest
import triton
import triton.language as tl

from foveal.kernels.autotune import MAX_CONFIGS_ENV, autotuned, cap_configs, tile_configs


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n), mask=offsets < n)


def _pruned(monkeypatch, cap: str | None) -> list:
    if cap is None:
        monkeypatch.delenv(MAX_CONFIGS_ENV, raising=False)
    else:
        monkeypatch.setenv(MAX_CONFIGS_ENV, cap)
    every = tile_configs(interpreted=False)
    # The kernel's own pruning keeps the tiles no wider than 64 along N, in list order.
    keep_narrow = lambda configs, args: [c for c in configs if c.kwargs["BLOCK_N"] <= 64]
    tuner = autotuned(key=["n"], prune=keep_narrow, configs=every)(_copy_kernel)
    tuner.nargs = {"x_ptr": None, "y_ptr": None, "n": 10}
    return tuner.prune_configs({})


def test_the_cap_keeps_the_first_configs_the_kernels_pruning_kept(monkeypatch):
    uncapped = _pruned(monkeypatch, None)
    assert len(uncapped) > 3 and all(c.kwargs["BLOCK_N"] <= 64 for c in uncapped)
    assert _pruned(monkeypatch, "0") == uncapped
    assert _pruned(monkeypatch, "2") == uncapped[:2]
    assert _pruned(monkeypatch, "100") == uncapped


def test_a_bad_cap_is_named(monkeypatch):
    monkeypatch.setenv(MAX_CONFIGS_ENV, "two")
    with pytest.raises(ValueError, match="FOVEAL_AUTOTUNE_MAX_CONFIGS must be a whole number"):
        cap_configs(tile_configs(interpreted=False))
