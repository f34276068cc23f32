"""Where a served network comes from: a torchvision architecture or a user's Python factory.

Both build an untrained nn.Module (never downloading weights); the served model loads the
user's weights file into it, if any.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch
from torch import nn

from .base import IMAGE, VIDEO


@functools.cache  # asked at every check of a repository entry; the answer never changes
def torchvision_architectures() -> dict[str, str]:
    """torchvision's classification and video architectures: name -> "image" or "video"."""
    import torchvision.models
    import torchvision.models.video
    from torchvision.models import list_models

    found = {name: IMAGE for name in list_models(module=torchvision.models)}
    found.update({name: VIDEO for name in list_models(module=torchvision.models.video)})
    return found


def check_architecture(architecture: str) -> str:
    """The architecture's input kind; ValueError listing the choices if it is not one."""
    known = torchvision_architectures()
    if architecture not in known:
        raise ValueError(f"unknown torchvision architecture {architecture!r}; classification "
                         f"and video architectures are: {', '.join(sorted(known))}")
    return known[architecture]


def classifier_name(module: nn.Module) -> str | None:
    """The qualified name of the last Linear layer (the classifier head), if there is one."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def build_torchvision(architecture: str, options: dict[str, Any],
                      state: dict[str, torch.Tensor] | None) -> nn.Module:
    """torchvision's `architecture` without weights; its class count follows the weights file."""
    from torchvision.models import get_model_builder

    check_architecture(architecture)
    builder = get_model_builder(architecture)
    module = _call(builder, f"torchvision's {architecture}", {"weights": None, **options})
    head = classifier_name(module)
    if state is not None and head is not None and "num_classes" not in options:
        classes = state.get(f"{head}.weight")
        if classes is not None and classes.shape[0] != module.get_submodule(head).out_features:
            module = _call(builder, f"torchvision's {architecture}",
                           {"weights": None, **options, "num_classes": classes.shape[0]})
    return module


def build_python(factory: str, options: dict[str, Any]) -> nn.Module:
    """Call the user's `package.module:function` with `options`; it must return an nn.Module."""
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"factory must be 'package.module:function', got {factory!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except ImportError as err:
        raise ValueError(f"factory {factory!r}: cannot import {module_name!r}: {err}") from None
    except AttributeError:
        raise ValueError(f"factory {factory!r}: {module_name!r} has no {function_name!r}") from None
    module = _call(function, f"factory {factory!r}", options)
    if not isinstance(module, nn.Module):
        raise ValueError(f"factory {factory!r} returned {type(module).__name__}, "
                         "not a torch.nn.Module")
    return module


def _call(function: Any, what: str, kwargs: dict[str, Any]) -> Any:
    try:
        return function(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} rejected its options {kwargs}: {err}") from None
