"""The built-in analytic models, called directly: shapes, selectivity, and the kernel paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from foveal.service.models import KINDS, InputSpec, build_model
from foveal.service.models import gabor as gabor_module
from service_helpers import drifting_grating, grating, labels

CPU = torch.device("cpu")


def _gabor(size: int = 227):
    return build_model("g", "gabor", InputSpec(height=size, width=size), CPU, torch.float32)


def _motion(size: int = 24, frames: int = 8):
    return build_model("m", "motion-energy", InputSpec(kind="video", height=size, width=size,
                                                        frames=frames), CPU, torch.float32)


def _prepared(pixels: np.ndarray) -> torch.Tensor:
    """(..., H, W, C) uint8 -> normalised channels-first float, as the input spec says."""
    x = torch.from_numpy(pixels).double() / 255
    return ((x - 0.5) / 0.25).movedim(-1, 0).float()


def test_gabor_is_shaped_like_alexnets_first_layer():
    bank, pair_labels = gabor_module.filter_bank()
    assert bank.shape == (96, 3, 11, 11) and len(pair_labels) == 48
    model = _gabor()
    with fk.use_backend("torch"):
        out = model.forward(torch.zeros(1, 3, 227, 227), frozenset({"simple", "energy"}))
    assert out["simple"].shape == (1, 96, 55, 55) and out["energy"].shape == (1, 48, 55, 55)
    assert model.output_shape("simple", (3, 227, 227)) == (96, 55, 55)
    # even filters are zero-mean: a uniform image excites nothing
    assert out["simple"].abs().max() < 1e-4


def test_gabor_simple_cells_are_rectified_filter_responses():
    bank, _ = gabor_module.filter_bank()
    x = torch.randn(2, 3, 31, 35, dtype=torch.float64)
    with fk.use_backend("torch"):
        out = _gabor(31).forward(x.float(), frozenset({"simple", "energy"}))
    z = F.conv2d(x, bank, stride=4)
    torch.testing.assert_close(out["simple"].double(), F.relu(z), atol=1e-4, rtol=1e-4)
    energy = (z[:, 0::2] ** 2 + z[:, 1::2] ** 2).sqrt()
    torch.testing.assert_close(out["energy"].double(), energy, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("orientation", [0.0, 45.0, 90.0, 112.5])
def test_an_oriented_grating_excites_the_matching_orientation_channel_most(orientation):
    model = _gabor()
    x = _prepared(grating(orientation, 5.0, 227))[None]
    with fk.use_backend("torch"):
        energy = model.forward(x, frozenset({"energy"}))["energy"].mean(dim=(0, 2, 3))
    best = labels(model.outputs["energy"].channels[int(energy.argmax())])
    assert best["pathway"] == "luminance" and float(best["orientation"]) == orientation


@pytest.mark.parametrize("direction,opposite", [(0, 180), (180, 0), (90, 270)])
def test_a_drifting_grating_excites_its_direction_more_than_the_opposite(direction, opposite):
    model = _motion()
    clip = _prepared(drifting_grating(direction, 4.0, 8, 24))[None]
    with fk.use_backend("torch"):
        energy = model.forward(clip, frozenset({"energy"}))["energy"].mean(dim=(0, 2, 3, 4))
    channels = [labels(c) for c in model.outputs["energy"].channels]

    def response(d):
        return next(float(e) for e, c in zip(energy, channels, strict=True)
                    if float(c["direction"]) == d and c["wavelength"] == "4")

    assert response(direction) > 10 * response(opposite)
    assert labels(model.outputs["energy"].channels[int(energy.argmax())])["direction"] == \
        f"{direction:g}"


def test_triton_interpreter_path_matches_pytorchs_ops_on_a_tiny_input():
    """The Triton kernels (through the interpreter here) compute what the torch path does."""
    model = _gabor(15)
    x = torch.randn(1, 3, 15, 15)
    outputs = frozenset({"simple", "energy"})
    with fk.use_backend("torch"):
        reference = model.forward(x, outputs)
    with fk.use_backend("triton"):
        assert fk.backend_for(CPU) == "interpreter"
        kernels = model.forward(x, outputs)
    for name in outputs:
        torch.testing.assert_close(kernels[name], reference[name], atol=1e-4, rtol=1e-4)


def test_unknown_kind_and_weights_for_analytic_models_are_rejected():
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        build_model("x", "nope", InputSpec(), CPU, torch.float32)
    with pytest.raises(ValueError, match="analytic and take no weights"):
        build_model("x", "gabor", InputSpec(), CPU, torch.float32, weights="w.pt")
    with pytest.raises(ValueError, match="take video input"):
        build_model("x", "motion-energy", InputSpec(), CPU, torch.float32)


def test_selecting_outputs_checks_names():
    model = _gabor(32)
    with pytest.raises(ValueError, match="unknown output 'edges'"):
        model.select_outputs(("edges",))
    with pytest.raises(ValueError, match="must be among the served outputs"):
        model.select_outputs(("simple",), ("energy",))
    model.select_outputs(("energy",))
    assert list(model.outputs) == ["energy"] and model.default_outputs == ("energy",)
    assert set(KINDS) >= {"gabor", "motion-energy"}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 2e-3), (torch.float16, 1e-2)])
def test_models_on_the_gpu_match_float64_at_full_size(dtype, tolerance):
    """The served models' Triton path on CUDA, at their built-in sizes, against float64."""
    cuda = torch.device("cuda")
    gabor = build_model("g", "gabor", KINDS["gabor"].default_input, cuda, dtype)
    x = torch.randn(8, 3, 227, 227, device=cuda)
    bank, _ = gabor_module.filter_bank()
    with fk.use_backend("triton"):
        simple = gabor.forward(x.to(dtype), frozenset({"simple"}))["simple"]
    reference = F.relu(F.conv2d(x.double(), bank.to(cuda), stride=4))
    error = (simple.double() - reference).abs().max() / reference.abs().max()
    assert simple.shape == (8, 96, 55, 55) and error < tolerance
    motion = build_model("m", "motion-energy", KINDS["motion-energy"].default_input, cuda, dtype)
    clips = torch.randn(2, 3, 16, 112, 112, device=cuda)
    with fk.use_backend("triton"):
        energy = motion.forward(clips.to(dtype), frozenset({"energy"}))["energy"]
    reference_model = build_model("m64", "motion-energy", KINDS["motion-energy"].default_input,
                                  cuda, torch.float64)
    with fk.use_backend("torch"):
        expected = reference_model.forward(clips.double(), frozenset({"energy"}))
    error = (energy.double() - expected["energy"].double()).abs().max()
    assert energy.shape == (2, 16, 10, 26, 26)
    assert error / expected["energy"].abs().max() < 4 * tolerance
