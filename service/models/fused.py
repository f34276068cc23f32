"""A ResNet's inference graph on foveal's kernels: every BatchNorm folded, every epilogue fused.

Each convolution becomes one foveal launch carrying its folded BatchNorm as a bias, its ReLU,
and, at the end of a residual block, the shortcut: the block's output never makes a separate
pass through memory for the add and the activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import foveal.kernels as fk

from .architectures import ResNet


@dataclass
class FusedConv:
    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    groups: int
    activation: str | None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        conv = fk.conv3d if self.weight.dim() == 5 else fk.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups,
                    activation=self.activation, residual=residual)


def fold(conv: nn.Module, bn: nn.Module, activation: str | None, device: torch.device,
         dtype: torch.dtype) -> FusedConv:
    weight, bias = fk.fold_batchnorm(conv.weight.detach().double(), None, bn.double())
    return FusedConv(weight.to(device, dtype).contiguous(), bias.to(device, dtype),
                     conv.stride, conv.padding, conv.groups, activation)


@dataclass
class FusedBlock:
    convs: list[FusedConv]  # applied in order; the last one adds the shortcut
    downsample: FusedConv | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=shortcut)


def _block_convs(block: nn.Module, video: bool) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, BatchNorm) pairs of a block in order, each followed by a ReLU."""
    if hasattr(block, "conv3"):  # Bottleneck
        return [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
    if not video:
        return [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    pairs = []
    for wrapped in (block.conv1, block.conv2):  # Sequential(conv, BatchNorm3d[, ReLU])
        conv, bn = wrapped[0], wrapped[1]
        if isinstance(conv, nn.Sequential):  # Conv2Plus1D: spatial, BN, ReLU, temporal
            pairs.append((conv[0], conv[1]))
            conv = conv[3]
        pairs.append((conv, bn))
    return pairs


class FusedResNet:
    """Runs a `ResNet`'s layers on foveal kernels and returns the requested feature maps."""

    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits")

    def __init__(self, net: ResNet, device: torch.device, dtype: torch.dtype):
        net = net.eval()
        self.video = net.arch.kind == "video"
        self.memory_format = torch.channels_last_3d if self.video else torch.channels_last
        f = lambda conv, bn, act="relu": fold(conv, bn, act, device, dtype)
        if net.arch.stem == "resnet":
            self.stem = [f(net.conv1, net.bn1)]
        elif net.arch.stem == "r3d":
            self.stem = [f(net.stem[0], net.stem[1])]
        else:
            self.stem = [f(net.stem[0], net.stem[1]), f(net.stem[3], net.stem[4])]
        self.max_pool = net.arch.stem == "resnet"
        self.layers = []
        for index in range(1, 5):
            blocks = []
            for block in getattr(net, f"layer{index}"):
                convs = [f(conv, bn) for conv, bn in _block_convs(block, self.video)]
                downsample = None
                if block.downsample is not None:
                    downsample = f(block.downsample[0], block.downsample[1], None)
                blocks.append(FusedBlock(convs, downsample))
            self.layers.append(blocks)
        self.fc_weight = net.fc.weight.detach().to(device, dtype)
        self.fc_bias = net.fc.bias.detach().to(device, dtype)

    def __call__(self, x: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        deepest = max(self.STAGES.index(name) for name in outputs)
        result: dict[str, torch.Tensor] = {}
        x = x.contiguous(memory_format=self.memory_format)
        for conv in self.stem:
            x = conv(x)
        if self.max_pool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        stages = [("stem", x)]
        for index, blocks in enumerate(self.layers[:max(0, deepest)], start=1):
            for block in blocks:
                x = block(x)
            stages.append((f"layer{index}", x))
        for name, value in stages:
            if name in outputs:
                result[name] = value.contiguous()
        if deepest >= self.STAGES.index("pool"):
            pooled = x.mean(dim=tuple(range(2, x.dim())))
            if "pool" in outputs:
                result["pool"] = pooled
            if "logits" in outputs:
                result["logits"] = F.linear(pooled, self.fc_weight, self.fc_bias)
        return result
