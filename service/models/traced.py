"""A served nn.Module (torchvision's or the user's), run as foveal's fused kernels.

The outputs are the module's intermediate layers by their torch.fx node names, as
torchvision's feature extraction names them ("layer4", "features.18", "flatten", ...). The
served outputs are extracted into one graph which `foveal.kernels.optimize` fuses: BatchNorms
folded, residual adds and activations in the convolutions' epilogues. Without a weights file
the module keeps a seeded initialisation and says so (its features mean nothing). With `fp8`
(precision float8) the fused convolutions run on FP8 kernels with dynamic input scales, the
first and last kept in the serving dtype (`optimize(precision="fp8")`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

import foveal.kernels as fk

from .base import VIDEO, OutputSpec, ServedModel
from .sources import classifier_name
from .weights import check_fit, load_state_dict

log = logging.getLogger("foveal.service")
BuildModule = Callable[[dict[str, torch.Tensor] | None], nn.Module]


class TracedModel(ServedModel):
    """`build(state)` makes the untrained module; `source` names it in messages."""

    def __init__(self, name, input_spec, device, dtype, weights: str | None = None, *,
                 kind: str, source: str, build: BuildModule, fp8: bool = False):
        super().__init__(name, input_spec, device, dtype)
        self.kind = kind
        self.fp8 = fp8
        if fp8:
            self.precision = f"float8 ({self.precision} between convolutions)"
        state = load_state_dict(weights) if weights else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            # float64 until the graph is fused: the file's values and the BatchNorm folds
            # round once, in the final cast to the serving dtype
            module = build(state).double()
        if state is None:
            self.weights = "seeded-random"
            log.warning("seeded weights", extra={"fields": {
                "model": name, "kind": kind,
                "note": "no weights file: a seeded initialisation; features are not meaningful"}})
        else:
            check_fit(name, source, weights, module.state_dict(), state)
            module.load_state_dict(state)
            self.weights = str(weights)
        self.description = (f"{source} on foveal's {'FP8 ' if fp8 else ''}kernels (BatchNorms "
                            "folded, epilogues fused), outputs named by torch.fx node")
        self._module = module.eval()
        self._nodes, self._default = _node_names(name, source, module)
        self._shapes: dict[tuple[tuple[int, ...], str], tuple[int, ...]] = {}

    def all_outputs(self) -> dict[str, OutputSpec]:
        """Every node, and every module path above nodes ("layer4": the last node in layer4),
        as torchvision's feature extraction accepts them."""
        outputs = {}
        for node in self._nodes:
            parts = node.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                outputs[prefix] = OutputSpec(prefix, f"the output of module {prefix!r} (its "
                                             "last node)")
            outputs[node] = OutputSpec(node, f"the output of node {node!r}")
        outputs[self._default] = OutputSpec(self._default, "the classifier's input (pooled "
                                            "features)" if self._default != self._nodes[-1]
                                            else "the model's output", default=True)
        return outputs

    def select_outputs(self, served: tuple[str, ...] = (), defaults: tuple[str, ...] = ()) -> None:
        """Serve `served` nodes (default: the classifier's input) and build their fused graph."""
        super().select_outputs(served or (self._default,), defaults)
        from torchvision.models.feature_extraction import create_feature_extractor

        extractor = create_feature_extractor(self._module, return_nodes=list(self._outputs))
        self._shape_net = copy.deepcopy(extractor).to("meta").eval()  # deepcopy: train mode
        net = fk.optimize(extractor, precision="fp8" if self.fp8 else None)
        log.info("model optimised", extra={"fields": {
            "model": self.name, "launches_before": net.report.launches_before,
            "launches_after": net.report.launches_after, "fused": len(net.report.fused),
            **({"fp8": len(net.report.fp8), "not_fp8": dict(net.report.not_fp8)}
               if self.fp8 else {})}})
        self._net = net.to(self.device, self.dtype)
        self._shapes.clear()

    def output_shape(self, output: str, item_shape: tuple[int, ...]) -> tuple[int, ...]:
        key = (tuple(item_shape), output)
        if key not in self._shapes:
            self.outputs  # noqa: B018 - builds the graphs on first use
            with torch.no_grad():
                try:  # shapes only: no arithmetic on the meta device
                    found = self._shape_net(torch.empty(1, *item_shape, device="meta"))
                except (NotImplementedError, RuntimeError):
                    found = self._net(torch.zeros(1, *item_shape, device=self.device,
                                                  dtype=self.dtype))
            self._shapes.update({(key[0], name): tuple(value.shape[1:])
                                 for name, value in found.items()})
        return self._shapes[key]

    def forward(self, batch: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        if batch.is_cuda:  # foveal's kernels are fastest on channels-last activations
            video = self.input_spec.kind == VIDEO
            batch = batch.contiguous(memory_format=torch.channels_last_3d if video
                                     else torch.channels_last)
        self.outputs  # noqa: B018 - builds the graphs on first use
        with torch.no_grad():
            found = self._net(batch)
        return {name: found[name].contiguous() for name in outputs}


def _node_names(name: str, source: str, module: nn.Module) -> tuple[list[str], str]:
    """The module's output-able node names in order, and the default: the classifier's input."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        nodes = get_graph_node_names(module.eval())[1][1:]  # [0] is the input
    except Exception as err:  # tracing fails in many ways
        raise ValueError(f"model {name!r}: {source} cannot be traced by torch.fx "
                         f"({type(err).__name__}: {err}); foveal serves traceable modules"
                         ) from None
    if not nodes:
        raise ValueError(f"model {name!r}: {source} computes nothing from its input")
    head = classifier_name(module)
    if head not in nodes:
        return nodes, nodes[-1]
    index = nodes.index(head) - 1
    dropouts = {n for n, m in module.named_modules() if isinstance(m, nn.Dropout)}
    while index > 0 and nodes[index] in dropouts:
        index -= 1
    return nodes, nodes[index]
