"""The implicit-GEMM kernel behind conv1d/2d/3d, conv_transpose1d/2d/3d and the input gradient.

One kernel serves both directions. A program computes a [BLOCK_M, BLOCK_N] tile of the output:
rows are output positions (n, d, h, w), columns are output channels of one group, and the
reduction runs over (kernel tap, input channel) without materialising an im2col buffer.

Every output position is `j * OUT_MUL + phase` and reads input position `j * IN_MUL + offset`:
- convolution (DIRECT): one phase, IN_MUL = stride, OUT_MUL = 1, and every tap, with offset
  k*dilation - pad computed from the tap index;
- transposed convolution (and so a convolution's input gradient): one phase per residue of the
  output position modulo the stride, IN_MUL = 1, OUT_MUL = stride, and only the taps that land
  on a real input position, with offset (phase + pad - k*dilation) / stride, read from a
  per-phase table. Each phase is a dense implicit GEMM: no work on the zeros of the dilated
  input, no atomics. The table is built on the host with Python's exact integer arithmetic, so
  Triton's truncating `//` never meets a negative operand.

Two reduction orders: TAP_MAJOR walks taps outermost and BLOCK_K input channels at a time (one
address computation per tap, contiguous channel loads for channels_last); otherwise the
reduction index is flattened over (tap, channel) so a stem with 3 input channels or a grouped
conv with 4 channels per group does not waste most of each BLOCK_K.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import triton
import triton.language as tl

from .autotune import (
    FP8_INTERPRETER_TILE,
    FP8_TILES,
    at_most_stages,
    autotuned,
    prune_tiles,
    tile_configs,
    unaligned,
    within_registers,
)
from .epilogue import NO_EPILOGUE, Epilogue, Fp8Scales
from .launch import compute_capability, launch, upcast_operands
from .tensors import needs_int64
from .tl_helpers import accumulator, epilogue_store, mma, tile_ids, tile_ranges, widen

# Output rows enter the key as a power-of-two bucket (ROWS_BUCKET), so a server seeing batch
# sizes 5, 6 and 7 tunes once, not three times, and the memory layouts as LAYOUT bits (which
# operand has unit channel stride); everything else that shapes the best tile enters as is.
_KEY = ["ROWS_BUCKET", "LAYOUT", "C_G", "COUT_G", "IN_MUL_D", "IN_MUL_H", "IN_MUL_W", "KD", "KH",
        "KW", "N_PHASES", "MAX_TAPS", "TAP_MAJOR", "DIRECT", "ACTIVATION", "HAS_RESIDUAL"]
# Arguments only the autotuner reads: Triton need not compile a variant per value.
_KEY_ONLY = ["ROWS_BUCKET", "LAYOUT"]


def _prune(configs, args):
    """prune_tiles, then register limits measured with foveal compilecheck (Triton 3.6 and
    3.8), past which ptxas spills at its 255-register ceiling:
    - a flattened (tap, channel) reduction builds a tile of addresses and bounds tests beside
      the A tile each step: at most 16 A (32 for FP8's one-byte elements; 64x32x128 and
      128x32x64 FP8 tiles on 4 warps spilled) and 32 accumulator elements per thread;
    - fp32 (TF32) operands on Ampere's mma.sync: at most 32 accumulator elements per thread
      and 32-deep steps;
    - channel counts that are not multiples of 16 (R(2+1)D's 45 and 460): at most 16 A and 32
      accumulator elements per thread (64x128 and larger spilled up to 2 KB, 64x64x64 4 B);
    - on Ampere in fp32 a flattened reduction: 3 stages, 16 accumulator elements a thread
      (64x32x32 on 4 warps spilled with 4 stages, 128x64 on 8 with Triton 3.6); unaligned
      channels: at most 64 rows (128x64x32 on 8 warps spilled).
    """
    rows = args["BATCH"] * args["J_D"] * args["J_H"] * args["J_W"]
    x = args["x_ptr"]
    reduction = args["C_G"] if args["TAP_MAJOR"] else args["C_G"] * args["MAX_TAPS"]
    kept = prune_tiles(configs, rows, args["COUT_G"], reduction, x)
    limits = {}
    if not args["TAP_MAJOR"]:
        fp8 = x.dtype == torch.float8_e4m3fn
        limits = dict(a_per_thread=32 if fp8 else 16, acc_per_thread=32)
    elif unaligned(args["C_G"], args["COUT_G"]):
        limits = dict(a_per_thread=16, acc_per_thread=32)
    capability = compute_capability(x.device)
    if x.element_size() == 4 and capability is not None and capability < 90:
        if not args["TAP_MAJOR"]:
            kept = at_most_stages(kept, 3)
        elif limits:
            limits.update(max_block_m=64)
        limits.update(acc_per_thread=32 if args["TAP_MAJOR"] else 16, max_block_k=32)
    return within_registers(kept, **limits) if limits else kept


@triton.jit
def _tap_offsets(t, t_ok, tap_table, DIRECT: tl.constexpr, KH, KW, DIL_D, DIL_H, DIL_W,
                 PAD_D, PAD_H, PAD_W, sw_kd, sw_kh, sw_kw):
    """Input offsets (d, h, w) and weight offset of tap `t` (a scalar or a vector of taps)."""
    if DIRECT:
        kw = t % KW
        rest = t // KW
        kh = rest % KH
        kd = rest // KH
        off_d = kd * DIL_D - PAD_D
        off_h = kh * DIL_H - PAD_H
        off_w = kw * DIL_W - PAD_W
        w_off = kd * sw_kd + kh * sw_kh + kw * sw_kw
    else:
        entry = tap_table + t * 4
        off_d = tl.load(entry, mask=t_ok, other=0)
        off_h = tl.load(entry + 1, mask=t_ok, other=0)
        off_w = tl.load(entry + 2, mask=t_ok, other=0)
        w_off = tl.load(entry + 3, mask=t_ok, other=0)
    return off_d, off_h, off_w, w_off


@autotuned(key=_KEY, prune=_prune)
@triton.jit(do_not_specialize=_KEY_ONLY)
def igemm_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, z_ptr, taps_ptr, tap_count_ptr, phase_ptr,
    in_scale_ptr, w_scale_ptr,
    BATCH, C_G, COUT_G,
    IN_D, IN_H, IN_W, OUT_D, OUT_H, OUT_W, J_D, J_H, J_W,
    IN_MUL_D, IN_MUL_H, IN_MUL_W, OUT_MUL_D, OUT_MUL_H, OUT_MUL_W,
    KD, KH, KW, DIL_D, DIL_H, DIL_W, PAD_D, PAD_H, PAD_W,
    N_PHASES, MAX_TAPS, ROWS_BUCKET, LAYOUT,
    sx_n, sx_c, sx_d, sx_h, sx_w,
    sw_group, sw_out, sw_in, sw_kd, sw_kh, sw_kw,
    sy_n, sy_c, sy_d, sy_h, sy_w,
    sr_n, sr_c, sr_d, sr_h, sr_w,
    alpha,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    STORE_PREACT: tl.constexpr, DESCALE: tl.constexpr, TAP_MAJOR: tl.constexpr,
    DIRECT: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    INT64: tl.constexpr, IS_FP64: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    group = widen(tl.program_id(1) // N_PHASES, INT64)
    phase = tl.program_id(1) % N_PHASES
    rows = BATCH * J_D * J_H * J_W
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(rows, BLOCK_M), tl.cdiv(COUT_G, BLOCK_N),
                            GROUP_M)
    rm, rn, rk = tile_ranges(pid_m, pid_n, BLOCK_M, BLOCK_N, BLOCK_K, INT64)
    jw = rm % J_W
    t = rm // J_W
    jh = t % J_H
    t = t // J_H
    jd = t % J_D
    n = t // J_D

    od = jd * OUT_MUL_D + tl.load(phase_ptr + phase * 3)
    oh = jh * OUT_MUL_H + tl.load(phase_ptr + phase * 3 + 1)
    ow = jw * OUT_MUL_W + tl.load(phase_ptr + phase * 3 + 2)
    row_ok = (rm < rows) & (od < OUT_D) & (oh < OUT_H) & (ow < OUT_W)
    base_d = jd * IN_MUL_D
    base_h = jh * IN_MUL_H
    base_w = jw * IN_MUL_W
    x_row = n * sx_n + group * C_G * sx_c
    n_ok = rn < COUT_G
    w_base = w_ptr + group * sw_group
    w_cols = rn * sw_out
    if DIRECT:
        n_taps = KD * KH * KW
    else:
        n_taps = tl.load(tap_count_ptr + phase)
    tap_table = taps_ptr + phase * MAX_TAPS * 4

    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)

    if TAP_MAJOR:
        c_blocks = tl.cdiv(C_G, BLOCK_K)
        for it in range(0, n_taps * c_blocks):
            tap = it // c_blocks
            c = (it - tap * c_blocks) * BLOCK_K + rk
            c_ok = c < C_G
            off_d, off_h, off_w, w_tap = _tap_offsets(
                tap, tap < n_taps, tap_table, DIRECT, KH, KW, DIL_D, DIL_H, DIL_W, PAD_D,
                PAD_H, PAD_W, sw_kd, sw_kh, sw_kw)
            i_d = base_d + off_d
            i_h = base_h + off_h
            i_w = base_w + off_w
            ok = (row_ok & (i_d >= 0) & (i_d < IN_D) & (i_h >= 0) & (i_h < IN_H)
                  & (i_w >= 0) & (i_w < IN_W))
            x_off = x_row + i_d * sx_d + i_h * sx_h + i_w * sx_w
            a = tl.load(x_ptr + x_off[:, None] + (c * sx_c)[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_base + w_tap + (c * sw_in)[:, None] + w_cols[None, :],
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)
    else:
        k_total = n_taps * C_G
        for k0 in range(0, k_total, BLOCK_K):
            k = k0 + rk
            k_ok = k < k_total
            tap = k // C_G
            c = k - tap * C_G
            off_d, off_h, off_w, w_tap = _tap_offsets(
                tap, k_ok, tap_table, DIRECT, KH, KW, DIL_D, DIL_H, DIL_W, PAD_D, PAD_H, PAD_W,
                sw_kd, sw_kh, sw_kw)
            i_d = base_d[:, None] + off_d[None, :]
            i_h = base_h[:, None] + off_h[None, :]
            i_w = base_w[:, None] + off_w[None, :]
            ok = (row_ok[:, None] & k_ok[None, :] & (i_d >= 0) & (i_d < IN_D) & (i_h >= 0)
                  & (i_h < IN_H) & (i_w >= 0) & (i_w < IN_W))
            x_off = x_row[:, None] + i_d * sx_d + i_h * sx_h + i_w * sx_w + (c * sx_c)[None, :]
            a = tl.load(x_ptr + x_off, mask=ok, other=0.0)
            b = tl.load(w_base + (w_tap + c * sw_in)[:, None] + w_cols[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)

    channels = group * COUT_G + rn
    mask = row_ok[:, None] & n_ok[None, :]
    y_offsets = ((n * sy_n + od * sy_d + oh * sy_h + ow * sy_w)[:, None]
                 + (channels * sy_c)[None, :])
    res_offsets = ((n * sr_n + od * sr_d + oh * sr_h + ow * sr_w)[:, None]
                   + (channels * sr_c)[None, :])
    epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, channels, n_ok, res_ptr, res_offsets,
                   z_ptr, alpha, ACTIVATION, HAS_BIAS, HAS_RESIDUAL, STORE_PREACT, in_scale_ptr,
                   w_scale_ptr, DESCALE)


# The same kernel over FP8 (e4m3) operands, tuned over tiles that suit one-byte operands.
igemm_fp8_kernel = autotuned(key=_KEY, prune=_prune, configs=tile_configs(
    FP8_TILES, interpreter_tile=FP8_INTERPRETER_TILE))(
    igemm_kernel.fn)


Triple = tuple[int, int, int]


def axis_taps(transposed: bool, residue: int, kernel: int, stride: int, padding: int,
              dilation: int) -> list[tuple[int, int]]:
    """(kernel index, input offset) of the taps one spatial axis uses.

    Convolution: every tap, offset k*dilation - padding from the output position times the
    stride. Transposed (phase `residue` of the output modulo the stride): the taps that land on
    a real input position, offset (residue + padding - k*dilation) / stride from the output
    position divided by the stride.
    """
    if not transposed:
        return [(k, k * dilation - padding) for k in range(kernel)]
    return [(k, (residue + padding - k * dilation) // stride) for k in range(kernel)
            if (residue + padding - k * dilation) % stride == 0]


@functools.lru_cache(maxsize=1024)
def tap_plan(transposed: bool, kernel: Triple, stride: Triple, padding: Triple,
             dilation: Triple, weight_tap_strides: Triple, device: torch.device):
    """Per-phase tap tables (input offset d, h, w; weight offset) for `igemm_kernel`.

    Returns (taps, counts, residues, max_taps) as device tensors, cached per geometry.
    """
    if transposed:
        phases = list(itertools.product(*(range(s) for s in stride)))
    else:
        phases = [(0, 0, 0)]
    per_phase = []
    for residue in phases:
        axes = [axis_taps(transposed, *args) for args in
                zip(residue, kernel, stride, padding, dilation, strict=True)]
        per_phase.append([
            (od, oh, ow, kd * weight_tap_strides[0] + kh * weight_tap_strides[1]
             + kw * weight_tap_strides[2])
            for (kd, od), (kh, oh), (kw, ow) in itertools.product(*axes)])
    max_taps = max(1, max(len(p) for p in per_phase))
    table = [[0, 0, 0, 0]] * (len(phases) * max_taps)
    for i, entries in enumerate(per_phase):
        table[i * max_taps:i * max_taps + len(entries)] = [list(e) for e in entries]
    as_tensor = functools.partial(torch.tensor, dtype=torch.int32, device=device)
    return (as_tensor(table).flatten(), as_tensor([len(p) for p in per_phase]),
            as_tensor(phases).flatten(), max_taps)


def input_precision(dtype: torch.dtype) -> str:
    """TF32 for fp32 exactly when PyTorch's cuDNN convolutions would use it."""
    if dtype != torch.float32:
        return "ieee"
    return "tf32" if fp32_convolutions_use_tf32() else "ieee"


def fp32_convolutions_use_tf32() -> bool:
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", None)
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    for owner in (cudnn, torch.backends):  # newer PyTorch: "none" defers to the parent setting
        parent = getattr(owner, "fp32_precision", "none")
        if parent in ("tf32", "ieee"):
            return parent == "tf32"
    return bool(cudnn.allow_tf32)


def layout_bits(*channel_strides: int) -> int:
    """One bit per operand: set where its channel stride is 1 (channels_last-like)."""
    return sum(1 << i for i, stride in enumerate(channel_strides) if stride == 1)


def _tap_major(channels_per_group: int) -> bool:
    return channels_per_group % 16 == 0 or channels_per_group >= 64


def launch_igemm(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, *, groups: int,
                 stride: Triple, padding: Triple, dilation: Triple, transposed: bool,
                 bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                 preact: torch.Tensor | None = None, epilogue: Epilogue = NO_EPILOGUE,
                 scales: Fp8Scales | None = None) -> None:
    """Run `igemm_kernel`: out = epilogue(conv(x, weight)), or the transposed convolution.

    `x`, `out` (and `preact`, `residual`) are 5-D (N, C, D, H, W) views; `weight` is the 6-D
    [group, out, in, kd, kh, kw] view from `weights.gemm_weight`. With `scales`, x and weight
    are FP8 and the product is de-scaled before the epilogue.
    """
    batch, in_channels = x.shape[:2]
    out_channels = out.shape[1]
    c_g, cout_g = in_channels // groups, out_channels // groups
    kernel = tuple(weight.shape[3:])
    tap_strides = tuple(weight.stride()[3:])
    taps, counts, residues, max_taps = tap_plan(transposed, kernel, stride, padding, dilation,
                                                tap_strides, x.device)
    out_size = tuple(out.shape[2:])
    if transposed:
        extents = tuple(math.ceil(o / s) for o, s in zip(out_size, stride, strict=True))
        in_mul, out_mul = (1, 1, 1), stride
    else:
        extents, in_mul, out_mul = out_size, stride, (1, 1, 1)
    n_phases = residues.numel() // 3
    rows = batch * math.prod(extents)
    res = residual if residual is not None else out
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cout_g, meta["BLOCK_N"]),
                         groups * n_phases)
    in_scale, w_scale = (scales.input, scales.weight) if scales is not None else (out, out)
    launch(igemm_fp8_kernel if scales is not None else igemm_kernel, grid,
        x, weight, bias if bias is not None else out, res, out,
        preact if preact is not None else out, taps, counts, residues, in_scale, w_scale,
        batch, c_g, cout_g, *x.shape[2:], *out_size, *extents, *in_mul, *out_mul,
        *kernel, *dilation, *padding, n_phases, max_taps, triton.next_power_of_2(rows),
        layout_bits(x.stride(1), out.stride(1), weight.stride(1), weight.stride(2)),
        *x.stride(), *weight.stride(),
        *out.stride(), *(res.stride() if residual is not None else (0,) * 5), epilogue.alpha,
        ACTIVATION=int(epilogue.activation), HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, STORE_PREACT=preact is not None,
        DESCALE=scales is not None, TAP_MAJOR=_tap_major(c_g), DIRECT=not transposed,
        INPUT_PRECISION=input_precision(x.dtype), UPCAST=upcast_operands(x.dtype),
        INT64=needs_int64(x, out, residual, preact), IS_FP64=x.dtype == torch.float64,
        GROUP_M=8,
    )
