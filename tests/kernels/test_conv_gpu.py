"""The same comparisons at real ResNet-50 / ResNeXt-50 / R3D-18 layer sizes, on a CUDA GPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from tolerances import assert_close_to_reference

pytestmark = pytest.mark.gpu

# (name, input shape, weight shape, kwargs)
LAYERS = [
    ("resnet50.conv1", (8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ("resnet50.layer1.conv1x1", (8, 64, 56, 56), (64, 64, 1, 1), {}),
    ("resnet50.layer1.conv3x3", (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("resnet50.layer1.expand", (8, 64, 56, 56), (256, 64, 1, 1), {}),
    ("resnet50.layer2.down3x3", (8, 128, 56, 56), (128, 128, 3, 3), dict(stride=2, padding=1)),
    ("resnet50.layer3.conv3x3", (8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1)),
    ("resnet50.layer4.reduce", (8, 2048, 7, 7), (512, 2048, 1, 1), {}),
    ("resnext50.layer1.grouped", (8, 128, 56, 56), (128, 4, 3, 3), dict(padding=1, groups=32)),
    ("resnext50.layer3.grouped", (8, 512, 14, 14), (512, 16, 3, 3),
     dict(padding=1, groups=32)),
    ("deeplab.aspp.rate12", (2, 256, 33, 33), (256, 256, 3, 3), dict(padding=12, dilation=12)),
]
VIDEO_LAYERS = [
    ("r3d18.stem", (2, 3, 16, 112, 112), (64, 3, 3, 7, 7),
     dict(stride=(1, 2, 2), padding=(1, 3, 3))),
    ("r3d18.layer2", (2, 128, 8, 28, 28), (128, 128, 3, 3, 3), dict(padding=1)),
    ("r2plus1d.spatial", (2, 64, 16, 56, 56), (144, 64, 1, 3, 3), dict(padding=(0, 1, 1))),
    ("r2plus1d.temporal", (2, 144, 16, 56, 56), (64, 144, 3, 1, 1), dict(padding=(1, 0, 0))),
]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _run(name, input_shape, weight_shape, kwargs, dtype, channels_last):
    device = "cuda"
    x = torch.randn(input_shape, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    w = torch.randn(weight_shape, device=device, dtype=dtype) / math.sqrt(
        math.prod(weight_shape[1:]))
    b = torch.randn(weight_shape[0], device=device, dtype=dtype)
    conv = fk.conv2d if x.dim() == 4 else fk.conv3d
    ref_conv = F.conv2d if x.dim() == 4 else F.conv3d
    out = conv(x, w, b, activation="relu", **kwargs)
    ref = F.relu(ref_conv(x.double(), w.double(), b.double(), **kwargs))
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last and x.dim() == 4
                             else torch.channels_last_3d if channels_last
                             else torch.contiguous_format)
    # weights scaled by 1/sqrt(K): each product has magnitude ~1/sqrt(K)
    reduction = math.prod(weight_shape[1:])
    assert_close_to_reference(out, ref, reduction=reduction, scale=1 / math.sqrt(reduction))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs", LAYERS, ids=[c[0] for c in LAYERS])
def test_image_layers(name, input_shape, weight_shape, kwargs, dtype):
    _run(name, input_shape, weight_shape, kwargs, dtype, channels_last=True)


@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs", LAYERS[:3],
                         ids=[c[0] for c in LAYERS[:3]])
def test_image_layers_nchw(name, input_shape, weight_shape, kwargs):
    _run(name, input_shape, weight_shape, kwargs, torch.float16, channels_last=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs", VIDEO_LAYERS,
                         ids=[c[0] for c in VIDEO_LAYERS])
def test_video_layers(name, input_shape, weight_shape, kwargs, dtype):
    _run(name, input_shape, weight_shape, kwargs, dtype, channels_last=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_resnet_layer(dtype):
    x = torch.randn(8, 64, 56, 56, device="cuda", dtype=dtype).to(
        memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(128, 64, 3, 3, device="cuda", dtype=dtype) / 24).requires_grad_()
    b = torch.randn(128, device="cuda", dtype=dtype, requires_grad=True)
    out = fk.conv2d(x, w, b, stride=2, padding=1, activation="relu")
    grad = torch.randn_like(out)
    dx, dw, db = torch.autograd.grad(out, (x, w, b), grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.relu(F.conv2d(x64, w64, b64, stride=2, padding=1))
    rx, rw, rb = torch.autograd.grad(ref, (x64, w64, b64), grad.double())
    assert_close_to_reference(dx, rx, reduction=128 * 9, scale=1 / 24)
    positions = out[:, 0].numel()
    assert_close_to_reference(dw, rw, reduction=positions, factor=16)
    assert_close_to_reference(db, rb, reduction=positions, factor=16)


def test_beyond_int32_offsets():
    """A clip whose input exceeds 2**31 elements: indices must not wrap."""
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip("needs 16 GiB of free GPU memory")
    x = torch.randn(1, 8, 64, 2048, 2049, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    w = torch.randn(4, 8, 1, 3, 3, device="cuda", dtype=torch.float16) / 8
    out = fk.conv3d(x, w, padding=(0, 1, 1))
    # check the far end of the tensor, where 32-bit offsets would have wrapped
    tail = x[:, :, -2:].double()
    ref = F.conv3d(tail, w.double(), padding=(0, 1, 1))
    assert_close_to_reference(out[:, :, -2:], ref, reduction=72, scale=1 / 8)
