"""Shared set-up for the deform_conv2d tests: random problems and torchvision float64 references.

torchvision.ops.deform_conv2d is the reference (independent of foveal); it runs in float64 on
the same values the kernel sees (inputs rounded to the tested dtype first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from foveal.kernels import deform_conv2d
from foveal.kernels.geometry import output_shape
from tolerances import assert_close_to_reference


@dataclass(frozen=True)
class Case:
    batch: int = 2
    channels: int = 4
    size: tuple[int, int] = (6, 7)
    out_channels: int = 5
    kernel: tuple[int, int] = (3, 3)
    offset_groups: int = 1
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    modulated: bool = True
    bias: bool = True
    offset_scale: float = 2.0  # large enough that some samples leave the image
    integer_offsets: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def output_size(self) -> tuple[int, int]:
        return output_shape(self.size, self.kernel, self.stride, self.padding, self.dilation)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


def make_inputs(case: Case, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor | None]:
    """Random input, offset, weight, bias and mask of `case` (float64 values rounded to dtype)."""
    oh, ow = case.output_size
    g, taps = case.offset_groups, case.taps
    offset_shape = (case.batch, 2 * g * taps, oh, ow)
    if case.integer_offsets:  # samples land exactly on pixels, on the border and beyond it
        offset = torch.randint(-4, 5, offset_shape).double()
    else:
        offset = case.offset_scale * torch.randn(offset_shape, dtype=torch.float64)
    tensors = {
        "input": torch.randn(case.batch, case.channels, *case.size, dtype=torch.float64),
        "offset": offset,
        "weight": torch.randn(case.out_channels, case.channels // case.groups, *case.kernel,
                              dtype=torch.float64),
        "bias": torch.randn(case.out_channels, dtype=torch.float64) if case.bias else None,
        "mask": (torch.rand(case.batch, g * taps, oh, ow, dtype=torch.float64)
                 if case.modulated else None),
    }
    return {k: None if v is None else v.to(dtype) for k, v in tensors.items()}


def reference(tensors: dict[str, torch.Tensor | None], case: Case) -> torch.Tensor:
    """torchvision's deform_conv2d in float64 (differentiable w.r.t. the float64 copies)."""
    return torchvision_deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"],
                                     tensors["bias"], case.stride, case.padding, case.dilation,
                                     tensors["mask"])


def float64_leaves(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Float64 copies of `tensors` that require grad."""
    return {k: None if v is None else v.detach().double().requires_grad_()
            for k, v in tensors.items()}


def reductions(case: Case) -> dict[str, int]:
    """Products summed per element of each result (sets the rounding tolerance).

    The input gradient sums up to four corners of every tap of every output position nearby;
    the offset and mask gradients sum, per channel pair, the four corners of one sample.
    """
    c_g, cout_g = case.channels // case.groups, case.out_channels // case.groups
    c_og = case.channels // case.offset_groups
    oh, ow = case.output_size
    return {"output": c_g * case.taps, "input": 4 * case.taps * cout_g, "offset": 4 * c_og * cout_g,
            "mask": 4 * c_og * cout_g, "weight": case.batch * oh * ow, "bias": case.batch * oh * ow}


# Typical magnitude of one product in each sum: offset gradients multiply by differences of
# neighbouring pixels, about twice a pixel.
SCALES = {"output": 1.0, "input": 1.0, "offset": 2.0, "mask": 1.0, "weight": 1.0, "bias": 1.0}


def run_and_compare(case: Case, tensors: dict, *, wanted: tuple[str, ...] | None = None,
                    grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and the gradients of `wanted` (default: every tensor given) vs torchvision."""
    wanted = wanted or tuple(k for k, v in tensors.items() if v is not None)
    for name in wanted:
        tensors[name].requires_grad_()
    out = deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                        case.stride, case.padding, case.dilation, tensors["mask"])
    leaves = float64_leaves(tensors)
    ref = reference(leaves, case)
    limits = reductions(case)
    assert_close_to_reference(out.detach(), ref.detach(), reduction=limits["output"])
    if grad_out is None:
        grad_out = torch.randn(ref.shape, dtype=torch.float64, device=out.device).to(out.dtype)
    grads = torch.autograd.grad(out, [tensors[k] for k in wanted], grad_out)
    refs = torch.autograd.grad(ref, [leaves[k] for k in wanted], grad_out.double())
    for name, grad, ref_grad in zip(wanted, grads, refs, strict=True):
        assert grad.shape == tensors[name].shape and grad.dtype == tensors[name].dtype, name
        try:
            assert_close_to_reference(grad, ref_grad, reduction=limits[name], scale=SCALES[name])
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None
    return out


def shifted_fields(batch: int, size: int, shift: tuple[float, float], wavelength: float,
                   seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images f (sums of plane waves) and their shifted copies f(y + dy, x + dx).

    Waves no shorter than `wavelength` pixels keep the loss smooth over a shift of a pixel or
    two, so gradient descent on the offsets can find it; the shift is exact (analytic).
    """
    g = torch.Generator().manual_seed(seed)
    waves = 6
    freq = (torch.rand(batch, waves, 2, generator=g, dtype=torch.float64) - 0.5) * (
        4 * math.pi / wavelength)
    phase = torch.rand(batch, waves, generator=g, dtype=torch.float64) * 2 * math.pi
    amplitude = torch.randn(batch, waves, generator=g, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")

    def image(dy: float, dx: float) -> torch.Tensor:
        angle = (freq[..., 0, None, None] * (ys + dy) + freq[..., 1, None, None] * (xs + dx)
                 + phase[..., None, None])
        return (amplitude[..., None, None] * torch.sin(angle)).sum(1, keepdim=True) / 2

    return image(0.0, 0.0), image(*shift)
