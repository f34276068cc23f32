"""Transposed convolution at U-Net / FCN up-sampling sizes and its backward, on a CUDA GPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from tolerances import assert_close_to_reference

pytestmark = pytest.mark.gpu

LAYERS = [
    ("unet.up1", (8, 1024, 28, 28), (1024, 512, 2, 2), dict(stride=2)),
    ("unet.up3", (8, 256, 112, 112), (256, 128, 2, 2), dict(stride=2)),
    ("fcn8s.upscore2", (8, 21, 16, 16), (21, 21, 4, 4), dict(stride=2)),
    ("fcn8s.upscore8", (8, 21, 34, 34), (21, 21, 16, 16), dict(stride=8)),
    ("dcgan.up", (16, 256, 16, 16), (256, 128, 4, 4), dict(stride=2, padding=1)),
    ("video.up3d", (2, 128, 8, 28, 28), (128, 64, 2, 2, 2), dict(stride=2)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("name,input_shape,weight_shape,kwargs", LAYERS,
                         ids=[c[0] for c in LAYERS])
def test_layers(name, input_shape, weight_shape, kwargs, dtype):
    x = torch.randn(input_shape, device="cuda", dtype=dtype)
    x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    scale = 1 / math.sqrt(weight_shape[0])
    w = torch.randn(weight_shape, device="cuda", dtype=dtype) * scale
    b = torch.randn(weight_shape[1], device="cuda", dtype=dtype)
    op, ref_op = ((fk.conv_transpose2d, F.conv_transpose2d) if x.dim() == 4
                  else (fk.conv_transpose3d, F.conv_transpose3d))
    out = op(x, w, b, activation="relu", **kwargs)
    ref = F.relu(ref_op(x.double(), w.double(), b.double(), **kwargs))
    taps = math.prod(math.ceil(k / kwargs["stride"]) for k in weight_shape[2:])
    assert_close_to_reference(out, ref, reduction=weight_shape[0] * taps, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_backward_unet_layer(dtype):
    x = torch.randn(4, 256, 56, 56, device="cuda", dtype=dtype).to(
        memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(256, 128, 2, 2, device="cuda", dtype=dtype) / 16).requires_grad_()
    out = fk.conv_transpose2d(x, w, stride=2)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(F.conv_transpose2d(x64, w64, stride=2), (x64, w64),
                                 grad.double())
    assert_close_to_reference(dx, rx, reduction=128, scale=1 / 16)
    assert_close_to_reference(dw, rw, reduction=4 * 56 * 56, factor=16)
