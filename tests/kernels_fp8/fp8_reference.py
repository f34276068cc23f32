"""Independent FP8 references: e4m3 rounding by search over the 256 codes, and the convolutions
in float64 of the dequantized and of the unquantized operands."""

from __future__ import annotations

import math

import torch

FP8 = torch.float8_e4m3fn
UNIT_ROUNDOFF = 2.0**-4  # e4m3 keeps 3 mantissa bits: relative rounding error <= 2**-4
# ||fp8 conv - exact conv|| / ||exact conv|| on random operands. An operand m * 2**e (m in
# [1, 2)) is rounded to a step of 2**(e-3): its error is about uniform within half a step, so
# its relative RMS error is 2**-4 / (m sqrt(3)) <= u / sqrt(3). A product carries two such
# independent errors (RMS <= u sqrt(2/3)), and a sum of many products of random signs has the
# products' relative RMS error: u sqrt(2/3), 0.051.
QUANTIZED_TOLERANCE = UNIT_ROUNDOFF * math.sqrt(2 / 3)


def e4m3_values() -> tuple[torch.Tensor, torch.Tensor]:
    """(values, codes) of every finite e4m3 number but -0, sorted by value (float64, uint8)."""
    codes = torch.arange(256, dtype=torch.uint8)
    values = codes.view(FP8).double()
    keep = torch.isfinite(values) & ~((values == 0) & (codes >= 128))
    values, codes = values[keep], codes[keep]
    order = values.argsort()
    return values[order], codes[order]


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest e4m3 value, ties to the even code, saturating at +-448
    (float64): a search over the code table, not a cast."""
    values, codes = e4m3_values()
    x = x.double().clamp(values[0].item(), values[-1].item()).contiguous()
    hi = torch.searchsorted(values, x).clamp(1, len(values) - 1)
    lo = hi - 1
    below, above = x - values[lo], values[hi] - x
    even_hi = (codes[hi] & 1) == 0
    pick_hi = (above < below) | ((above == below) & even_hi)
    return torch.where(pick_hi, values[hi], values[lo])


def dequantized(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """q * scale in float64 (per tensor, or per slice along `axis`)."""
    s = scale.double()
    if axis is not None:
        shape = [1] * q.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    return q.double() * s


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def fit_batchnorms(model: torch.nn.Module, batches) -> torch.nn.Module:
    """The model in eval mode with every BatchNorm's statistics estimated from `batches`, as
    training leaves them: activations near unit scale, features that differ between images.
    (Random statistics, as the fusion tests use, leave ResNets' pooled features nearly the same
    for every image: cosine similarities near 1 would then prove nothing.)"""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()


def emulated_fp8(model: torch.nn.Module, x: torch.Tensor, calibration=None) -> torch.Tensor:
    """What FP8 post-training quantization of `model` computes, written with PyTorch ops: the
    BatchNorm-folded convolutions (`optimize` without FP8, fusion being tested elsewhere), each
    but the first, the last and the depthwise ones with its weight rounded to e4m3 per output
    channel and its input per tensor (scale amax / 448: over the calibration batches, or each
    input's own), by `round_e4m3`; the rest in FP32."""
    import foveal.kernels as fk

    fused = fk.optimize(model, depthwise_separable=False)
    convs = [m for m in fused.modules() if isinstance(m, fk.nn.Conv2d)][1:-1]
    convs = [c for c in convs if c.groups != c.in_channels]
    amax: dict[torch.nn.Module, float] = {}

    def record(module, args):
        amax[module] = max(amax.get(module, 0.0), args[0].abs().max().item())

    def quantize_input(module, args):
        scale = torch.tensor(amax.get(module, args[0].abs().max().item()) / 448)
        return (round_e4m3(args[0] / scale).float() * scale,)

    with torch.no_grad(), fk.use_backend("torch"):
        hooks = [c.register_forward_pre_hook(record) for c in convs]
        for batch in calibration or ():
            fused(batch)
        for hook in hooks:
            hook.remove()
        for conv in convs:
            scale = conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True).float() / 448
            conv.weight.copy_(round_e4m3(conv.weight / scale) * scale)
            conv.register_forward_pre_hook(quantize_input)
        return fused(x)
