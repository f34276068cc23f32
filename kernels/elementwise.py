"""Backward helpers: the activation's derivative and the per-channel sum (bias gradient)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .epilogue import Epilogue
from .launch import launch, multiprocessor_count
from .tensors import memory_format_of, needs_int64
from .tl_helpers import activation_grad

_ELEMENTWISE_BLOCK = 1024


@triton.jit
def _activation_backward_kernel(g_ptr, v_ptr, out_ptr, numel, alpha, ACTIVATION: tl.constexpr,
                                INT64: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INT64:
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0)
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
    if not IS_FP64:
        g = g.to(tl.float32)
        v = v.to(tl.float32)
    out = activation_grad(g, v, ACTIVATION, alpha)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def activation_backward(grad: torch.Tensor, saved: torch.Tensor,
                        epilogue: Epilogue) -> torch.Tensor:
    """dL/dz from dL/dy, where `saved` is y or z as `epilogue.grad_needs_preactivation` says.

    The result has `saved`'s memory format (the forward output's), dense.
    """
    fmt = memory_format_of(saved)
    saved = saved.contiguous(memory_format=fmt)
    grad = grad.contiguous(memory_format=fmt)
    out = torch.empty_like(saved, memory_format=fmt)
    numel = saved.numel()
    grid = (triton.cdiv(numel, _ELEMENTWISE_BLOCK),)
    # Dense tensors of one format share their element order, so flat indexing pairs them up.
    launch(_activation_backward_kernel, grid, grad, saved, out, numel, epilogue.alpha,
           ACTIVATION=int(epilogue.activation), INT64=needs_int64(saved),
           IS_FP64=saved.dtype == torch.float64, BLOCK=_ELEMENTWISE_BLOCK)
    return out


@triton.jit
def _channel_sum_kernel(t_ptr, part_ptr, C, S, ROWS, ROWS_PER_SPLIT, s_n, s_c, s_s,
                        INT64: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_R: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    rr = tl.arange(0, BLOCK_R)
    if INT64:
        channels = channels.to(tl.int64)
        rr = rr.to(tl.int64)
    c_ok = channels < C
    if IS_FP64:
        acc = tl.zeros((BLOCK_C,), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    r_lo = split * ROWS_PER_SPLIT
    r_hi = tl.minimum(ROWS, r_lo + ROWS_PER_SPLIT)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        r = r0 + rr
        row_off = (r // S) * s_n + (r % S) * s_s
        tile = tl.load(t_ptr + row_off[:, None] + (channels * s_c)[None, :],
                       mask=(r < r_hi)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(tile.to(acc.dtype), axis=0)
    tl.store(part_ptr + split * C + channels, acc, mask=c_ok)


def channel_sum(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum of an (N, C, *spatial) tensor over everything but C, accumulated in fp32/fp64."""
    batch, channels = t.shape[:2]
    view = t.reshape(batch, channels, -1)
    spatial = view.shape[2]
    rows = batch * spatial
    on_gpu = multiprocessor_count(t.device) is not None
    splits = max(1, min(64, triton.cdiv(rows, 4096))) if on_gpu else 1
    per_split = triton.cdiv(rows, splits)
    acc_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    part = torch.empty((splits, channels), device=t.device, dtype=acc_dtype)
    block_c = min(64, triton.next_power_of_2(channels))
    grid = (triton.cdiv(channels, block_c), splits)
    launch(_channel_sum_kernel, grid, view, part, channels, spatial, rows, per_split,
           *view.stride(), INT64=needs_int64(view), IS_FP64=acc_dtype == torch.float64,
           BLOCK_C=block_c, BLOCK_R=64)
    return part.sum(dim=0).to(dtype)
