"""Every bad-argument rule raises before launch, naming the argument and the rule."""

from __future__ import annotations

import re

import pytest
import torch

import foveal.kernels as fk
from foveal.kernels import backend


def x4(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,error,message", [
    (lambda: fk.conv2d(x4(3, 8), x4(4, 3, 3, 3)), ValueError, r"input must be 3-D or 4-D"),
    (lambda: fk.conv2d(x4(1, 2, 3, 8, 8), x4(4, 3, 3, 3)), ValueError, r"input must be 3-D or 4-D"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3)), ValueError, r"weight must be 4-D"),
    (lambda: fk.conv1d(x4(1, 3, 8), x4(4, 3, 3, 3)), ValueError, r"weight must be 3-D"),
    (lambda: fk.conv2d(x4(1, 6, 8, 8), x4(4, 3, 3, 3), groups=4), ValueError,
     r"input channels \(6\) must be divisible by groups \(4\)"),
    (lambda: fk.conv2d(x4(1, 6, 8, 8), x4(5, 3, 3, 3), groups=2), ValueError,
     r"weight.shape\[0\] \(out channels, 5\) must be divisible by groups \(2\)"),
    (lambda: fk.conv2d(x4(1, 4, 8, 8), x4(4, 3, 3, 3)), ValueError,
     r"weight.shape\[1\] \* groups must equal the input channels: 3 \* 1 != 4"),
    (lambda: fk.conv2d(x4(1, 3, 4, 8), x4(4, 3, 7, 3), padding=1), ValueError,
     r"kernel larger than the padded input on spatial axis 0: dilated kernel 7 > input 4 \+ "
     r"padding 2"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), dilation=(1, 4)), ValueError,
     r"kernel larger than the padded input on spatial axis 1: dilated kernel 9"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), stride=0), ValueError,
     r"stride must be positive"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), stride=(1, -2)), ValueError,
     r"stride must be positive"),
    (lambda: fk.conv3d(x4(1, 3, 8, 8, 8), x4(4, 3, 3, 3, 3), dilation=(1, 0, 1)), ValueError,
     r"dilation must be positive"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), padding=-1), ValueError,
     r"padding must be >= 0"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), padding=(1, 2, 3)), ValueError,
     r"padding must be an int or a sequence of 2 ints"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), padding="full"), ValueError,
     r"padding must be an int, a tuple, 'same' or 'valid'"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), stride=2, padding="same"), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), stride=1.5), TypeError,
     r"stride must be an int or a sequence of 2 ints"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), groups=0), ValueError,
     r"groups must be positive"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3, dtype=torch.float64)), ValueError,
     r"weight has dtype torch.float64 but input has torch.float32"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3, device="meta")), ValueError,
     r"weight is on meta but input is on cpu"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8).int(), x4(4, 3, 3, 3).int()), TypeError,
     r"input has dtype torch.int32; supported are float16, bfloat16, float32 and float64"),
    (lambda: fk.conv2d([[1.0]], x4(4, 3, 3, 3)), TypeError, r"input must be a torch.Tensor"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), x4(3)), ValueError,
     r"bias must have shape \(4,\) \(one per output channel\), got \(3,\)"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), residual=x4(1, 4, 8, 8)), ValueError,
     r"residual must have the output's shape \(1, 4, 6, 6\), got \(1, 4, 8, 8\)"),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), activation="tanh"), ValueError,
     r"activation must be None or one of \['gelu', 'hardswish', 'leaky_relu', 'relu', "),
    (lambda: fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3), activation=("relu", 1.0)), ValueError,
     r"activation given as a tuple must be \('leaky_relu', negative_slope\)"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_messages_name_the_op():
    with pytest.raises(ValueError, match=re.escape("conv3d: bias must have shape (4,)")):
        fk.conv3d(x4(1, 3, 5, 5, 5), x4(4, 3, 3, 3, 3), x4(5))


def test_cpu_without_interpreter_names_the_ways_out(monkeypatch):
    monkeypatch.setattr(backend, "INTERPRETED", False)
    with pytest.raises(fk.BackendUnavailable, match=r"need a CUDA tensor.*TRITON_INTERPRET=1.*"
                                                     r"set_backend\('torch'\)"):
        fk.conv2d(x4(1, 3, 8, 8), x4(4, 3, 3, 3))


def test_torch_backend_is_explicit_and_reported(monkeypatch):
    monkeypatch.setattr(backend, "INTERPRETED", False)
    x, w, b, r = x4(1, 3, 8, 8), x4(4, 3, 3, 3), x4(4), x4(1, 4, 8, 8)
    with fk.use_backend("torch"):
        assert fk.backend_for("cpu") == "torch"
        out = fk.conv2d(x, w, b, padding=1, activation="relu", residual=r)
    expected = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(),
                                                     padding=1) + r.double())
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert fk.get_backend_preference() == "auto"


def test_backend_preference_is_validated():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\)"):
        fk.set_backend("cudnn")


def test_interpreter_is_reported_for_cpu_tensors_in_tests():
    assert fk.backend_for("cpu") == "interpreter"
