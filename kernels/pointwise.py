"""Pointwise (1x1) convolution as a plain tiled GEMM, optionally fed by an on-chip depthwise conv.

A 1x1 convolution with no padding is the GEMM (N*spatial, C_in) x (C_in, C_out). The implicit-
GEMM kernel computes it correctly, but spends each reduction step on tap-table loads and
padding masks that a 1x1 never needs; here every address is fixed before the K loop and each
step only moves the channel offset, the shape Triton's software pipelining handles best. Tiles
run with the N (output channel) index fastest, so the programs sharing an A row block run
together and read it from device memory once; the weight (C_in x C_out) is small and stays in
L2.

With DEPTHWISE the A tile is not loaded but computed: the depthwise kxk convolution of the
[BLOCK_M pixels, BLOCK_K channels] tile (`depthwise.depthwise_taps`), plus its bias and the
mid activation, rounded to the input's dtype (with an FP8 weight: quantized to e4m3 with the
calibrated intermediate scale) and fed straight to tl.dot. That is the fused
depthwise-separable block: its intermediate never reaches device memory. Each N tile
recomputes the depthwise part (cheap: k*k FMAs per element against C_out for the GEMM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .autotune import (
    FP8_INTERPRETER_TILE,
    FP8_TILES,
    autotuned,
    prune_tiles,
    tile_configs,
    within_registers,
)
from .depthwise import axis_plan, depthwise_taps
from .epilogue import NO_EPILOGUE, Epilogue, Fp8Scales
from .igemm import input_precision
from .launch import launch, upcast_operands
from .tensors import needs_int64
from .tl_helpers import (
    accumulator,
    activate,
    epilogue_store,
    mma,
    quantize_e4m3,
    tile_ids,
    tile_ranges,
    unflatten_position,
)

Triple = tuple[int, int, int]

# Rows enter the key as a power-of-two bucket, as in igemm (see autotune.py).
_KEY = ["ROWS_BUCKET", "C_IN", "C_OUT", "IN_D", "IN_H", "IN_W", "OUT_D", "OUT_H", "OUT_W",
        "STRIDE_D", "STRIDE_H", "STRIDE_W", "MAX_TAPS", "sx_c", "sy_c", "DEPTHWISE",
        "MID_ACTIVATION", "ACTIVATION", "HAS_RESIDUAL"]
# Arguments only the autotuner reads: Triton need not compile a variant per value.
_KEY_ONLY = ["ROWS_BUCKET"]


def _prune(configs, args):
    """prune_tiles; with the depthwise stage, at most 32 accumulator elements per thread
    (EfficientNet's 5x5 blocks spilled in 128x64 tiles on 4 warps and 256x64 on 8)."""
    kept = prune_tiles(configs, args["ROWS"], args["C_OUT"], args["C_IN"], args["x_ptr"])
    return within_registers(kept, acc_per_thread=32) if args["DEPTHWISE"] else kept


@autotuned(key=_KEY, prune=_prune)
@triton.jit(do_not_specialize=_KEY_ONLY)
def pointwise_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, z_ptr, dw_ptr, dw_bias_ptr, taps_ptr, tap_count_ptr,
    in_scale_ptr, w_scale_ptr,
    ROWS, C_IN, C_OUT, IN_D, IN_H, IN_W, OUT_D, OUT_H, OUT_W, STRIDE_D, STRIDE_H, STRIDE_W,
    MAX_TAPS, ROWS_BUCKET,
    sx_n, sx_c, sx_d, sx_h, sx_w, sw_out, sw_in, sdw_c,
    sy_n, sy_c, sy_d, sy_h, sy_w,
    sr_n, sr_c, sr_d, sr_h, sr_w,
    alpha, mid_alpha,
    ACTIVATION: tl.constexpr, MID_ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DW_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_PREACT: tl.constexpr,
    DESCALE: tl.constexpr, DEPTHWISE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(ROWS, BLOCK_M), tl.cdiv(C_OUT, BLOCK_N), 1)
    rm, rn, rk = tile_ranges(pid_m, pid_n, BLOCK_M, BLOCK_N, BLOCK_K, INT64)
    n, od, oh, ow = unflatten_position(rm, OUT_D, OUT_H, OUT_W)
    row_ok = rm < ROWS
    n_ok = rn < C_OUT
    base_d = od * STRIDE_D
    base_h = oh * STRIDE_H
    base_w = ow * STRIDE_W
    x_rows = n * sx_n
    a_rows = x_rows + base_d * sx_d + base_h * sx_h + base_w * sx_w

    if DEPTHWISE:  # the per-axis tap tables of depthwise.axis_plan, residue 0
        n_d = tl.load(tap_count_ptr)
        n_h = tl.load(tap_count_ptr + 1)
        n_w = tl.load(tap_count_ptr + 2)
        if DESCALE:  # the intermediate is quantized to FP8 with the input scale
            mid_scale = tl.load(in_scale_ptr)

    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    for k0 in range(0, C_IN, BLOCK_K):
        c = k0 + rk
        c_ok = c < C_IN
        if DEPTHWISE:
            mid = accumulator(BLOCK_M, BLOCK_K, IS_FP64)
            mid = depthwise_taps(mid, x_ptr, dw_ptr, taps_ptr, n_d, taps_ptr + MAX_TAPS * 2,
                                 n_h, taps_ptr + MAX_TAPS * 4, n_w, x_rows, base_d, base_h,
                                 base_w, row_ok, c * sx_c, c * sdw_c, c_ok, IN_D, IN_H, IN_W,
                                 sx_d, sx_h, sx_w)
            if HAS_DW_BIAS:
                mid += tl.load(dw_bias_ptr + c, mask=c_ok, other=0.0).to(acc.dtype)[None, :]
            a = activate(mid, MID_ACTIVATION, mid_alpha)
            if DESCALE:  # FP8 1x1: quantized as quantize_fp8 would quantize the intermediate
                a = quantize_e4m3(a, mid_scale)
            else:  # rounded to the input dtype, as the unfused pair stores its intermediate
                a = a.to(x_ptr.dtype.element_ty)
        else:
            a = tl.load(x_ptr + a_rows[:, None] + (c * sx_c)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        # Channels >= C_IN hold act(0) in `a` and load zero weights: they add nothing.
        b = tl.load(w_ptr + (c * sw_in)[:, None] + (rn * sw_out)[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)

    mask = row_ok[:, None] & n_ok[None, :]
    y_offsets = (n * sy_n + od * sy_d + oh * sy_h + ow * sy_w)[:, None] + (rn * sy_c)[None, :]
    res_offsets = ((n * sr_n + od * sr_d + oh * sr_h + ow * sr_w)[:, None]
                   + (rn * sr_c)[None, :])
    epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, rn, n_ok, res_ptr, res_offsets, z_ptr,
                   alpha, ACTIVATION, HAS_BIAS, HAS_RESIDUAL, STORE_PREACT, in_scale_ptr,
                   w_scale_ptr, DESCALE)


# The same kernel with an FP8 (e4m3) weight, tuned over tiles that suit one-byte operands.
pointwise_fp8_kernel = autotuned(key=_KEY, prune=_prune, configs=tile_configs(
    FP8_TILES, interpreter_tile=FP8_INTERPRETER_TILE))(
    pointwise_kernel.fn)


@dataclass(frozen=True)
class DepthwiseStage:
    """The depthwise kxk convolution computed on chip ahead of the 1x1 (multiplier 1)."""

    weight: torch.Tensor  # 5-D (C_in, 1, kd, kh, kw)
    bias: torch.Tensor | None
    padding: Triple
    dilation: Triple
    epilogue: Epilogue  # the mid activation


def launch_pointwise(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, *,
                     stride: Triple, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, preact: torch.Tensor | None = None,
                     epilogue: Epilogue = NO_EPILOGUE,
                     depthwise: DepthwiseStage | None = None,
                     scales: Fp8Scales | None = None) -> None:
    """out = epilogue(conv1x1(x or depthwise(x), weight)) on 5-D views, padding 0.

    `weight` is (C_out, C_in, 1, 1, 1) with any strides (a transposed view gives the input
    gradient of a 1x1). With `depthwise`, `stride` is the depthwise convolution's; without,
    the 1x1's own. With `scales` the weight is FP8, and so is x, or (with `depthwise`) the
    intermediate, quantized on chip with `scales.input`; the product is de-scaled before the
    epilogue.
    """
    batch, c_in = x.shape[:2]
    c_out = out.shape[1]
    out_size = tuple(out.shape[2:])
    if depthwise is None:
        dw, dw_bias, mid = out, None, NO_EPILOGUE
        taps, counts, max_taps, dw_channel_stride = out, out, 0, 0
    else:
        dw, dw_bias, mid = depthwise.weight, depthwise.bias, depthwise.epilogue
        taps, counts, _, max_taps = axis_plan(False, tuple(dw.shape[2:]), stride,
                                              depthwise.padding, depthwise.dilation,
                                              tuple(dw.stride()[2:]), x.device)
        dw_channel_stride = dw.stride(0)
    res = residual if residual is not None else out
    rows = batch * out_size[0] * out_size[1] * out_size[2]
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(c_out, meta["BLOCK_N"]),)
    in_scale, w_scale = (scales.input, scales.weight) if scales is not None else (out, out)
    launch(pointwise_fp8_kernel if scales is not None else pointwise_kernel, grid,
        x, weight, bias if bias is not None else out, res, out,
        preact if preact is not None else out, dw, dw_bias if dw_bias is not None else out, taps,
        counts, in_scale, w_scale, rows, c_in, c_out, *x.shape[2:], *out_size, *stride, max_taps,
        triton.next_power_of_2(rows),
        *x.stride(), weight.stride(0), weight.stride(1), dw_channel_stride, *out.stride(),
        *(res.stride() if residual is not None else (0,) * 5), epilogue.alpha, mid.alpha,
        ACTIVATION=int(epilogue.activation), MID_ACTIVATION=int(mid.activation),
        HAS_BIAS=bias is not None, HAS_DW_BIAS=dw_bias is not None,
        HAS_RESIDUAL=residual is not None, STORE_PREACT=preact is not None,
        DESCALE=scales is not None, DEPTHWISE=depthwise is not None,
        INPUT_PRECISION=input_precision(x.dtype),
        UPCAST=upcast_operands(x.dtype),
        INT64=needs_int64(x, out, residual, preact), IS_FP64=x.dtype == torch.float64,
    )
