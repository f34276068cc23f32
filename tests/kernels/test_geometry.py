"""The output-size formulas and tiling advice, checked against PyTorch's own shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foveal.kernels import output_shape
from foveal.kernels.geometry import conv_geometry, expand, tiling_advice


def test_alexnet_first_layer():
    assert output_shape((227, 227), 11, stride=4) == (55, 55)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [
    (s, k, st, p, d) for s, k, st, p, d in itertools.product((5, 8, 13), (1, 2, 3), (1, 2, 3),
                                                              (0, 1, 2), (1, 2))
    if d * (k - 1) + 1 <= s + 2 * p
])
def test_conv_output_matches_torch(size, kernel, stride, padding, dilation):
    x = torch.empty(1, 1, size, size + 1, device="meta")
    w = torch.empty(1, 1, kernel, kernel, device="meta")
    expected = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape[2:]
    got = output_shape((size, size + 1), kernel, stride, padding, dilation)
    assert got == tuple(expected)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,output_padding", [
    (5, 3, 2, 1, 1, 1), (4, 4, 2, 1, 1, 0), (7, 3, 3, 0, 2, 2), (1, 1, 1, 0, 1, 0),
    (6, 5, 2, 2, 1, 1),
])
def test_transposed_output_matches_torch(size, kernel, stride, padding, dilation, output_padding):
    x = torch.empty(1, 1, size, device="meta")
    w = torch.empty(1, 1, kernel, device="meta")
    expected = F.conv_transpose1d(x, w, stride=stride, padding=padding, dilation=dilation,
                                  output_padding=output_padding).shape[2:]
    got = output_shape(size, kernel, stride, padding, dilation, transposed=True,
                       output_padding=output_padding)
    assert got == tuple(expected)


@pytest.mark.parametrize("kernel,dilation", [(2, 1), (4, 1), (3, 2), (4, 3), (5, 1)])
def test_same_padding_keeps_size_like_torch(kernel, dilation):
    x = torch.empty(1, 1, 9, 10, device="meta")
    w = torch.empty(1, 1, kernel, kernel, device="meta")
    expected = F.conv2d(x, w, padding="same", dilation=dilation).shape[2:]
    assert output_shape((9, 10), kernel, padding="same", dilation=dilation) == tuple(expected)


def test_geometry_counts_flops_of_alexnet_conv1():
    g = conv_geometry((1, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1, 1, 2)
    assert g.output_shape == (1, 96, 55, 55)
    assert g.macs() == 55 * 55 * 96 * 3 * 11 * 11


def test_expand_accepts_numpy_ints_and_rejects_bools():
    assert expand(np.int64(2), 3, "stride") == (2, 2, 2)
    assert expand((np.int32(1), 2), 2, "padding") == (1, 2)
    with pytest.raises(TypeError, match="stride must be an int"):
        expand(True, 2, "stride")


def test_tiling_advice_when_windows_fit_exactly():
    assert tiling_advice(227, 11, 4).leftover == 0


def test_tiling_advice_suggests_fixes_that_really_tile():
    advice = tiling_advice(224, 11, 4)
    assert advice.leftover == (224 - 11) % 4 == 1
    for size in advice.input_sizes:
        assert (size - 11) % 4 == 0
    for stride in advice.strides:
        assert (224 - 11) % stride == 0
    for padding in advice.paddings:
        assert (224 + 2 * padding - 11) % 4 == 0
    assert (224 - 11 + advice.extra_padding) % 4 == 0
