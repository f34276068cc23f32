"""conv1d/2d/3d forward against torch.nn.functional in float64, through the interpreter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import foveal.kernels as fk
from tolerances import assert_close_to_reference

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
FOVEAL_CONV = {1: fk.conv1d, 2: fk.conv2d, 3: fk.conv3d}
REFERENCE_ACTIVATIONS = {
    None: lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
}


def reference(x, w, b=None, residual=None, activation=None, **kwargs):
    """The float64 PyTorch result of foveal's fused op, built from separate ops."""
    n = w.dim() - 2
    z = TORCH_CONV[n](x.double(), w.double(), None if b is None else b.double(), **kwargs)
    if residual is not None:
        z = z + residual.double()
    if isinstance(activation, tuple):
        return F.leaky_relu(z, activation[1])
    return REFERENCE_ACTIVATIONS[activation](z)


def reduction_of(w: torch.Tensor) -> int:
    return math.prod(w.shape[1:])


# (input shape, weight shape, kwargs): distinct per-axis values so a swapped axis fails
CASES = [
    ((2, 5, 13), (7, 5, 3), dict(stride=2, padding=1)),
    ((1, 3, 17), (4, 3, 4), dict(dilation=3, padding=2)),
    ((2, 5, 9, 11), (7, 5, 3, 3), {}),
    ((2, 5, 9, 11), (7, 5, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ((1, 3, 12, 10), (6, 3, 5, 3), dict(stride=(1, 3), padding=(2, 0), dilation=(2, 1))),
    ((2, 6, 9, 11), (9, 2, 3, 4), dict(groups=3, padding="same")),
    ((1, 4, 8, 7), (6, 4, 2, 4), dict(padding="same", dilation=(3, 1))),
    ((2, 7, 8, 9), (5, 7, 3, 3), dict(padding="valid", stride=3)),
    ((1, 64, 6, 7), (24, 64, 3, 3), dict(padding=1)),  # tap-major reduction order
    ((2, 32, 5, 6), (8, 16, 1, 1), dict(groups=2)),  # pointwise, grouped, tap-major
    ((2, 8, 7, 7), (8, 1, 3, 3), dict(groups=8, padding=1)),  # depthwise shape
    ((1, 3, 5, 6, 7), (4, 3, 2, 3, 3), dict(stride=(1, 2, 1), padding=(1, 0, 2))),
    ((2, 4, 6, 5, 7), (6, 2, 3, 1, 2), dict(groups=2, dilation=(2, 1, 3), stride=(2, 1, 1))),
]


@pytest.mark.parametrize("input_shape,weight_shape,kwargs", CASES)
def test_matches_torch_float32(input_shape, weight_shape, kwargs):
    x = torch.randn(input_shape)
    w = torch.randn(weight_shape)
    b = torch.randn(weight_shape[0])
    n = len(weight_shape) - 2
    out = FOVEAL_CONV[n](x, w, b, **kwargs)
    assert_close_to_reference(out, reference(x, w, b, **kwargs), reduction=reduction_of(w))


@pytest.mark.parametrize("activation", [*REFERENCE_ACTIVATIONS, ("leaky_relu", 0.2)])
@pytest.mark.parametrize("with_bias,with_residual", [(True, True), (False, True), (True, False)])
def test_every_epilogue(activation, with_bias, with_residual):
    x = torch.randn(2, 5, 7, 8)
    w = torch.randn(6, 5, 3, 3)
    b = torch.randn(6) if with_bias else None
    r = torch.randn(2, 6, 4, 4) if with_residual else None
    kwargs = dict(stride=2, padding=(1, 1))
    out = fk.conv2d(x, w, b, activation=activation, residual=r, **kwargs)
    ref = reference(x, w, b, residual=r, activation=activation, **kwargs)
    assert_close_to_reference(out, ref, reduction=reduction_of(w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes_and_layouts(dtype, channels_last):
    x = torch.randn(2, 12, 9, 10, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(16, 12, 3, 3, dtype=dtype)
    b = torch.randn(16, dtype=dtype)
    r = torch.randn(2, 16, 9, 10, dtype=dtype)
    out = fk.conv2d(x, w, b, padding=1, activation="silu", residual=r)
    assert out.dtype == dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    ref = reference(x, w, b, residual=r, activation="silu", padding=1)
    assert_close_to_reference(out, ref, reduction=reduction_of(w))


def test_channels_last_3d_keeps_layout():
    x = torch.randn(1, 5, 4, 6, 7).to(memory_format=torch.channels_last_3d)
    w = torch.randn(8, 5, 3, 3, 3)
    out = fk.conv3d(x, w, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert_close_to_reference(out, reference(x, w, padding=1), reduction=reduction_of(w))


def test_non_contiguous_inputs():
    base = torch.randn(3, 10, 12, 9)
    x = base[::2, 1::2, :, 1:].transpose(2, 3)  # strided in every dim, H and W swapped
    w = torch.randn(4, 10, 3, 2).transpose(2, 3)[:, ::2]  # (4, 5, 2, 3), non-contiguous
    r = torch.randn(2, 4, 14, 5).transpose(2, 3)  # (2, 4, 5, 14) viewed through a transpose
    assert not x.is_contiguous() and not w.is_contiguous()
    out = fk.conv2d(x, w, stride=(2, 1), padding=(1, 2), residual=r, activation="relu")
    ref = reference(x, w, residual=r, activation="relu", stride=(2, 1), padding=(1, 2))
    assert_close_to_reference(out, ref, reduction=reduction_of(w))


def test_unbatched_input():
    x = torch.randn(5, 9, 8)
    w = torch.randn(3, 5, 3, 3)
    r = torch.randn(3, 9, 8)
    out = fk.conv2d(x, w, padding=1, residual=r)
    assert out.shape == (3, 9, 8)
    ref = reference(x.unsqueeze(0), w, residual=r.unsqueeze(0), padding=1).squeeze(0)
    assert_close_to_reference(out, ref, reduction=reduction_of(w))


def test_empty_batch_gives_empty_output():
    x = torch.randn(0, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    out = fk.conv2d(x, w)
    assert out.shape == F.conv2d(x, w).shape == (0, 4, 6, 6)


def test_int64_indexing_path_matches(monkeypatch):
    """The int64 offset arithmetic (used past 2**31 elements) computes the same result."""
    import foveal.kernels.igemm as igemm

    monkeypatch.setattr(igemm, "needs_int64", lambda *tensors: True)
    x = torch.randn(2, 5, 6, 7)
    w = torch.randn(4, 5, 3, 3)
    r = torch.randn(2, 4, 6, 3)
    out = fk.conv2d(x, w, padding=(1, 0), stride=(1, 2), residual=r)
    ref = reference(x, w, residual=r, padding=(1, 0), stride=(1, 2))
    assert_close_to_reference(out, ref, reduction=reduction_of(w))


def test_needs_int64_detects_large_tensors():
    from foveal.kernels.tensors import needs_int64

    assert not needs_int64(torch.empty(2**20, device="meta"))
    assert needs_int64(torch.empty(2**31 + 8, device="meta", dtype=torch.float16))
    # a small view with a huge stride reaches far into its storage
    assert needs_int64(torch.empty(2, 3, device="meta").as_strided((2, 3), (2**31, 1)))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_property_random_valid_arguments(data):
    n = data.draw(st.integers(1, 3), label="spatial dims")
    groups = data.draw(st.integers(1, 3), label="groups")
    c_in = groups * data.draw(st.integers(1, 4), label="in per group")
    c_out = groups * data.draw(st.integers(1, 3), label="out per group")
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(n))
    padding = tuple(data.draw(st.integers(0, 2)) for _ in range(n))
    size = tuple(max(d * (k - 1) + 1 - 2 * p, 1) + data.draw(st.integers(0, 4))
                 for k, d, p in zip(kernel, dilation, padding, strict=True))
    batch = data.draw(st.integers(1, 2), label="batch")
    x = torch.randn(batch, c_in, *size)
    w = torch.randn(c_out, c_in // groups, *kernel)
    b = torch.randn(c_out) if data.draw(st.booleans(), label="bias") else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = FOVEAL_CONV[n](x, w, b, **kwargs)
    assert_close_to_reference(out, reference(x, w, b, **kwargs), reduction=reduction_of(w))
