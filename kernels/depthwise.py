"""Depthwise convolution (groups == C_in, channel multiplier M >= 1) as a direct FMA kernel.

Each output channel c reads one input channel, c // M, so there is no reduction over channels
for tl.dot to accelerate: the kernel is memory-bound (about 4.5 FLOP per byte for a 3x3 in
fp16) and is written for bandwidth. A program owns a tile of output pixels (BLOCK_H x BLOCK_W
of one (n, d) slice) times BLOCK_C channels and walks the kernel taps in runtime loops over
per-axis tap tables built on the host (`axis_plan`), so a 31x31 kernel costs 961 loop trips,
not 961 unrolled copies, and the row bounds check is hoisted out of the inner (W) loop. Per tap
it loads one shifted [pixels, channels] input tile: contiguous along channels for channels_last
(vector loads), along W for NCHW; the overlapping tiles of neighbouring taps come from L1/L2
rather than device memory. Autotuning picks the tile's shape per layout.

The same kernel runs the adjoint (the input gradient): with per-stride-phase tables each pixel
of the gradient gathers from the output positions that read it, and dL/dx of channel ci sums
the M channels ci*M .. ci*M+M-1. The weight gradient is `depthwise_wgrad_kernel`: one tap per
program, a split over positions, no atomics.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .autotune import autotuned, make_config
from .backend import INTERPRETED
from .epilogue import NO_EPILOGUE, Epilogue
from .igemm import axis_taps, tap_plan
from .launch import launch
from .tensors import needs_int64
from .tl_helpers import accumulator, epilogue_store, lanes, unflatten_position, widen
from .wgrad import _split_count

Triple = tuple[int, int, int]

# (BLOCK_H, BLOCK_W, BLOCK_C, num_warps): channel-major tiles suit channels_last (16-byte loads
# along C), width-major ones NCHW (coalesced along W); BLOCK_H == 1 ones serve 1-D convolutions.
_GPU_TILES: tuple[tuple[int, int, int, int], ...] = (
    (8, 8, 32, 4), (4, 8, 64, 4), (4, 4, 128, 4), (8, 16, 32, 8), (2, 8, 128, 8),
    (1, 16, 64, 4), (1, 64, 16, 4),
    (8, 32, 4, 4), (4, 64, 4, 4), (16, 32, 2, 4), (8, 64, 2, 8), (1, 128, 4, 4),
)
# One tile under the interpreter: Triton 3.6's autotuner times any list of two or more,
# which needs a GPU.
_INTERPRETER_TILES = ((8, 8, 16, 4),)

# (BLOCK_P, BLOCK_C, num_warps) for the weight gradient over flattened positions.
_GPU_WGRAD_TILES = ((64, 32, 4), (32, 64, 4), (16, 128, 4), (128, 16, 4), (256, 4, 4),
                    (128, 8, 4))
_INTERPRETER_WGRAD_TILES = ((64, 16, 4),)


def _configs(tiles, names) -> list[triton.Config]:
    return [make_config(dict(zip(names, tile[:-1], strict=True)), num_warps=tile[-1],
                          num_stages=2) for tile in tiles]


def _prune_blocks(configs: list[triton.Config], extents: dict[str, int]) -> list[triton.Config]:
    """Keep tiles no larger than the problem along each axis, else the least wasteful one."""
    def useful(config: triton.Config) -> float:
        return math.prod(min(1.0, extent / config.kwargs[name])
                         for name, extent in extents.items())

    fits = [c for c in configs if all(c.kwargs[name] <= triton.next_power_of_2(max(1, extent))
                                      for name, extent in extents.items())]
    return fits or [max(configs, key=useful)]


def _suited(configs: list[triton.Config], rule) -> list[triton.Config]:
    """The configs `rule` accepts, or all of them if it accepts none."""
    return [c for c in configs if rule(c.kwargs)] or configs


def _prune_forward(configs, args):
    kept = _prune_blocks(configs, {"BLOCK_H": args["J_H"], "BLOCK_W": args["J_W"],
                                   "BLOCK_C": args["CHANNELS"]})
    # Tiles long along the contiguous axis: channels for channels_last (vector loads along C),
    # width otherwise; one-row tiles only for one-row (1-D) problems.
    if args["sx_c"] == 1:
        kept = _suited(kept, lambda kw: kw["BLOCK_C"] >= 16)
    else:
        kept = _suited(kept, lambda kw: kw["BLOCK_W"] >= 32)
    return _suited(kept, lambda kw: (kw["BLOCK_H"] == 1) == (args["J_H"] == 1))


def _prune_wgrad(configs, args):
    kept = _prune_blocks(configs, {"BLOCK_P": args["POSITIONS"], "BLOCK_C": args["CHANNELS"]})
    if args["sx_c"] == 1:
        return _suited(kept, lambda kw: kw["BLOCK_C"] >= 16)
    return _suited(kept, lambda kw: kw["BLOCK_P"] >= 128)


@functools.lru_cache(maxsize=1024)
def axis_plan(transposed: bool, kernel: Triple, stride: Triple, padding: Triple,
              dilation: Triple, weight_tap_strides: Triple, device: torch.device):
    """Per-axis tap tables for `depthwise_taps`, cached per geometry.

    Returns (table, counts, residues, max_taps): `table[axis, residue, i]` holds the i-th tap's
    (input offset, weight offset along that axis) for output positions of that residue modulo
    the stride (residue 0 only for a convolution; see `igemm.axis_taps`), `counts[axis,
    residue]` how many there are. Three short tables instead of one entry per kxk tap let the
    kernel hoist each axis's bounds check out of the inner loop.
    """
    residues = max(stride) if transposed else 1
    per_axis = [[axis_taps(transposed, r, k, s, p, d) if r < s else []
                 for r in range(residues)]
                for k, s, p, d in zip(kernel, stride, padding, dilation, strict=True)]
    max_taps = max(1, *(len(taps) for axis in per_axis for taps in axis))
    table = torch.zeros((3, residues, max_taps, 2), dtype=torch.int32)
    counts = torch.zeros((3, residues), dtype=torch.int32)
    for a, axis in enumerate(per_axis):
        for r, taps in enumerate(axis):
            counts[a, r] = len(taps)
            for i, (k, offset) in enumerate(taps):
                table[a, r, i, 0] = offset
                table[a, r, i, 1] = k * weight_tap_strides[a]
    return table.to(device), counts.to(device), residues, max_taps


@triton.jit
def depthwise_taps(acc, x_ptr, w_ptr, taps_d, n_d, taps_h, n_h, taps_w, n_w, x_rows, base_d,
                   base_h, base_w, row_ok, x_cols, w_cols, col_ok, IN_D, IN_H, IN_W, sx_d, sx_h,
                   sx_w):
    """acc[p, c] += sum over the taps of x[row p moved by the tap, column c] * w[column c, tap].

    Rows are output pixels (`x_rows` their batch offset, `base_*` their input position before
    the tap's offset), columns channels (`x_cols`/`w_cols` their offsets in x and the weight).
    `taps_*`/`n_*` are one residue's per-axis tables of `axis_plan`, walked in runtime loops;
    zero padding is the load mask. Shared by the depthwise and fused depthwise-separable
    kernels.
    """
    for td in range(0, n_d):
        i_d = base_d + tl.load(taps_d + td * 2)
        ok_d = row_ok & (i_d >= 0) & (i_d < IN_D)
        w_d = w_cols + tl.load(taps_d + td * 2 + 1)
        for th in range(0, n_h):
            i_h = base_h + tl.load(taps_h + th * 2)
            ok_h = ok_d & (i_h >= 0) & (i_h < IN_H)
            w_h = w_d + tl.load(taps_h + th * 2 + 1)
            rows = x_rows + i_d * sx_d + i_h * sx_h
            for tw in range(0, n_w):
                i_w = base_w + tl.load(taps_w + tw * 2)
                ok = ok_h & (i_w >= 0) & (i_w < IN_W)
                x = tl.load(x_ptr + (rows + i_w * sx_w)[:, None] + x_cols[None, :],
                            mask=ok[:, None] & col_ok[None, :], other=0.0)
                w = tl.load(w_ptr + w_h + tl.load(taps_w + tw * 2 + 1), mask=col_ok, other=0.0)
                acc += x.to(acc.dtype) * w.to(acc.dtype)[None, :]
    return acc


# The batch only sizes the grid (tiles are per image), so it stays out of the key: a server's
# batches of any size share one tuning per layer (see autotune.py).
_KEY = ["CHANNELS", "CH_DIV", "CH_SUM", "IN_D", "IN_H", "IN_W", "OUT_D", "OUT_H",
        "OUT_W", "IN_MUL_D", "IN_MUL_H", "IN_MUL_W", "RESIDUES", "MAX_TAPS", "sx_c", "sx_w",
        "sy_c", "ACTIVATION", "HAS_RESIDUAL"]


@autotuned(key=_KEY, prune=_prune_forward,
           configs=_configs(_INTERPRETER_TILES if INTERPRETED else _GPU_TILES,
                            ("BLOCK_H", "BLOCK_W", "BLOCK_C")))
@triton.jit
def depthwise_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, z_ptr, taps_ptr, tap_count_ptr,
    BATCH, CHANNELS, CH_DIV, CH_SUM,
    IN_D, IN_H, IN_W, OUT_D, OUT_H, OUT_W, J_D, J_H, J_W,
    IN_MUL_D, IN_MUL_H, IN_MUL_W, OUT_MUL_D, OUT_MUL_H, OUT_MUL_W,
    RESIDUES, MAX_TAPS,
    sx_n, sx_c, sx_d, sx_h, sx_w, sw_c,
    sy_n, sy_c, sy_d, sy_h, sy_w,
    sr_n, sr_c, sr_d, sr_h, sr_w,
    alpha,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    STORE_PREACT: tl.constexpr, INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Output pixel j * OUT_MUL + phase reads input j * IN_MUL + tap offset; output channel c
    # sums input channels (c // CH_DIV) * CH_SUM + r, r < CH_SUM, with weight row c*CH_SUM + r.
    tiles_w = tl.cdiv(J_W, BLOCK_W)
    tiles_h = tl.cdiv(J_H, BLOCK_H)
    pid = tl.program_id(0)
    phase = tl.program_id(2)
    tile_w = pid % tiles_w
    t = pid // tiles_w
    tile_h = t % tiles_h
    t = t // tiles_h
    jd = t % J_D
    n = t // J_D
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    c = lanes(tl.program_id(1), BLOCK_C, INT64)  # INT64: every offset below widens
    n = widen(n, INT64)
    jd = widen(jd, INT64)
    p = widen(p, INT64)
    jh = tile_h * BLOCK_H + p // BLOCK_W
    jw = tile_w * BLOCK_W + p % BLOCK_W
    r_d = phase // (OUT_MUL_H * OUT_MUL_W)
    r_h = (phase // OUT_MUL_W) % OUT_MUL_H
    r_w = phase % OUT_MUL_W
    od = jd * OUT_MUL_D + r_d
    oh = jh * OUT_MUL_H + r_h
    ow = jw * OUT_MUL_W + r_w
    row_ok = (jh < J_H) & (jw < J_W) & (od < OUT_D) & (oh < OUT_H) & (ow < OUT_W)
    c_ok = c < CHANNELS
    # Axis a's table for residue r starts at entry (a * RESIDUES + r) * MAX_TAPS.
    taps_d = taps_ptr + r_d * MAX_TAPS * 2
    taps_h = taps_ptr + (RESIDUES + r_h) * MAX_TAPS * 2
    taps_w = taps_ptr + (2 * RESIDUES + r_w) * MAX_TAPS * 2
    n_d = tl.load(tap_count_ptr + r_d)
    n_h = tl.load(tap_count_ptr + RESIDUES + r_h)
    n_w = tl.load(tap_count_ptr + 2 * RESIDUES + r_w)

    acc = accumulator(BLOCK_H * BLOCK_W, BLOCK_C, IS_FP64)
    for r in range(0, CH_SUM):
        acc = depthwise_taps(acc, x_ptr, w_ptr, taps_d, n_d, taps_h, n_h, taps_w, n_w,
                             n * sx_n, jd * IN_MUL_D,
                             jh * IN_MUL_H, jw * IN_MUL_W, row_ok,
                             ((c // CH_DIV) * CH_SUM + r) * sx_c, (c * CH_SUM + r) * sw_c, c_ok,
                             IN_D, IN_H, IN_W, sx_d, sx_h, sx_w)

    mask = row_ok[:, None] & c_ok[None, :]
    y_offsets = (n * sy_n + od * sy_d + oh * sy_h + ow * sy_w)[:, None] + (c * sy_c)[None, :]
    res_offsets = ((n * sr_n + od * sr_d + oh * sr_h + ow * sr_w)[:, None]
                   + (c * sr_c)[None, :])
    epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, c, c_ok, res_ptr, res_offsets, z_ptr,
                   alpha, ACTIVATION, HAS_BIAS, HAS_RESIDUAL, STORE_PREACT)


def launch_depthwise(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, *, groups: int,
                     stride: Triple, padding: Triple, dilation: Triple, transposed: bool,
                     bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                     preact: torch.Tensor | None = None,
                     epilogue: Epilogue = NO_EPILOGUE) -> None:
    """Run `depthwise_kernel` on 5-D views: out = epilogue(conv(x, weight, groups=C_in)).

    Same contract as `igemm.launch_igemm`. `weight` is the forward convolution's
    (C_in * M, 1, k...) in both directions; `transposed=True` computes the adjoint, mapping
    (N, C_in * M, ...) to (N, C_in, ...) (a convolution's input gradient), where `groups` is C_in.
    """
    batch = x.shape[0]
    channels = out.shape[1]
    multiplier = weight.shape[0] // groups
    taps, counts, residues, max_taps = axis_plan(
        transposed, tuple(weight.shape[2:]), stride, padding, dilation,
        tuple(weight.stride()[2:]), x.device)
    out_size = tuple(out.shape[2:])
    if transposed:
        extents = tuple(math.ceil(o / s) for o, s in zip(out_size, stride, strict=True))
        in_mul, out_mul, ch_div, ch_sum = (1, 1, 1), stride, 1, multiplier
    else:
        extents, in_mul, out_mul, ch_div, ch_sum = out_size, stride, (1, 1, 1), multiplier, 1
    n_phases = math.prod(out_mul)
    res = residual if residual is not None else out
    grid = lambda meta: (batch * extents[0] * triton.cdiv(extents[1], meta["BLOCK_H"])
                         * triton.cdiv(extents[2], meta["BLOCK_W"]),
                         triton.cdiv(channels, meta["BLOCK_C"]), n_phases)
    launch(depthwise_kernel, grid,
        x, weight, bias if bias is not None else out, res, out,
        preact if preact is not None else out, taps, counts,
        batch, channels, ch_div, ch_sum, *x.shape[2:], *out_size, *extents, *in_mul, *out_mul,
        residues, max_taps, *x.stride(), weight.stride(0), *out.stride(),
        *(res.stride() if residual is not None else (0,) * 5), epilogue.alpha,
        ACTIVATION=int(epilogue.activation), HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, STORE_PREACT=preact is not None,
        INT64=needs_int64(x, out, residual, preact), IS_FP64=x.dtype == torch.float64,
    )


_WGRAD_KEY = ["POSITIONS", "CHANNELS", "CH_DIV", "IN_D", "IN_H", "IN_W", "OUT_D", "OUT_H", "OUT_W",
              "STRIDE_D", "STRIDE_H", "STRIDE_W", "N_TAPS", "K_PER_SPLIT", "sdy_c", "sx_c"]


@autotuned(key=_WGRAD_KEY, prune=_prune_wgrad,
           configs=_configs(_INTERPRETER_WGRAD_TILES if INTERPRETED else _GPU_WGRAD_TILES,
                            ("BLOCK_P", "BLOCK_C")))
@triton.jit
def depthwise_wgrad_kernel(
    dy_ptr, x_ptr, part_ptr, taps_ptr,
    POSITIONS, CHANNELS, CH_DIV, IN_D, IN_H, IN_W, OUT_D, OUT_H, OUT_W,
    STRIDE_D, STRIDE_H, STRIDE_W, N_TAPS, K_PER_SPLIT,
    sdy_n, sdy_c, sdy_d, sdy_h, sdy_w,
    sx_n, sx_c, sx_d, sx_h, sx_w,
    sp_split, sp_c, sp_tap,
    INT64: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dW[c, tap] = sum over (n, o) of dy[n, c, o] * x[n, c // CH_DIV, o * S + offset(tap)].
    # The tap varies fastest across programs, so programs running together share dy and x
    # tiles in L2.
    tap = tl.program_id(0)
    c = lanes(tl.program_id(1), BLOCK_C, INT64)
    split = tl.program_id(2)
    rp = widen(tl.arange(0, BLOCK_P), INT64)
    c_ok = c < CHANNELS
    off_d = tl.load(taps_ptr + tap * 4)
    off_h = tl.load(taps_ptr + tap * 4 + 1)
    off_w = tl.load(taps_ptr + tap * 4 + 2)
    dy_cols = c * sdy_c
    x_cols = (c // CH_DIV) * sx_c

    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(POSITIONS, k_lo + K_PER_SPLIT)
    acc = accumulator(BLOCK_P, BLOCK_C, IS_FP64)
    for k0 in range(k_lo, k_hi, BLOCK_P):
        k = k0 + rp
        k_ok = k < k_hi
        n, od, oh, ow = unflatten_position(k, OUT_D, OUT_H, OUT_W)
        g = tl.load(dy_ptr + (n * sdy_n + od * sdy_d + oh * sdy_h + ow * sdy_w)[:, None]
                    + dy_cols[None, :], mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        i_d = od * STRIDE_D + off_d
        i_h = oh * STRIDE_H + off_h
        i_w = ow * STRIDE_W + off_w
        ok = (k_ok & (i_d >= 0) & (i_d < IN_D) & (i_h >= 0) & (i_h < IN_H) & (i_w >= 0)
              & (i_w < IN_W))
        x = tl.load(x_ptr + (n * sx_n + i_d * sx_d + i_h * sx_h + i_w * sx_w)[:, None]
                    + x_cols[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
        acc += g.to(acc.dtype) * x.to(acc.dtype)
    tl.store(part_ptr + split * sp_split + c * sp_c + tap * sp_tap, tl.sum(acc, axis=0),
             mask=c_ok)


def depthwise_weight_grad(dy: torch.Tensor, x: torch.Tensor, weight_shape: tuple[int, ...], *,
                          stride: Triple, padding: Triple, dilation: Triple,
                          dtype: torch.dtype) -> torch.Tensor:
    """dL/dW of out = conv(x, W, groups=C_in) given dy = dL/dout; tensors as 5-D views.

    Same contract as `wgrad.weight_grad`: returns a `weight_shape` (C_in * M, 1, kd, kh, kw)
    tensor in `dtype`, accumulated in fp32 (fp64 for fp64).
    """
    batch, channels = dy.shape[:2]
    kernel = tuple(weight_shape[2:])
    n_taps = math.prod(kernel)
    taps, _, _, _ = tap_plan(False, kernel, stride, padding, dilation, (0, 0, 0), x.device)
    positions = batch * math.prod(dy.shape[2:])
    splits = _split_count(x.device, n_taps * triton.cdiv(channels, 32), positions)
    per_split = triton.cdiv(positions, splits)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty((splits, channels, n_taps), device=x.device, dtype=acc_dtype)
    grid = lambda meta: (n_taps, triton.cdiv(channels, meta["BLOCK_C"]), splits)
    launch(depthwise_wgrad_kernel, grid,
        dy, x, part, taps, positions, channels, channels // x.shape[1], *x.shape[2:],
        *dy.shape[2:], *stride, n_taps, per_split, *dy.stride(), *x.stride(), *part.stride(),
        INT64=needs_int64(dy, x), IS_FP64=x.dtype == torch.float64,
    )
    grad = part[0] if splits == 1 else part.sum(dim=0)
    return grad.reshape(weight_shape).to(dtype)
