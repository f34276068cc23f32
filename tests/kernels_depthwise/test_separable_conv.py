"""Spatially separable convolution and the SVD factorisation, against F.conv2d in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foveal.kernels import factorize_separable, separable_conv2d
from tolerances import assert_close_to_reference

from .helpers import activate, assert_layout_like, make_input

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def gaussian(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    g2 = g[:, None] * g[None, :]
    return g2 / g2.sum()


def product_filter(weight_col: torch.Tensor, weight_row: torch.Tensor) -> torch.Tensor:
    """The kH x kW filter bank W[o, i, h, w] = col[o, i, h] * row[o, w] the pair stands for."""
    return weight_col.double() * weight_row.double()


@pytest.mark.parametrize("name", ["sobel", "gaussian", "box"])
def test_classic_separable_filters_factorise_exactly(name):
    kernel = {"sobel": SOBEL_X.double(), "gaussian": gaussian(5, 1.2),
              "box": torch.ones(3, 7, dtype=torch.float64) / 21}[name]
    # Greyscale-to-edges, or one filter per RGB channel (zero between channels).
    weight = kernel.expand(3, 3, *kernel.shape) * torch.eye(3, dtype=torch.float64)[:, :, None,
                                                                                    None]
    factors = factorize_separable(weight)
    assert factors.relative_error < 1e-12
    assert factors.weight_col.shape == (3, 3, kernel.shape[0], 1)
    assert factors.weight_row.shape == (3, 1, 1, kernel.shape[1])
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    out = separable_conv2d(x, factors.weight_col, factors.weight_row, padding="same")
    assert_close_to_reference(out, F.conv2d(x, weight, padding="same"), reduction=27)


def test_relative_error_of_a_general_filter_is_its_rank1_residual():
    weight = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    factors = factorize_separable(weight)
    approx = product_filter(factors.weight_col, factors.weight_row)
    residual = (weight - approx).norm() / weight.norm()
    assert factors.relative_error == pytest.approx(residual.item(), rel=1e-9)
    assert 0.05 < factors.relative_error < 1.0
    # Best rank-1: no other per-channel rank-1 filter (here: each channel's own first row and
    # column through its largest entry) gets closer.
    for o in range(4):
        matrix = weight[o].reshape(6, 5)
        i, j = divmod(matrix.abs().argmax().item(), 5)
        skeleton = matrix[:, j:j + 1] @ matrix[i:i + 1, :] / matrix[i, j]
        assert (matrix - approx[o].reshape(6, 5)).norm() <= (matrix - skeleton).norm() + 1e-12


@pytest.mark.parametrize(("size", "c_in", "c_out", "kernel", "stride", "padding", "dilation",
                          "groups", "activation", "layout", "with_residual"), [
    ((9, 10), 3, 4, (5, 3), 1, (2, 1), 1, 1, None, "contiguous", False),
    ((10, 9), 4, 6, (3, 5), (2, 1), (1, 0), (1, 2), 2, "relu", "channels_last", True),
    ((9, 8), 3, 3, (4, 2), 1, "same", (2, 1), 3, "silu", "strided", True),  # per-channel
    ((8, 11), 5, 7, (7, 7), (1, 2), 3, 1, 1, ("leaky_relu", 0.2), "channels_last", False),
])
def test_matches_conv2d_with_the_product_filter(size, c_in, c_out, kernel, stride, padding,
                                                dilation, groups, activation, layout,
                                                with_residual):
    x = make_input((2, c_in, *size), layout)
    col = torch.randn(c_out, c_in // groups, kernel[0], 1, dtype=torch.float64)
    row = torch.randn(c_out, 1, 1, kernel[1], dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    z = F.conv2d(x, product_filter(col, row), bias, stride, padding, dilation, groups)
    residual = torch.randn_like(z) if with_residual else None
    out = separable_conv2d(x, col, row, bias, stride, padding, dilation, groups,
                           activation=activation, residual=residual)
    ref = activate(z if residual is None else z + residual, activation)
    assert_close_to_reference(out, ref, reduction=c_in // groups * kernel[0] * kernel[1])
    assert_layout_like(out, x)


def test_unbatched_and_half_precision():
    x = torch.randn(3, 8, 9, dtype=torch.float16)
    col = torch.randn(5, 3, 3, 1, dtype=torch.float16)
    row = torch.randn(5, 1, 1, 3, dtype=torch.float16)
    out = separable_conv2d(x, col, row, padding=1)
    ref = F.conv2d(x[None].double(), product_filter(col, row), padding=1)[0]
    # The column pass is rounded to fp16 before the row pass: terms about sqrt(9) in size.
    assert_close_to_reference(out, ref, reduction=27, scale=3.0)


def test_gradcheck():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    col = torch.randn(3, 2, 3, 1, dtype=torch.float64, requires_grad=True)
    row = torch.randn(3, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, c, r, b: separable_conv2d(x, c, r, b, (2, 1), (1, 1), activation="gelu"),
        (x, col, row, bias), fast_mode=True)


def _call(**overrides):
    args = dict(input=torch.randn(1, 4, 8, 8), weight_col=torch.randn(6, 4, 3, 1),
                weight_row=torch.randn(6, 1, 1, 3))
    args.update(overrides)
    return separable_conv2d(**args)


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (dict(weight_col=torch.randn(6, 4, 3, 3)), ValueError,
     r"weight_col must have shape \(C_out, C_in/groups, kH, 1\)"),
    (dict(weight_row=torch.randn(5, 1, 1, 3)), ValueError,
     r"weight_row must have shape \(6, 1, 1, kW\)"),
    (dict(weight_row=torch.randn(6, 2, 1, 3)), ValueError, r"weight_row must have shape"),
    (dict(weight_row=torch.randn(6, 3)), ValueError, "weight_row must be 4-D"),
    (dict(weight_col=torch.randn(6, 2, 3, 1)), ValueError,
     r"weight.shape\[1\] \* groups must equal the input channels"),
    (dict(groups=3), ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    (dict(bias=torch.randn(4)), ValueError, r"bias must have shape \(6,\)"),
    (dict(residual=torch.randn(1, 6, 8, 8)), ValueError,
     r"residual must have the output's shape \(1, 6, 6, 6\)"),
    (dict(weight_row=torch.randn(6, 1, 1, 3, dtype=torch.float64)), ValueError,
     "weight_row has dtype torch.float64"),
    (dict(activation="tanh"), ValueError, "activation must be None or one of"),
    (dict(weight_col=torch.randn(6, 4, 11, 1)), ValueError, "kernel larger than the padded"),
])
def test_bad_arguments_are_named(overrides, error, message):
    with pytest.raises(error, match=message):
        _call(**overrides)


def test_factorize_rejects_bad_weights():
    with pytest.raises(ValueError, match="factorize_separable: weight must be 4-D"):
        factorize_separable(torch.randn(3, 3))
    with pytest.raises(ValueError, match="weight is empty"):
        factorize_separable(torch.randn(0, 1, 3, 3))
    with pytest.raises(TypeError, match=r"weight has dtype torch\.int64"):
        factorize_separable(torch.ones(1, 1, 3, 3, dtype=torch.int64))


@pytest.mark.gpu
def test_gpu_gaussian_blur_per_channel():
    kernel = gaussian(7, 2.0)
    weight = (kernel.expand(64, 1, 7, 7)).cuda()
    factors = factorize_separable(weight)
    x = torch.randn(32, 64, 112, 112, device="cuda", dtype=torch.float16)
    x = x.to(memory_format=torch.channels_last)
    out = separable_conv2d(x, factors.weight_col.half(), factors.weight_row.half(), padding=3,
                           groups=64)
    ref = F.conv2d(x.double(), weight, padding=3, groups=64)
    assert_close_to_reference(out, ref, reduction=49, scale=0.2)
