"""`optimize(model, precision="fp8")`: the fused graph's convolutions put in FP8, calibrated.

Calibration runs the traced, not yet fused, model on the given batches in its own precision
and records the largest |value| reaching each convolution; a convolution's static input scale
is that amax / 448. Fusion does not change what reaches a convolution, so the scales hold for
the fused graph. The 1x1 half of a fused depthwise-separable block reads an intermediate the
graph never stores: its scale is the amax of the 1x1's input in the unfused graph.

Then each fused Conv2d/Conv3d becomes a Conv2dFp8/Conv3dFp8 (weight quantized per output
channel once, here) with its calibrated input scale, or a dynamic one (each input's own amax)
without calibration; each fused depthwise-separable block with a calibrated intermediate
becomes a DepthwiseSeparableConv2dFp8. Left in the model's dtype, and reported with the reason:
the convolutions `exclude` names ("first" and "last" by default: the stem sees raw pixels
and the last layer produces the features), depthwise ones (no tensor-core work), transposed
ones, 1-D ones and those with a padding mode other than zeros.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import nn as fnn
from .nn_fp8 import Conv2dFp8, Conv3dFp8, DepthwiseSeparableConv2dFp8
from .quantize import scale_from_amax

FP8_CONVS = {fnn.Conv2d: Conv2dFp8, fnn.Conv3d: Conv3dFp8}


@dataclass(frozen=True)
class Origin:
    """The convolution a fused module came from: its name in the model and its graph node."""

    name: str  # "layer1.0.conv1" (module path) or the weight's owner for a functional call
    node: str  # the torch.fx node name, as calibration records it


class _InputRanges(fx.Interpreter):
    """Runs the unfused graph, recording the amax of each watched convolution's input."""

    def __init__(self, gm: fx.GraphModule, watched: dict[str, fx.Node]):
        super().__init__(gm)
        self.watched = watched
        self.amax: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        source = self.watched.get(n.name)
        if source is not None:
            value = self.env[source]
            amax = torch.linalg.vector_norm(value.detach().float(), ord=math.inf).item()
            if not math.isfinite(amax):
                raise ValueError(f"optimize(calibration=...): the input of convolution "
                                 f"{n.name} holds NaN or inf values")
            self.amax[n.name] = max(amax, self.amax.get(n.name, 0.0))
        return super().run_node(n)


def input_ranges(gm: fx.GraphModule, conv_nodes: Sequence[fx.Node],
                 batches: Iterable[Any]) -> dict[str, float]:
    """Node name -> the largest |input| of that convolution over the calibration batches.

    A batch is the model's input tensor, or a tuple or list of its positional inputs.
    """
    watched = {n.name: n.args[0] if n.args else n.kwargs["input"] for n in conv_nodes}
    recorder = _InputRanges(gm, watched)
    count = 0
    with torch.no_grad():
        for batch in batches:
            recorder.run(*(batch if isinstance(batch, tuple | list) else (batch,)))
            count += 1
    if count == 0:
        raise ValueError("optimize(calibration=...) got no batches: pass an iterable of input "
                         "batches, or calibration=None for dynamic input scales")
    return recorder.amax


def _targets(exclude: Sequence[str], order: Sequence[str], names: dict[str, str]) -> set[str]:
    """The node names `exclude` picks: "first", "last" (in graph order) or module names."""
    picked = set()
    by_name = {name: node for node, name in names.items()}
    for entry in exclude:
        if entry in ("first", "last") and order:
            picked.add(order[0] if entry == "first" else order[-1])
        elif entry in by_name:
            picked.add(by_name[entry])
        else:
            raise ValueError(f"optimize(fp8_exclude=...): no convolution named {entry!r}; use "
                             f"'first', 'last' or one of {sorted(by_name)}")
    return picked


def _ineligible(module: nn.Module) -> str | None:
    """Why a fused convolution cannot run in FP8 (None: it can)."""
    if type(module) not in FP8_CONVS:
        return f"{type(module).__name__} has no FP8 kernel (conv2d and conv3d have)"
    if module.padding_mode != "zeros":
        return f"padding_mode {module.padding_mode!r} (FP8 convolutions pad with zeros)"
    if module.in_channels // module.groups == 1:
        return "depthwise: memory-bound multiply-adds with no tensor-core work"
    return None


def convert(gm: fx.GraphModule, fused: dict[str, nn.Module], origins: dict[str, Origin],
            order: Sequence[str], ranges: dict[str, float] | None, exclude: Sequence[str],
            report: Any) -> None:
    """Swap each eligible fused module of `gm` for its FP8 module, recording what ran in FP8
    (report.fp8) and what did not and why (report.not_fp8)."""
    excluded = _targets(exclude, order, {o.node: o.name for o in origins.values()})
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in fused:
            continue
        module, origin = fused[node.target], origins[node.target]
        why, scale = _plan(module, origin, ranges, excluded, exclude)
        if why is not None:
            report.not_fp8.append((origin.name, why))
            continue
        if isinstance(module, fnn.DepthwiseSeparableConv2d):
            new = DepthwiseSeparableConv2dFp8(module, scale)
        else:
            new = FP8_CONVS[type(module)].quantized(module, scale)
        gm.add_submodule(node.target, new)
        text = "dynamic input scale" if scale is None else f"input scale {scale.item():.4g}"
        report.fp8.append(f"{origin.name} ({text})")


def _plan(module: nn.Module, origin: Origin, ranges: dict[str, float] | None,
          excluded: set[str], exclude: Sequence[str]) -> tuple[str | None, torch.Tensor | None]:
    """(why not FP8, or None; the calibrated input scale, or None for a dynamic one)."""
    if origin.node in excluded:
        return f"excluded (fp8_exclude={tuple(exclude)!r})", None
    block = isinstance(module, fnn.DepthwiseSeparableConv2d)
    if not block:
        why = _ineligible(module)
        if why is not None:
            return why, None
    if ranges is None:
        if block:
            return ("its 1x1's on-chip intermediate needs a calibrated scale: pass "
                    "calibration= batches"), None
        return None, None
    if origin.node not in ranges:
        return "calibration never reached it", None
    return None, scale_from_amax(torch.tensor(ranges[origin.node]))
