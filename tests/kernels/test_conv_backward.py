"""Backward of conv1d/2d/3d: gradcheck in float64 and gradients against PyTorch autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from tolerances import assert_close_to_reference

FOVEAL_CONV = {1: fk.conv1d, 2: fk.conv2d, 3: fk.conv3d}
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _inputs(input_shape, weight_shape, dtype=torch.float64, with_bias=True):
    x = torch.randn(input_shape, dtype=dtype, requires_grad=True)
    w = torch.randn(weight_shape, dtype=dtype, requires_grad=True)
    b = torch.randn(weight_shape[0], dtype=dtype, requires_grad=True) if with_bias else None
    return x, w, b


# One case per class of argument combination (layout, groups, stride phases, epilogue kinds).
GRADCHECK_CASES = [
    ("plain", (1, 3, 5, 6), (4, 3, 3, 3), dict(padding=1), None, False),
    ("per-axis", (1, 2, 7, 6), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0),
                                                  dilation=(1, 2)), None, False),
    ("groups", (2, 4, 5, 5), (6, 2, 2, 3), dict(groups=2, stride=(1, 2)), None, False),
    ("stride>kernel", (1, 2, 7, 7), (3, 2, 1, 2), dict(stride=(3, 2)), None, False),
    ("stride=dilation", (1, 2, 9, 6), (2, 2, 3, 2), dict(stride=2, dilation=2, padding=2),
     None, False),
    ("same-even", (1, 2, 6, 5), (3, 2, 2, 4), dict(padding="same", dilation=(1, 3)), None,
     False),
    ("relu+residual", (1, 3, 5, 6), (4, 3, 3, 3), dict(padding=1), "relu", True),
    ("gelu+residual", (1, 3, 5, 6), (4, 3, 3, 3), dict(padding=1), "gelu", True),
    ("silu", (1, 3, 5, 4), (3, 3, 3, 3), dict(padding=(0, 1)), "silu", False),
    ("hardswish", (1, 3, 5, 4), (3, 3, 3, 3), dict(padding=(0, 1)), "hardswish", False),
    ("sigmoid", (1, 3, 5, 4), (3, 3, 3, 3), dict(padding=(0, 1)), "sigmoid", False),
    ("relu6", (1, 3, 5, 4), (3, 3, 3, 3), dict(padding=(0, 1)), "relu6", False),
    ("leaky+", (1, 3, 5, 4), (3, 3, 3, 3), {}, ("leaky_relu", 0.1), False),
    ("leaky-", (1, 3, 5, 4), (3, 3, 3, 3), {}, ("leaky_relu", -0.3), False),
    ("conv1d", (2, 3, 9), (4, 3, 3), dict(stride=2, padding=2, dilation=2), "relu", True),
    ("conv3d", (1, 2, 4, 5, 4), (3, 2, 2, 3, 2), dict(stride=(1, 2, 1), padding=(1, 0, 1)),
     None, True),
]


@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs,activation,with_residual",
                         GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck(name, input_shape, weight_shape, kwargs, activation, with_residual):
    x, w, b = _inputs(input_shape, weight_shape)
    n = len(weight_shape) - 2
    out_shape = TORCH_CONV[n](x.detach(), w.detach(), **kwargs).shape
    r = torch.randn(out_shape, dtype=torch.float64, requires_grad=True) if with_residual else None

    def fn(x, w, b, r):
        return FOVEAL_CONV[n](x, w, b, activation=activation, residual=r, **kwargs)

    # fast mode compares random projections u^T J v of the analytical and numerical Jacobians
    assert torch.autograd.gradcheck(fn, (x, w, b, r), fast_mode=True)


def test_gradcheck_full_jacobian():
    """The complete Jacobian, element by element, on the smallest case with every argument."""
    x, w, b = _inputs((1, 2, 4, 3), (3, 2, 2, 2))
    r = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b, r):
        return fk.conv2d(x, w, b, stride=(2, 1), padding=(0, 1), dilation=(1, 2),
                         activation="gelu", residual=r)

    assert torch.autograd.gradcheck(fn, (x, w, b, r))


def test_gradcheck_channels_last():
    x, w, b = _inputs((2, 3, 5, 6), (4, 3, 3, 2))
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()

    def fn(x, w, b):
        return fk.conv2d(x, w, b, padding=(1, 0), activation="gelu")

    assert torch.autograd.gradcheck(fn, (x_cl, w, b), fast_mode=True)
    out = fn(x_cl, w, b)
    (dx,) = torch.autograd.grad(out.sum(), x_cl)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_gradients_match_torch(dtype, spatial):
    shapes = {1: ((2, 12, 15), (16, 12, 3)), 2: ((2, 12, 9, 10), (16, 6, 3, 3)),
              3: ((1, 6, 5, 6, 7), (8, 3, 3, 2, 3))}
    kwargs = {1: dict(stride=2, padding=1), 2: dict(stride=(2, 1), padding=1, groups=2),
              3: dict(stride=(1, 2, 1), padding=(1, 0, 1), groups=2)}[spatial]
    input_shape, weight_shape = shapes[spatial]
    x, w, b = _inputs(input_shape, weight_shape, dtype)
    out = FOVEAL_CONV[spatial](x, w, b, activation="silu", **kwargs)
    grad_out = torch.randn_like(out)
    dx, dw, db = torch.autograd.grad(out, (x, w, b), grad_out)

    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.silu(TORCH_CONV[spatial](x64, w64, b64, **kwargs))
    rx, rw, rb = torch.autograd.grad(ref, (x64, w64, b64), grad_out.double())

    assert dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    groups = kwargs.get("groups", 1)
    # dx sums over C_out/groups * taps; dw and db over every output position
    assert_close_to_reference(dx, rx, reduction=weight_shape[0] // groups
                              * math.prod(weight_shape[2:]))
    positions = out[:, 0].numel()
    assert_close_to_reference(dw, rw, reduction=positions, factor=16)
    assert_close_to_reference(db, rb, reduction=positions, factor=16)


def test_only_requested_gradients_are_computed():
    x, w, b = _inputs((1, 3, 6, 6), (4, 3, 3, 3), torch.float32)
    x.requires_grad_(False)
    out = fk.conv2d(x, w, b)
    out.sum().backward()
    assert x.grad is None and w.grad is not None and b.grad is not None
    ref = F.conv2d(x.double(), w.detach().double().requires_grad_(), None)
    assert torch.allclose(b.grad, torch.full_like(b, ref[:, 0].numel()))


def test_no_autograd_graph_without_grad():
    x, w, b = _inputs((1, 3, 6, 6), (4, 3, 3, 3), torch.float32)
    with torch.no_grad():
        out = fk.conv2d(x, w, b)
    assert out.grad_fn is None and not out.requires_grad


def test_training_step_reduces_loss():
    """A few SGD steps through foveal's backward fit a target conv's output."""
    torch.manual_seed(0)
    target = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    model = fk.nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y = target(x)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.3)
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
