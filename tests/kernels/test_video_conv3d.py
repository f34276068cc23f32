"""conv3d at video-shaped arguments: R3D-18's stem, (2+1)D factorisation, layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import foveal.kernels as fk
from tolerances import assert_close_to_reference


def test_r3d18_stem_arguments():
    """kernel (3,7,7), stride (1,2,2), padding (1,3,3) on a small clip, channels_last_3d."""
    x = torch.randn(1, 3, 4, 12, 14).to(memory_format=torch.channels_last_3d)
    w = torch.randn(8, 3, 3, 7, 7)
    b = torch.randn(8)
    out = fk.conv3d(x, w, b, stride=(1, 2, 2), padding=(1, 3, 3), activation="relu")
    ref = F.relu(F.conv3d(x.double(), w.double(), b.double(), stride=(1, 2, 2),
                          padding=(1, 3, 3)))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert_close_to_reference(out, ref, reduction=3 * 3 * 7 * 7)


def test_axis_specific_arguments_are_not_mixed_up():
    """Every axis gets its own kernel, stride, padding and dilation; a swap changes the shape
    or the values."""
    x = torch.randn(1, 2, 7, 9, 11)
    w = torch.randn(3, 2, 2, 3, 4)
    kwargs = dict(stride=(1, 2, 3), padding=(2, 1, 0), dilation=(3, 1, 2))
    out = fk.conv3d(x, w, **kwargs)
    ref = F.conv3d(x.double(), w.double(), **kwargs)
    assert_close_to_reference(out, ref, reduction=2 * 2 * 3 * 4)


def test_conv2plus1d_matches_torchvision_block_in_eval():
    from torchvision.models.video.resnet import Conv2Plus1D

    block = Conv2Plus1D(4, 6, 5, stride=2).double().eval()
    with torch.no_grad():
        bn = block[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    ours = fk.nn.Conv2Plus1d.from_torchvision(block)
    x = torch.randn(1, 4, 5, 8, 7, dtype=torch.float64)
    residual = torch.randn(1, 6, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = F.relu(block(x) + residual)
    ours.temporal.activation = "relu"
    assert torch.allclose(ours(x, residual=residual), expected, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_factorised_pair_gradients(dtype):
    x = torch.randn(1, 4, 4, 6, 6, dtype=dtype, requires_grad=True)
    block = fk.nn.Conv2Plus1d(4, 5, 6).to(dtype)
    out = block(x)
    out.float().square().sum().backward()
    x64 = x.detach().double().requires_grad_()
    s, t = block.spatial, block.temporal
    ref = F.conv3d(F.relu(F.conv3d(x64, s.weight.double(), s.bias.double(), padding=(0, 1, 1))),
                   t.weight.double(), padding=(1, 0, 0))
    assert_close_to_reference(out, ref, reduction=6 * 3 * 4 * 9)
    ref.square().sum().backward()
    assert_close_to_reference(x.grad, x64.grad, reduction=5 * 3 * 6 * 9, scale=4.0)
