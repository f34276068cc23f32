"""conv_transpose1d/2d/3d against torch.nn.functional in float64, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from tolerances import assert_close_to_reference

FOVEAL = {1: fk.conv_transpose1d, 2: fk.conv_transpose2d, 3: fk.conv_transpose3d}
TORCH = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def reference(x, w, b=None, residual=None, activation=None, **kwargs):
    n = w.dim() - 2
    z = TORCH[n](x.double(), w.double(), None if b is None else b.double(), **kwargs)
    if residual is not None:
        z = z + residual.double()
    return {None: lambda t: t, "relu": F.relu, "gelu": F.gelu}[activation](z)


def reduction_of(w, stride) -> int:
    """Products per output element: input channels per group times the taps hitting it."""
    taps = math.prod(math.ceil(k / s) for k, s in zip(w.shape[2:], stride, strict=True))
    return w.shape[0] * taps


# (input shape, weight shape (C_in, C_out/g, k...), kwargs): distinct per-axis values
CASES = [
    ((2, 5, 7), (5, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 6), (4, 2, 4), dict(stride=3, dilation=2, output_padding=1)),
    ((2, 6, 5, 4), (6, 4, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 5), (4, 3, 4, 2), dict(stride=(3, 2), padding=(1, 0), dilation=(1, 2),
                                      output_padding=(2, 1))),
    ((2, 6, 4, 4), (6, 2, 3, 3), dict(groups=3, stride=2, dilation=2, output_padding=1)),
    ((1, 3, 4, 5), (3, 5, 2, 2), dict(stride=2)),  # U-Net up-sampling: kernel == stride
    ((1, 5, 3, 3), (5, 2, 4, 4), dict(stride=2, padding=1)),  # FCN / DCGAN style
    ((1, 3, 5, 4), (3, 2, 1, 1), dict(stride=(3, 2))),  # stride > kernel: phases with no tap
    ((1, 3, 4, 3), (3, 2, 3, 3), dict(stride=1, padding=1)),  # stride 1: a plain conv
    ((1, 4, 3, 5), (4, 3, 3, 2), dict(stride=(1, 3), dilation=(3, 1), output_padding=(2, 0))),
    ((1, 2, 3, 4, 3), (2, 3, 2, 3, 2), dict(stride=(2, 1, 3), padding=(0, 1, 1),
                                            output_padding=(1, 0, 2))),
    ((2, 4, 2, 3, 3), (4, 1, 3, 2, 2), dict(groups=2, stride=(1, 2, 2), dilation=(2, 1, 1))),
]


@pytest.mark.parametrize("input_shape,weight_shape,kwargs", CASES)
def test_matches_torch(input_shape, weight_shape, kwargs):
    x = torch.randn(input_shape)
    w = torch.randn(weight_shape)
    b = torch.randn(weight_shape[1] * kwargs.get("groups", 1))
    n = len(weight_shape) - 2
    out = FOVEAL[n](x, w, b, **kwargs)
    stride = kwargs.get("stride", 1)
    stride = (stride,) * n if isinstance(stride, int) else stride
    assert_close_to_reference(out, reference(x, w, b, **kwargs),
                              reduction=reduction_of(w, stride))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_dtypes_layouts(dtype, channels_last):
    x = torch.randn(2, 16, 4, 5, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 4, 4, dtype=dtype)
    b = torch.randn(8, dtype=dtype)
    r = torch.randn(2, 8, 8, 10, dtype=dtype)
    out = fk.conv_transpose2d(x, w, b, stride=2, padding=1, activation="relu", residual=r)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    ref = reference(x, w, b, residual=r, activation="relu", stride=2, padding=1)
    assert_close_to_reference(out, ref, reduction=16 * 4)


def test_non_contiguous_and_unbatched():
    x = torch.randn(6, 9, 8)[::2, :, 1::2].transpose(1, 2)  # (3, 4, 9), unbatched, strided
    w = torch.randn(3, 4, 3, 2)
    out = fk.conv_transpose2d(x, w, stride=(2, 1), padding=(1, 0))
    ref = reference(x.unsqueeze(0), w, stride=(2, 1), padding=(1, 0)).squeeze(0)
    assert_close_to_reference(out, ref, reduction=3 * 4)


GRAD_CASES = [
    ((1, 3, 3, 4), (3, 2, 3, 3), dict(stride=2, padding=1, output_padding=1), "gelu"),
    ((1, 4, 3, 3), (4, 1, 3, 2), dict(stride=(3, 2), dilation=(2, 1), groups=2,
                                      output_padding=(1, 0)), None),
    ((2, 3, 5), (3, 2, 2), dict(stride=3, output_padding=2), "relu"),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(stride=(1, 2, 2), padding=(0, 1, 1)), None),
]


@pytest.mark.parametrize("input_shape,weight_shape,kwargs,activation", GRAD_CASES)
def test_gradcheck(input_shape, weight_shape, kwargs, activation):
    n = len(weight_shape) - 2
    x = torch.randn(input_shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(weight_shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(weight_shape[1] * kwargs.get("groups", 1), dtype=torch.float64,
                    requires_grad=True)
    out_shape = TORCH[n](x.detach(), w.detach(), **kwargs).shape
    r = torch.randn(out_shape, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b, r):
        return FOVEAL[n](x, w, b, activation=activation, residual=r, **kwargs)

    assert torch.autograd.gradcheck(fn, (x, w, b, r), fast_mode=True)


def test_gradients_match_torch_fp16():
    x = torch.randn(2, 16, 5, 6, dtype=torch.float16, requires_grad=True)
    w = torch.randn(16, 8, 4, 4, dtype=torch.float16, requires_grad=True)
    out = fk.conv_transpose2d(x, w, stride=2, padding=1)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(F.conv_transpose2d(x64, w64, stride=2, padding=1), (x64, w64),
                                 grad.double())
    assert_close_to_reference(dx, rx, reduction=8 * 16)
    assert_close_to_reference(dw, rw, reduction=2 * 5 * 6, factor=16)


@pytest.mark.parametrize("call,message", [
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), stride=2,
                                 output_padding=2),
     r"output_padding must be smaller than either stride or dilation on spatial axis 0: "
     r"output_padding 2, stride 2, dilation 1"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3),
                                 output_padding=(0, 1), dilation=(1, 1)),
     r"output_padding must be smaller than either stride or dilation on spatial axis 1"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 4, 4, 4), torch.randn(3, 2, 3, 3)),
     r"weight.shape\[0\] must equal the input channels for a transposed convolution"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), groups=2),
     r"weight.shape\[0\] must equal|input channels \(3\) must be divisible by groups \(2\)"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 2, 2), torch.randn(3, 2, 3, 3), padding=3),
     r"padding \(3, 3\) is too large"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3),
                                 padding="same"),
     r"padding must be an int or a tuple for a transposed convolution"),
    (lambda: fk.conv_transpose1d(torch.randn(1, 3, 4), torch.randn(3, 2, 3), stride=0),
     r"stride must be positive"),
    (lambda: fk.conv_transpose3d(torch.randn(3, 4, 4), torch.randn(3, 2, 3, 3, 3)),
     r"conv_transpose3d: input must be 4-D or 5-D"),
    (lambda: fk.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3),
                                 torch.randn(3)),
     r"bias must have shape \(2,\)"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_module_output_size_and_patch():
    torch_module = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1).double()
    module = fk.nn.ConvTranspose2d.from_torch(torch_module, activation="relu")
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    out = module(x, output_size=[10, 10])
    assert out.shape == (1, 3, 10, 10)
    assert torch.allclose(out, F.relu(torch_module(x, output_size=[10, 10])), atol=1e-10)
    model = torch.nn.Sequential(torch.nn.ConvTranspose3d(2, 2, 2, stride=2))
    assert [name for name, _ in fk.patch(model).replaced] == ["0"]
    assert isinstance(model[0], fk.nn.ConvTranspose3d)
