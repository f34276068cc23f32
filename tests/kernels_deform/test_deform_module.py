"""nn.DeformConv2d: starts as a plain conv, interoperates with torchvision, learns offsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from deform_cases import shifted_fields
from torch import nn

from foveal.kernels import backend_for, patch
from foveal.kernels.nn import Conv2d, DeformConv2d
from tolerances import assert_close_to_reference

F64 = {"dtype": torch.float64}


@pytest.mark.parametrize("modulated", [True, False])
def test_starts_as_the_plain_convolution(modulated):
    layer = DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                         offset_groups=2, modulated=modulated, **F64)
    x = torch.randn(2, 4, 7, 8, **F64)
    ref = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, 2)
    assert_close_to_reference(layer(x).detach(), ref.detach(), reduction=2 * 6)
    assert isinstance(layer.offset_conv, Conv2d)
    assert layer.offset_conv.out_channels == (3 if modulated else 2) * 2 * 6


def _torchvision_layer(bias=True):
    return torchvision.ops.DeformConv2d(4, 6, 3, padding=1, groups=2, bias=bias).double()


def test_from_torchvision_shares_parameters_and_matches_it():
    reference = _torchvision_layer()
    layer = DeformConv2d.from_torchvision(reference, offset_groups=2)
    assert layer.weight is reference.weight and layer.bias is reference.bias
    x = torch.randn(1, 4, 5, 6, **F64)
    offset = 2 * torch.randn(1, 36, 5, 6, **F64)
    mask = torch.rand(1, 18, 5, 6, **F64)
    assert_close_to_reference(layer(x, offset, mask).detach(),
                              reference(x, offset, mask).detach(), reduction=18)
    plain = F.conv2d(x, reference.weight, reference.bias, padding=1, groups=2)
    assert_close_to_reference(layer(x).detach(), plain.detach(), reduction=18)


@pytest.mark.parametrize("bias", [True, False])
def test_loads_a_torchvision_state_dict(bias):
    reference = _torchvision_layer(bias)
    layer = DeformConv2d(4, 6, 3, padding=1, groups=2, bias=bias, **F64)
    layer.load_state_dict(reference.state_dict())  # strict: the predictor may be absent
    assert torch.equal(layer.weight, reference.weight)
    assert not bias or torch.equal(layer.bias, reference.bias)
    assert not layer.offset_conv.weight.any() and not layer.offset_conv.bias.any()
    # A state that has a predictor loads it.
    trained = DeformConv2d(4, 6, 3, padding=1, groups=2, bias=bias, **F64)
    nn.init.normal_(trained.offset_conv.weight)
    layer.load_state_dict(trained.state_dict())
    assert torch.equal(layer.offset_conv.weight, trained.offset_conv.weight)


class _TorchvisionBlock(nn.Module):
    """A DCN block as torchvision users write it: a conv predicts what DeformConv2d consumes."""

    def __init__(self):
        super().__init__()
        self.predictor = nn.Conv2d(4, 27, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(4, 6, 3, padding=1)

    def forward(self, x):
        prediction = self.predictor(x)
        return self.dcn(x, prediction[:, :18], torch.sigmoid(prediction[:, 18:]))


def test_patch_swaps_torchvision_deform_conv_keeping_state_and_outputs():
    block = _TorchvisionBlock().double()
    x = torch.randn(1, 4, 6, 5, **F64)
    before, state = block(x).detach(), block.state_dict()
    patch(block)
    assert type(block.dcn) is DeformConv2d and type(block.predictor) is Conv2d
    assert block.state_dict().keys() == state.keys()
    assert_close_to_reference(block(x).detach(), before, reduction=36, scale=4.0)


def test_forward_errors():
    layer = DeformConv2d(4, 6, 3, predict_offsets=False)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="predict_offsets=False: pass offset"):
        layer(x)
    with pytest.raises(ValueError, match="a mask was passed without offsets"):
        DeformConv2d(4, 6, 3)(x, mask=torch.ones(1, 9, 3, 3))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"groups": 3}, r"in_channels \(4\) must be divisible by groups \(3\)"),
    ({"groups": 4}, r"out_channels \(6\) must be divisible by groups \(4\)"),
    ({"offset_groups": 3}, r"in_channels \(4\) must be divisible by offset_groups \(3\)"),
    ({"stride": 0}, "stride must be positive"),
    ({"activation": "tanh"}, "activation must be None or one of"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeformConv2d(4, 6, 3, **kwargs)


def _plain_1x1_conv_loss(x: torch.Tensor, target: torch.Tensor) -> float:
    """The lowest loss any 1x1 convolution (with bias) reaches: least squares on [x, 1]."""
    design = torch.stack([x.flatten(), torch.ones(x.numel(), **F64)], dim=1)
    solution = torch.linalg.lstsq(design, target.flatten()[:, None]).solution
    return float(((design @ solution).flatten() - target.flatten()).square().mean())


def test_offsets_learn_a_shift_through_the_triton_backward():
    # A 1x1 deformable conv must learn to read each output's input `shift` away: its offsets
    # get there only through deform_conv2d's Triton backward (offset gradient), then the
    # predictor conv's. No plain 1x1 conv can shift at all.
    shift = (1.2, -0.8)
    image, target = shifted_fields(batch=2, size=12, shift=shift, wavelength=8.0)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # the shift stays inside
    x = image.float()
    assert backend_for(x.device) in ("interpreter", "triton")
    torch.manual_seed(0)
    layer = DeformConv2d(1, 1, 1, bias=False)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(40):
        loss = (layer(x) - target.float())[inner].square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        loss = float((layer(x) - target.float())[inner].square().mean())
        learned = layer.offset_conv(x)[inner][:, :2].mean(dim=(0, 2, 3)).double()
    assert loss < 0.1 * _plain_1x1_conv_loss(image[inner], target[inner])
    assert torch.allclose(learned, torch.tensor(shift, **F64), atol=0.25), learned


def test_state_dict_loads_both_ways_with_torchvision():
    from torchvision.ops import DeformConv2d as TorchvisionDeformConv2d

    theirs = TorchvisionDeformConv2d(4, 6, 3, padding=1, groups=2)
    ours = DeformConv2d(4, 6, 3, padding=1, groups=2, predict_offsets=False)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    back = TorchvisionDeformConv2d(4, 6, 3, padding=1, groups=2)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, theirs.weight)
