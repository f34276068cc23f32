"""BatchNorms far from identity, so a wrong fold into a convolution shows in the output."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorms(model: nn.Module, seed: int = 1) -> nn.Module:
    """The model in float64 and eval mode, each BatchNorm's statistics and affine random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5),
                                          (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5),
                                          (module.bias, -0.5, 0.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low)
                                 + low)
    return model.double().eval()
