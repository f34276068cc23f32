"""Model kinds, their default input specs, and the models served when no file is given."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .base import VIDEO, InputSpec, ServedModel
from .gabor import GaborModel
from .motion_energy import MotionEnergyModel
from .sources import build_python, build_torchvision, check_architecture
from .traced import TracedModel


@dataclass(frozen=True)
class Kind:
    model_class: Callable[..., ServedModel]
    default_input: InputSpec
    takes_weights: bool = False
    required: tuple[str, ...] = ()   # settings the entry must give (architecture, factory)
    takes_options: bool = False      # whether it accepts an [models.options] table


# torchvision's preprocessing for its ImageNet and Kinetics-400 weights
IMAGENET_INPUT = InputSpec(height=224, width=224, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225))
KINETICS_INPUT = InputSpec(kind=VIDEO, height=112, width=112, frames=16,
                           mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989))

KINDS: dict[str, Kind] = {
    "gabor": Kind(GaborModel, InputSpec(height=227, width=227)),
    "motion-energy": Kind(MotionEnergyModel,
                          InputSpec(kind=VIDEO, height=112, width=112, frames=16)),
    "torchvision": Kind(TracedModel, IMAGENET_INPUT, takes_weights=True,
                        required=("architecture",), takes_options=True),
    "python": Kind(TracedModel, IMAGENET_INPUT, takes_weights=True, required=("factory",),
                   takes_options=True),
}

# name -> kind: what `foveal serve` runs without --models.
BUILTIN_MODELS = {"gabor": "gabor", "motion-energy": "motion-energy"}


def default_input(kind: str, architecture: str | None = None,
                  input_kind: str | None = None) -> InputSpec:
    """The kind's input spec; torchvision video architectures (or input.kind) take clips."""
    if kind == "torchvision" and architecture is not None:
        input_kind = check_architecture(architecture)
    if kind in ("torchvision", "python") and input_kind == VIDEO:
        return KINETICS_INPUT
    return KINDS[kind].default_input


def check_settings(kind: str, architecture: str | None, factory: str | None,
                   options: dict[str, Any] | None) -> None:
    """ValueError unless the kind's required settings, and only those, are given."""
    spec = KINDS[kind]
    for key, value in (("architecture", architecture), ("factory", factory)):
        if (key in spec.required) != (value is not None):
            raise ValueError(f"{kind} models {'need' if key in spec.required else 'take no'} "
                             f"{key}")
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    if options and not spec.takes_options:
        raise ValueError(f"{kind} models take no options")
    if architecture is not None:
        check_architecture(architecture)


def build_model(name: str, kind: str, input_spec: InputSpec, device: torch.device,
                dtype: torch.dtype, weights: str | None = None, *, architecture: str | None = None,
                factory: str | None = None, options: dict[str, Any] | None = None,
                fp8: bool = False) -> ServedModel:
    """One model of `kind`; `fp8` runs a traced (torchvision, python) model's convolutions on
    FP8 kernels, with `dtype` (float16, bfloat16) between them."""
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: unknown kind {kind!r}; known kinds are {sorted(KINDS)}")
    spec = KINDS[kind]
    try:
        check_settings(kind, architecture, factory, options)
    except ValueError as err:
        raise ValueError(f"model {name!r}: {err}") from None
    if weights is not None and not spec.takes_weights:
        raise ValueError(f"model {name!r}: {kind} models are analytic and take no weights file")
    expected = default_input(kind, architecture, input_spec.kind).kind
    if expected != input_spec.kind:
        raise ValueError(f"model {name!r}: {kind} models take {expected} input, "
                         f"not {input_spec.kind}")
    if kind == "torchvision":
        source = f"torchvision's {architecture}"
        build = functools.partial(build_torchvision, architecture, options or {})
    elif kind == "python":
        source = f"factory {factory!r}"
        build = lambda state: build_python(factory, options or {})
    else:
        if fp8:
            raise ValueError(f"model {name!r}: {kind} models have no FP8 precision")
        return spec.model_class(name, input_spec, device, dtype)
    return spec.model_class(name, input_spec, device, dtype, weights, kind=kind, source=source,
                            build=build, fp8=fp8)
