"""Triton device functions shared by every kernel: the epilogue, activations, the MMA step and
FP8 (e4m3) rounding."""

from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import Activation

_RELU = tl.constexpr(Activation.RELU.value)
_RELU6 = tl.constexpr(Activation.RELU6.value)
_SILU = tl.constexpr(Activation.SILU.value)
_GELU = tl.constexpr(Activation.GELU.value)
_LEAKY_RELU = tl.constexpr(Activation.LEAKY_RELU.value)
_SIGMOID = tl.constexpr(Activation.SIGMOID.value)
_HARDSWISH = tl.constexpr(Activation.HARDSWISH.value)
_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
E4M3_MAX = tl.constexpr(448.0)  # largest finite float8_e4m3fn
_E4M3_MIN_NORMAL = tl.constexpr(2.0**-6)
_E4M3_ULP_SHIFT = tl.constexpr(2.0**20)  # 2**(23 - 3): fp32 mantissa bits past e4m3's three


@triton.jit
def activate(z, ACTIVATION: tl.constexpr, alpha):
    """The activation applied to an accumulator tile (fp32 or fp64)."""
    if ACTIVATION == _RELU:
        z = tl.where(z > 0, z, 0.0)
    elif ACTIVATION == _RELU6:
        z = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACTIVATION == _SILU:
        z = z / (1.0 + tl.exp(-z))
    elif ACTIVATION == _GELU:
        z = 0.5 * z * (1.0 + tl.erf(z * _INV_SQRT2))
    elif ACTIVATION == _LEAKY_RELU:
        z = tl.where(z > 0, z, z * alpha)
    elif ACTIVATION == _SIGMOID:
        z = 1.0 / (1.0 + tl.exp(-z))
    elif ACTIVATION == _HARDSWISH:
        z = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    return z


@triton.jit
def activation_grad(g, v, ACTIVATION: tl.constexpr, alpha):
    """d(activation)/dz times the incoming gradient `g`.

    `v` is the activation's output for relu, relu6, sigmoid and leaky_relu with a slope >= 0,
    and its input (pre-activation) otherwise: see Epilogue.grad_needs_preactivation.
    Boundary cases follow PyTorch's backward formulas.
    """
    if ACTIVATION == _RELU:
        g = tl.where(v > 0, g, 0.0)
    elif ACTIVATION == _RELU6:
        g = tl.where((v > 0) & (v < 6.0), g, 0.0)
    elif ACTIVATION == _SILU:
        s = 1.0 / (1.0 + tl.exp(-v))
        g = g * s * (1.0 + v * (1.0 - s))
    elif ACTIVATION == _GELU:
        cdf = 0.5 * (1.0 + tl.erf(v * _INV_SQRT2))
        g = g * (cdf + v * _INV_SQRT_2PI * tl.exp(-0.5 * v * v))
    elif ACTIVATION == _LEAKY_RELU:
        g = tl.where(v > 0, g, g * alpha)
    elif ACTIVATION == _SIGMOID:
        g = g * v * (1.0 - v)
    elif ACTIVATION == _HARDSWISH:
        g = tl.where(v < -3.0, 0.0, tl.where(v <= 3.0, g * (v / 3.0 + 0.5), g))
    return g


@triton.jit
def tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid`: column tiles fastest within bands of GROUP_M row tiles.

    Neighbouring programs then share A row blocks (GROUP_M = 1: every column tile of one row
    tile in turn) and, with GROUP_M > 1, B column blocks too, so both stay in L2.
    """
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    band_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % width) % band_rows, (pid % width) // band_rows


@triton.jit
def tile_ranges(pid_m, pid_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, INT64: tl.constexpr):
    """Row, column and reduction lanes of tile (pid_m, pid_n).

    With INT64 they are int64, so every offset computed from them is too (tensors past 2**31
    elements).
    """
    return (lanes(pid_m, BLOCK_M, INT64), lanes(pid_n, BLOCK_N, INT64),
            widen(tl.arange(0, BLOCK_K), INT64))


@triton.jit
def lanes(block, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """block * BLOCK + arange(BLOCK): one tile's indices along one axis (int64 when INT64)."""
    return widen(block, INT64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def widen(index, INT64: tl.constexpr):
    """`index` as int64 when INT64 (a program id or an index tensor), unchanged otherwise."""
    if INT64:
        index = index.to(tl.int64)
    return index


@triton.jit
def accumulator(ROWS: tl.constexpr, COLS: tl.constexpr, IS_FP64: tl.constexpr):
    """A zero [ROWS, COLS] accumulator: fp64 for float64 inputs, fp32 for every other dtype."""
    if IS_FP64:
        return tl.zeros((ROWS, COLS), dtype=tl.float64)
    return tl.zeros((ROWS, COLS), dtype=tl.float32)


@triton.jit
def unflatten_position(index, OUT_D, OUT_H, OUT_W):
    """(n, d, h, w) of a flat index over (batch, D, H, W), row-major as the output's rows."""
    w = index % OUT_W
    t = index // OUT_W
    h = t % OUT_H
    t = t // OUT_H
    return t // OUT_D, t % OUT_D, h, w


@triton.jit
def mma(acc, a, b, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b with the accumulator's precision.

    UPCAST converts the operands to the accumulator's dtype first: Triton's interpreter
    multiplies bf16 tiles wrongly, and the conversion is exact, so results match the GPU's.
    FP8 tiles: Hopper's tensor cores sum FP8 products at reduced precision, so each step's
    partial sum (one BLOCK_K) is added to the FP32 accumulator in FP32 (Triton's default would
    keep the whole reduction in the tensor cores' accumulator).
    """
    if UPCAST:
        a = a.to(acc.dtype)
        b = b.to(acc.dtype)
    if a.dtype.is_fp8():
        return tl.dot(a, b, acc, out_dtype=acc.dtype, max_num_imprecise_acc=a.shape[1])
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def round_to_e4m3(x):
    """fp32 `x` rounded to the nearest float8_e4m3fn value (ties to even), saturating at
    +-448, still as fp32; the cast to tl.float8e4nv is then exact.

    Adding then subtracting 2**20 times x's power of two (2**-6 at least: e4m3's subnormal
    step is 2**-9) leaves exactly e4m3's mantissa bits, rounded by fp32's own round-to-nearest-
    even addition. Written out because Triton's interpreter casts fp32 to fp8 by rounding half
    up, not to even: the same arithmetic runs on the GPU and in the CPU tests.
    """
    bits = x.to(tl.uint32, bitcast=True)
    magnitude = tl.minimum((bits & 0x7FFFFFFF).to(tl.float32, bitcast=True), E4M3_MAX,
                           propagate_nan=tl.PropagateNan.ALL)
    power = (magnitude.to(tl.uint32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    shift = tl.maximum(power, _E4M3_MIN_NORMAL) * _E4M3_ULP_SHIFT
    rounded = (magnitude + shift) - shift
    return (rounded.to(tl.uint32, bitcast=True) | (bits & 0x80000000)).to(tl.float32,
                                                                          bitcast=True)


@triton.jit
def quantize_e4m3(x, scale):
    """x / scale rounded to float8_e4m3fn (nearest even, saturating): FP8 quantization."""
    return round_to_e4m3(tl.div_rn(x.to(tl.float32), scale)).to(tl.float8e4nv)


@triton.jit
def epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, channels, channel_mask, res_ptr,
                   res_offsets, z_ptr, alpha, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, STORE_PREACT: tl.constexpr,
                   in_scale_ptr=None, w_scale_ptr=None, DESCALE: tl.constexpr = False):
    """De-scale (FP8), add bias (per column) and residual, store the pre-activation if asked,
    activate, store.

    `acc` is a [rows, channels] tile; `y_offsets`/`res_offsets` address it in the output and
    the residual, which may have different strides. With DESCALE the tile is a product of FP8
    operands, multiplied back by the input's scale (a scalar) and the weight's (per column)
    before anything else.
    """
    if DESCALE:
        w_scale = tl.load(w_scale_ptr + channels, mask=channel_mask, other=0.0)
        acc = acc * (tl.load(in_scale_ptr) * w_scale)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0)
        acc = acc + bias.to(acc.dtype)[None, :]
    if HAS_RESIDUAL:
        acc = acc + tl.load(res_ptr + res_offsets, mask=mask, other=0.0).to(acc.dtype)
    if STORE_PREACT:
        tl.store(z_ptr + y_offsets, acc.to(z_ptr.dtype.element_ty), mask=mask)
    out = activate(acc, ACTIVATION, alpha)
    tl.store(y_ptr + y_offsets, out.to(y_ptr.dtype.element_ty), mask=mask)
