"""Weight gradient of a convolution (and of a transposed one) as an implicit GEMM with split-K.

dW[g, co, ci, tap] = sum over (n, o) of dy[n, g*COUT_G + co, o] * x[n, g*C_G + ci, o*S + off(tap)]

The reduction runs over every output position of the batch, which is long while the output
(channels x channels) is small, so the positions are split across programs (split-K). Each
split writes its own fp32 partial sum and the host adds them: deterministic, no atomics.

For a transposed convolution y = conv_transpose(x, w), call it with dy := x and x := dL/dy:
the transposed op's input plays the role of a convolution's output.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .autotune import autotuned, prune_tiles, unaligned, within_registers
from .igemm import input_precision, layout_bits, tap_plan
from .launch import launch, multiprocessor_count, upcast_operands
from .tensors import needs_int64
from .tl_helpers import accumulator, mma, tile_ids, tile_ranges, widen

# The reduction length enters the key as a power-of-two bucket, as in igemm.
_KEY = ["C_G", "COUT_G", "STRIDE_D", "STRIDE_H", "STRIDE_W", "N_TAPS", "SPLIT_BUCKET", "LAYOUT"]
# Arguments only the autotuner reads: Triton need not compile a variant per value.
_KEY_ONLY = ["SPLIT_BUCKET", "LAYOUT"]


def _prune(configs, args):
    """prune_tiles; with channel counts that are not multiples of 16, at most 32 accumulator
    elements per thread, and 32-deep steps for fp32 (64x128 tiles spilled for R(2+1)D's 460
    channels, 64x64x64 in fp32)."""
    kept = prune_tiles(configs, args["COUT_G"], args["C_G"], args["K_PER_SPLIT"], args["x_ptr"])
    if not unaligned(args["C_G"], args["COUT_G"]):
        return kept
    deepest = 32 if args["x_ptr"].element_size() == 4 else None
    return within_registers(kept, acc_per_thread=32, max_block_k=deepest)


@autotuned(key=_KEY, prune=_prune)
@triton.jit(do_not_specialize=_KEY_ONLY)
def wgrad_kernel(
    dy_ptr, x_ptr, part_ptr, taps_ptr,
    BATCH, C_G, COUT_G, IN_D, IN_H, IN_W, OUT_D, OUT_H, OUT_W,
    STRIDE_D, STRIDE_H, STRIDE_W, N_TAPS, K_PER_SPLIT, SPLIT_BUCKET, LAYOUT,
    sdy_n, sdy_c, sdy_d, sdy_h, sdy_w,
    sx_n, sx_c, sx_d, sx_h, sx_w,
    sp_split, sp_group, sp_out, sp_in, sp_tap,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(COUT_G, BLOCK_M), tl.cdiv(C_G, BLOCK_N), 1)
    group = widen(tl.program_id(1) // N_TAPS, INT64)
    tap = tl.program_id(1) % N_TAPS
    split = tl.program_id(2)
    rm, rn, rk = tile_ranges(pid_m, pid_n, BLOCK_M, BLOCK_N, BLOCK_K, INT64)
    m_ok = rm < COUT_G
    n_ok = rn < C_G
    off_d = tl.load(taps_ptr + tap * 4)
    off_h = tl.load(taps_ptr + tap * 4 + 1)
    off_w = tl.load(taps_ptr + tap * 4 + 2)
    dy_cols = (group * COUT_G + rm) * sdy_c
    x_cols = (group * C_G + rn) * sx_c

    k_total = BATCH * OUT_D * OUT_H * OUT_W
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_total, k_lo + K_PER_SPLIT)
    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        k_ok = k < k_hi
        ow = k % OUT_W
        t = k // OUT_W
        oh = t % OUT_H
        t = t // OUT_H
        od = t % OUT_D
        n = t // OUT_D
        a = tl.load(dy_ptr + dy_cols[:, None]
                    + (n * sdy_n + od * sdy_d + oh * sdy_h + ow * sdy_w)[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        i_d = od * STRIDE_D + off_d
        i_h = oh * STRIDE_H + off_h
        i_w = ow * STRIDE_W + off_w
        ok = (k_ok & (i_d >= 0) & (i_d < IN_D) & (i_h >= 0) & (i_h < IN_H) & (i_w >= 0)
              & (i_w < IN_W))
        b = tl.load(x_ptr + (n * sx_n + i_d * sx_d + i_h * sx_h + i_w * sx_w)[:, None]
                    + x_cols[None, :], mask=ok[:, None] & n_ok[None, :], other=0.0)
        acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)

    part = part_ptr + split * sp_split + group * sp_group + tap * sp_tap
    tl.store(part + rm[:, None] * sp_out + rn[None, :] * sp_in, acc,
             mask=m_ok[:, None] & n_ok[None, :])


def _split_count(device: torch.device, programs: int, positions: int) -> int:
    """Enough splits of the reduction to give the GPU a few waves of programs."""
    sms = multiprocessor_count(device)
    if sms is None:
        return 1
    wanted = triton.cdiv(4 * sms, max(1, programs))
    return max(1, min(wanted, triton.cdiv(positions, 512)))


def weight_grad(dy: torch.Tensor, x: torch.Tensor, weight_shape: tuple[int, ...], *, groups: int,
                stride: tuple[int, int, int], padding: tuple[int, int, int],
                dilation: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """dL/dW for out = conv(x, W) given dy = dL/dout; all tensors as 5-D views.

    Returns a tensor of `weight_shape` (5-D): (groups * COUT_G, C_G, KD, KH, KW), row-major in
    the taps, in `dtype`.
    """
    batch, c_g = x.shape[0], x.shape[1] // groups
    cout_g = dy.shape[1] // groups
    kernel = tuple(weight_shape[2:])
    n_taps = math.prod(kernel)
    # Offsets k*dilation - pad of a forward convolution; the weight offsets are unused here.
    taps, _, _, _ = tap_plan(False, kernel, stride, padding, dilation, (0, 0, 0), x.device)
    positions = batch * math.prod(dy.shape[2:])
    base_programs = triton.cdiv(cout_g, 64) * triton.cdiv(c_g, 64) * groups * n_taps
    splits = _split_count(x.device, base_programs, positions)
    per_split = triton.cdiv(positions, splits)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty((splits, groups, cout_g, c_g, n_taps), device=x.device, dtype=acc_dtype)
    grid = lambda meta: (triton.cdiv(cout_g, meta["BLOCK_M"]) * triton.cdiv(c_g, meta["BLOCK_N"]),
                         groups * n_taps, splits)
    launch(wgrad_kernel, grid,
        dy, x, part, taps, batch, c_g, cout_g, *x.shape[2:], *dy.shape[2:], *stride, n_taps,
        per_split, triton.next_power_of_2(per_split), layout_bits(dy.stride(1), x.stride(1)),
        *dy.stride(), *x.stride(), *part.stride(),
        INPUT_PRECISION=input_precision(x.dtype), UPCAST=upcast_operands(x.dtype),
        INT64=needs_int64(dy, x), IS_FP64=x.dtype == torch.float64,
    )
    grad = part[0] if splits == 1 else part.sum(dim=0)
    return grad.reshape(weight_shape).to(dtype)
