"""Bad arguments to the FP8 convolutions raise before any launch, naming the argument."""

from __future__ import annotations

import pytest
import torch

import foveal.kernels as fk
from foveal.kernels import launch
from foveal.kernels.fp8 import fp8_unavailable

FP8 = torch.float8_e4m3fn


def _x(*shape):
    return torch.randn(*shape).to(FP8)


def _scales(channels=4):
    return torch.tensor(0.01), torch.full((channels,), 0.01)


X, W = (1, 3, 8, 8), (4, 3, 3, 3)
S, WS = _scales()


@pytest.mark.parametrize("call,error,message", [
    (lambda: fk.conv2d_fp8(torch.randn(X), S, _x(*W), WS), TypeError,
     r"conv2d_fp8: input must be float8_e4m3fn \(see quantize_fp8 and quantize_weight_fp8\), "
     r"got torch.float32"),
    (lambda: fk.conv2d_fp8(_x(*X), S, torch.randn(W).half(), WS), TypeError,
     r"conv2d_fp8: weight must be float8_e4m3fn"),
    (lambda: fk.conv2d_fp8(_x(*X).tolist(), S, _x(*W), WS), TypeError,
     r"input must be a torch.Tensor, got list"),
    (lambda: fk.conv2d_fp8(_x(3, 8), S, _x(*W), WS), ValueError, r"input must be 3-D or 4-D"),
    (lambda: fk.conv3d_fp8(_x(3, 8, 8), S, _x(4, 3, 3, 3, 3), WS), ValueError,
     r"conv3d_fp8: input must be 4-D or 5-D"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), torch.full((3,), 0.01)), ValueError,
     r"weight_scale must have shape \(4,\) \(one scale per output channel\), got \(3,\)"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), 0.01), TypeError,
     r"weight_scale must be a float32 tensor of shape \(4,\), got float"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS.half()), TypeError,
     r"weight_scale must be float32, got torch.float16"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), torch.tensor([0.1, 0.0, 0.1, 0.1])), ValueError,
     r"weight_scale must be finite and > 0, got a value 0.0"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), torch.tensor([0.1, float("inf"), 0.1, 0.1])),
     ValueError, r"weight_scale must be finite and > 0, got a value inf"),
    (lambda: fk.conv2d_fp8(_x(*X), torch.ones(4), _x(*W), WS), ValueError,
     r"input_scale must be a scalar \(one element: a per-tensor scale\), got shape \(4,\)"),
    (lambda: fk.conv2d_fp8(_x(*X), float("nan"), _x(*W), WS), ValueError,
     r"input_scale must be finite and > 0, got nan"),
    (lambda: fk.conv2d_fp8(_x(*X), -1.0, _x(*W), WS), ValueError,
     r"input_scale must be finite and > 0, got -1.0"),
    (lambda: fk.conv2d_fp8(_x(*X), torch.tensor(float("-inf")), _x(*W), WS), ValueError,
     r"input_scale must be finite and > 0, got a value -inf"),
    (lambda: fk.conv2d_fp8(_x(*X), None, _x(*W), WS), TypeError,
     r"input_scale must be a float or a one-element float32 tensor, got NoneType"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, out_dtype=torch.float64), ValueError,
     r"out_dtype must be torch.float16, torch.bfloat16 or torch.float32, got torch.float64"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, out_dtype=FP8), ValueError,
     r"out_dtype must be torch.float16, torch.bfloat16 or torch.float32"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, out_dtype="float16"), TypeError,
     r"out_dtype must be a torch.dtype, got str"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, torch.randn(3)), ValueError,
     r"bias must have shape \(4,\)"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, residual=torch.randn(1, 4, 8, 8)), ValueError,
     r"residual must have the output's shape \(1, 4, 6, 6\)"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS.to("meta")), ValueError,
     r"weight_scale is on meta but the operands are on cpu"),
    (lambda: fk.conv2d_fp8(_x(1, 6, 8, 8), S, _x(6, 1, 3, 3), torch.full((6,), 0.1), groups=6),
     ValueError, r"depthwise convolutions \(one input channel per group\) have no FP8 path"),
    (lambda: fk.conv2d_fp8(_x(1, 4, 8, 8), S, _x(*W), WS), ValueError,
     r"weight.shape\[1\] \* groups must equal the input channels"),
    (lambda: fk.conv2d_fp8(_x(*X), S, _x(*W), WS, activation="tanh"), ValueError,
     r"activation must be None or one of"),
    (lambda: fk.depthwise_separable_conv2d_fp8(_x(*X), torch.randn(3, 1, 3, 3), _x(4, 3, 1, 1),
                                               WS, S), TypeError,
     r"depthwise_separable_conv2d_fp8: x must be a float16, bfloat16 or float32 tensor, got "
     r"torch.float8_e4m3fn"),
    (lambda: fk.depthwise_separable_conv2d_fp8(torch.randn(X), torch.randn(3, 1, 3, 3),
                                               torch.randn(4, 3, 1, 1), WS, S), TypeError,
     r"pw_weight must be float8_e4m3fn"),
    (lambda: fk.depthwise_separable_conv2d_fp8(torch.randn(X), torch.randn(3, 1, 3, 3).half(),
                                               _x(4, 3, 1, 1), WS, S), ValueError,
     r"dw_weight has dtype torch.float16 but input has torch.float32"),
    (lambda: fk.depthwise_separable_conv2d_fp8(torch.randn(X), torch.randn(3, 2, 3, 3),
                                               _x(4, 3, 1, 1), WS, S), ValueError,
     r"dw_weight must have shape \(3, 1, kH, kW\)"),
    (lambda: fk.depthwise_separable_conv2d_fp8(torch.randn(X), torch.randn(3, 1, 3, 3),
                                               _x(4, 3, 1, 1), WS, 0.0), ValueError,
     r"mid_scale must be finite and > 0, got 0.0"),
    (lambda: fk.depthwise_separable_conv2d_fp8(torch.randn(X), torch.randn(3, 1, 3, 3),
                                               _x(4, 3, 1, 1), WS[:2], S), ValueError,
     r"pw_weight_scale must have shape \(4,\)"),
])
def test_bad_argument_is_named(call, error, message, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    for module in ("foveal.kernels.fp8", "foveal.kernels.quantize"):
        monkeypatch.setattr(f"{module}.launch_igemm", no_launch, raising=False)
        monkeypatch.setattr(f"{module}.launch_pointwise", no_launch, raising=False)
    with pytest.raises(error, match=message):
        call()


def test_gradients_are_refused():
    w8, w_scale = _x(*W), WS
    bias = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"conv2d_fp8 is inference only \(no backward\), but "
                                           r"bias requires a gradient: call it under "
                                           r"torch.no_grad\(\)"):
        fk.conv2d_fp8(_x(*X), S, w8, w_scale, bias)
    with torch.no_grad():
        assert fk.conv2d_fp8(_x(*X), S, w8, w_scale, bias).shape == (1, 4, 6, 6)


@pytest.mark.parametrize("target,reason", [
    (launch.PlanningTarget("A100", 80, 108, 166912),
     "FP8 convolutions need FP8 tensor cores, compute capability 8.9 or newer (Ada, Hopper); "
     "A100 has 8.0"),
    (launch.PlanningTarget("H100", 90, 132, 232448), None),
])
def test_gpus_without_fp8_tensor_cores_are_refused(target, reason, monkeypatch):
    """Meta tensors planned for a GPU stand for that GPU (foveal compilecheck)."""
    assert fp8_unavailable(torch.device("meta")) is None  # not planning: no GPU to judge
    monkeypatch.setattr("foveal.kernels.fp8.planning_target", lambda: target)
    assert fp8_unavailable(torch.device("meta")) == reason


def test_selfcheck_runs_fp8_only_where_fp8_tensor_cores_are(monkeypatch):
    from foveal.kernels import fp8, selfcheck

    cpu = torch.device("cpu")
    assert "conv2d_fp8" in selfcheck.checks_for(cpu)  # the interpreter runs it
    monkeypatch.setattr(fp8, "fp8_unavailable", lambda device: "compute capability 8.0")
    checks = selfcheck.checks_for(cpu)
    assert "conv2d_fp8" not in checks and "conv2d" in checks
