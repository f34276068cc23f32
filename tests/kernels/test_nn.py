"""nn modules, patch() and fold_batchnorm against torch.nn in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import foveal.kernels as fk


def _torch_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 4, (3, 2), stride=(2, 1), groups=2, bias=False)),
        nn.Flatten(),
    ).double()


def test_patch_swaps_convs_and_keeps_outputs_and_parameters():
    model = _torch_model()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    expected = model(x)
    params_before = [id(p) for p in model.parameters()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    report = fk.patch(model)
    assert [name for name, _ in report.replaced] == ["0", "2.0"] and report.left == []
    assert isinstance(model[0], fk.nn.Conv2d) and isinstance(model[2][0], fk.nn.Conv2d)
    assert [id(p) for p in model.parameters()] == params_before
    assert all(torch.equal(state_before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(model(x), expected, atol=1e-10)


def test_patched_model_trains_through_foveal_backward():
    model = _torch_model()
    fk.patch(model)
    reference = _torch_model()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-8)


@pytest.mark.parametrize("module_type,shape", [(fk.nn.Conv1d, (2, 4, 9)),
                                               (fk.nn.Conv3d, (1, 4, 4, 5, 6))])
def test_modules_with_fused_activation_and_residual(module_type, shape):
    module = module_type(4, 5, 3, padding=1, activation="silu").double()
    torch_module = getattr(nn, module_type.__name__)(4, 5, 3, padding=1).double()
    torch_module.load_state_dict(module.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    r = torch.randn(shape[0], 5, *shape[2:], dtype=torch.float64)
    assert torch.allclose(module(x, residual=r), F.silu(torch_module(x) + r), atol=1e-10)
    assert "activation='silu'" in repr(module)


def test_invalid_activation_rejected_at_construction():
    with pytest.raises(ValueError, match="activation must be None or one of"):
        fk.nn.Conv2d(3, 4, 3, activation="swish")


def _random_batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_matches_conv_then_bn(with_bias):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=with_bias).double()
    bn = _random_batchnorm(5)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    weight, bias = fk.fold_batchnorm(conv.weight, conv.bias, bn)
    assert torch.allclose(fk.conv2d(x, weight, bias, padding=1), bn(conv(x)), atol=1e-10)


def test_fold_batchnorm_for_transposed_weight_layout():
    deconv = nn.ConvTranspose2d(4, 5, 3, stride=2).double()
    bn = _random_batchnorm(5)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    weight, bias = fk.fold_batchnorm(deconv.weight, deconv.bias, bn, transposed=True)
    folded = F.conv_transpose2d(x, weight, bias, stride=2)
    assert torch.allclose(folded, bn(deconv(x)), atol=1e-10)


def test_fold_batchnorm_errors():
    conv = nn.Conv2d(3, 5, 3)
    with pytest.raises(ValueError, match="bn has 4 channels but the convolution has 5"):
        fk.fold_batchnorm(conv.weight, conv.bias, nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="no running statistics"):
        fk.fold_batchnorm(conv.weight, conv.bias, nn.BatchNorm2d(5, track_running_stats=False))
    with pytest.raises(TypeError, match="bn must be a BatchNorm1d/2d/3d, got LayerNorm"):
        fk.fold_batchnorm(conv.weight, conv.bias, nn.LayerNorm(5))


def test_patch_swaps_subclasses_that_keep_the_base_forward():
    """torchvision's R3D-18 builds its convolutions from Conv3DSimple, a Conv3d subclass."""
    import torchvision

    model = torchvision.models.video.r3d_18(num_classes=5).double().eval()
    x = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64)
    expected = model(x)
    report = fk.patch(model)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    assert sorted(name for name, _ in report.replaced) == sorted(convs)
    assert all(type(model.get_submodule(name)) is fk.nn.Conv3d for name in convs)
    assert report.left == []
    with fk.use_backend("torch"):
        assert torch.allclose(model(x), expected, atol=1e-10)


class _OwnForward(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_patch_reports_what_it_leaves_and_why():
    model = nn.Sequential(_OwnForward(2, 2, 1), nn.LazyConv2d(3, 1), nn.Conv2d(2, 2, 1))
    report = fk.patch(model)
    assert report.replaced == [("2", "Conv2d -> foveal Conv2d")]
    assert report.left == [("0", "_OwnForward overrides Conv2d's forward"),
                           ("1", "a lazy module not yet initialised (run it once first)")]
    assert type(model[0]) is _OwnForward
    assert "replaced 1 module(s) with foveal's, left 2" in str(report)
    root = fk.patch(nn.Conv2d(1, 1, 1))
    assert root.replaced == [] and "Conv2d.from_torch" in root.left[0][1]


@pytest.mark.parametrize("name,args", [
    ("Conv1d", (4, 6, 3)), ("Conv2d", (4, 6, (3, 2))), ("Conv3d", (4, 6, 3)),
    ("ConvTranspose1d", (4, 6, 3)), ("ConvTranspose2d", (4, 6, 2)),
    ("ConvTranspose3d", (4, 6, (1, 2, 2))),
])
def test_state_dicts_load_both_ways(name, args):
    kwargs = {"stride": 2, "groups": 2, "bias": True}
    ours, theirs = getattr(fk.nn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    fresh = getattr(nn, name)(*args, **kwargs)
    fresh.load_state_dict(ours.state_dict())
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in fresh.state_dict().items())
