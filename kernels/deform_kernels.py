"""Triton kernels of deformable convolution (DCNv1 offsets, DCNv2 modulation mask).

Sampling rule (torchvision's, established by experiment against torchvision.ops.deform_conv2d
in float64): kernel tap (i, j) of output (oh, ow) in offset group g reads the input at

    py = oh * stride_h - pad_h + i * dil_h + offset[n, 2 * (g * kH * kW + i * kW + j), oh, ow]
    px = ow * stride_w - pad_w + j * dil_w + offset[n, 2 * (g * kH * kW + i * kW + j) + 1, oh, ow]

by bilinear interpolation of the zero-padded image over the cell whose top-left corner is
(floor(py), floor(px)); the sample is multiplied by mask[n, g * kH * kW + tap, oh, ow]. The
coordinate derivatives are those of the same cell, so at an exact integer position they are the
derivatives towards the next row/column. The sample (and its gradients) is zero only because
every corner it touches lies outside the image: no separate cut-off.

The convolution is then an implicit GEMM whose A operand (rows: output positions, reduction:
tap x input channel) is sampled tile by tile in registers, never written to memory:
- `deform_forward_kernel`: y = epilogue(A @ W), one fused kernel.
- `deform_data_grad_kernel`: per (row tile, tap, offset group) it forms dL/dA = dz @ W^T for a
  block of channels in registers, then scatters it into dL/dx along the bilinear weights
  (fp32 atomics), and reduces it against the coordinate derivatives (dL/doffset) and the
  samples (dL/dmask) over the offset group's channels: each offset/mask gradient element is
  written by exactly one program, so those are deterministic.
- `deform_weight_grad_kernel`: dL/dW = dz^T @ A with A re-sampled tile by tile; split-K over
  output positions into fp32 partial sums the host adds in a fixed order (deterministic).

Bilinear coefficients depend on (row, tap, offset group) but not on the channel, so every loop
walks channel blocks that stay inside one offset group and computes the coefficients once per
row for all of them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .autotune import ANY_WIDTH, autotuned, prune_tiles, tile_configs, within_registers
from .epilogue import NO_EPILOGUE, Epilogue
from .geometry import ConvGeometry
from .igemm import input_precision
from .launch import launch, upcast_operands
from .tensors import empty_like_layout, needs_int64
from .tl_helpers import (
    accumulator,
    epilogue_store,
    lanes,
    mma,
    tile_ids,
    tile_ranges,
    widen,
)
from .wgrad import _split_count

# ----------------------------------------------------------------------------------------------
# Device helpers shared by the three kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _compute(t, IS_FP64: tl.constexpr):
    """Sampling arithmetic runs in fp32 (fp64 for float64 inputs), whatever the storage dtype."""
    if IS_FP64:
        return t.to(tl.float64)
    return t.to(tl.float32)


@triton.jit
def _sample_point(off_ptr, off_rows, mask_ptr, mask_rows, ok, og, tap, N_TAPS, KW,
                  base_h, base_w, DIL_H, DIL_W, so_c, sm_c,
                  HAS_MASK: tl.constexpr, IS_FP64: tl.constexpr):
    """Sampling position (py, px) and modulation of one tap and offset group, per row."""
    channel = og * N_TAPS + tap
    dy = tl.load(off_ptr + off_rows + (2 * channel) * so_c, mask=ok, other=0.0)
    dx = tl.load(off_ptr + off_rows + (2 * channel + 1) * so_c, mask=ok, other=0.0)
    py = _compute(dy, IS_FP64) + (base_h + (tap // KW) * DIL_H)
    px = _compute(dx, IS_FP64) + (base_w + (tap % KW) * DIL_W)
    if HAS_MASK:
        modulation = _compute(tl.load(mask_ptr + mask_rows + channel * sm_c, mask=ok, other=0.0),
                              IS_FP64)
    else:
        modulation = tl.full(py.shape, 1.0, py.dtype)
    return py, px, modulation


@triton.jit
def _positions(index, OUT_H, OUT_W):
    """(image, row, column) of flat output positions n * OUT_H * OUT_W + oh * OUT_W + ow."""
    ow = index % OUT_W
    t = index // OUT_W
    return t // OUT_H, t % OUT_H, ow


@triton.jit
def _bilinear_cell(py, px, IN_H, IN_W, INT64: tl.constexpr):
    """Top-left corner (floor) of each sample's cell and the fractions inside it.

    The corner is clamped to [-2, size] before the integer conversion: a far-away (or huge)
    position then still has all four corners outside the image, and cannot overflow.
    """
    fy = tl.floor(py)
    fx = tl.floor(px)
    y0 = tl.minimum(tl.maximum(fy, -2.0), IN_H * 1.0).to(tl.int32)
    x0 = tl.minimum(tl.maximum(fx, -2.0), IN_W * 1.0).to(tl.int32)
    if INT64:
        y0 = y0.to(tl.int64)
        x0 = x0.to(tl.int64)
    return y0, x0, py - fy, px - fx


@triton.jit
def _cell_corners(rows_ok, y0, x0, ly, lx, IN_H, IN_W):
    """Per row: which of the cell's four corners lie in the image, and their bilinear weights.

    Corners in order top-left, top-right, bottom-left, bottom-right: (ok00, ok01, ok10, ok11,
    w00, w01, w10, w11).
    """
    top = rows_ok & (y0 >= 0) & (y0 < IN_H)
    bottom = rows_ok & (y0 >= -1) & (y0 < IN_H - 1)
    left = (x0 >= 0) & (x0 < IN_W)
    right = (x0 >= -1) & (x0 < IN_W - 1)
    return (top & left, top & right, bottom & left, bottom & right,
            (1.0 - ly) * (1.0 - lx), (1.0 - ly) * lx, ly * (1.0 - lx), ly * lx)


@triton.jit
def _corner(x_ptr, offsets, ok, cols_ok, IS_FP64: tl.constexpr):
    """One corner's values [rows, channels] in the compute dtype; zero outside the image."""
    v = tl.load(x_ptr + offsets, mask=ok[:, None] & cols_ok[None, :], other=0.0)
    return _compute(v, IS_FP64)


@triton.jit
def _sample(x_ptr, corner, cols, cols_ok, ok00, ok01, ok10, ok11, w00, w01, w10, w11, sx_h,
            sx_w, IS_FP64: tl.constexpr):
    """Bilinear samples [rows, channels]: the weighted sum of the four corners, loaded one at a
    time so only one corner tile is live. `corner` is each row's top-left offset in x."""
    offsets = corner[:, None] + cols[None, :]
    sample = w00[:, None] * _corner(x_ptr, offsets, ok00, cols_ok, IS_FP64)
    sample += w01[:, None] * _corner(x_ptr, offsets + sx_w, ok01, cols_ok, IS_FP64)
    sample += w10[:, None] * _corner(x_ptr, offsets + sx_h, ok10, cols_ok, IS_FP64)
    sample += w11[:, None] * _corner(x_ptr, offsets + sx_h + sx_w, ok11, cols_ok, IS_FP64)
    return sample


@triton.jit
def _column_grad(dz_ptr, dz_rows, rows_ok, w_ptr, w_tap, c, c_ok, c0, c_end, C_G, COUT_G,
                 sdz_c, sw_out, sw_in, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 IS_FP64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """dL/dA [rows, channels c0 + arange(BLOCK_K)] of one tap: dz @ W^T, in registers.

    Each channel meets only its own weight group's output channels. A channel block may
    straddle weight groups, so the output channels of every group it touches are walked and W
    is masked to its block-diagonal (one group, the usual case, walks just that group).
    """
    c_group = c // C_G
    co_lo = (c0 // C_G) * COUT_G
    co_hi = ((tl.minimum(c0 + BLOCK_K, c_end) - 1) // C_G + 1) * COUT_G
    col_grad = accumulator(BLOCK_M, BLOCK_K, IS_FP64)
    for co0 in range(co_lo, co_hi, BLOCK_N):
        co = co0 + tl.arange(0, BLOCK_N)
        co_ok = co < co_hi
        a = tl.load(dz_ptr + dz_rows[:, None] + (co * sdz_c)[None, :],
                    mask=rows_ok[:, None] & co_ok[None, :], other=0.0)
        same_group = (co // COUT_G)[:, None] == c_group[None, :]
        w_offsets = (co * sw_out)[:, None] + ((c - c_group * C_G) * sw_in)[None, :]
        b = tl.load(w_ptr + w_tap + w_offsets,
                    mask=co_ok[:, None] & c_ok[None, :] & same_group, other=0.0)
        col_grad = mma(col_grad, a, b, INPUT_PRECISION, UPCAST)
    return col_grad


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

_FORWARD_KEY = ["BATCH", "C_G", "COUT_G", "C_OG", "IN_H", "IN_W", "OUT_H", "OUT_W", "N_TAPS",
                "sx_c", "sw_in", "HAS_MASK", "ACTIVATION", "HAS_RESIDUAL"]


def _prune_forward(configs, args):
    """prune_tiles; in fp32 at most 32 accumulator elements per thread (64x128x32 on 4 warps
    sits at 255 registers and spilled up to 128 bytes with NCHW offsets, on sm_80 with Triton
    3.8 and on sm_90 with 3.6; 64x256x32 on 8 warps likewise)."""
    rows = args["BATCH"] * args["OUT_H"] * args["OUT_W"]
    segment = min(args["C_G"], args["C_OG"])
    x = args["x_ptr"]
    kept = prune_tiles(configs, rows, args["COUT_G"], segment, x, narrowest=ANY_WIDTH)
    if x.element_size() == 4:  # fp32 operands: the sampled tile and its corners take twice
        # the registers of fp16's
        return within_registers(kept, acc_per_thread=32)
    return kept


# The deformable kernels sample one operand in registers (four corners, their masks and
# weights per row) and hand it to tl.dot through shared memory, so they need more registers
# and shared memory than the implicit GEMM's tiles assume: each has its own list, every tile
# of which compiles without spills within the shared memory of sm_80 and sm_90 in fp16,
# bf16 and fp32 (foveal compilecheck). (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
_FORWARD_TILES = (
    (64, 128, 32, 4, 4),
    (64, 256, 32, 8, 3),
    (64, 64, 32, 4, 3),
    (64, 32, 32, 4, 4),
    (64, 128, 16, 4, 3),
    (128, 128, 16, 8, 3),
    (128, 64, 16, 8, 3),
)


@autotuned(key=_FORWARD_KEY, prune=_prune_forward, configs=tile_configs(_FORWARD_TILES))
@triton.jit
def deform_forward_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, z_ptr,
    BATCH, C_G, COUT_G, C_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    sw_out, sw_in, sw_h, sw_w, sy_n, sy_c, sy_h, sy_w, sr_n, sr_c, sr_h, sr_w,
    alpha,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    STORE_PREACT: tl.constexpr, HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Column tiles of one row tile are neighbours in launch order: they sample the same input.
    rows = BATCH * OUT_H * OUT_W
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(rows, BLOCK_M), tl.cdiv(COUT_G, BLOCK_N), 1)
    group = widen(tl.program_id(1), INT64)
    rm, rn, rk = tile_ranges(pid_m, pid_n, BLOCK_M, BLOCK_N, BLOCK_K, INT64)
    n, oh, ow = _positions(rm, OUT_H, OUT_W)
    row_ok = rm < rows
    n_ok = rn < COUT_G
    base_h = oh * STRIDE_H - PAD_H
    base_w = ow * STRIDE_W - PAD_W
    off_rows = n * so_n + oh * so_h + ow * so_w
    mask_rows = n * sm_n + oh * sm_h + ow * sm_w
    x_rows = n * sx_n
    channels = group * COUT_G + rn
    w_cols = channels * sw_out

    # The group's channels [c_lo, c_lo + C_G) split into segments, one per offset group.
    c_lo = group * C_G
    og_first = c_lo // C_OG
    n_segments = (c_lo + C_G - 1) // C_OG - og_first + 1
    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    for it in range(0, N_TAPS * n_segments):
        tap = it // n_segments
        og = og_first + it % n_segments
        seg_lo = tl.maximum(og * C_OG, c_lo)
        seg_hi = tl.minimum(og * C_OG + C_OG, c_lo + C_G)
        py, px, modulation = _sample_point(off_ptr, off_rows, mask_ptr, mask_rows, row_ok, og,
                                           tap, N_TAPS, KW, base_h, base_w, DIL_H, DIL_W, so_c,
                                           sm_c, HAS_MASK, IS_FP64)
        y0, x0, ly, lx = _bilinear_cell(py, px, IN_H, IN_W, INT64)
        ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _cell_corners(row_ok, y0, x0, ly, lx,
                                                                   IN_H, IN_W)
        corner = x_rows + y0 * sx_h + x0 * sx_w
        w_tap = (tap // KW) * sw_h + (tap % KW) * sw_w
        for c0 in range(seg_lo, seg_hi, BLOCK_K):
            c = c0 + rk
            c_ok = c < seg_hi
            sample = _sample(x_ptr, corner, c * sx_c, c_ok, ok00, ok01, ok10, ok11, w00, w01,
                             w10, w11, sx_h, sx_w, IS_FP64)
            a = (sample * modulation[:, None]).to(x_ptr.dtype.element_ty)
            b = tl.load(w_ptr + w_tap + ((c - c_lo) * sw_in)[:, None] + w_cols[None, :],
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)

    mask = row_ok[:, None] & n_ok[None, :]
    y_offsets = (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + (channels * sy_c)[None, :]
    res_offsets = (n * sr_n + oh * sr_h + ow * sr_w)[:, None] + (channels * sr_c)[None, :]
    epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, channels, n_ok, res_ptr, res_offsets,
                   z_ptr, alpha, ACTIVATION, HAS_BIAS, HAS_RESIDUAL, STORE_PREACT)


# ----------------------------------------------------------------------------------------------
# Backward: input, offset and mask gradients
# ----------------------------------------------------------------------------------------------

_DATA_KEY = ["BATCH", "C_G", "COUT_G", "C_OG", "IN_H", "IN_W", "OUT_H", "OUT_W", "N_TAPS",
             "sx_c", "sdz_c", "sw_in", "HAS_MASK", "NEED_DX", "NEED_DOFFSET", "NEED_DMASK"]


def _prune_data(configs, args):
    # Rows are output positions, columns (BLOCK_K) input channels, and the dot reduces over
    # output channels (BLOCK_N).
    rows = args["BATCH"] * args["OUT_H"] * args["OUT_W"]
    return prune_tiles(configs, rows, args["C_OG"], args["COUT_G"], args["x_ptr"],
                       blocks=("BLOCK_M", "BLOCK_K", "BLOCK_N"), narrowest=ANY_WIDTH)


# Besides the [BLOCK_M, BLOCK_K] gradient tile every row carries its sampling state (cell,
# fractions, corner masks and addresses): narrow channel blocks keep it spill-free.
_DATA_GRAD_TILES = (
    (32, 64, 32, 4, 3),
    (32, 32, 32, 4, 2),
    (64, 32, 16, 4, 2),
    (32, 64, 16, 4, 2),
    (64, 64, 32, 8, 3),
    (64, 64, 16, 8, 3),
    (128, 64, 16, 8, 2),
    (64, 128, 16, 8, 3),
)


@autotuned(key=_DATA_KEY, prune=_prune_data, configs=tile_configs(_DATA_GRAD_TILES),
           reset_to_zero=["dx_ptr"])
@triton.jit
def deform_data_grad_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, dz_ptr, dx_ptr, doff_ptr, dmask_ptr,
    BATCH, C_G, COUT_G, C_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    sw_out, sw_in, sw_h, sw_w, sdz_n, sdz_c, sdz_h, sdz_w,
    sdx_n, sdx_c, sdx_h, sdx_w, sdo_n, sdo_c, sdo_h, sdo_w, sdm_n, sdm_c, sdm_h, sdm_w,
    HAS_MASK: tl.constexpr, NEED_DX: tl.constexpr, NEED_DOFFSET: tl.constexpr,
    NEED_DMASK: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_M output positions x BLOCK_K input channels per step; BLOCK_N output channels per
    # step of the dz @ W^T reduction.
    og = widen(tl.program_id(1) // N_TAPS, INT64)
    tap = tl.program_id(1) % N_TAPS
    rm = lanes(tl.program_id(0), BLOCK_M, INT64)
    rk = widen(tl.arange(0, BLOCK_K), INT64)
    n, oh, ow = _positions(rm, OUT_H, OUT_W)
    row_ok = rm < BATCH * OUT_H * OUT_W
    base_h = oh * STRIDE_H - PAD_H
    base_w = ow * STRIDE_W - PAD_W
    off_rows = n * so_n + oh * so_h + ow * so_w
    mask_rows = n * sm_n + oh * sm_h + ow * sm_w
    dz_rows = n * sdz_n + oh * sdz_h + ow * sdz_w
    x_rows = n * sx_n
    dx_rows = n * sdx_n
    w_tap = (tap // KW) * sw_h + (tap % KW) * sw_w

    py, px, modulation = _sample_point(off_ptr, off_rows, mask_ptr, mask_rows, row_ok, og, tap,
                                       N_TAPS, KW, base_h, base_w, DIL_H, DIL_W, so_c, sm_c,
                                       HAS_MASK, IS_FP64)
    y0, x0, ly, lx = _bilinear_cell(py, px, IN_H, IN_W, INT64)
    # Per row, for each corner: inside the image, bilinear weight, and (below, as literals)
    # d(sample)/d(py) and d(sample)/d(px) per unit corner value.
    ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _cell_corners(row_ok, y0, x0, ly, lx, IN_H,
                                                               IN_W)
    x_corner = x_rows + y0 * sx_h + x0 * sx_w  # the top-left corner, per row
    dx_corner = dx_rows + y0 * sdx_h + x0 * sdx_w
    grad_y = tl.zeros_like(ly)
    grad_x = tl.zeros_like(ly)
    grad_m = tl.zeros_like(ly)

    # One corner at a time: each needs only its own values, and contributes a per-row dot
    # product to the offset and mask gradients and its share of dL/dA to dL/dx.
    seg_lo = og * C_OG
    seg_hi = seg_lo + C_OG
    for c0 in range(seg_lo, seg_hi, BLOCK_K):
        c = c0 + rk
        c_ok = c < seg_hi
        col_grad = _column_grad(dz_ptr, dz_rows, row_ok, w_ptr, w_tap, c, c_ok, c0, seg_hi, C_G,
                                COUT_G, sdz_c, sw_out, sw_in, INPUT_PRECISION, UPCAST, IS_FP64,
                                BLOCK_M, BLOCK_N, BLOCK_K)
        x_cols = c * sx_c
        dx_cols = c * sdx_c
        grad_y, grad_x, grad_m = _corner_grad(
            col_grad, x_ptr, x_corner, dx_ptr, dx_corner, x_cols, dx_cols, ok00, c_ok,
            w00, lx - 1.0, ly - 1.0, modulation, grad_y, grad_x, grad_m, NEED_DX, NEED_DOFFSET,
            NEED_DMASK, IS_FP64)
        grad_y, grad_x, grad_m = _corner_grad(
            col_grad, x_ptr, x_corner + sx_w, dx_ptr, dx_corner + sdx_w, x_cols, dx_cols,
            ok01, c_ok, w01, -lx, 1.0 - ly, modulation, grad_y, grad_x, grad_m, NEED_DX,
            NEED_DOFFSET, NEED_DMASK, IS_FP64)
        grad_y, grad_x, grad_m = _corner_grad(
            col_grad, x_ptr, x_corner + sx_h, dx_ptr, dx_corner + sdx_h, x_cols, dx_cols,
            ok10, c_ok, w10, 1.0 - lx, -ly, modulation, grad_y, grad_x, grad_m, NEED_DX,
            NEED_DOFFSET, NEED_DMASK, IS_FP64)
        grad_y, grad_x, grad_m = _corner_grad(
            col_grad, x_ptr, x_corner + sx_h + sx_w, dx_ptr, dx_corner + sdx_h + sdx_w, x_cols,
            dx_cols, ok11, c_ok, w11, lx, ly, modulation, grad_y, grad_x, grad_m,
            NEED_DX, NEED_DOFFSET, NEED_DMASK, IS_FP64)

    channel = og * N_TAPS + tap
    if NEED_DOFFSET:
        doff_rows = doff_ptr + n * sdo_n + oh * sdo_h + ow * sdo_w
        tl.store(doff_rows + (2 * channel) * sdo_c,
                 (grad_y * modulation).to(doff_ptr.dtype.element_ty), mask=row_ok)
        tl.store(doff_rows + (2 * channel + 1) * sdo_c,
                 (grad_x * modulation).to(doff_ptr.dtype.element_ty), mask=row_ok)
    if NEED_DMASK:
        tl.store(dmask_ptr + n * sdm_n + oh * sdm_h + ow * sdm_w + channel * sdm_c,
                 grad_m.to(dmask_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _corner_grad(col_grad, x_ptr, x_rows, dx_ptr, dx_rows, x_cols, dx_cols, rows_ok, cols_ok,
                 weight, d_py, d_px, modulation, grad_y, grad_x, grad_m, NEED_DX: tl.constexpr,
                 NEED_DOFFSET: tl.constexpr, NEED_DMASK: tl.constexpr, IS_FP64: tl.constexpr):
    """One bilinear corner's part of the data gradient, for [rows, channels] of dL/dA.

    With v the corner's values, sample = sum over corners of weight * v, so
    dL/dmask += sum_c dL/dA * weight * v and dL/dpy += sum_c dL/dA * d_py * v (d_px alike):
    one per-row dot product <dL/dA, v> serves all three. dL/dx at the corner gains
    dL/dA * weight * modulation (atomics; corners outside the image are masked off).
    """
    if NEED_DOFFSET or NEED_DMASK:
        v = _corner(x_ptr, x_rows[:, None] + x_cols[None, :], rows_ok, cols_ok, IS_FP64)
        dot = tl.sum(col_grad * v, axis=1)
        if NEED_DOFFSET:
            grad_y += dot * d_py
            grad_x += dot * d_px
        if NEED_DMASK:
            grad_m += dot * weight
    if NEED_DX:
        tl.atomic_add(dx_ptr + dx_rows[:, None] + dx_cols[None, :],
                      col_grad * (weight * modulation)[:, None],
                      mask=rows_ok[:, None] & cols_ok[None, :], sem="relaxed")
    return grad_y, grad_x, grad_m


# ----------------------------------------------------------------------------------------------
# Backward: weight gradient
# ----------------------------------------------------------------------------------------------

_WGRAD_KEY = ["BATCH", "C_G", "COUT_G", "C_OG", "IN_H", "IN_W", "OUT_H", "OUT_W", "N_TAPS",
              "MAX_SEGMENTS", "K_PER_SPLIT", "sx_c", "sdz_c", "HAS_MASK"]


def _prune_wgrad(configs, args):
    segment = min(args["C_G"], args["C_OG"])
    return prune_tiles(configs, args["COUT_G"], segment, args["K_PER_SPLIT"], args["x_ptr"],
                       narrowest=ANY_WIDTH)


_WEIGHT_GRAD_TILES = (
    (128, 64, 32, 8, 4),
    (64, 64, 32, 4, 3),
    (128, 128, 16, 8, 3),
    (128, 64, 16, 4, 3),
    (64, 64, 16, 4, 4),
)


@autotuned(key=_WGRAD_KEY, prune=_prune_wgrad,
           configs=tile_configs(_WEIGHT_GRAD_TILES))
@triton.jit
def deform_weight_grad_kernel(
    x_ptr, off_ptr, mask_ptr, dz_ptr, part_ptr,
    BATCH, C_G, COUT_G, C_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS, MAX_SEGMENTS, K_PER_SPLIT,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w,
    sdz_n, sdz_c, sdz_h, sdz_w, sp_split, sp_out, sp_in, sp_tap,
    HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # A [BLOCK_M output channels, BLOCK_N input channels] tile of one tap's weights; the input
    # channels lie in one segment (weight group x offset group), so the reduction over output
    # positions needs one bilinear cell per position.
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(COUT_G, BLOCK_M),
                            tl.cdiv(tl.minimum(C_G, C_OG), BLOCK_N), 1)
    segment = tl.program_id(1) % MAX_SEGMENTS
    tap = (tl.program_id(1) // MAX_SEGMENTS) % N_TAPS
    group = widen(tl.program_id(1) // (MAX_SEGMENTS * N_TAPS), INT64)
    split = tl.program_id(2)
    rm = lanes(pid_m, BLOCK_M, INT64)
    rk = widen(tl.arange(0, BLOCK_K), INT64)
    c_lo = group * C_G
    og = c_lo // C_OG + segment
    seg_lo = tl.maximum(og * C_OG, c_lo)
    seg_hi = tl.minimum(og * C_OG + C_OG, c_lo + C_G)  # empty when the group has fewer segments
    rn = seg_lo + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < COUT_G
    n_ok = rn < seg_hi
    dz_cols = (group * COUT_G + rm) * sdz_c

    k_total = BATCH * OUT_H * OUT_W
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_total, k_lo + K_PER_SPLIT)
    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        k_ok = (k < k_hi) & (seg_lo < seg_hi)
        n, oh, ow = _positions(k, OUT_H, OUT_W)
        a = tl.load(dz_ptr + dz_cols[:, None] + (n * sdz_n + oh * sdz_h + ow * sdz_w)[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        py, px, modulation = _sample_point(off_ptr, n * so_n + oh * so_h + ow * so_w, mask_ptr,
                                           n * sm_n + oh * sm_h + ow * sm_w, k_ok, og, tap,
                                           N_TAPS, KW, oh * STRIDE_H - PAD_H,
                                           ow * STRIDE_W - PAD_W, DIL_H, DIL_W, so_c, sm_c,
                                           HAS_MASK, IS_FP64)
        y0, x0, ly, lx = _bilinear_cell(py, px, IN_H, IN_W, INT64)
        ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _cell_corners(k_ok, y0, x0, ly, lx, IN_H,
                                                                   IN_W)
        sample = _sample(x_ptr, n * sx_n + y0 * sx_h + x0 * sx_w, rn * sx_c, n_ok, ok00, ok01,
                         ok10, ok11, w00, w01, w10, w11, sx_h, sx_w,
                         IS_FP64) * modulation[:, None]
        acc = mma(acc, a, sample.to(x_ptr.dtype.element_ty), INPUT_PRECISION, UPCAST)

    part = part_ptr + split * sp_split + tap * sp_tap
    tl.store(part + ((group * COUT_G + rm) * sp_out)[:, None] + ((rn - c_lo) * sp_in)[None, :],
             acc, mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _common_args(geometry: ConvGeometry, offset_groups: int) -> tuple[int, ...]:
    """BATCH, C_G, COUT_G, C_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS."""
    return (geometry.batch, geometry.in_per_group, geometry.out_per_group,
            geometry.in_channels // offset_groups, *geometry.input_size, *geometry.output_size,
            geometry.kernel_size[1], geometry.taps)


def _sampling_args(geometry: ConvGeometry) -> tuple[int, ...]:
    """STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W."""
    return (*geometry.stride, *geometry.padding, *geometry.dilation)


def _dtype_flags(x: torch.Tensor) -> dict[str, object]:
    return {"INPUT_PRECISION": input_precision(x.dtype),
            "UPCAST": upcast_operands(x.dtype),
            "IS_FP64": x.dtype == torch.float64}


def _mask_strides(mask: torch.Tensor | None) -> tuple[int, ...]:
    return mask.stride() if mask is not None else (0, 0, 0, 0)


def launch_forward(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None,
                   weight: torch.Tensor, out: torch.Tensor, geometry: ConvGeometry,
                   offset_groups: int, *, bias: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, preact: torch.Tensor | None = None,
                   epilogue: Epilogue = NO_EPILOGUE) -> None:
    """out = epilogue(deform_conv2d(x, offset, weight, mask)); every tensor 4-D, any strides."""
    rows = geometry.batch * math.prod(geometry.output_size)
    res = residual if residual is not None else out
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"])
                         * triton.cdiv(geometry.out_per_group, meta["BLOCK_N"]), geometry.groups)
    launch(deform_forward_kernel, grid,
        x, offset, mask if mask is not None else offset, weight,
        bias if bias is not None else out, res, out, preact if preact is not None else out,
        *_common_args(geometry, offset_groups), *_sampling_args(geometry),
        *x.stride(), *offset.stride(), *_mask_strides(mask), *weight.stride(), *out.stride(),
        *(res.stride() if residual is not None else (0,) * 4), epilogue.alpha,
        ACTIVATION=int(epilogue.activation), HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, STORE_PREACT=preact is not None,
        HAS_MASK=mask is not None, INT64=needs_int64(x, offset, mask, out, residual, preact),
        **_dtype_flags(x),
    )


def data_grad(dz: torch.Tensor, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None,
              weight: torch.Tensor, geometry: ConvGeometry, offset_groups: int, *,
              need_input: bool, need_offset: bool, need_mask: bool):
    """(dL/dx, dL/doffset, dL/dmask) given dz = dL/d(pre-activation output); None where unasked.

    dL/dx accumulates with atomics in an fp32 (fp64) buffer in x's layout, then takes x's dtype;
    fp16/bf16 atomics are slow or missing on some GPUs and would round every addition.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = (empty_like_layout(tuple(x.shape), x, dtype=acc_dtype).zero_() if need_input
          else x.new_zeros(1, dtype=acc_dtype))
    doffset = torch.empty_like(offset) if need_offset else None
    dmask = torch.empty_like(mask) if need_mask else None
    rows = geometry.batch * math.prod(geometry.output_size)
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), offset_groups * geometry.taps)
    launch(deform_data_grad_kernel, grid,
        x, offset, mask if mask is not None else offset, weight, dz, dx,
        doffset if doffset is not None else offset, dmask if dmask is not None else offset,
        *_common_args(geometry, offset_groups), *_sampling_args(geometry),
        *x.stride(), *offset.stride(), *_mask_strides(mask), *weight.stride(), *dz.stride(),
        *(dx.stride() if need_input else (0,) * 4),
        *(doffset.stride() if doffset is not None else (0,) * 4),
        *(_mask_strides(dmask)),
        HAS_MASK=mask is not None, NEED_DX=need_input, NEED_DOFFSET=need_offset,
        NEED_DMASK=need_mask, INT64=needs_int64(x, offset, mask, dz, dx), **_dtype_flags(x),
    )
    grad_input = dx.to(x.dtype) if need_input else None
    return grad_input, doffset, dmask


def weight_grad(dz: torch.Tensor, x: torch.Tensor, offset: torch.Tensor,
                mask: torch.Tensor | None, geometry: ConvGeometry, offset_groups: int,
                dtype: torch.dtype) -> torch.Tensor:
    """dL/dW (C_out, C_in/groups, kH, kW) in `dtype`, from fp32 (fp64) split-K partial sums."""
    c_g, cout_g = geometry.in_per_group, geometry.out_per_group
    c_og = geometry.in_channels // offset_groups
    max_segments = max((g * c_g + c_g - 1) // c_og - (g * c_g) // c_og + 1
                       for g in range(geometry.groups))
    segment = min(c_g, c_og)
    positions = geometry.batch * math.prod(geometry.output_size)
    base_programs = (triton.cdiv(cout_g, 64) * triton.cdiv(segment, 64) * geometry.groups
                     * geometry.taps * max_segments)
    splits = _split_count(x.device, base_programs, positions)
    per_split = triton.cdiv(positions, splits)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty((splits, geometry.out_channels, c_g, geometry.taps), device=x.device,
                       dtype=acc_dtype)
    grid = lambda meta: (triton.cdiv(cout_g, meta["BLOCK_M"])
                         * triton.cdiv(segment, meta["BLOCK_N"]),
                         geometry.groups * geometry.taps * max_segments, splits)
    launch(deform_weight_grad_kernel, grid,
        x, offset, mask if mask is not None else offset, dz, part,
        *_common_args(geometry, offset_groups), max_segments, per_split,
        *_sampling_args(geometry), *x.stride(), *offset.stride(), *_mask_strides(mask),
        *dz.stride(), *part.stride(),
        HAS_MASK=mask is not None, INT64=needs_int64(x, offset, mask, dz), **_dtype_flags(x),
    )
    grad = part[0] if splits == 1 else part.sum(dim=0)
    return grad.reshape(geometry.out_channels, c_g, *geometry.kernel_size).to(dtype)
