"""optimize(): torchvision models and hand-built graphs against the unmodified model in float64.

Whole models run on foveal's torch backend (the same fusion, PyTorch's convolutions: the graph
rewrite is what is tested, quickly); truncated ones and a small MobileNetV2 run the Triton
kernels through the interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from batchnorm_statistics import randomize_batchnorms
from torch import nn

import foveal.kernels as fk


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-10 * scale


def _check_optimized(model: nn.Module, x: torch.Tensor, backend: str | None = None):
    """optimize(model) computes what model does on x (on `backend`, if given); returns it."""
    with torch.no_grad():
        expected = model(x)
        optimized = fk.optimize(model)
        if backend is None:
            _close(optimized(x), expected)
        else:
            with fk.use_backend(backend):
                _close(optimized(x), expected)
    return optimized


def _conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# model, input shape, launches after optimize besides the fused convolutions (counted by hand
# from torchvision's forward: pools, classifier), depthwise-separable pairs fused
TORCHVISION_CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(), (2, 3, 32, 40), 3, 0),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(width_mult=0.5), (1, 3, 32, 32),
                     2, 17),
    "r3d_18": (lambda: torchvision.models.video.r3d_18(num_classes=7), (1, 3, 4, 16, 16), 2, 0),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_CASES))
def test_optimized_torchvision_model_computes_the_same_function(name):
    build, shape, other_launches, pairs = TORCHVISION_CASES[name]
    torch.manual_seed(0)
    model = randomize_batchnorms(build())
    x = torch.randn(shape, dtype=torch.float64)
    report = _check_optimized(model, x, backend="torch").report
    assert report.launches_after == _conv_count(model) - pairs + other_launches
    assert report.launches_after < report.launches_before
    assert sum("DepthwiseSeparableConv2d" in line for line in report.fused) == pairs
    assert report.left == []


def test_model_is_left_unchanged():
    model = randomize_batchnorms(torchvision.models.resnet18())
    types_before = [type(m) for m in model.modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    fk.optimize(model)
    assert [type(m) for m in model.modules()] == types_before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())


def _truncated_resnet18() -> nn.Module:
    net = torchvision.models.resnet18()
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)


def _truncated_r3d_18() -> nn.Module:
    net = torchvision.models.video.r3d_18()
    return nn.Sequential(net.stem, net.layer1, net.layer2)


@pytest.mark.parametrize("build,shape", [
    (_truncated_resnet18, (1, 3, 24, 24)),
    (lambda: torchvision.models.mobilenet_v2(width_mult=0.25), (1, 3, 32, 32)),
    (_truncated_r3d_18, (1, 3, 2, 8, 8)),
], ids=["resnet18-layer2", "mobilenet_v2", "r3d_18-layer2"])
def test_optimized_models_on_the_triton_kernels(build, shape):
    """Folded BatchNorms, residual and activation epilogues, downsampling shortcuts and fused
    depthwise-separable launches through the interpreter (deeper stages repeat the same code)."""
    torch.manual_seed(0)
    model = randomize_batchnorms(build())
    x = torch.randn(shape, dtype=torch.float64)
    assert fk.backend_for(x.device) == "interpreter"
    _check_optimized(model, x)


class _Patterns(nn.Module):
    """Fusable and non-fusable shapes of graph, each written a different way."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.a_bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect", bias=False)
        self.shared = nn.Conv2d(6, 6, 1)
        self.up = nn.ConvTranspose2d(6, 5, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(5)
        self.tanh_gelu = nn.GELU(approximate="tanh")
        self.line = nn.Conv1d(5, 3, 3)

    def forward(self, x):
        a = F.leaky_relu(self.a_bn(self.a(x)), 0.2)       # bn + functional leaky_relu
        b = self.b(a)
        b = torch.relu(a + b)                             # residual first, torch.relu
        c = self.shared(b)
        d = c.sigmoid() + c                               # c read twice: no epilogue fusion
        e = self.shared(d)                                # the same module called again
        e += d                                            # in-place add into the conv output
        f = self.tanh_gelu(self.up_bn(self.up(e)))        # tanh-gelu is not foveal's gelu
        g = self.line(f.flatten(2))
        return g + 1.0                                    # a constant is not a residual


def test_fusion_patterns_and_their_limits():
    torch.manual_seed(0)
    model = randomize_batchnorms(_Patterns())
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    optimized = _check_optimized(model, x)
    fused = "\n".join(optimized.report.fused)
    assert "a + a_bn + leaky_relu -> foveal Conv2d (BatchNorm folded, ('leaky_relu', 0.2))" in fused
    assert "(residual, relu)" in fused
    assert "shared -> foveal Conv2d\n" in fused + "\n"          # plain: c is read twice
    assert "(residual)" in fused                                   # e += d
    assert "up + up_bn -> foveal ConvTranspose2d (BatchNorm folded)" in fused
    assert "line -> foveal Conv1d\n" in fused + "\n"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in optimized.modules()) == 0
    assert sum(isinstance(m, nn.GELU) for m in optimized.modules()) == 1


class _AddsIntoItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = x * 2
        z = y.add_(self.conv(x))  # mutates y: fusing would lose the mutation `y * z` reads
        return y * z


def test_in_place_add_into_the_other_operand_is_not_fused():
    model = _AddsIntoItsInput().double().eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    optimized = _check_optimized(model, x)
    assert optimized.report.fused == ["conv -> foveal Conv2d"]


def test_functional_convolutions_from_a_traced_graph_are_fused():
    """torchvision's feature extractor traces subclassed convolutions into F.conv3d calls."""
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = randomize_batchnorms(_truncated_r3d_18())
    extractor = create_feature_extractor(model, {"1": "layer1", "2": "layer2"})
    assert any(n.target is F.conv3d for n in extractor.graph.nodes)
    x = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = extractor(x)
        optimized = fk.optimize(extractor)
        with fk.use_backend("torch"):
            got = optimized(x)
    assert set(got) == {"layer1", "layer2"}
    for name in got:
        _close(got[name], expected[name])
    assert optimized.report.launches_after == _conv_count(model)


def test_training_mode_and_untraceable_models_are_refused():
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fk.optimize(nn.Sequential(nn.Conv2d(1, 1, 1)))

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match=r"could not trace DataDependent.*patch\(model\)"):
        fk.optimize(DataDependent().eval())


def test_optimized_model_moves_and_casts_like_a_module():
    model = randomize_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    optimized = fk.optimize(model).float()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(optimized(x), model(x.double()).float(), atol=1e-5)
    assert all(p.dtype == torch.float32 for p in optimized.parameters())


class _WithTorchvisionDeform(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.ops import DeformConv2d

        self.offsets = nn.Conv2d(3, 18, 3, padding=1)
        self.dcn = DeformConv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.dcn(x, self.offsets(x))))


def test_torchvision_deform_conv_is_kept_whole_and_swapped():
    torch.manual_seed(0)
    model = randomize_batchnorms(_WithTorchvisionDeform())
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    optimized = _check_optimized(model, x, backend="torch")
    assert type(optimized.dcn) is fk.nn.DeformConv2d and optimized.report.left == []


class _KeywordConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        return F.relu(F.conv2d(input=x, weight=self.weight, padding=1))


def test_keyword_arguments_and_no_shared_parameters():
    model = _KeywordConv().double().eval()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    optimized = _check_optimized(model, x)
    assert optimized.report.fused == ["weight + relu -> foveal Conv2d (relu)"]
    model.float()  # the optimised copy is not cast with it
    assert all(p.dtype == torch.float64 for p in optimized.parameters())
