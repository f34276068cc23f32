"""FP8 convolutions at real ResNet-50 layer sizes on a GPU with FP8 tensor cores (sm_89+)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fp8_reference import QUANTIZED_TOLERANCE, dequantized, relative_error

import foveal.kernels as fk
from tolerances import assert_close_to_reference

pytestmark = pytest.mark.gpu

# (name, input shape, weight shape, kwargs)
LAYERS = [
    ("resnet50.layer1.conv3x3", (32, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("resnet50.layer2.down3x3", (32, 128, 56, 56), (128, 128, 3, 3), dict(stride=2, padding=1)),
    ("resnet50.layer4.conv3x3", (32, 512, 7, 7), (512, 512, 3, 3), dict(padding=1)),
    ("resnet50.layer1.expand", (32, 64, 56, 56), (256, 64, 1, 1), {}),
    ("resnet50.layer4.reduce", (32, 2048, 7, 7), (512, 2048, 1, 1), {}),
    ("resnext50.layer3.grouped", (8, 512, 14, 14), (512, 16, 3, 3), dict(padding=1, groups=32)),
]


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (sm_89+)")
@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs", LAYERS,
                         ids=[layer[0] for layer in LAYERS])
def test_real_layers_against_float64(name, input_shape, weight_shape, kwargs):
    """The tensor cores' FP8 partial sums (one BLOCK_K) sit well inside the float16 output's
    rounding, so the dequantized bound of the CPU tests holds."""
    x = torch.randn(input_shape, device="cuda").to(memory_format=torch.channels_last)
    w = torch.randn(weight_shape, device="cuda") / math.prod(weight_shape[1:]) ** 0.5
    bias = torch.randn(weight_shape[0], device="cuda")
    x8, x_scale = fk.quantize_fp8(x)
    w8, w_scale = fk.quantize_weight_fp8(w)
    out = fk.conv2d_fp8(x8, x_scale, w8, w_scale, bias, **kwargs, activation="relu")
    ref = F.relu(F.conv2d(dequantized(x8, x_scale), dequantized(w8, w_scale, 0), bias.double(),
                          **kwargs))
    assert_close_to_reference(out, ref, reduction=math.prod(weight_shape[1:]))
    exact = F.relu(F.conv2d(x.double(), w.double(), bias.double(), **kwargs))
    assert relative_error(out, exact) <= QUANTIZED_TOLERANCE


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (sm_89+)")
def test_resnet50_features_in_fp8():
    import torchvision
    from batchnorm_statistics import randomize_batchnorms

    torch.manual_seed(0)
    model = randomize_batchnorms(torchvision.models.resnet50()).float().cuda()
    model.fc = torch.nn.Identity()
    x = torch.randn(16, 3, 224, 224, device="cuda")
    with torch.no_grad():
        expected = model(x)
        fast = fk.optimize(model, precision="fp8", calibration=[x[:8]]).half()
        got = fast(x.half().to(memory_format=torch.channels_last))
    cosines = F.cosine_similarity(got.double(), expected.double(), dim=1)
    assert cosines.median() >= 0.99 and len(fast.report.fp8) == 51
