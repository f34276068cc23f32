"""FP8 inference convolutions: conv2d_fp8, conv3d_fp8 and depthwise_separable_conv2d_fp8.

The operands are float8_e4m3fn with float32 scales (`quantize.quantize_fp8` for activations,
per tensor; `quantize.quantize_weight_fp8` for weights, per output channel). The kernels are
foveal's own, run over FP8 tiles: the implicit GEMM (dense and grouped) and the 1x1 GEMM, and
for the depthwise-separable block the fused kernel whose on-chip intermediate is quantized to
FP8 before its 1x1. Products accumulate in FP32; the shared epilogue then de-scales,

    y = activation(acc * input_scale * weight_scale[c] + bias + residual),

and rounds once to `out_dtype` (float16, bfloat16 or float32). Inference only: no autograd.

Each op is an operator in the `foveal` namespace (`torch.ops.foveal.conv2d_fp8`, ...; see
library.py), so FP8 models compile and export like the others. The Python functions validate
their arguments and call them; the operators pick the backend when they run.

FP8 tensor cores start at compute capability 8.9 (Ada, Hopper); older GPUs are refused. On a
CPU, Triton's interpreter runs the same kernels (tests), and the "torch" backend computes the
same arithmetic with PyTorch's FP32 convolution of the FP8 values (products of two e4m3 values
are exact in FP32) for serving-free accuracy studies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import library
from .backend import INTERPRETED, BackendUnavailable, backend_for
from .checks import check_bias, check_residual, check_same_device_dtype
from .conv import convolution_kind, is_depthwise, is_pointwise, window
from .depthwise_separable import block_geometry, block_output, block_output_shape
from .epilogue import (
    ActivationArg,
    Epilogue,
    Fp8Scales,
    activate,
    apply_epilogue,
    epilogue_from,
    parse_activation,
)
from .geometry import ConvGeometry, PaddingArg
from .igemm import launch_igemm
from .launch import planning_target
from .pointwise import DepthwiseStage, launch_pointwise
from .quantize import FP8, ScaleArg, as_scale, check_scale_tensor, round_fp8
from .tensors import as_5d, empty_like_layout, pad_front, unit_channel_stride
from .weights import gemm_weight

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_MIN_CAPABILITY = 89  # sm_89 (Ada) and newer have FP8 tensor cores
IntArg = int | tuple[int, ...]
_TORCH_CONVS = {2: F.conv2d, 3: F.conv3d}


def fp8_unavailable(device: torch.device) -> str | None:
    """Why FP8 kernels cannot run for `device` (None: they can, or the GPU is not known).

    Meta tensors inside `launch.planning` stand for the planned GPU.
    """
    target = planning_target()
    if target is not None and device.type == "meta":
        capability, name = target.capability, target.name
    elif device.type == "cuda" and not INTERPRETED:
        major, minor = torch.cuda.get_device_capability(device)
        capability, name = 10 * major + minor, torch.cuda.get_device_name(device)
    else:
        return None
    if capability >= FP8_MIN_CAPABILITY:
        return None
    return (f"FP8 convolutions need FP8 tensor cores, compute capability 8.9 or newer (Ada, "
            f"Hopper); {name} has {capability // 10}.{capability % 10}")


def _backend(op: str, device: torch.device) -> str:
    backend = backend_for(device)
    reason = fp8_unavailable(device) if backend == "triton" else None
    if reason is not None:
        raise BackendUnavailable(f"{op}: {reason}; use float16 or bfloat16 convolutions there")
    return backend


def _check_fp8(op: str, name: str, t: object, dims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != FP8:
        raise TypeError(f"{op}: {name} must be float8_e4m3fn (see quantize_fp8 and "
                        f"quantize_weight_fp8), got {t.dtype}")
    if t.dim() not in dims:
        wanted = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{op}: {name} must be {wanted}, got shape {tuple(t.shape)}")


def _check_out_dtype(op: str, out_dtype: object) -> None:
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"{op}: out_dtype must be a torch.dtype, got {type(out_dtype).__name__}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"{op}: out_dtype must be torch.float16, torch.bfloat16 or "
                         f"torch.float32, got {out_dtype}")


def _check_device(op: str, device: torch.device, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but input is on {device}; move "
                             "them to one device")


def _check_weight_scale(op: str, name: str, scale: object, channels: int,
                        device: torch.device) -> None:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a float32 tensor of shape ({channels},), got "
                        f"{type(scale).__name__}")
    if tuple(scale.shape) != (channels,):
        raise ValueError(f"{op}: {name} must have shape ({channels},) (one scale per output "
                         f"channel), got {tuple(scale.shape)}")
    check_scale_tensor(op, name, scale, device)


def _refuse_gradients(op: str, **tensors: torch.Tensor | None) -> None:
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(f"{op} is inference only (no backward), but {name} requires a "
                               "gradient: call it under torch.no_grad() or torch.inference_mode()"
                               f", or pass {name}.detach()")


def _torch_fp8(conv: Callable[..., torch.Tensor], x: torch.Tensor, input_scale: torch.Tensor,
               weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None, epilogue: Epilogue, conv_args: tuple,
               out_dtype: torch.dtype) -> torch.Tensor:
    """The kernels' arithmetic with PyTorch ops: an FP32 convolution of the FP8 values (exact
    products, FP32 sums), de-scaled, then the epilogue, rounded once to `out_dtype`."""
    y = conv(x.float(), weight.float(), None, *conv_args)
    y = y * (input_scale * weight_scale).reshape(1, -1, *([1] * (y.dim() - 2)))
    return apply_epilogue(y, bias, residual, epilogue).to(out_dtype)


def _zero_product(out: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                  epilogue: Epilogue) -> torch.Tensor:
    """An empty reduction (no input channels) or output: the epilogue of zeros."""
    return out.copy_(apply_epilogue(out.zero_(), bias, residual, epilogue))


def _conv_fp8_output(input, input_scale, weight, weight_scale, bias, residual, stride, padding,
                     dilation, groups, pad_same, activation, negative_slope,
                     out_dtype) -> torch.Tensor:
    """The fake implementation: an empty output in the input's memory format."""
    geometry = convolution_kind(input.dim() - 2).geometry(
        tuple(input.shape), tuple(weight.shape), stride, padding, dilation, groups, pad_same)
    return empty_like_layout(geometry.output_shape, input, out_dtype)


def _conv_fp8_real(input, input_scale, weight, weight_scale, bias, residual, stride, padding,
                   dilation, groups, pad_same, activation, negative_slope,
                   out_dtype) -> torch.Tensor:
    kind = convolution_kind(input.dim() - 2)
    geometry = kind.geometry(tuple(input.shape), tuple(weight.shape), stride, padding, dilation,
                             groups, pad_same)
    out = empty_like_layout(geometry.output_shape, input, out_dtype)
    epilogue = epilogue_from(activation, negative_slope)
    if _backend(f"{kind.name}_fp8", input.device) == "torch":
        return out.copy_(_torch_fp8(
            _TORCH_CONVS[kind.spatial_dims], input, input_scale, weight, weight_scale, bias,
            residual, epilogue, kind.torch_args(stride, padding, dilation, groups, pad_same),
            out_dtype))
    if input.numel() == 0 or weight.numel() == 0:
        return _zero_product(out, bias, residual, epilogue)
    args = dict(bias=bias, residual=None if residual is None else as_5d(residual),
                epilogue=epilogue, scales=Fp8Scales(input_scale, weight_scale))
    x5 = as_5d(unit_channel_stride(input))  # FP8 wgmma reads channels contiguous
    if is_pointwise(geometry):
        launch_pointwise(x5, as_5d(weight), as_5d(out), stride=pad_front(geometry.stride, 1),
                         **args)
    else:
        launch_igemm(x5, gemm_weight(weight, groups, 0, cache=True), as_5d(out), groups=groups,
                     transposed=False, **window(geometry), **args)
    return out


_CONV_FP8_SCHEMA = ("(Tensor input, Tensor input_scale, Tensor weight, Tensor weight_scale, "
                    "Tensor? bias, Tensor? residual, int[] stride, int[] padding, int[] dilation, "
                    "int groups, bool pad_same, str? activation, float negative_slope, "
                    "ScalarType out_dtype) -> Tensor")
CONV_OPERATORS = {dims: library.define_op(f"conv{dims}d_fp8", _CONV_FP8_SCHEMA, _conv_fp8_real,
                                          _conv_fp8_output) for dims in (2, 3)}


def _conv_fp8(op: str, spatial_dims: int, input, input_scale, weight, weight_scale, bias, stride,
              padding, dilation, groups, activation, residual, out_dtype) -> torch.Tensor:
    """Validate, then call the operator on a batched input."""
    epilogue = parse_activation(activation)
    _check_fp8(op, "input", input, (spatial_dims + 1, spatial_dims + 2))
    _check_fp8(op, "weight", weight, (spatial_dims + 2,))
    _check_out_dtype(op, out_dtype)
    _check_device(op, input.device, weight=weight, bias=bias, residual=residual)
    unbatched = input.dim() == spatial_dims + 1
    x = input.unsqueeze(0) if unbatched else input
    kind = convolution_kind(spatial_dims)
    geometry: ConvGeometry = kind.geometry(tuple(x.shape), tuple(weight.shape), stride, padding,
                                           dilation, groups, False)
    if is_depthwise(geometry):
        raise ValueError(f"{op}: depthwise convolutions (one input channel per group) have no "
                         "FP8 path: they are memory-bound multiply-adds with no tensor-core "
                         "work; run them in float16 or bfloat16 (fk.conv2d / fk.conv3d)")
    out_shape = geometry.output_shape[1:] if unbatched else geometry.output_shape
    check_bias(op, bias, geometry.out_channels)
    check_residual(op, residual, out_shape)
    _check_weight_scale(op, "weight_scale", weight_scale, geometry.out_channels, x.device)
    in_scale = as_scale(op, "input_scale", input_scale, x.device)
    _refuse_gradients(op, input=input, weight=weight, bias=bias, residual=residual,
                      weight_scale=weight_scale, input_scale=in_scale)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual
    out = CONV_OPERATORS[spatial_dims](x, in_scale, weight, weight_scale, bias, res,
                                       *kind.operator_options(geometry, padding),
                                       epilogue.name, epilogue.alpha, out_dtype)
    return out.squeeze(0) if unbatched else out


def conv2d_fp8(input: torch.Tensor, input_scale: ScaleArg, weight: torch.Tensor,
               weight_scale: torch.Tensor, bias: torch.Tensor | None = None, stride: IntArg = 1,
               padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1,
               activation: ActivationArg = None, residual: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """activation(conv2d(input, weight) * input_scale * weight_scale[c] + bias + residual).

    input (N, C_in, H, W) or (C_in, H, W) and weight (C_out, C_in/groups, kH, kW) are
    float8_e4m3fn; input_scale is a float or a one-element float32 tensor, weight_scale a
    float32 (C_out,) tensor; bias (C_out,) and residual (the output's shape) any float dtype.
    stride, padding ("same", "valid" too), dilation and groups as in F.conv2d. The output is
    `out_dtype`, in the input's memory format. Inference only.
    """
    return _conv_fp8("conv2d_fp8", 2, input, input_scale, weight, weight_scale, bias, stride,
                     padding, dilation, groups, activation, residual, out_dtype)


def conv3d_fp8(input: torch.Tensor, input_scale: ScaleArg, weight: torch.Tensor,
               weight_scale: torch.Tensor, bias: torch.Tensor | None = None, stride: IntArg = 1,
               padding: PaddingArg = 0, dilation: IntArg = 1, groups: int = 1,
               activation: ActivationArg = None, residual: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """conv2d_fp8 for (N, C_in, D, H, W) inputs and (C_out, C_in/groups, kD, kH, kW) weights."""
    return _conv_fp8("conv3d_fp8", 3, input, input_scale, weight, weight_scale, bias, stride,
                     padding, dilation, groups, activation, residual, out_dtype)


DS_OP = "depthwise_separable_conv2d_fp8"


def _check_block_weights(x: torch.Tensor, dw_weight: torch.Tensor,
                         pw_weight: torch.Tensor) -> None:
    channels = x.shape[-3]
    if tuple(dw_weight.shape[:2]) != (channels, 1):
        raise ValueError(f"{DS_OP}: dw_weight must have shape ({channels}, 1, kH, kW) (channel "
                         f"multiplier 1), got {tuple(dw_weight.shape)}")
    if pw_weight.shape[1] != channels or tuple(pw_weight.shape[2:]) != (1, 1):
        raise ValueError(f"{DS_OP}: pw_weight must have shape (C_out, {channels}, 1, 1), got "
                         f"{tuple(pw_weight.shape)}")


def _block_output(x, dw_weight, pw_weight, pw_weight_scale, mid_scale, dw_bias, pw_bias,
                  residual, stride, padding, dilation, pad_same, mid_activation,
                  mid_negative_slope, activation, negative_slope, out_dtype) -> torch.Tensor:
    """The fake implementation: an empty output in x's memory format."""
    return block_output(x, dw_weight, pw_weight, stride, padding, dilation, pad_same, out_dtype)


def _block_real(x, dw_weight, pw_weight, pw_weight_scale, mid_scale, dw_bias, pw_bias, residual,
                stride, padding, dilation, pad_same, mid_activation, mid_negative_slope,
                activation, negative_slope, out_dtype) -> torch.Tensor:
    geometry = block_geometry(x, dw_weight, stride, padding, dilation, pad_same)
    out = block_output(x, dw_weight, pw_weight, stride, padding, dilation, pad_same, out_dtype)
    mid = epilogue_from(mid_activation, mid_negative_slope)
    epilogue = epilogue_from(activation, negative_slope)
    if _backend(DS_OP, x.device) == "torch":
        m = activate(F.conv2d(x.float(), dw_weight.float(), None if dw_bias is None
                              else dw_bias.float(), stride, "same" if pad_same else padding,
                              dilation, x.shape[1]), mid)
        return out.copy_(_torch_fp8(F.conv2d, round_fp8(m, mid_scale), mid_scale, pw_weight,
                                    pw_weight_scale, pw_bias, residual, epilogue, (),
                                    out_dtype))
    if out.numel() == 0 or x.numel() == 0:
        return _zero_product(out, pw_bias, residual, epilogue)
    launch_pointwise(as_5d(x), as_5d(pw_weight), as_5d(out), stride=pad_front(geometry.stride, 1),
                     bias=pw_bias, residual=None if residual is None else as_5d(residual),
                     epilogue=epilogue,
                     depthwise=DepthwiseStage(as_5d(dw_weight), dw_bias,
                                              pad_front(geometry.padding, 0),
                                              pad_front(geometry.dilation, 1), mid),
                     scales=Fp8Scales(mid_scale, pw_weight_scale))
    return out


BLOCK_OPERATOR = library.define_op(
    DS_OP, "(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor pw_weight_scale, "
           "Tensor mid_scale, Tensor? dw_bias, Tensor? pw_bias, Tensor? residual, int[] stride, "
           "int[] padding, int[] dilation, bool pad_same, str? mid_activation, "
           "float mid_negative_slope, str? activation, float negative_slope, "
           "ScalarType out_dtype) -> Tensor",
    _block_real, _block_output)


def depthwise_separable_conv2d_fp8(
        x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
        pw_weight_scale: torch.Tensor, mid_scale: ScaleArg, dw_bias: torch.Tensor | None = None,
        pw_bias: torch.Tensor | None = None, stride: IntArg = 1, padding: PaddingArg = 0,
        dilation: IntArg = 1, mid_activation: ActivationArg = None,
        activation: ActivationArg = None, residual: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """depthwise_separable_conv2d with its 1x1 in FP8, in one launch.

    The depthwise kxk convolution (x and dw_weight: float16, bfloat16 or float32) runs in
    FP32 on chip; its intermediate mid_activation(depthwise(x) + dw_bias) is quantized there
    with `mid_scale` (per tensor, calibrated: see quantize_fp8) and multiplied by pw_weight
    (float8_e4m3fn, (C_out, C, 1, 1), scales pw_weight_scale (C_out,)):

        y = activation(conv1x1(e4m3(mid / mid_scale)) * mid_scale * pw_weight_scale[c]
                       + pw_bias + residual)

    The output is `out_dtype` (default: x's dtype), in x's memory format. Inference only.
    """
    mid, epilogue = parse_activation(mid_activation), parse_activation(activation)
    if not isinstance(x, torch.Tensor) or x.dtype not in OUT_DTYPES:
        raise TypeError(f"{DS_OP}: x must be a float16, bfloat16 or float32 tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{DS_OP}: x must be 3-D or 4-D, got shape {tuple(x.shape)}")
    check_same_device_dtype(DS_OP, x, dw_weight=dw_weight, dw_bias=dw_bias)
    _check_fp8(DS_OP, "pw_weight", pw_weight, (4,))
    if dw_weight.dim() != 4:
        raise ValueError(f"{DS_OP}: dw_weight must be 4-D, got shape {tuple(dw_weight.shape)}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    _check_out_dtype(DS_OP, out_dtype)
    _check_device(DS_OP, x.device, pw_weight=pw_weight, pw_bias=pw_bias, residual=residual)
    _check_block_weights(x, dw_weight, pw_weight)
    unbatched = x.dim() == 3
    x4 = x.unsqueeze(0) if unbatched else x
    channels, c_out = x4.shape[1], pw_weight.shape[0]
    geometry = block_geometry(x4, dw_weight, stride, padding, dilation, False)
    out_shape = block_output_shape(geometry, pw_weight)
    check_bias(DS_OP, dw_bias, channels, name="dw_bias")
    check_bias(DS_OP, pw_bias, c_out, name="pw_bias")
    check_residual(DS_OP, residual, out_shape[1:] if unbatched else out_shape)
    _check_weight_scale(DS_OP, "pw_weight_scale", pw_weight_scale, c_out, x.device)
    scale = as_scale(DS_OP, "mid_scale", mid_scale, x.device)
    _refuse_gradients(DS_OP, x=x, dw_weight=dw_weight, pw_weight=pw_weight, dw_bias=dw_bias,
                      pw_bias=pw_bias, residual=residual, pw_weight_scale=pw_weight_scale,
                      mid_scale=scale)
    res = residual.unsqueeze(0) if unbatched and residual is not None else residual
    out = BLOCK_OPERATOR(x4, dw_weight, pw_weight, pw_weight_scale, scale, dw_bias, pw_bias, res,
                         list(geometry.stride), list(geometry.padding), list(geometry.dilation),
                         padding == "same", mid.name, mid.alpha, epilogue.name, epilogue.alpha,
                         out_dtype)
    return out.squeeze(0) if unbatched else out
