"""Served `torchvision` and `python` models: torchvision's own module, loaded from the user's
weights, optimised with foveal, returning the nodes the entry names (float64 on CPU)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
import torchvision.models as tm
from batchnorm_statistics import randomize_batchnorms
from torchvision.models.feature_extraction import create_feature_extractor

import foveal.kernels as fk
from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.models import build_model
from foveal.service.models.registry import IMAGENET_INPUT, KINETICS_INPUT
from foveal.service.repository import RepositoryError, load_repository
from service_helpers import raw_image, running, to_numpy

CPU = torch.device("cpu")


def _served(weights, architecture, outputs=(), spec=IMAGENET_INPUT, dtype=torch.float64):
    model = build_model("m", "torchvision", spec, CPU, dtype, weights, architecture=architecture)
    model.select_outputs(tuple(outputs))
    return model


@pytest.mark.parametrize("architecture,build,shape,outputs", [
    ("resnet18", tm.resnet18, (2, 3, 40, 48), ("layer2", "layer4", "flatten", "fc")),
    ("mobilenet_v2", tm.mobilenet_v2, (1, 3, 32, 32), ("features.3", "flatten")),
    ("r3d_18", tm.video.r3d_18, (1, 3, 4, 24, 24), ("layer3", "flatten")),
])
def test_served_features_equal_torchvision_run_directly(architecture, build, shape, outputs,
                                                        tmp_path):
    reference = randomize_batchnorms(build())
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    spec = KINETICS_INPUT if len(shape) == 5 else IMAGENET_INPUT
    model = _served(str(tmp_path / "weights.pt"), architecture, outputs, spec)
    x = torch.randn(shape, dtype=torch.float64)
    expected = create_feature_extractor(reference, list(outputs))(x)
    with fk.use_backend("torch"):
        got = model.forward(x, frozenset(outputs))
    for name in outputs:
        assert got[name].shape == expected[name].shape, name
        assert model.output_shape(name, shape[1:]) == tuple(expected[name].shape[1:]), name
        scale = max(1.0, expected[name].abs().max().item())
        assert (got[name] - expected[name]).abs().max().item() <= 1e-9 * scale, name


def test_default_output_is_the_classifier_input():
    assert _served(None, "resnet18").default_outputs == ("flatten",)
    assert _served(None, "mobilenet_v2").default_outputs == ("flatten",)  # not the Dropout
    assert _served(None, "mobilenet_v2").output_shape("flatten", (3, 64, 64)) == (1280,)


def test_weights_files_wrapped_or_prefixed_load(tmp_path):
    reference = randomize_batchnorms(tm.resnet18())
    state = reference.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    model = _served(str(tmp_path / "w.pt"), "resnet18", ("fc",))
    assert model.weights == str(tmp_path / "w.pt")
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with fk.use_backend("torch"):
        got = model.forward(x, frozenset({"fc"}))["fc"]
    assert torch.allclose(got, reference(x), atol=1e-9)


def test_classifier_size_follows_the_weights(tmp_path):
    torch.save(tm.resnet18(num_classes=10).state_dict(), tmp_path / "w.pt")
    model = _served(str(tmp_path / "w.pt"), "resnet18", ("fc",), dtype=torch.float32)
    assert model.output_shape("fc", (3, 224, 224)) == (10,)


def test_weights_that_do_not_fit_are_named(tmp_path):
    torch.save(tm.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match=r"does not fit torchvision's resnet50: missing "
                                         r"\['layer1.0.conv3.*wrong shape "
                                         r"\['layer1.0.conv1.weight \(64, 64, 3, 3\)"):
        _served(str(tmp_path / "r18.pt"), "resnet50")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable PyTorch weights file"):
        _served(str(tmp_path / "junk.pt"), "resnet18")


def test_without_weights_a_seeded_initialisation_says_so(caplog):
    first = _served(None, "r3d_18", spec=KINETICS_INPUT, dtype=torch.float32)
    second = _served(None, "r3d_18", spec=KINETICS_INPUT, dtype=torch.float32)
    assert first.weights == "seeded-random"
    assert all(torch.equal(p, q) for p, q in zip(first._module.parameters(),
                                                 second._module.parameters(), strict=True))
    assert any("seeded" in r.getMessage() for r in caplog.records)


def test_python_factory_model_with_options(tmp_path):
    from served_factory import small_net

    reference = randomize_batchnorms(small_net(width=6))
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = build_model("p", "python", IMAGENET_INPUT, CPU, torch.float64, str(tmp_path / "w.pt"),
                        factory="served_factory:small_net", options={"width": 6})
    model.select_outputs(("1", "4"))
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    expected = create_feature_extractor(reference, ["1", "4"])(x)
    got = model.forward(x, frozenset({"1", "4"}))  # the Triton kernels, interpreted
    for name in ("1", "4"):
        assert torch.allclose(got[name], expected[name], atol=1e-9)
    assert model.output_shape("4", (3, 9, 9)) == (6, 5, 5)


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "torchvision"}, "torchvision models need architecture"),
    ({"kind": "torchvision", "architecture": "resnet9000"},
     "unknown torchvision architecture 'resnet9000'"),
    ({"kind": "python", "factory": "served_factory"}, "must be 'package.module:function'"),
    ({"kind": "python", "factory": "no_such_module:f"}, "cannot import 'no_such_module'"),
    ({"kind": "python", "factory": "served_factory:nothing"}, "has no 'nothing'"),
    ({"kind": "python", "factory": "served_factory:not_a_module"}, "returned int, not a"),
    ({"kind": "python", "factory": "served_factory:small_net", "options": {"depth": 2}},
     "rejected its options"),
    ({"kind": "gabor", "architecture": "resnet18"}, "gabor models take no architecture"),
])
def test_bad_settings_are_named(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=message):
        build_model("m", kind, IMAGENET_INPUT, CPU, torch.float32, **kwargs)


def test_repository_entries_for_the_new_kinds(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "v"\nkind = "torchvision"\narchitecture = "r3d_18"\n'
                    '[[models]]\nname = "p"\nkind = "python"\nfactory = "m:f"\n'
                    'input = { kind = "video", size = [32, 32], frames = 4 }\n'
                    '[models.options]\nwidth = 3\n')
    video, python = load_repository(path)
    assert video.input == KINETICS_INPUT and video.architecture == "r3d_18"
    assert python.input.kind == "video" and python.options == {"width": 3}
    path.write_text('[[models]]\nname = "x"\nkind = "torchvision"\narchitecture = "nope"\n')
    with pytest.raises(RepositoryError, match=r"\(x\): unknown torchvision architecture"):
        load_repository(path)
    path.write_text('[[models]]\nname = "x"\nkind = "gabor"\ninput = { kind = "video" }\n')
    with pytest.raises(RepositoryError, match="input: kind is for python models only"):
        load_repository(path)


def test_server_serves_a_torchvision_model_from_a_weights_file(tmp_path):
    reference = randomize_batchnorms(tm.resnet18()).float()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    (tmp_path / "models.toml").write_text(
        '[[models]]\nname = "r18"\nkind = "torchvision"\narchitecture = "resnet18"\n'
        'weights = "w.pt"\noutputs = ["layer1", "flatten"]\ninput = { size = [32, 32] }\n')
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with running(models_file=str(tmp_path / "models.toml"), backend="torch") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        info = stub.GetModel(pb.GetModelRequest(name="r18"))
        assert info.weights.endswith("w.pt")
        assert [o.name for o in info.outputs] == ["layer1", "flatten"]
        reply = stub.ExtractImage(pb.ExtractImageRequest(model="r18", images=[raw_image(pixels)],
                                                         outputs=["layer1", "flatten"]))
    got = {f.name: to_numpy(f.tensor) for f in reply.images[0].features}
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    x = ((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
    expected = create_feature_extractor(reference, ["layer1", "flatten"])(x)
    for name in ("layer1", "flatten"):
        np.testing.assert_allclose(got[name], expected[name][0].detach().numpy(), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("architecture,build,shape", [
    ("resnet50", tm.resnet50, (4, 3, 224, 224)),
    ("mobilenet_v2", tm.mobilenet_v2, (4, 3, 224, 224)),
    ("r3d_18", tm.video.r3d_18, (2, 3, 16, 112, 112)),
])
def test_served_torchvision_models_on_the_gpu_in_fp16(architecture, build, shape, tmp_path):
    """Full-size served networks on the compiled Triton kernels (fp16, channels-last) against
    torchvision in float64."""
    reference = randomize_batchnorms(build()).cuda()
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    spec = KINETICS_INPUT if len(shape) == 5 else IMAGENET_INPUT
    model = build_model("m", "torchvision", spec, torch.device("cuda"), torch.float16,
                        str(tmp_path / "w.pt"), architecture=architecture)
    model.select_outputs(("flatten",))
    x = torch.randn(shape, device="cuda", dtype=torch.float64)
    with fk.use_backend("triton"):
        got = model.forward(x.half(), frozenset({"flatten"}))["flatten"]
    expected = create_feature_extractor(reference, ["flatten"])(x)["flatten"]
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert got.shape == expected.shape and error < 3e-2
