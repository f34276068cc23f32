"""optimize(model, precision="fp8"): whole networks against their FP32 features, what the report
says ran in FP8, calibration and dynamic scales, and the FP8 modules' dtype rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from batchnorm_statistics import randomize_batchnorms
from torch import nn

import foveal.kernels as fk
from foveal.kernels.nn_fp8 import Conv2dFp8, DepthwiseSeparableConv2dFp8

FP8 = torch.float8_e4m3fn


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images (bilinearly upsampled noise), normalised per channel."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, size // 8, size // 8, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (images - images.mean(dim=(0, 2, 3), keepdim=True)) / images.std(dim=(0, 2, 3),
                                                                               keepdim=True)


def _features(build) -> nn.Module:
    """The network with random BatchNorms, float32, its classifier dropped: pooled features."""
    torch.manual_seed(0)
    model = randomize_batchnorms(build()).float()
    if hasattr(model, "fc"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    return model


def _cosines(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(got.double(), expected.double(), dim=1)


@pytest.mark.slow
def test_resnet18_fp8_features_match_fp32_on_the_kernels():
    """The issue's bar: median cosine similarity >= 0.99 per image at 64x64, calibrated scales,
    on the FP8 kernels (interpreter; ~2 minutes)."""
    model = _features(torchvision.models.resnet18)
    images = _images(3, 64, seed=1)
    calibration = [_images(4, 64, seed=s) for s in (2, 3)]
    with torch.no_grad():
        expected = model(images)
        fast = fk.optimize(model, precision="fp8", calibration=calibration)
        got = fast(images)
    report = fast.report
    assert len(report.fp8) == 18 and all("input scale" in line for line in report.fp8)
    assert dict(report.not_fp8) == {
        "conv1": "excluded (fp8_exclude=('first', 'last'))",
        "layer4.1.conv2": "excluded (fp8_exclude=('first', 'last'))"}
    assert sum(isinstance(m, Conv2dFp8) for m in fast.modules()) == 18
    cosines = _cosines(got, expected)
    assert got.dtype == torch.float32 and cosines.median() >= 0.99, cosines.tolist()
    assert "18 in FP8" in str(report) and "fp8   layer1.0.conv1 (input scale" in str(report)


def test_dynamic_scales_and_exclusions():
    """Without calibration every eligible convolution quantizes its input by its own amax;
    fp8_exclude=() leaves none out (torch backend: the same arithmetic, fast)."""
    model = _features(torchvision.models.resnet18)
    images = _images(2, 64, seed=4)
    with torch.no_grad():
        expected = model(images)
        fast = fk.optimize(model, precision="fp8", fp8_exclude=())
        with fk.use_backend("torch"):
            got = fast(images)
    assert len(fast.report.fp8) == 20 and fast.report.not_fp8 == []
    assert all("dynamic input scale" in line for line in fast.report.fp8)
    assert _cosines(got, expected).min() >= 0.99
    named = fk.optimize(model, precision="fp8", fp8_exclude=("layer2.0.downsample.0", "last"))
    assert [name for name, _ in named.report.not_fp8] == ["layer2.0.downsample.0",
                                                          "layer4.1.conv2"]


def test_mobilenet_blocks_run_their_1x1_in_fp8_when_calibrated():
    model = _features(lambda: torchvision.models.mobilenet_v2(width_mult=0.5))
    images = _images(2, 64, seed=5)
    with torch.no_grad():
        expected = model(images)
        calibrated = fk.optimize(model, precision="fp8", calibration=[_images(4, 64, seed=6)])
        dynamic = fk.optimize(model, precision="fp8")
        with fk.use_backend("torch"):
            got = calibrated(images)
            got_dynamic = dynamic(images)
    blocks = [m for m in calibrated.modules() if isinstance(m, DepthwiseSeparableConv2dFp8)]
    assert len(blocks) == 17 and all(m.pw_weight.dtype == FP8 for m in blocks)
    kept = dict(calibrated.report.not_fp8)
    assert kept["features.0.0"] == "excluded (fp8_exclude=('first', 'last'))"
    assert kept["features.18.0"] == "excluded (fp8_exclude=('first', 'last'))"
    why_dynamic = dict(dynamic.report.not_fp8)
    assert sum("needs a calibrated scale" in why for why in why_dynamic.values()) == 17
    for result in (got, got_dynamic):
        assert _cosines(result, expected).min() >= 0.99


def test_fp8_buffers_keep_their_dtype_through_half_and_to():
    model = _features(torchvision.models.resnet18)
    fast = fk.optimize(model, precision="fp8", calibration=[_images(2, 32, seed=7)])
    conv = fast.get_submodule("fused.layer1_0_conv1")
    scale = conv.input_scale.clone()
    fast.half()
    assert conv.weight.dtype == FP8 and conv.weight_scale.dtype == torch.float32
    assert conv.bias.dtype == torch.float32 and torch.equal(conv.input_scale, scale)
    assert fast.get_submodule("fused.conv1").weight.dtype == torch.float16  # kept conv follows
    with torch.no_grad(), fk.use_backend("torch"):
        out = fast(_images(1, 32, seed=8).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert fast.to(torch.bfloat16).get_submodule("fused.layer1_0_conv1").weight.dtype == FP8


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(precision="int8"), ValueError, r"precision must be None \(the model's own\) or 'fp8'"),
    (dict(calibration=[torch.zeros(1, 3, 8, 8)]), ValueError,
     r"calibration batches are for precision='fp8'"),
    (dict(precision="fp8", calibration=[]), ValueError, r"got no batches"),
    (dict(precision="fp8", fp8_exclude=("layer9",)), ValueError,
     r"no convolution named 'layer9'; use 'first', 'last' or one of \['conv1', "),
    (dict(precision="fp8", fp8_exclude="first"), TypeError,
     r"fp8_exclude must be a sequence of names, got the string 'first'"),
    (dict(precision="fp8", calibration=[torch.full((1, 3, 16, 16), float("nan"))]), ValueError,
     r"the input of convolution conv1 holds NaN or inf"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        fk.optimize(_features(torchvision.models.resnet18), **kwargs)
