"""Comparison against float64 references with tolerances that scale with the reduction size.

A dot product of K unit-variance terms carries rounding error of about eps * sqrt(K) (inputs
rounded to the kernel's dtype, fp32 or TF32 accumulation, output rounded back). The bound used
is a fixed multiple of that, so a wrong index (an error of order one) always fails.
"""

from __future__ import annotations

import math

import torch

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-52,
    torch.float32: 2.0**-23,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
TF32_ROUNDOFF = 2.0**-10


def roundoff(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        from foveal.kernels.igemm import fp32_convolutions_use_tf32

        if fp32_convolutions_use_tf32():
            return TF32_ROUNDOFF
    return UNIT_ROUNDOFF[dtype]


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, *, reduction: int,
                              scale: float = 1.0, factor: float = 8.0) -> None:
    """Check `out` against a float64 `ref`.

    `reduction` is the number of products summed per output element and `scale` the typical
    magnitude of one product (1 for unit-variance inputs).
    """
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "output holds NaN or inf"
    eps = roundoff(out.dtype, out.device)
    atol = factor * eps * math.sqrt(max(1, reduction)) * scale
    error = (out.double() - ref.to(out.device)).abs()
    bound = atol + 4 * eps * ref.abs().to(out.device)
    worst = (error - bound).argmax()
    assert (error <= bound).all(), (
        f"max error {error.max().item():.3e} exceeds tolerance (atol {atol:.3e}, dtype "
        f"{out.dtype}, reduction {reduction}); worst element {worst.item()}: "
        f"{out.flatten()[worst].item()} vs {ref.flatten()[worst].item()}")
