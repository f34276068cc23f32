"""FP8 (float8_e4m3fn) quantization: per-output-channel weight scales, per-tensor activation scales.

    scale = amax / 448        (448: e4m3's largest finite value; amax 0 gives scale 1)
    q     = e4m3(x / scale)   (round to nearest, ties to even; clamped to +-448 first)
    x    ~= q * scale

The clamp makes the cast saturate whatever the PyTorch version does on overflow (2.14 saturates
itself, older versions gave NaN), so a value past the calibrated range becomes +-448 * scale.
Weights are quantized once (offline); activations per call, by one Triton pass over the tensor
(`quantize_e4m3`, the same rounding the fused depthwise-separable kernel applies on chip), with
a scale given (calibrated, static) or computed from the tensor's own amax (dynamic).

`quantize_fp8`'s pass is the operator `torch.ops.foveal.quantize_fp8` (library.py); its scale is
computed with PyTorch ops, which compilers see. Scales are float32 tensors on the operands'
device. Their values (finite, > 0) are checked once per tensor and version, on eager calls: a
check reads them on the host, which on a GPU would stall every call. Scales made here are known
good and never read back.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from . import library
from .backend import backend_for
from .launch import is_planned, launch
from .tensors import memory_format_of, needs_int64
from .tl_helpers import quantize_e4m3

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
_BLOCK = 1024

ScaleArg = float | torch.Tensor


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448 in float32; 1 where amax is 0 (an all-zero tensor quantizes to zeros)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def round_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale as float8_e4m3fn with PyTorch ops: saturating, ties to even (its cast's rule)."""
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def quantize_weight_fp8(weight: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight_fp8, scale): one float32 scale per slice along `axis` (a convolution's output
    channels: axis 0), amax / 448 of that slice, so each channel uses e4m3's whole range.

    The FP8 weight has the weight's shape in channels-last order (input channels contiguous:
    the layout FP8 tensor cores read without a transpose); dequantized it is
    `weight_fp8.float() * scale` broadcast along `axis`.
    """
    if (not isinstance(weight, torch.Tensor) or not weight.is_floating_point()
            or weight.dtype == FP8):
        raise TypeError("quantize_weight_fp8: weight must be a float16, bfloat16, float32 or "
                        f"float64 tensor, got {_describe(weight)}")
    if weight.dim() == 0:
        raise ValueError("quantize_weight_fp8: weight must have at least one dimension")
    if not -weight.dim() <= axis < weight.dim():
        raise ValueError(f"quantize_weight_fp8: axis {axis} is out of range for a "
                         f"{weight.dim()}-D weight")
    axis %= weight.dim()
    w = weight.detach().float()
    if not is_planned(w.device) and not bool(torch.isfinite(w).all()):
        raise ValueError("quantize_weight_fp8: weight holds NaN or inf values")
    others = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=others) if others else w.abs()
    scale = scale_from_amax(amax)
    shape = [1] * w.dim()
    shape[axis] = -1
    quantized = round_fp8(w, scale.reshape(shape))
    if quantized.dim() in (4, 5):
        fmt = torch.channels_last if quantized.dim() == 4 else torch.channels_last_3d
        quantized = quantized.contiguous(memory_format=fmt)
    return quantized, _trusted(scale)


def quantize_fp8(x: torch.Tensor, scale: ScaleArg | None = None) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """(x_fp8, scale) with one per-tensor scale: `scale` if given (a calibrated, static scale),
    else amax(|x|) / 448 computed on the device (dynamic; no host synchronisation).

    x_fp8 keeps x's shape and memory format; scale is a 0-dim float32 tensor on x's device.
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16,
                                                          torch.float32):
        raise TypeError("quantize_fp8: x must be a float16, bfloat16 or float32 tensor, got "
                        f"{_describe(x)}")
    if scale is None:
        amax = torch.linalg.vector_norm(x.detach(), ord=math.inf) if x.numel() else x.new_zeros(())
        scale = _trusted(scale_from_amax(amax))
    else:
        scale = as_scale("quantize_fp8", "scale", scale, x.device)
    return QUANTIZE_OPERATOR(x.detach(), scale), scale


def _quantized_output(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fake implementation: float8_e4m3fn in x's shape and memory format."""
    return torch.empty_like(x, dtype=FP8, memory_format=memory_format_of(x))


def _quantize_real(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = _quantized_output(x, scale)
    if backend_for(x.device) == "torch" or x.numel() == 0:
        return out.copy_(round_fp8(x, scale))
    x = x.contiguous(memory_format=memory_format_of(x))  # dense: flat order pairs x and out
    launch(_quantize_kernel, (triton.cdiv(x.numel(), _BLOCK),), x, out, scale, x.numel(),
           INT64=needs_int64(x), BLOCK=_BLOCK)
    return out


QUANTIZE_OPERATOR = library.define_op("quantize_fp8", "(Tensor x, Tensor scale) -> Tensor",
                                      _quantize_real, _quantized_output)


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, scale_ptr, numel, INT64: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    if INT64:
        block = block.to(tl.int64)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, quantize_e4m3(x, tl.load(scale_ptr)), mask=mask)


# -- scales: shape, dtype and value checks -----------------------------------------------------
_verified: dict[int, tuple[weakref.ref, int]] = {}  # id -> (tensor, version whose values passed)
_lock = threading.RLock()  # reentrant: a weak reference's callback may run inside


def _traced(t: torch.Tensor) -> bool:
    """Under torch.compile or torch.export: the values are not known (fake tensors)."""
    return torch.compiler.is_compiling() or is_fake(t)


def _trusted(scale: torch.Tensor) -> torch.Tensor:
    """Record a scale made here (finite and > 0 by construction) as checked."""
    if _traced(scale):
        return scale
    key = id(scale)
    with _lock:
        _verified[key] = (weakref.ref(scale, functools.partial(_forget, key)), scale._version)
    return scale


def _forget(key: int, _dead: weakref.ref | None = None) -> None:
    with _lock:
        _verified.pop(key, None)


def _check_values(op: str, name: str, scale: torch.Tensor) -> None:
    """Finite and > 0, read on the host once per tensor and version (never for meta tensors,
    nor while tracing: checked when the traced code runs eagerly)."""
    if is_planned(scale.device) or scale.device.type == "meta" or _traced(scale):
        return
    with _lock:
        source, version = _verified.get(id(scale), (None, -1))
        if source is not None and source() is scale and version == scale._version:
            return
    values = scale.detach().double()
    if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
        bad = values[~(torch.isfinite(values) & (values > 0))].flatten()[0].item()
        raise ValueError(f"{op}: {name} must be finite and > 0, got a value {bad}")
    _trusted(scale)


def as_scale(op: str, name: str, scale: ScaleArg, device: torch.device) -> torch.Tensor:
    """A per-tensor scale as a one-element float32 tensor on `device`, checked."""
    if isinstance(scale, bool) or not isinstance(scale, int | float | torch.Tensor):
        raise TypeError(f"{op}: {name} must be a float or a one-element float32 tensor, got "
                        f"{type(scale).__name__}")
    if not isinstance(scale, torch.Tensor):
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"{op}: {name} must be finite and > 0, got {scale}")
        return _trusted(torch.full((), float(scale), device=device, dtype=torch.float32))
    if scale.numel() != 1:
        raise ValueError(f"{op}: {name} must be a scalar (one element: a per-tensor scale), "
                         f"got shape {tuple(scale.shape)}")
    check_scale_tensor(op, name, scale, device)
    return scale


def check_scale_tensor(op: str, name: str, scale: torch.Tensor, device: torch.device) -> None:
    """float32, on `device`, finite and > 0."""
    if scale.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32, got {scale.dtype}")
    if scale.device != device:
        raise ValueError(f"{op}: {name} is on {scale.device} but the operands are on {device}")
    _check_values(op, name, scale)


def _describe(t: object) -> str:
    return f"a {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
