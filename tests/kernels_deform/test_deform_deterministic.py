"""Under torch.use_deterministic_algorithms(True) the input gradient is a fixed-order gather.

On the CPU interpreter every run is sequential, so bitwise equality of two runs proves little
here; the GPU version of the repeat test is in test_deform_gpu.py. What these tests pin down:
deterministic mode never reaches the atomic scatter, and the gather is correct.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from deform_cases import Case, make_inputs, run_and_compare

from foveal.kernels import deform, deform_conv2d


@contextlib.contextmanager
def deterministic_algorithms():
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@pytest.fixture
def input_grad_paths(monkeypatch):
    """Records which input-gradient path each backward takes: 'atomic' or 'gather'."""
    taken = []
    real_data_grad, real_gather = deform.data_grad, deform.input_grad_deterministic

    def data_grad(*args, need_input, **kwargs):
        if need_input:
            taken.append("atomic")
        return real_data_grad(*args, need_input=need_input, **kwargs)

    def gather(*args, **kwargs):
        taken.append("gather")
        return real_gather(*args, **kwargs)

    monkeypatch.setattr(deform, "data_grad", data_grad)
    monkeypatch.setattr(deform, "input_grad_deterministic", gather)
    return taken


def test_deterministic_mode_gathers_the_input_gradient(input_grad_paths):
    case = Case(batch=1, channels=6, out_channels=4, groups=2, offset_groups=3, offset_scale=3.0)
    t = make_inputs(case)
    t["input"] = t["input"].to(memory_format=torch.channels_last)
    with deterministic_algorithms():
        run_and_compare(case, t)
    assert input_grad_paths == ["gather"]


def test_default_mode_uses_the_atomic_scatter(input_grad_paths):
    case = Case(batch=1, channels=3, out_channels=2)
    run_and_compare(case, make_inputs(case), wanted=("input",))
    assert input_grad_paths == ["atomic"]


def test_deterministic_runs_repeat_bitwise():
    case = Case(batch=1, channels=4, out_channels=3, integer_offsets=True, modulated=False)
    t = make_inputs(case, torch.float32)
    x = t["input"].requires_grad_()
    grads = []
    with deterministic_algorithms():
        for _ in range(2):
            out = deform_conv2d(x, t["offset"], t["weight"], t["bias"], 1, 1)
            grads.append(torch.autograd.grad(out.square().sum(), [x])[0])
    assert torch.equal(grads[0], grads[1])
