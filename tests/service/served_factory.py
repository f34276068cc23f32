"""A user's model factory, as a `python` model kind names it ("served_factory:small_net")."""

from __future__ import annotations

from torch import nn


def small_net(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU())


def not_a_module() -> int:
    return 3
