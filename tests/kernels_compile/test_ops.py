"""foveal's operators in PyTorch's dispatcher: registered, consistent with their fake
implementations and autograd (torch.library.opcheck), and the same on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from op_samples import backward_sample, forward_samples, separable_sample

import foveal.kernels as fk

FORWARD = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "depthwise_separable_conv2d", "local_conv2d", "deform_conv2d"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SAMPLES = sorted(forward_samples("meta"))


def test_every_public_op_is_an_operator_with_its_backward():
    names = set(dir(torch.ops.foveal))
    assert {*FORWARD, *(f"{n}_backward" for n in FORWARD), "separable_conv2d"} <= names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", SAMPLES)
def test_opcheck_forward_and_backward_operators(sample, device):
    """Schema, fake implementation (shapes, dtypes, strides), autograd registration and
    compiled (AOT) forward and backward against eager, for both operators of each op."""
    torch.manual_seed(0)
    name, args = forward_samples(device)[sample]
    torch.library.opcheck(getattr(torch.ops.foveal, name).default, args)
    backward, backward_args = backward_sample(name, args)
    torch.library.opcheck(getattr(torch.ops.foveal, backward).default, backward_args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_separable_composite(device):
    torch.manual_seed(0)
    torch.library.opcheck(*separable_sample(device))


def test_meta_tensors_get_the_output_without_running_anything():
    """Outside planning, meta tensors reach the fake implementation: shape, dtype, layout."""
    x = torch.empty(8, 16, 32, 32, device="meta", dtype=torch.float16,
                    memory_format=torch.channels_last)
    w = torch.empty(32, 16, 3, 3, device="meta", dtype=torch.float16)
    y = fk.conv2d(x, w, stride=2, padding=1, activation="relu")
    assert (y.device.type, y.dtype, y.shape) == ("meta", torch.float16, (8, 32, 16, 16))
    assert y.is_contiguous(memory_format=torch.channels_last)
    offset = torch.empty(8, 18, 30, 30, device="meta", dtype=torch.float16)
    assert fk.deform_conv2d(x, offset, w).shape == (8, 32, 30, 30)


def test_operator_called_directly_still_validates_its_arguments():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match=r"weight.shape\[1\] \* groups must equal the input"):
        torch.ops.foveal.conv2d(x, w, None, None, [1, 1], [0, 0], [1, 1], 1, False, None, 0.0,
                                False)


def _double(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


# (foveal call, PyTorch's own call): the torch backend must give PyTorch's values and gradients
TORCH_BACKEND_CASES = {
    "conv2d-same-silu-residual": (
        lambda x, w, b, r: fk.conv2d(x, w, b, padding="same", activation="silu", residual=r),
        lambda x, w, b, r: F.silu(F.conv2d(x, w, b, padding="same") + r),
        ((2, 3, 6, 6), (4, 3, 2, 2), (4,), (2, 4, 6, 6))),
    "conv_transpose2d-relu": (
        lambda x, w, b: fk.conv_transpose2d(x, w, b, stride=2, output_padding=1,
                                            activation="relu"),
        lambda x, w, b: F.relu(F.conv_transpose2d(x, w, b, stride=2, output_padding=1)),
        ((2, 3, 4, 4), (3, 2, 3, 3), (2,))),
    "depthwise_separable": (
        lambda x, dw, pw, b1, b2: fk.depthwise_separable_conv2d(
            x, dw, pw, b1, b2, padding=1, mid_activation="gelu", activation="relu6"),
        lambda x, dw, pw, b1, b2: F.relu6(F.conv2d(F.gelu(F.conv2d(x, dw, b1, padding=1,
                                                                   groups=3)), pw, b2)),
        ((2, 3, 5, 5), (3, 1, 3, 3), (4, 3, 1, 1), (3,), (4,))),
    "local_conv2d": (
        lambda x, w, b: fk.local_conv2d(x, w, b, activation="hardswish"),
        lambda x, w, b: F.hardswish(torch.einsum(
            "nihwkl,hwoikl->nohw", x.unfold(2, 2, 1).unfold(3, 2, 1), w) + b[:, None, None]),
        ((2, 3, 4, 4), (3, 3, 2, 3, 2, 2), (2,))),
    "deform_conv2d-mask": (
        lambda x, o, w, b, m: fk.deform_conv2d(x, o, w, b, padding=1, mask=m,
                                               activation=("leaky_relu", -0.2)),
        lambda x, o, w, b, m: F.leaky_relu(torchvision.ops.deform_conv2d(
            x, o, w, b, padding=1, mask=m), -0.2),
        ((1, 2, 4, 4), (1, 18, 4, 4), (3, 2, 3, 3), (3,), (1, 9, 4, 4))),
}


@pytest.mark.parametrize("case", sorted(TORCH_BACKEND_CASES))
def test_torch_backend_runs_the_operators_forward_and_backward(case):
    ours, theirs, shapes = TORCH_BACKEND_CASES[case]
    tensors = [_double(*shape) for shape in shapes]
    with fk.use_backend("torch"):
        out = ours(*tensors)
        grads = torch.autograd.grad(out, tensors, torch.ones_like(out))
    expected = theirs(*tensors)
    expected_grads = torch.autograd.grad(expected, tensors, torch.ones_like(expected))
    torch.testing.assert_close(out, expected)
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want)


def test_differentiating_a_call_made_without_needs_grad_is_refused_when_it_would_be_wrong():
    x, w = _double(1, 2, 4, 4), _double(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"foveal::conv2d with activation 'silu' needs "
                                           r"needs_grad=True"):
        torch.ops.foveal.conv2d(x, w, None, None, [1, 1], [1, 1], [1, 1], 1, False, "silu", 0.0,
                                False)
