"""Model kinds, their default input specs, and the models served when no file is given."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .architectures import ARCHS
from .base import VIDEO, InputSpec, ServedModel
from .gabor import GaborModel
from .motion_energy import MotionEnergyModel
from .resnets import ResNetModel


@dataclass(frozen=True)
class Kind:
    model_class: Callable[..., ServedModel]
    default_input: InputSpec
    takes_weights: bool = False


# torchvision's preprocessing for its ImageNet and Kinetics-400 weights
IMAGENET_INPUT = InputSpec(height=224, width=224, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225))
KINETICS_INPUT = InputSpec(kind=VIDEO, height=112, width=112, frames=16,
                           mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989))

KINDS: dict[str, Kind] = {
    "gabor": Kind(GaborModel, InputSpec(height=227, width=227)),
    "motion-energy": Kind(MotionEnergyModel,
                          InputSpec(kind=VIDEO, height=112, width=112, frames=16)),
    **{arch: Kind(functools.partial(ResNetModel, arch=arch),
                  KINETICS_INPUT if spec.kind == VIDEO else IMAGENET_INPUT, takes_weights=True)
       for arch, spec in ARCHS.items()},
}

# name -> kind: what `foveal serve` runs without --models.
BUILTIN_MODELS = {"gabor": "gabor", "motion-energy": "motion-energy"}


def build_model(name: str, kind: str, input_spec: InputSpec, device: torch.device,
                dtype: torch.dtype, weights: str | None = None) -> ServedModel:
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: unknown kind {kind!r}; known kinds are {sorted(KINDS)}")
    spec = KINDS[kind]
    if weights is not None and not spec.takes_weights:
        raise ValueError(f"model {name!r}: {kind} models are analytic and take no weights file")
    if spec.default_input.kind != input_spec.kind:
        raise ValueError(f"model {name!r}: {kind} models take {spec.default_input.kind} input, "
                         f"not {input_spec.kind}")
    extra = {"weights": weights} if spec.takes_weights else {}
    return spec.model_class(name, input_spec, device, dtype, **extra)
