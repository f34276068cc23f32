"""patch(model): run an existing model's convolutions on foveal's kernels, in place.

Each torch.nn convolution (and torchvision's DeformConv2d) becomes the foveal module that shares
its parameters, so outputs, state_dict and optimisers are unchanged. Subclasses count when
they keep their base class's forward (torchvision's Conv3DSimple, for instance); what cannot
be swapped is left alone and the report says why.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from . import nn as fnn

# torch.nn type -> foveal replacement; torchvision's DeformConv2d joins once it is imported.
REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: fnn.Conv1d,
    nn.Conv2d: fnn.Conv2d,
    nn.Conv3d: fnn.Conv3d,
    nn.ConvTranspose1d: fnn.ConvTranspose1d,
    nn.ConvTranspose2d: fnn.ConvTranspose2d,
    nn.ConvTranspose3d: fnn.ConvTranspose3d,
}
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class PatchReport:
    """What `patch` swapped and what it left, by qualified module name."""

    replaced: list[tuple[str, str]] = field(default_factory=list)  # (name, "Conv2d -> Conv2d")
    left: list[tuple[str, str]] = field(default_factory=list)      # (name, why)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} module(s) with foveal's, left {len(self.left)}"]
        lines += [f"  replaced {name}: {what}" for name, what in self.replaced]
        lines += [f"  left     {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


def register_torchvision() -> None:
    """Add torchvision's DeformConv2d to REPLACEMENTS if torchvision is loaded.

    torchvision is optional and slow to import, so it is never imported here: a model holding
    its DeformConv2d has loaded it already.
    """
    module = sys.modules.get("torchvision.ops.deform_conv")
    if module is not None:
        REPLACEMENTS.setdefault(module.DeformConv2d, fnn.DeformConv2d)


def replacement_for(module: nn.Module) -> tuple[type[nn.Module] | None, str | None]:
    """(foveal class, None) for a swappable module; (None, why not) for a convolution that is not.

    (None, None) for modules that are not convolutions, or are foveal's already.
    """
    if type(module) in REPLACEMENTS.values():
        return None, None
    for base, replacement in REPLACEMENTS.items():
        if not isinstance(module, base):
            continue
        kind = type(module)
        if kind is not base and any(getattr(kind, method, None) is not getattr(base, method, None)
                                    for method in ("forward", "_conv_forward")):
            return None, f"{kind.__name__} overrides {base.__name__}'s forward"
        weight = module._parameters.get("weight")  # not getattr: fx tracing proxies that
        if isinstance(weight, nn.parameter.UninitializedParameter):
            return None, "a lazy module not yet initialised (run it once first)"
        if weight is not None and weight.dtype not in FLOATING:
            return None, f"its weight is {weight.dtype}; foveal's kernels are floating-point"
        return replacement, None
    return None, None


def patch(model: nn.Module) -> PatchReport:
    """Swap every torch.nn (and torchvision) convolution in `model` for its foveal module, in place.

    Parameters are shared, not copied, so the model's outputs, state_dict and any optimiser
    holding its parameters are unchanged. Returns what was replaced and what was left, and why.
    """
    register_torchvision()
    report = PatchReport()
    replacement, why = replacement_for(model)
    if replacement is not None or why is not None:
        report.left.append(("(the model itself)", why or "patch swaps a model's children in "
                            f"place; use {replacement.__name__}.from_torch(module) for one layer"))
        return report
    _patch_children(model, "", report)
    return report


def _patch_children(parent: nn.Module, prefix: str, report: PatchReport) -> None:
    for name, child in list(parent.named_children()):
        qualified = f"{prefix}{name}"
        replacement, why = replacement_for(child)
        if replacement is not None:
            setattr(parent, name, replacement.from_torch(child))
            report.replaced.append((qualified, f"{type(child).__name__} -> foveal "
                                               f"{replacement.__name__}"))
        elif why is not None:
            report.left.append((qualified, why))
        else:
            _patch_children(child, f"{qualified}.", report)
