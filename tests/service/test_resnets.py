"""The torchvision-compatible ResNets: same state_dict as torchvision, same outputs (float64,
BatchNorm folded, epilogues fused), weights files, and serving them."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
import torchvision.models as tm
import torchvision.models.video as tv

import foveal.kernels as fk
from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.models import KINDS, build_model
from foveal.service.models.architectures import ARCHS, ResNet
from service_helpers import raw_image, running, to_numpy

TORCHVISION = {
    "resnet18": tm.resnet18, "resnet34": tm.resnet34, "resnet50": tm.resnet50,
    "resnet101": tm.resnet101, "resnet152": tm.resnet152,
    "resnext50_32x4d": tm.resnext50_32x4d, "resnext101_32x8d": tm.resnext101_32x8d,
    "wide_resnet50_2": tm.wide_resnet50_2, "r3d_18": tv.r3d_18, "r2plus1d_18": tv.r2plus1d_18,
}
CPU = torch.device("cpu")


def test_every_arch_is_tested_against_torchvision():
    assert set(TORCHVISION) == set(ARCHS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_matches_torchvision(arch):
    with torch.device("meta"):
        reference = TORCHVISION[arch]()
        ours = ResNet(ARCHS[arch], num_classes=reference.fc.out_features)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


def _torchvision_with_random_statistics(arch: str) -> torch.nn.Module:
    model = TORCHVISION[arch]().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's own intermediate outputs, collected with forward hooks."""
    found: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, f"layer{i}").register_forward_hook(
        lambda _m, _i, out, key=f"layer{i}": found.__setitem__(key, out)) for i in range(1, 5)]
    hooks.append(model.avgpool.register_forward_hook(
        lambda _m, _i, out: found.__setitem__("pool", out.flatten(1))))
    with torch.no_grad():
        found["logits"] = model(x)
    for hook in hooks:
        hook.remove()
    return found


@pytest.mark.parametrize("arch,shape", [
    ("resnet18", (2, 3, 40, 48)), ("resnet50", (1, 3, 32, 32)),
    ("resnext50_32x4d", (1, 3, 32, 40)), ("r3d_18", (1, 3, 4, 24, 24)),
    ("r2plus1d_18", (2, 3, 4, 24, 20)),
])
def test_outputs_match_torchvision_in_float64(arch, shape, tmp_path):
    reference = _torchvision_with_random_statistics(arch)
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    model = build_model(arch, arch, KINDS[arch].default_input, CPU, torch.float64,
                        str(tmp_path / "weights.pt"))
    x = torch.randn(shape, dtype=torch.float64)
    expected = _features(reference, x)
    with fk.use_backend("torch"), torch.no_grad():
        got = model.forward(x, frozenset(expected))
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert model.output_shape(name, shape[1:]) == tuple(value.shape[1:]), name
        scale = value.abs().max().item()
        assert (got[name] - value).abs().max().item() <= 1e-9 * max(1.0, scale), name


def test_triton_kernels_run_the_fused_network():
    """resnet18's stem and first stage on the fused Triton path (the interpreter here): folded
    BatchNorms, ReLU and residual epilogues (deeper stages are the same code, slower here)."""
    reference = _torchvision_with_random_statistics("resnet18")
    model = build_model("r", "resnet18", KINDS["resnet18"].default_input, CPU, torch.float64)
    model._net = type(model._net)(_load(reference), CPU, torch.float64)
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        got = model.forward(x, frozenset({"layer1"}))["layer1"]
    assert fk.backend_for(CPU) == "interpreter"
    assert torch.allclose(got, _features(reference, x)["layer1"], atol=1e-9)


def _load(reference: torch.nn.Module) -> ResNet:
    ours = ResNet(ARCHS["resnet18"]).double()
    ours.load_state_dict(reference.state_dict())
    return ours


def test_weights_files_wrapped_or_prefixed_load(tmp_path):
    reference = _torchvision_with_random_statistics("resnet18")
    state = reference.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    model = build_model("r", "resnet18", KINDS["resnet18"].default_input, CPU, torch.float64,
                        str(tmp_path / "w.pt"))
    assert model.weights == str(tmp_path / "w.pt")
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with fk.use_backend("torch"), torch.no_grad():
        got = model.forward(x, frozenset({"logits"}))["logits"]
    assert torch.allclose(got, _features(reference, x)["logits"], atol=1e-9)


def test_classifier_size_follows_the_weights(tmp_path):
    reference = tm.resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = build_model("r", "resnet18", KINDS["resnet18"].default_input, CPU, torch.float32,
                        str(tmp_path / "w.pt"))
    assert model.output_shape("logits", (3, 224, 224)) == (10,)


def test_weights_that_do_not_fit_are_named(tmp_path):
    torch.save(tm.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match=r"does not fit resnet50: missing \['layer1.0.conv3.*"
                                         r"wrong shape \['layer1.0.conv1.weight \(64, 64, 3, 3\)"):
        build_model("r", "resnet50", KINDS["resnet50"].default_input, CPU, torch.float32,
                    str(tmp_path / "r18.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable PyTorch weights file"):
        build_model("r", "resnet18", KINDS["resnet18"].default_input, CPU, torch.float32,
                    str(tmp_path / "junk.pt"))


def test_without_weights_a_seeded_initialisation_says_so(caplog):
    spec = KINDS["r3d_18"].default_input
    first = build_model("v", "r3d_18", spec, CPU, torch.float32)
    second = build_model("v", "r3d_18", spec, CPU, torch.float32)
    assert first.weights == "seeded-random"
    assert torch.equal(first._net.fc_weight, second._net.fc_weight)
    assert any("seeded" in r.getMessage() for r in caplog.records)


def test_served_resnet_returns_torchvision_features(tmp_path):
    reference = TORCHVISION["resnet18"]().eval()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    (tmp_path / "models.toml").write_text(
        '[[models]]\nname = "r18"\nkind = "resnet18"\nweights = "w.pt"\n'
        'input = { size = [64, 64] }\n')
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with running(models_file=str(tmp_path / "models.toml")) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        info = stub.GetModel(pb.GetModelRequest(name="r18"))
        assert info.weights.endswith("w.pt") and info.outputs[5].name == "pool"
        reply = stub.ExtractImage(pb.ExtractImageRequest(model="r18", images=[raw_image(pixels)]))
    pooled = to_numpy(reply.images[0].features[0].tensor)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    x = ((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
    expected = _features(reference, x)["pool"][0].numpy()
    assert pooled.shape == (512,)
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-4)
