"""torchvision-compatible ResNet families, defined here so torchvision is not needed to serve them.

The module trees (names, nesting, shapes) follow torchvision's, so a user's torchvision
`state_dict` loads unchanged: ResNet-18/34/50/101/152, ResNeXt-50 32x4d / 101 32x8d,
Wide ResNet-50-2 (torchvision.models), and R3D-18 and R(2+1)D-18 (torchvision.models.video).
These modules only hold parameters and describe the layer order; `fused.py` folds their
BatchNorms and runs them on foveal's kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arch:
    kind: str  # "image" or "video"
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    stem: str = "resnet"  # resnet | r3d | r2plus1d


ARCHS: dict[str, Arch] = {
    "resnet18": Arch("image", "basic", (2, 2, 2, 2)),
    "resnet34": Arch("image", "basic", (3, 4, 6, 3)),
    "resnet50": Arch("image", "bottleneck", (3, 4, 6, 3)),
    "resnet101": Arch("image", "bottleneck", (3, 4, 23, 3)),
    "resnet152": Arch("image", "bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": Arch("image", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": Arch("image", "bottleneck", (3, 4, 23, 3), groups=32,
                             width_per_group=8),
    "wide_resnet50_2": Arch("image", "bottleneck", (3, 4, 6, 3), width_per_group=128),
    "r3d_18": Arch("video", "basic", (2, 2, 2, 2), stem="r3d"),
    "r2plus1d_18": Arch("video", "basic", (2, 2, 2, 2), stem="r2plus1d"),
}
STAGE_PLANES = (64, 128, 256, 512)


def _conv(video: bool, cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1):
    cls = nn.Conv3d if video else nn.Conv2d
    return cls(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)


def _bn(video: bool, channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if video else nn.BatchNorm2d(channels)


def _midplanes(inplanes: int, planes: int) -> int:
    """R(2+1)D's intermediate width: the (2+1)D pair has the 3x3x3 conv's parameter count."""
    return (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)


def _conv_3x3(arch: Arch, cin: int, cout: int, stride: int, mid: int = 0) -> nn.Module:
    """The block's 3x3 (x3) convolution in each family's form (`mid`: R(2+1)D's width)."""
    if arch.kind == "image":
        return _conv(False, cin, cout, 3, stride, 1)
    if arch.stem == "r3d":
        return _conv(True, cin, cout, 3, stride, 1)
    return nn.Sequential(  # torchvision's Conv2Plus1D
        _conv(True, cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1)), _bn(True, mid),
        nn.ReLU(inplace=True), _conv(True, mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, arch: Arch, inplanes: int, planes: int, stride: int,
                 downsample: nn.Module | None):
        super().__init__()
        video = arch.kind == "video"
        if video:  # torchvision.models.video wraps each conv with its BatchNorm (and ReLU)
            mid = _midplanes(inplanes, planes)  # both convs use the block's first width
            self.conv1 = nn.Sequential(_conv_3x3(arch, inplanes, planes, stride, mid),
                                       _bn(True, planes), nn.ReLU(inplace=True))
            self.conv2 = nn.Sequential(_conv_3x3(arch, planes, planes, 1, mid),
                                       _bn(True, planes))
        else:
            self.conv1 = _conv_3x3(arch, inplanes, planes, stride)
            self.bn1 = _bn(False, planes)
            self.conv2 = _conv_3x3(arch, planes, planes, 1)
            self.bn2 = _bn(False, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, arch: Arch, inplanes: int, planes: int, stride: int,
                 downsample: nn.Module | None):
        super().__init__()
        width = int(planes * (arch.width_per_group / 64.0)) * arch.groups
        self.conv1 = _conv(False, inplanes, width, 1)
        self.bn1 = _bn(False, width)
        self.conv2 = _conv(False, width, width, 3, stride, 1, groups=arch.groups)
        self.bn2 = _bn(False, width)
        self.conv3 = _conv(False, width, planes * self.expansion, 1)
        self.bn3 = _bn(False, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class ResNet(nn.Module):
    """Parameters of a torchvision (video) ResNet, under torchvision's names."""

    def __init__(self, arch: Arch, num_classes: int = 1000):
        super().__init__()
        self.arch = arch
        video = arch.kind == "video"
        if arch.stem == "resnet":
            self.conv1 = _conv(False, 3, 64, 7, 2, 3)
            self.bn1 = _bn(False, 64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif arch.stem == "r3d":
            self.stem = nn.Sequential(_conv(True, 3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3)),
                                      _bn(True, 64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                _conv(True, 3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3)), _bn(True, 45),
                nn.ReLU(inplace=True), _conv(True, 45, 64, (3, 1, 1), 1, (1, 0, 0)),
                _bn(True, 64), nn.ReLU(inplace=True))
        block = BasicBlock if arch.block == "basic" else Bottleneck
        inplanes = 64
        for index, (planes, count) in enumerate(zip(STAGE_PLANES, arch.layers, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for i in range(count):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    downsample = nn.Sequential(
                        _conv(video, inplanes, planes * block.expansion, 1, stride),
                        _bn(video, planes * block.expansion))
                blocks.append(block(arch, inplanes, planes, stride if i == 0 else 1,
                                    downsample))
                inplanes = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d(1) if video else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_like_torchvision()

    def _init_like_torchvision(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def feature_channels(self) -> int:
        return self.fc.in_features
