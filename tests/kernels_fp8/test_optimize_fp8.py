"""optimize(model, precision="fp8"): whole networks against their FP32 features, what the report
says ran in FP8, calibration and dynamic scales, and the FP8 modules' dtype rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fp8_reference import emulated_fp8, fit_batchnorms
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


def _features(build, size: int = 64) -> nn.Module:
    """The network's pooled features (classifier dropped), float32, seeded weights and
    BatchNorm statistics fitted to smooth random images."""
    torch.manual_seed(0)
    model = build()
    if hasattr(model, "fc"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    return fit_batchnorms(model, [_images(16, size, seed) for seed in (10, 11)])


def _cosines(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(got.double(), expected.double(), dim=1)


@pytest.mark.slow
def test_resnet18_fp8_features_on_the_kernels():
    """resnet18 at 64x64 with calibrated scales on the FP8 kernels (interpreter, ~2 minutes),
    against its FP32 features, image by image.

    With random weights the network amplifies rounding: e4m3 quantization itself, emulated
    with PyTorch ops (fp8_reference.emulated_fp8), leaves cosine similarities of 0.978-0.983,
    below the 0.99 issue 17 hoped for. So the kernels must match the emulation's figure, and
    reach 0.97; the features differ enough between images for the figure to mean something.
    """
    model = _features(torchvision.models.resnet18)
    images = _images(3, 64, seed=1)
    calibration = [_images(4, 64, seed=s) for s in (2, 3)]
    with torch.no_grad():
        expected = model(images)
        fast = fk.optimize(model, precision="fp8", calibration=calibration)
        got = fast(images)
        emulated = emulated_fp8(model, images, calibration)
    report = fast.report
    assert len(report.fp8) == 18 and all("input scale" in line for line in report.fp8)
    assert dict(report.not_fp8) == {
        "conv1": "excluded (fp8_exclude=('first', 'last'))",
        "layer4.1.conv2": "excluded (fp8_exclude=('first', 'last'))"}
    assert sum(isinstance(m, Conv2dFp8) for m in fast.modules()) == 18
    assert "18 in FP8" in str(report) and "fp8   layer1.0.conv1 (input scale" in str(report)
    between = F.cosine_similarity(expected[:, None].double(), expected[None].double(), dim=2)
    assert between.min() < 0.95  # informative features
    cosines, reference = _cosines(got, expected), _cosines(emulated, expected)
    assert got.dtype == torch.float32
    assert ((cosines - reference).abs() <= 5e-3).all(), (cosines.tolist(), reference.tolist())
    assert cosines.median() >= 0.97, cosines.tolist()


def test_dynamic_scales_and_exclusions():
    """Without calibration every eligible convolution quantizes its input by its own amax, as
    the emulation does; fp8_exclude=() leaves none out (torch backend: the kernels'
    arithmetic, fast)."""
    model = _features(torchvision.models.resnet18)
    images = _images(2, 64, seed=4)
    with torch.no_grad():
        expected = model(images)
        fast = fk.optimize(model, precision="fp8")
        with fk.use_backend("torch"):
            got = fast(images)
        emulated = emulated_fp8(model, images)
    assert len(fast.report.fp8) == 18
    assert all("dynamic input scale" in line for line in fast.report.fp8)
    assert ((_cosines(got, expected) - _cosines(emulated, expected)).abs() <= 5e-3).all()
    every = fk.optimize(model, precision="fp8", fp8_exclude=())
    assert len(every.report.fp8) == 20 and every.report.not_fp8 == []
    named = fk.optimize(model, precision="fp8", fp8_exclude=("layer2.0.downsample.0", "last"))
    assert [name for name, _ in named.report.not_fp8] == ["layer2.0.downsample.0",
                                                          "layer4.1.conv2"]


def test_mobilenet_blocks_run_their_1x1_in_fp8_when_calibrated():
    """Fused depthwise-separable blocks take FP8 for their 1x1 with a calibrated intermediate;
    depthwise convolutions on their own stay. (No accuracy figure: a random MobileNetV2 turns
    even 0.1% noise on its convolutions' inputs into cosine 0.99, so FP8's 2-3% means nothing
    here.)"""
    model = _features(lambda: torchvision.models.mobilenet_v2(width_mult=0.5))
    images = _images(2, 64, seed=5)
    with torch.no_grad():
        calibrated = fk.optimize(model, precision="fp8", calibration=[_images(4, 64, seed=6)])
        dynamic = fk.optimize(model, precision="fp8")
        with fk.use_backend("torch"):
            got = calibrated(images)
    blocks = [m for m in calibrated.modules() if isinstance(m, DepthwiseSeparableConv2dFp8)]
    assert len(blocks) == 17 and all(m.pw_weight.dtype == FP8 for m in blocks)
    assert len(calibrated.report.fp8) == 17 + 16  # blocks and the expanding 1x1s
    assert dict(calibrated.report.not_fp8) == {
        "features.0.0": "excluded (fp8_exclude=('first', 'last'))",
        "features.18.0": "excluded (fp8_exclude=('first', 'last'))"}
    unfused = fk.optimize(model, precision="fp8", depthwise_separable=False)
    assert sum(why.startswith("depthwise") for _, why in unfused.report.not_fp8) == 17
    why_dynamic = dict(dynamic.report.not_fp8)
    assert sum("needs a calibrated scale" in why for why in why_dynamic.values()) == 17
    assert got.shape == (2, 1280) and torch.isfinite(got).all()


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
