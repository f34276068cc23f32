"""The FP8 ops as PyTorch operators: opcheck, and FP8 models under torch.compile(fullgraph=True)
and torch.export (one graph for every batch size), matching eager."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._dynamo.testing
import torch.fx.experimental._config as fx_config
from torch import nn

import foveal.kernels as fk

FP8 = torch.float8_e4m3fn
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _fp8(*shape: int, device: str) -> torch.Tensor:
    return (torch.randn(*shape, device=device) * 4).to(FP8)


def _scales(channels: int, device: str) -> torch.Tensor:
    return torch.rand(channels, device=device) * 0.02 + 0.01


def _samples(device: str) -> dict[str, tuple]:
    """Operator arguments exactly as the Python functions pass them (batched, options resolved)."""
    x_cl = _fp8(2, 8, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 6, 5, 5, device=device, dtype=torch.float16)
    one = torch.tensor(0.05, device=device)
    return {
        "conv2d_fp8 3x3 relu residual": ("conv2d_fp8", (
            x_cl, one, _fp8(6, 8, 3, 3, device=device), _scales(6, device),
            torch.randn(6, device=device), residual, [1, 1], [1, 1], [1, 1], 1, False, "relu",
            0.0, torch.float16)),
        "conv2d_fp8 grouped same bfloat16": ("conv2d_fp8", (
            _fp8(1, 8, 6, 6, device=device), one, _fp8(4, 4, 2, 2, device=device),
            _scales(4, device), None, None, [1, 1], [0, 0], [1, 1], 2, True, None, 0.0,
            torch.bfloat16)),
        "conv2d_fp8 1x1 stride 2": ("conv2d_fp8", (
            x_cl, one, _fp8(6, 8, 1, 1, device=device), _scales(6, device), None, None, [2, 2],
            [0, 0], [1, 1], 1, False, "leaky_relu", 0.2, torch.float32)),
        "conv3d_fp8": ("conv3d_fp8", (
            _fp8(1, 4, 3, 4, 4, device=device), one, _fp8(4, 4, 2, 3, 3, device=device),
            _scales(4, device), None, None, [1, 1, 1], [0, 1, 1], [1, 1, 1], 1, False, "silu",
            0.0, torch.float16)),
        "depthwise_separable_conv2d_fp8": ("depthwise_separable_conv2d_fp8", (
            torch.randn(2, 8, 5, 5, device=device, dtype=torch.float16),
            torch.randn(8, 1, 3, 3, device=device, dtype=torch.float16),
            _fp8(6, 8, 1, 1, device=device), _scales(6, device), one,
            torch.randn(8, device=device, dtype=torch.float16), torch.randn(6, device=device),
            residual, [1, 1], [1, 1], [1, 1], False, "relu6", 0.0, None, 0.0, torch.float16)),
        "quantize_fp8": ("quantize_fp8", (
            torch.randn(2, 3, 4, 4, device=device).contiguous(memory_format=torch.channels_last),
            one)),
    }


def test_every_fp8_op_is_an_operator():
    assert {"conv2d_fp8", "conv3d_fp8", "depthwise_separable_conv2d_fp8",
            "quantize_fp8"} <= set(dir(torch.ops.foveal))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", sorted(_samples("meta")))
def test_opcheck_fp8_operators(sample, device):
    """Fake implementation (shape, dtype, strides), autograd registration and compiled against
    eager. opcheck's schema test compares inputs with torch.allclose, which PyTorch does not
    implement for float8 on the CPU, so the schema's promise (no input mutated, the output
    aliasing none) is checked here directly, bit for bit."""
    if device == "cuda" and fk.fp8_unavailable(torch.device("cuda")):
        pytest.skip("needs a GPU with FP8 tensor cores (sm_89+)")
    torch.manual_seed(0)
    name, args = _samples(device)[sample]
    operator = getattr(torch.ops.foveal, name).default
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    before = [t.view(torch.uint8).clone() if t.dtype == FP8 else t.clone() for t in tensors]
    out = operator(*args)
    for t, old in zip(tensors, before, strict=True):
        assert torch.equal(t.view(torch.uint8) if t.dtype == FP8 else t, old)
        assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    torch.library.opcheck(operator, args, test_utils=(
        "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))


def test_fp8_operators_on_meta_tensors_run_nothing():
    x = torch.empty(4, 16, 32, 32, device="meta", dtype=FP8, memory_format=torch.channels_last)
    w = torch.empty(32, 16, 3, 3, device="meta", dtype=FP8)
    scale = torch.empty((), device="meta")
    y = fk.conv2d_fp8(x, scale, w, torch.empty(32, device="meta"), stride=2, padding=1,
                      out_dtype=torch.bfloat16)
    assert (y.shape, y.dtype) == ((4, 32, 16, 16), torch.bfloat16)
    assert y.is_contiguous(memory_format=torch.channels_last)


class Fp8Net(nn.Module):
    """A small network whose middle convolutions and block fk.optimize converts to FP8."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 1), nn.ReLU())
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.head(self.body(self.stem(x))).mean(dim=(2, 3))


def _fp8_model(calibrated: bool) -> nn.Module:
    torch.manual_seed(0)
    model = Fp8Net().eval()
    calibration = [torch.randn(4, 3, 8, 8)] if calibrated else None
    return fk.optimize(model, precision="fp8", calibration=calibration)


@contextlib.contextmanager
def _one_graph_for_every_batch():
    with fx_config.patch(backed_size_oblivious=True):
        yield


@pytest.mark.parametrize("calibrated", [True, False], ids=["static", "dynamic"])
def test_fp8_model_compiles_in_one_graph_and_exports(calibrated):
    model = _fp8_model(calibrated)
    assert "fp8" in str(model).lower()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad(), _one_graph_for_every_batch():
        for size in (2, 1, 5):
            x = torch.randn(size, 3, 8, 8)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count == 1

    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(2, 3, 8, 8),),
                                      dynamic_shapes={"x": {0: batch}})
        targets = {str(node.target) for node in program.graph.nodes}
        assert {"foveal.conv2d_fp8.default", "foveal.quantize_fp8.default"} <= targets
        for size in (1, 3):
            x = torch.randn(size, 3, 8, 8)
            torch.testing.assert_close(program.module()(x), model(x))


def test_traced_scale_values_are_checked_when_run_eagerly():
    """Tracing skips the host-side scale check; an eager call still names the bad scale."""
    x8, w8 = _fp8(1, 4, 4, 4, device="cpu"), _fp8(4, 4, 1, 1, device="cpu")
    bad = torch.tensor([0.1, float("nan"), 0.1, 0.1])
    with pytest.raises(ValueError, match="weight_scale must be finite and > 0"):
        fk.conv2d_fp8(x8, 1.0, w8, bad)
