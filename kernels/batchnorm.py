"""Fold an eval-mode BatchNorm into the preceding convolution's weight and bias."""

from __future__ import annotations

import torch
from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module, *,
                   transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) such that conv(x, weight, bias) == bn(conv(x, w, b)) in eval mode.

    The BatchNorm's running statistics are used, as in eval mode; its channels must be the
    convolution's output channels (dim 0 of the weight, or dim 1 times groups for a transposed
    convolution, where `transposed=True` and groups must be 1). The result is in the weight's
    dtype, computed in float64.
    """
    if not isinstance(bn, _BATCHNORMS):
        raise TypeError(f"bn must be a BatchNorm1d/2d/3d, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False); "
                         "there is nothing fixed to fold")
    out_dim = 1 if transposed else 0
    channels = weight.shape[out_dim]
    if bn.num_features != channels:
        raise ValueError(f"bn has {bn.num_features} channels but the convolution has {channels} "
                         "output channels")
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    shape = [1] * weight.dim()
    shape[out_dim] = channels
    folded = (weight.double() * scale.reshape(shape)).to(weight.dtype)
    return folded, shift.to(device=weight.device, dtype=weight.dtype)
