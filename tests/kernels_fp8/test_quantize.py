"""quantize_fp8 and quantize_weight_fp8 against an independent e4m3 rounding (nearest, ties to
even, saturating), on the Triton kernel (interpreter) and PyTorch's ops (torch backend)."""

from __future__ import annotations

import pytest
import torch
from fp8_reference import FP8, dequantized, e4m3_values, round_e4m3

import foveal.kernels as fk


def _hard_values() -> torch.Tensor:
    """Every e4m3 value, the midpoints between neighbours (the ties) and values just off them,
    values past 448 and in the subnormal range, and random magnitudes over 30 octaves."""
    values, _ = e4m3_values()
    mids = (values[1:] + values[:-1]) / 2
    nudged = torch.cat([mids * (1 + 2.0**-20), mids * (1 - 2.0**-20)])
    special = torch.tensor([448.0, 449.0, 464.0, 480.0, 1e4, 3e38, 2.0**-10, 2.0**-11,
                            3 * 2.0**-11, 2.0**-9, 2.0**-30, 0.0])
    special = torch.cat([special, -special])
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(4000, generator=generator) * 2.0 ** torch.randint(
        -15, 15, (4000,), generator=generator)
    return torch.cat([values, mids, nudged, special, spread.double()]).float()


@pytest.mark.parametrize("backend", ["interpreter", "torch"])
def test_quantize_rounds_to_nearest_even_and_saturates(backend):
    x = _hard_values()
    with fk.use_backend("torch" if backend == "torch" else "auto"):
        q, scale = fk.quantize_fp8(x, 1.0)
    assert q.dtype == FP8 and scale.dtype == torch.float32 and scale.item() == 1.0
    expected = round_e4m3(x)
    wrong = (q.double() != expected).nonzero().flatten()
    assert wrong.numel() == 0, (f"{wrong.numel()} wrong, e.g. {x[wrong[:5]].tolist()} -> "
                                f"{q[wrong[:5]].double().tolist()}, expected "
                                f"{expected[wrong[:5]].tolist()}")
    assert torch.equal(torch.signbit(q.double()), torch.signbit(x))  # -0.0 stays -0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dynamic_scale_maps_amax_to_448(dtype):
    x = (torch.randn(3, 5, 7, 9) * 3).to(dtype).to(memory_format=torch.channels_last)
    q, scale = fk.quantize_fp8(x)
    amax = x.abs().max().float()
    assert scale.shape == () and scale.item() == pytest.approx((amax / 448).item(), rel=1e-7)
    assert q.shape == x.shape and q.is_contiguous(memory_format=torch.channels_last)
    assert q.double().abs().max().item() == 448.0
    assert torch.equal(q.double(), round_e4m3(x.float() / scale))


def test_static_scale_and_strided_input():
    x = torch.randn(2, 6, 5, 8)[:, ::2, :, 1::2]
    scale = torch.tensor(0.004)
    q, returned = fk.quantize_fp8(x, scale)
    assert returned is scale and q.shape == x.shape
    assert x.abs().max() > 448 * 0.004  # some values past the range: saturated
    assert torch.equal(q.double(), round_e4m3(x / scale))
    assert q.double().abs().max().item() == 448.0


def test_zero_tensor_gets_scale_one():
    q, scale = fk.quantize_fp8(torch.zeros(4, 4))
    assert scale.item() == 1.0 and torch.equal(q.double(), torch.zeros(4, 4, dtype=torch.float64))
    w8, w_scale = fk.quantize_weight_fp8(torch.zeros(3, 2, 1, 1))
    assert torch.equal(w_scale, torch.ones(3)) and not w8.double().any()


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_weight_scales_per_slice(axis):
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64) * torch.logspace(-3, 2, 6).reshape(6, 1, 1, 1)
    w8, scale = fk.quantize_weight_fp8(w, axis=axis)
    dim = axis % 4
    others = [d for d in range(4) if d != dim]
    amax = w.float().abs().amax(dim=others)
    assert scale.dtype == torch.float32 and torch.equal(scale, amax / 448)
    assert w8.shape == w.shape and w8.is_contiguous(memory_format=torch.channels_last)
    shape = [1] * 4
    shape[dim] = -1
    assert torch.equal(w8.double(), round_e4m3(w.float() / scale.reshape(shape)))
    # each slice uses e4m3's whole range, and dequantizes to within half a step
    assert torch.equal(w8.double().abs().amax(dim=others), torch.full((w.shape[dim],), 448.0,
                                                                       dtype=torch.float64))
    error = (dequantized(w8, scale, dim) - w).abs()
    assert (error <= w.abs() * 2.0**-4 + 2.0**-10 * scale.double().reshape(shape)).all()


@pytest.mark.parametrize("call,error,message", [
    (lambda: fk.quantize_fp8(torch.randn(3).double()), TypeError,
     r"quantize_fp8: x must be a float16, bfloat16 or float32 tensor, got a torch.float64"),
    (lambda: fk.quantize_fp8(torch.randn(3), 0.0), ValueError,
     r"quantize_fp8: scale must be finite and > 0, got 0.0"),
    (lambda: fk.quantize_fp8(torch.randn(3), float("inf")), ValueError,
     r"scale must be finite and > 0"),
    (lambda: fk.quantize_fp8(torch.randn(3), torch.tensor([-1.0])), ValueError,
     r"scale must be finite and > 0, got a value -1.0"),
    (lambda: fk.quantize_fp8(torch.randn(3), torch.tensor(float("nan"))), ValueError,
     r"scale must be finite and > 0, got a value nan"),
    (lambda: fk.quantize_fp8(torch.randn(3), torch.ones(2)), ValueError,
     r"scale must be a scalar \(one element: a per-tensor scale\), got shape \(2,\)"),
    (lambda: fk.quantize_fp8(torch.randn(3), torch.tensor(1.0, dtype=torch.float64)), TypeError,
     r"scale must be float32, got torch.float64"),
    (lambda: fk.quantize_fp8(torch.randn(3), "1"), TypeError,
     r"scale must be a float or a one-element float32 tensor, got str"),
    (lambda: fk.quantize_weight_fp8(torch.randn(3).to(FP8)), TypeError,
     r"weight must be a float16, bfloat16, float32 or float64 tensor, got a torch.float8"),
    (lambda: fk.quantize_weight_fp8(torch.randn(3, 3), axis=2), ValueError,
     r"axis 2 is out of range for a 2-D weight"),
    (lambda: fk.quantize_weight_fp8(torch.tensor([[1.0, float("nan")]])), ValueError,
     r"weight holds NaN or inf values"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_scale_tensor_changed_in_place_is_checked_again():
    scale = torch.tensor(0.5)
    fk.quantize_fp8(torch.randn(3), scale)
    scale.fill_(-2.0)
    with pytest.raises(ValueError, match=r"got a value -2\.0"):
        fk.quantize_fp8(torch.randn(3), scale)
