"""deform_conv2d against torchvision.ops.deform_conv2d in float64: forward and every gradient."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from deform_cases import (
    SCALES,
    Case,
    float64_leaves,
    make_inputs,
    reductions,
    reference,
    run_and_compare,
)

from foveal.kernels import deform_conv2d
from tolerances import assert_close_to_reference

CASES = {
    "samples leave the image": Case(offset_scale=3.0),
    "integer offsets on pixels and borders": Case(size=(5, 5), padding=(0, 1),
                                                  integer_offsets=True),
    "offset and weight groups straddle": Case(channels=6, out_channels=4, groups=2,
                                              offset_groups=3, kernel=(3, 2), stride=(1, 2),
                                              padding=(1, 0), dilation=(2, 1)),
    "dcnv1 many offset groups": Case(channels=8, offset_groups=4, modulated=False,
                                     kernel=(2, 3), stride=(2, 1), padding=(0, 2),
                                     dilation=(1, 2), size=(7, 6)),
    "finer weight groups": Case(batch=1, channels=12, out_channels=8, groups=4, offset_groups=2,
                                bias=False),
    "several channel blocks": Case(batch=1, channels=40, out_channels=36, size=(5, 5),
                                   offset_scale=1.0),
    "1x1 strided": Case(kernel=(1, 1), stride=(2, 3), padding=(0, 0), size=(7, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float64_forward_and_gradients_match_torchvision(name):
    case = CASES[name]
    run_and_compare(case, make_inputs(case))


def test_zero_offsets_equal_conv2d():
    case = Case(channels=6, out_channels=4, groups=2, stride=(2, 1), padding=(1, 2),
                dilation=(1, 2), modulated=False, size=(7, 8))
    t = make_inputs(case)
    t["offset"].zero_()
    leaves = {k: t[k].clone().requires_grad_() for k in ("input", "weight", "bias")}
    out = deform_conv2d(leaves["input"], t["offset"], leaves["weight"], leaves["bias"],
                        case.stride, case.padding, case.dilation)
    conv_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    ref = F.conv2d(conv_leaves["input"], conv_leaves["weight"], conv_leaves["bias"],
                   case.stride, case.padding, case.dilation, case.groups)
    assert_close_to_reference(out.detach(), ref.detach(), reduction=reductions(case)["output"])
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    refs = torch.autograd.grad(ref, list(conv_leaves.values()), grad_out)
    for name, grad, ref_grad in zip(leaves, grads, refs, strict=True):
        assert_close_to_reference(grad, ref_grad, reduction=reductions(case)[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision_against_float64(dtype, channels_last):
    case = Case(batch=1, channels=8, out_channels=6, offset_groups=2, size=(6, 6))
    t = make_inputs(case, dtype)
    if channels_last:
        t["input"] = t["input"].to(memory_format=torch.channels_last)
    out = run_and_compare(case, t)
    assert out.dtype == dtype
    expected = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected)


def test_channels_last_input_gradient_keeps_layout():
    case = Case(batch=2, channels=6, out_channels=4)
    t = make_inputs(case)
    t["input"] = t["input"].to(memory_format=torch.channels_last).requires_grad_()
    out = deform_conv2d(t["input"], t["offset"], t["weight"], padding=1, mask=t["mask"])
    assert out.is_contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(out.sum(), [t["input"]])
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_tensors():
    case = Case(batch=2, channels=4, out_channels=5, size=(6, 7), offset_groups=2)
    t = make_inputs(case)
    oh, ow = case.output_size
    # input: a strided window of a larger image; offset: stored with channels innermost;
    # weight: transposed storage; mask: one map broadcast over the batch (stride 0).
    big = torch.randn(2, 9, 13, 16, dtype=torch.float64)
    t["input"] = big[:, 2:6, 1:13:2, 3:10]
    t["offset"] = t["offset"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    t["weight"] = t["weight"].transpose(0, 1).contiguous().transpose(0, 1)
    t["mask"] = torch.rand(1, 2 * case.taps, oh, ow, dtype=torch.float64).expand(2, -1, -1, -1)
    assert not any(t[k].is_contiguous() for k in ("input", "offset", "weight", "mask"))
    grad_out = torch.randn(2, 10, oh, ow, dtype=torch.float64)[:, ::2]
    run_and_compare(case, t, wanted=("input", "offset", "weight", "bias"), grad_out=grad_out)


@pytest.mark.parametrize("wanted", [("offset", "mask"), ("weight",), ("input", "bias")])
def test_subsets_of_gradients(wanted):
    case = Case(batch=1, channels=4, out_channels=3, offset_groups=2)
    run_and_compare(case, make_inputs(case), wanted=wanted)


_ACTIVATIONS = {"relu": F.relu, "silu": F.silu,
                ("leaky_relu", -0.5): lambda z: F.leaky_relu(z, -0.5)}


@pytest.mark.parametrize("activation", list(_ACTIVATIONS))
def test_fused_epilogue_and_its_gradients(activation):
    case = Case(batch=1, channels=4, out_channels=6, size=(5, 6))
    t = make_inputs(case)
    names = ("input", "offset", "weight", "bias", "mask")
    for name in names:
        t[name].requires_grad_()
    residual = torch.randn(1, 6, *case.output_size, dtype=torch.float64, requires_grad=True)
    out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], case.stride,
                        case.padding, case.dilation, t["mask"], activation=activation,
                        residual=residual)
    leaves = float64_leaves(t)
    ref_residual = residual.detach().clone().requires_grad_()
    ref = _ACTIVATIONS[activation](reference(leaves, case) + ref_residual)
    limits = reductions(case)
    assert_close_to_reference(out.detach(), ref.detach(), reduction=limits["output"])
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [*(t[k] for k in names), residual], grad_out)
    refs = torch.autograd.grad(ref, [*(leaves[k] for k in names), ref_residual], grad_out)
    for name, grad, ref_grad in zip((*names, "residual"), grads, refs, strict=True):
        assert_close_to_reference(grad, ref_grad, reduction=limits.get(name, 1),
                                  scale=SCALES.get(name, 1.0))


def test_no_grad_path_equals_autograd_path():
    case = Case(batch=1)
    t = make_inputs(case)
    with torch.no_grad():
        fast = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
    tracked = deform_conv2d(t["input"].requires_grad_(), t["offset"], t["weight"], t["bias"], 1,
                            1, 1, t["mask"])
    assert torch.equal(fast, tracked.detach())


def test_empty_batch_gives_empty_output():
    case = Case(batch=0)
    t = make_inputs(case)
    out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
    assert out.shape == (0, case.out_channels, *case.output_size)


def test_gradcheck_float64():
    # Sample positions a fraction 0.2-0.8 into their cells: finite differences stay inside one
    # bilinear cell, where the function is smooth.
    case = Case(batch=1, channels=2, out_channels=2, size=(4, 5), kernel=(2, 2),
                offset_groups=2, padding=(1, 0))
    t = make_inputs(case)
    offset = torch.randint(-2, 3, t["offset"].shape).double()
    t["offset"] = offset + 0.2 + 0.6 * torch.rand_like(offset)
    inputs = tuple(t[k].requires_grad_() for k in ("input", "offset", "weight", "bias", "mask"))

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, case.stride, case.padding, case.dilation,
                             mask)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_int64_index_path(monkeypatch):
    # Tensors past 2**31 elements switch the kernels to int64 offsets; too big for a test, so
    # force that path on a small case (the deterministic gather included).
    from foveal.kernels import deform_gather, deform_kernels

    monkeypatch.setattr(deform_kernels, "needs_int64", lambda *tensors: True)
    monkeypatch.setattr(deform_gather, "needs_int64", lambda *tensors: True)
    case = Case(batch=1, channels=6, out_channels=4, groups=2, offset_groups=3)
    run_and_compare(case, make_inputs(case))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        run_and_compare(case, make_inputs(case), wanted=("input",))
    finally:
        torch.use_deterministic_algorithms(previous)


def test_torch_backend_runs_torchvision_with_the_epilogue(monkeypatch):
    from foveal.kernels import BackendUnavailable, use_backend

    case = Case(batch=1)
    t = make_inputs(case)
    residual = torch.randn(1, case.out_channels, *case.output_size, dtype=torch.float64)
    with use_backend("torch"):
        out = deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"],
                            activation="relu", residual=residual)
        assert torch.allclose(out, F.relu(reference(t, case) + residual))
        monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # as if not installed
        with pytest.raises(BackendUnavailable, match="torchvision is not installed"):
            deform_conv2d(t["input"], t["offset"], t["weight"], mask=t["mask"], padding=1)
