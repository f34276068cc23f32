"""local_conv2d: unshared (locally connected) convolution, a different filter at every output pixel.

    y[n, o, p, q] = sum over (i, kh, kw) of weight[p, q, o, i, kh, kw]
                    * x[n, g*C_G + i, p*sH - padH + kh*dH, q*sW - padW + kw*dW] + bias

with g the group of output channel o and C_G = C_in / groups; weight (H_out, W_out, C_out,
C_in/groups, kH, kW), bias (C_out,) shared by every pixel or (C_out, H_out, W_out) per pixel.

Each output pixel is its own small GEMM, (batch x C_G*kH*kW) @ (C_G*kH*kW x C_out/groups), and
each weight element serves only the batch, so the op is bound by reading the weight (H_out *
W_out times a convolution's). A program owns one pixel, one group and a [batch, out channel]
tile, and reduces over (channel, tap) through the host-built tap table, as the implicit GEMM
does; channel-major, so a contiguous weight streams along the reduction. The input gradient is
the same kernel in its transposed mode: each input pixel gathers from the output pixels that
read it through the per-stride-phase tables of `igemm.tap_plan`, with the weight taken at those
output pixels. The weight gradient is a GEMM over the batch per pixel (`local_wgrad_kernel`),
written straight into the weight's layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import fused
from .autotune import autotuned, prune_tiles
from .checks import check_residual, check_same_device_dtype, check_tensor
from .elementwise import channel_sum
from .epilogue import (
    NO_EPILOGUE,
    ActivationArg,
    Epilogue,
    parse_activation,
)
from .fused import CONV_TENSORS, FusedOp, dense, like_layout
from .geometry import ConvGeometry, PaddingArg, conv_geometry
from .igemm import input_precision, tap_plan
from .launch import launch, upcast_operands
from .tensors import empty_like_layout, needs_int64
from .tl_helpers import accumulator, epilogue_store, mma, tile_ids, tile_ranges, widen

OP = "local_conv2d"
IntArg = int | tuple[int, int]

# The batch (the GEMM's M extent per pixel) enters as a power-of-two bucket (see autotune.py).
_KEY = ["BATCH_BUCKET", "RED_G", "COL_G", "IN_H", "IN_W", "OUT_H", "OUT_W", "IN_MUL_H", "IN_MUL_W",
        "MAX_TAPS", "sx_c", "sw_red", "TRANSPOSED", "ACTIVATION", "HAS_RESIDUAL"]
# Arguments only the autotuner reads: Triton need not compile a variant per value.
_KEY_ONLY = ["BATCH_BUCKET"]


def _prune(configs, args):
    return prune_tiles(configs, args["BATCH"], args["COL_G"], args["RED_G"] * args["MAX_TAPS"],
                       args["x_ptr"])


@triton.jit
def _pixel_tile(ROWS, COLS, OUT_W, INT64: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's [rows, columns] tile, reduction lanes, group and output pixel.

    Grid axis 0 runs the column blocks fastest, then the row blocks, then the pixels (so the
    programs of one pixel, which share its weight block, run together); axis 1 is the group.
    """
    num_pid_n = tl.cdiv(COLS, BLOCK_N)
    num_pid_m = tl.cdiv(ROWS, BLOCK_M)
    tiles = num_pid_m * num_pid_n
    pixel = tl.program_id(0) // tiles
    pid_m, pid_n = tile_ids(tl.program_id(0) % tiles, num_pid_m, num_pid_n, 1)
    rm, rn, rk = tile_ranges(pid_m, pid_n, BLOCK_M, BLOCK_N, BLOCK_K, INT64)
    pixel = widen(pixel, INT64)
    return rm, rn, rk, widen(tl.program_id(1), INT64), pixel // OUT_W, pixel % OUT_W


@autotuned(key=_KEY, prune=_prune)
@triton.jit(do_not_specialize=_KEY_ONLY)
def local_conv_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, z_ptr, taps_ptr, tap_count_ptr,
    BATCH, RED_G, COL_G, IN_H, IN_W, OUT_H, OUT_W,
    IN_MUL_H, IN_MUL_W, OUT_MUL_H, OUT_MUL_W, MAX_TAPS, BATCH_BUCKET,
    sx_n, sx_c, sx_h, sx_w,
    sw_ph, sw_pw, sw_col, sw_red,
    sb_c, sb_h, sb_w,
    sy_n, sy_c, sy_h, sy_w,
    sr_n, sr_c, sr_h, sr_w,
    alpha,
    TRANSPOSED: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_PREACT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, INT64: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Rows: batch; columns: COL_G output channels of the group; reduction: (RED_G source
    # channels, taps). Forward: source x, weight at this pixel, reduction over input channels.
    # TRANSPOSED (dL/dx): source dL/dz, weight at the source pixel, reduction over output
    # channels, the phase of this pixel modulo the stride choosing the taps.
    rm, rn, rk, group, oh, ow = _pixel_tile(BATCH, COL_G, OUT_W, INT64, BLOCK_M, BLOCK_N,
                                            BLOCK_K)
    m_ok = rm < BATCH
    n_ok = rn < COL_G
    phase = (oh % OUT_MUL_H) * OUT_MUL_W + ow % OUT_MUL_W
    base_h = (oh // OUT_MUL_H) * IN_MUL_H
    base_w = (ow // OUT_MUL_W) * IN_MUL_W
    n_taps = tl.load(tap_count_ptr + phase)
    tap_table = taps_ptr + phase * MAX_TAPS * 4
    if TRANSPOSED:
        w_cols = rn * sw_col
    else:
        w_cols = (group * COL_G + rn) * sw_col
        w_pixel = oh * sw_ph + ow * sw_pw

    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    k_total = n_taps * RED_G
    for k0 in range(0, k_total, BLOCK_K):
        k = k0 + rk
        k_ok = k < k_total
        c = k // n_taps
        tap = k - c * n_taps
        entry = tap_table + tap * 4
        i_h = base_h + tl.load(entry + 1, mask=k_ok, other=0)
        i_w = base_w + tl.load(entry + 2, mask=k_ok, other=0)
        w_tap = tl.load(entry + 3, mask=k_ok, other=0)
        ok = k_ok & (i_h >= 0) & (i_h < IN_H) & (i_w >= 0) & (i_w < IN_W)
        a = tl.load(x_ptr + (rm * sx_n)[:, None]
                    + ((group * RED_G + c) * sx_c + i_h * sx_h + i_w * sx_w)[None, :],
                    mask=m_ok[:, None] & ok[None, :], other=0.0)
        if TRANSPOSED:
            w_rows = i_h * sw_ph + i_w * sw_pw + (group * RED_G + c) * sw_red + w_tap
        else:
            w_rows = w_pixel + c * sw_red + w_tap
        b = tl.load(w_ptr + w_rows[:, None] + w_cols[None, :], mask=ok[:, None] & n_ok[None, :],
                    other=0.0)
        acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)

    channels = group * COL_G + rn
    if HAS_BIAS:  # per pixel, or shared through zero pixel strides
        acc += tl.load(bias_ptr + channels * sb_c + oh * sb_h + ow * sb_w, mask=n_ok,
                       other=0.0).to(acc.dtype)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    y_offsets = (rm * sy_n)[:, None] + (channels * sy_c + oh * sy_h + ow * sy_w)[None, :]
    res_offsets = (rm * sr_n)[:, None] + (channels * sr_c + oh * sr_h + ow * sr_w)[None, :]
    epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, channels, n_ok, res_ptr, res_offsets,
                   z_ptr, alpha, ACTIVATION, False, HAS_RESIDUAL, STORE_PREACT)


def _prune_wgrad(configs, args):
    return prune_tiles(configs, args["COUT_G"], args["N_TAPS"] * args["C_G"], args["BATCH"],
                       args["x_ptr"])


@autotuned(key=["BATCH", "C_G", "COUT_G", "IN_H", "IN_W", "OUT_H", "OUT_W", "STRIDE_H",
                "STRIDE_W", "N_TAPS", "sx_c", "sdy_c"], prune=_prune_wgrad)
@triton.jit
def local_wgrad_kernel(
    dy_ptr, x_ptr, dw_ptr, taps_ptr,
    BATCH, C_G, COUT_G, IN_H, IN_W, OUT_H, OUT_W, STRIDE_H, STRIDE_W, N_TAPS,
    sdy_n, sdy_c, sdy_h, sdy_w,
    sx_n, sx_c, sx_h, sx_w,
    sw_ph, sw_pw, sw_out, sw_in,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dW[p, q, g*COUT_G + o, i, tap] = sum over n of dy[n, g*COUT_G + o, p, q]
    #                                              * x[n, g*C_G + i, (p, q)*S + offset(tap)]
    # Rows: output channels o; columns: (i, tap), as dW is laid out; reduction: the batch.
    rm, rn, rk, group, oh, ow = _pixel_tile(COUT_G, N_TAPS * C_G, OUT_W, INT64, BLOCK_M,
                                            BLOCK_N, BLOCK_K)
    m_ok = rm < COUT_G
    n_ok = rn < N_TAPS * C_G
    c = rn // N_TAPS
    tap = rn - c * N_TAPS
    i_h = oh * STRIDE_H + tl.load(taps_ptr + tap * 4 + 1, mask=n_ok, other=0)
    i_w = ow * STRIDE_W + tl.load(taps_ptr + tap * 4 + 2, mask=n_ok, other=0)
    w_tap = tl.load(taps_ptr + tap * 4 + 3, mask=n_ok, other=0)
    x_ok = n_ok & (i_h >= 0) & (i_h < IN_H) & (i_w >= 0) & (i_w < IN_W)
    out_channels = group * COUT_G + rm
    dy_rows = out_channels * sdy_c + oh * sdy_h + ow * sdy_w
    x_cols = (group * C_G + c) * sx_c + i_h * sx_h + i_w * sx_w

    acc = accumulator(BLOCK_M, BLOCK_N, IS_FP64)
    for k0 in range(0, BATCH, BLOCK_K):
        nb = k0 + rk
        b_ok = nb < BATCH
        a = tl.load(dy_ptr + dy_rows[:, None] + (nb * sdy_n)[None, :],
                    mask=m_ok[:, None] & b_ok[None, :], other=0.0)
        b = tl.load(x_ptr + (nb * sx_n)[:, None] + x_cols[None, :],
                    mask=b_ok[:, None] & x_ok[None, :], other=0.0)
        acc = mma(acc, a, b, INPUT_PRECISION, UPCAST)
    offsets = ((oh * sw_ph + ow * sw_pw + out_channels * sw_out)[:, None]
               + (c * sw_in + w_tap)[None, :])
    tl.store(dw_ptr + offsets, acc.to(dw_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _plan(geometry: ConvGeometry, transposed: bool, weight: torch.Tensor):
    return tap_plan(transposed, (1, *geometry.kernel_size), (1, *geometry.stride),
                    (0, *geometry.padding), (1, *geometry.dilation),
                    (0, *weight.stride()[4:]), weight.device)


def _launch(source: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
            geometry: ConvGeometry, *, transposed: bool, bias: torch.Tensor | None = None,
            residual: torch.Tensor | None = None, preact: torch.Tensor | None = None,
            epilogue: Epilogue = NO_EPILOGUE) -> None:
    """out = epilogue(local_conv(source)) or, transposed, dL/dx = local_conv^T(source)."""
    taps, counts, _, max_taps = _plan(geometry, transposed, weight)
    groups = geometry.groups
    red_g, col_g = source.shape[1] // groups, out.shape[1] // groups
    stride = geometry.stride
    in_mul, out_mul = ((1, 1), stride) if transposed else (stride, (1, 1))
    sw_col, sw_red = weight.stride(2), weight.stride(3)
    if transposed:
        sw_col, sw_red = sw_red, sw_col
    if bias is None:
        bias_strides = (0, 0, 0)
    elif bias.dim() == 1:
        bias_strides = (bias.stride(0), 0, 0)
    else:
        bias_strides = bias.stride()
    res = residual if residual is not None else out
    batch, pixels = out.shape[0], out.shape[2] * out.shape[3]
    grid = lambda meta: (pixels * triton.cdiv(batch, meta["BLOCK_M"])
                         * triton.cdiv(col_g, meta["BLOCK_N"]), groups)
    launch(local_conv_kernel, grid,
        source, weight, bias if bias is not None else out, res, out,
        preact if preact is not None else out, taps, counts,
        batch, red_g, col_g, *source.shape[2:], *out.shape[2:], *in_mul, *out_mul, max_taps,
        triton.next_power_of_2(batch),
        *source.stride(), weight.stride(0), weight.stride(1), sw_col, sw_red, *bias_strides,
        *out.stride(), *(res.stride() if residual is not None else (0,) * 4), epilogue.alpha,
        TRANSPOSED=transposed, ACTIVATION=int(epilogue.activation), HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, STORE_PREACT=preact is not None,
        INPUT_PRECISION=input_precision(source.dtype),
        UPCAST=upcast_operands(source.dtype),
        INT64=needs_int64(source, weight, out, residual, preact),
        IS_FP64=source.dtype == torch.float64,
    )


def local_weight_grad(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      geometry: ConvGeometry) -> torch.Tensor:
    """dL/dW in the weight's shape and dtype (contiguous), given dy = dL/dz."""
    grad = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
    taps, _, _, n_taps = _plan(geometry, False, grad)
    groups = geometry.groups
    c_g, cout_g = geometry.in_per_group, geometry.out_per_group
    pixels = dy.shape[2] * dy.shape[3]
    grid = lambda meta: (pixels * triton.cdiv(cout_g, meta["BLOCK_M"])
                         * triton.cdiv(n_taps * c_g, meta["BLOCK_N"]), groups)
    launch(local_wgrad_kernel, grid,
        dy, x, grad, taps, x.shape[0], c_g, cout_g, *x.shape[2:], *dy.shape[2:],
        *geometry.stride, n_taps, *dy.stride(), *x.stride(), *grad.stride()[:4],
        INPUT_PRECISION=input_precision(x.dtype), UPCAST=upcast_operands(x.dtype),
        INT64=needs_int64(dy, x, grad), IS_FP64=x.dtype == torch.float64,
    )
    return grad


def _bias_grad(dz: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if bias.dim() == 1:
        return channel_sum(dz, bias.dtype)
    return channel_sum(dz.reshape(dz.shape[0], -1), bias.dtype).reshape(bias.shape)


def _geometry(x, weight, stride, padding, dilation, groups, pad_same) -> ConvGeometry:
    return conv_geometry(tuple(x.shape), tuple(weight.shape[2:]), stride,
                         "same" if pad_same else padding, dilation, groups, 2)


def _output(x, weight, bias, residual, *options) -> torch.Tensor:
    return empty_like_layout(_geometry(x, weight, *options).output_shape, x)


def _launch_forward(out, preact, x, weight, bias, residual, *rest) -> None:
    *options, epilogue, _ = rest
    _launch(x, weight, out, _geometry(x, weight, *options), transposed=False, bias=bias,
            residual=residual, preact=preact, epilogue=epilogue)


def _grads(dz, needs, x, weight, bias, residual, *options):
    """dL/d(input, weight, bias) from dz = dL/d(pre-activation)."""
    geometry = _geometry(x, weight, *options)
    need_x, need_w, need_b, _ = needs
    dx = None
    if need_x:
        dx = empty_like_layout(tuple(x.shape), x)
        _launch(dz, weight, dx, geometry, transposed=True)
    dw = local_weight_grad(dz, x, weight, geometry) if need_w else None
    db = _bias_grad(dz, bias) if need_b else None
    return [dx, dw, db, None]


def _torch_ops(x, weight, bias, residual, *options) -> torch.Tensor:
    """The pre-activation with PyTorch's ops (the torch backend): an einsum per kernel tap."""
    geometry = _geometry(x, weight, *options)
    (pad_h, pad_w), (s_h, s_w), (d_h, d_w) = geometry.padding, geometry.stride, geometry.dilation
    (k_h, k_w), (h_out, w_out) = geometry.kernel_size, geometry.output_size
    span_h, span_w = s_h * (h_out - 1) + 1, s_w * (w_out - 1) + 1
    after_h = max(0, (k_h - 1) * d_h + span_h - pad_h - x.shape[2])
    after_w = max(0, (k_w - 1) * d_w + span_w - pad_w - x.shape[3])
    padded = F.pad(x, (pad_w, after_w, pad_h, after_h))
    groups, batch = geometry.groups, geometry.batch
    w = weight.reshape(h_out, w_out, groups, geometry.out_per_group, geometry.in_per_group,
                       k_h, k_w)
    out = x.new_zeros(batch, groups, geometry.out_per_group, h_out, w_out)
    for kh in range(k_h):
        for kw in range(k_w):
            window = padded[:, :, kh * d_h:kh * d_h + span_h:s_h, kw * d_w:kw * d_w + span_w:s_w]
            window = window.reshape(batch, groups, geometry.in_per_group, h_out, w_out)
            out = out + torch.einsum("ngihw,hwgoi->ngohw", window, w[..., kh, kw])
    out = _add_bias(out.reshape(geometry.output_shape), bias)
    return out if residual is None else out + residual


OPERATOR, _ = fused.register(FusedOp(
    OP, CONV_TENSORS, ("int[] stride", "int[] padding", "int[] dilation", "int groups",
                       "bool pad_same"),
    _output, _launch_forward, _torch_ops, _grads, (like_layout, dense, dense, like_layout)))


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return out
    return out + (bias if bias.dim() == 3 else bias[:, None, None])


def _check_weight_and_bias(weight: torch.Tensor, bias: torch.Tensor | None,
                           geometry: ConvGeometry) -> None:
    if tuple(weight.shape[:2]) != geometry.output_size:
        raise ValueError(
            f"{OP}: weight.shape[:2] must be the output size (H_out, W_out) = "
            f"{geometry.output_size} of this input, stride, padding and dilation, got "
            f"{tuple(weight.shape[:2])} (weight shape {tuple(weight.shape)})")
    if bias is None:
        return
    check_tensor(OP, "bias", bias)
    per_pixel = (geometry.out_channels, *geometry.output_size)
    if tuple(bias.shape) not in ((geometry.out_channels,), per_pixel):
        raise ValueError(f"{OP}: bias must have shape ({geometry.out_channels},) or "
                         f"{per_pixel} (C_out, H_out, W_out), got {tuple(bias.shape)}")


def local_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: IntArg = 1, padding: PaddingArg = 0, dilation: IntArg = 1,
                 groups: int = 1, *, activation: ActivationArg = None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """Locally connected conv2d: activation(unshared conv + bias + residual).

    input (N, C_in, H, W) or (C_in, H, W); weight (H_out, W_out, C_out, C_in/groups, kH, kW),
    whose first two dims must equal the output size that conv2d's formula gives; bias (C_out,)
    or (C_out, H_out, W_out). stride, padding (ints, tuples, "same", "valid"), dilation and
    groups as in conv2d. Output in the input's memory format; differentiable.
    """
    epilogue = parse_activation(activation)
    check_tensor(OP, "input", input, (3, 4))
    check_tensor(OP, "weight", weight, (6,))
    check_same_device_dtype(OP, input, weight=weight, bias=bias, residual=residual)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    geometry = _geometry(x, weight, stride, padding, dilation, groups, False)
    _check_weight_and_bias(weight, bias, geometry)
    out_shape = geometry.output_shape
    check_residual(OP, residual, out_shape[1:] if unbatched else out_shape)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual

    out = fused.call(OPERATOR, (x, weight, bias, res),
                     (list(geometry.stride), list(geometry.padding), list(geometry.dilation),
                      groups, padding == "same"), epilogue)
    return out.squeeze(0) if unbatched else out
