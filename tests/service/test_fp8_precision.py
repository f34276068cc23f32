"""precision = "float8": torchvision and python models on FP8 kernels, refused with a clear
message where those kernels cannot run (a CPU host or --backend torch, a GPU before 8.9)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tm
from batchnorm_statistics import randomize_batchnorms
from torchvision.models.feature_extraction import create_feature_extractor

import foveal.kernels as fk
from foveal.clients.local import LocalModel
from foveal.kernels.nn_fp8 import Conv2dFp8
from foveal.service.models import build_model
from foveal.service.models.registry import IMAGENET_INPUT
from foveal.service.repository import RepositoryError, load_repository
from foveal.service.server import check_precision, load_model

TORCHVISION_FP8 = """
[[models]]
name = "features"
kind = "torchvision"
architecture = "resnet18"
precision = "float8"
"""


def _config(tmp_path, text=TORCHVISION_FP8):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path, load_repository(path)[0]


def test_repository_takes_float8_for_traced_kinds_only(tmp_path):
    _, config = _config(tmp_path)
    assert config.precision == "float8"
    with pytest.raises(RepositoryError, match=r"\(g\): precision float8 is for torchvision and "
                                              r"python models .*; gabor models take float32, "
                                              r"float16 or bfloat16"):
        _config(tmp_path, '[[models]]\nname = "g"\nkind = "gabor"\nprecision = "float8"\n')


CPU_REFUSAL = (r"model 'features': precision float8 is refused on cpu: FP8 convolutions run on "
               r"foveal's Triton kernels on a CUDA GPU with compute capability 8.9 or newer "
               r"\(Ada, Hopper\), and this server runs PyTorch's ops \(--backend torch\); use "
               r"float32, float16 or bfloat16 here")


def test_refused_on_a_cpu_host(tmp_path):
    path, config = _config(tmp_path)
    with pytest.raises(ValueError, match=CPU_REFUSAL):
        load_model(config, "cpu", "torch")
    with pytest.raises(ValueError, match=CPU_REFUSAL):  # the clients' in-process mode too
        LocalModel("features", path, backend="torch", device="cpu")


def test_refused_on_a_gpu_without_fp8_tensor_cores(tmp_path, monkeypatch):
    _, config = _config(tmp_path)
    monkeypatch.setattr("foveal.kernels.fp8.INTERPRETED", False)  # as on a GPU host
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"model 'features': precision float8 is refused on "
                                         r"cuda:0: FP8 convolutions need FP8 tensor cores, "
                                         r"compute capability 8.9 or newer \(Ada, Hopper\); "
                                         r"NVIDIA A100 has 8.0; use float16 or bfloat16 on "
                                         r"this GPU"):
        check_precision(config, cuda, "triton")
    with pytest.raises(ValueError, match=r"this server runs PyTorch's ops \(--backend torch\)"):
        check_precision(config, cuda, "torch")
    for capability in ((8, 9), (9, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        check_precision(config, cuda, "triton")  # Ada and Hopper: accepted


def test_a_float8_model_runs_its_convolutions_in_fp8(tmp_path):
    """The model itself (built past the refusal, on PyTorch's emulation of the FP8 kernels):
    the served features are those of optimize(precision="fp8") of the same network, 18 of its
    20 convolutions in FP8 with dynamic scales."""
    reference = randomize_batchnorms(tm.resnet18())
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = build_model("m", "torchvision", IMAGENET_INPUT, torch.device("cpu"), torch.float32,
                        str(tmp_path / "w.pt"), architecture="resnet18", fp8=True)
    model.select_outputs(("flatten",))
    assert model.precision == "float8 (float32 between convolutions)"
    assert "FP8 kernels" in model.description
    assert sum(isinstance(m, Conv2dFp8) for m in model._net.modules()) == 18
    x = torch.randn(2, 3, 64, 64)
    direct = fk.optimize(create_feature_extractor(reference, ["flatten"]), precision="fp8")
    with torch.no_grad(), fk.use_backend("torch"):
        got = model.forward(x, frozenset({"flatten"}))["flatten"]
        expected = direct.float()(x)["flatten"]
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r"model 'g': gabor models have no FP8 precision"):
        build_model("g", "gabor", IMAGENET_INPUT, torch.device("cpu"), torch.float32, fp8=True)
