"""Models using foveal under torch.compile(fullgraph=True) and torch.export.

A graph break would raise under fullgraph=True, and a compile counter shows one graph per
model. The fk.nn model runs foveal's kernels in Triton's interpreter; torchvision's ResNet-18
(optimized or patched) is too slow there, so its compiled and exported graphs run on the torch
backend, chosen when the operators run. Graph capture is the same on every backend.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch._dynamo.testing
import torch.fx.experimental._config as fx_config
import torchvision
from torch import nn

import foveal.kernels as fk


class FovealNet(nn.Module):
    """fk.nn layers (with activations, a residual, a deformable layer with its predictor)
    between torch layers."""

    def __init__(self):
        super().__init__()
        self.stem = fk.nn.Conv2d(3, 4, 3, padding=1, activation="relu")
        self.block = fk.nn.Conv2d(4, 4, 3, padding=1, activation="silu")
        self.bn = nn.BatchNorm2d(4)
        self.separable = fk.nn.DepthwiseSeparableConv2d(4, 4, 3, padding=1,
                                                        mid_activation="relu6")
        self.deform = fk.nn.DeformConv2d(4, 4, 3, padding=1)
        self.up = fk.nn.ConvTranspose2d(4, 2, 2, stride=2, activation="relu")
        self.video = fk.nn.Conv3d(2, 2, (2, 3, 3), padding=(0, 1, 1))

    def forward(self, x):
        y = self.stem(x)
        y = self.bn(self.block(y, residual=y))
        y = self.deform(self.separable(y))
        y = self.up(y)
        return self.video(torch.stack([y, y.flip(-1)], dim=2)).flatten(1, 2)


def foveal_net() -> FovealNet:
    torch.manual_seed(0)
    net = FovealNet().double()
    with torch.no_grad():  # a predictor that predicts: offsets and masks away from their start
        for p in net.deform.offset_conv.parameters():
            p.normal_(0, 0.3)
    return net


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _counted(model: nn.Module, backend: str = "aot_eager"):
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(model, backend=counter, fullgraph=True), counter


def _gradients(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return [out, *torch.autograd.grad(out.square().sum(), [x, *model.parameters()])]


@contextlib.contextmanager
def _one_graph_for_every_batch():
    """Torch specialises a size-1 dimension unless size-oblivious; then batch 1 shares the graph."""
    with fx_config.patch(backed_size_oblivious=True):
        yield


def _batch(size: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    x = torch.randn(size, *shape, dtype=dtype)
    torch._dynamo.mark_dynamic(x, 0)
    return x


def test_foveal_model_trains_compiled_in_one_graph_with_eager_gradients():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    expected = _gradients(foveal_net(), x)
    model = foveal_net()
    compiled, counter = _counted(model)
    got = _gradients(compiled, x)
    assert counter.frame_count == 1
    for value, want in zip(got, expected, strict=True):
        torch.testing.assert_close(value, want)


def test_foveal_model_inference_one_graph_for_every_batch_size():
    model = foveal_net().eval()
    compiled, counter = _counted(model)
    with torch.no_grad(), _one_graph_for_every_batch():
        for size in (3, 1, 2):
            x = _batch(size, 3, 6, 6)
            torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count == 1


class _Excite(nn.Module):
    """Foveal convolutions around torch ops that inductor generates code for."""

    def __init__(self):
        super().__init__()
        self.conv = fk.nn.Conv2d(3, 4, 3, padding=1, activation="relu")
        self.project = fk.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.project(y * torch.sigmoid(y.mean((2, 3), keepdim=True)))


def test_inductor_compiles_foveal_and_torch_layers_for_training_and_inference():
    torch.manual_seed(0)
    model = _Excite()
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    expected = _gradients(copy.deepcopy(model), x)
    compiled, counter = _counted(model, "inductor")
    got = _gradients(compiled, x)
    assert counter.frame_count == 1
    for value, want in zip(got, expected, strict=True):
        torch.testing.assert_close(value, want)
    compiled, counter = _counted(model, "inductor")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected[0])
    assert counter.frame_count == 1


def _foveal_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target) for node in program.graph.nodes
            if str(node.target).startswith("foveal.")}


def _export(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        return torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})


def test_foveal_model_exports_with_a_dynamic_batch():
    model = foveal_net().eval()
    program = _export(model, torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert _foveal_ops(program) == {"foveal.conv2d.default", "foveal.conv3d.default",
                                    "foveal.conv_transpose2d.default",
                                    "foveal.depthwise_separable_conv2d.default",
                                    "foveal.deform_conv2d.default"}
    with torch.no_grad():
        for size in (1, 3):
            x = torch.randn(size, 3, 6, 6, dtype=torch.float64)
            torch.testing.assert_close(program.module()(x), model(x))


def test_optimized_resnet18_compiles_and_exports():
    model = fk.optimize(resnet18().eval())
    compiled, counter = _counted(model)
    with fk.use_backend("torch"), torch.no_grad():
        with _one_graph_for_every_batch():
            for size in (2, 1, 64):
                x = _batch(size, 3, 32, 32, dtype=torch.float32)
                torch.testing.assert_close(compiled(x), model(x))
        assert counter.frame_count == 1
        program = _export(model, torch.randn(2, 3, 32, 32))
        assert {"foveal.conv2d.default"} == _foveal_ops(program)
        for size in (1, 64):
            x = torch.randn(size, 3, 32, 32)
            torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_patched_resnet18_compiles_and_exports(training):
    model = resnet18().double().train(training)
    fk.patch(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=training)
    with fk.use_backend("torch"), torch.set_grad_enabled(training):
        expected = _gradients(copy.deepcopy(model), x) if training else [model(x)]
        compiled, counter = _counted(model)
        got = _gradients(compiled, x) if training else [compiled(x)]
        assert counter.frame_count == 1
        for value, want in zip(got, expected, strict=True):
            torch.testing.assert_close(value, want)
        if not training:
            program = _export(model, x)
            assert _foveal_ops(program) == {"foveal.conv2d.default"}
            torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.gpu
def test_on_a_gpu_inductor_trains_and_export_runs_the_foveal_model():
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, device="cuda", requires_grad=True)
    expected = _gradients(foveal_net().cuda(), x)
    compiled, counter = _counted(foveal_net().cuda(), "inductor")
    got = _gradients(compiled, x)
    assert counter.frame_count == 1
    for value, want in zip(got, expected, strict=True):
        torch.testing.assert_close(value, want)
    model = foveal_net().cuda().eval()
    program = _export(model, x.detach())
    with torch.no_grad():
        for size in (1, 64):
            batch = torch.randn(size, 3, 16, 16, dtype=torch.float64, device="cuda")
            torch.testing.assert_close(program.module()(batch), model(batch))
