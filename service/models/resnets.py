"""Served torchvision-compatible ResNets (image) and R3D-18 / R(2+1)D-18 (video).

Weights come from a file the user gives: a torchvision `state_dict` saved with `torch.save`
(optionally wrapped as {"state_dict": ...} or {"model": ...}, or with DataParallel's "module."
prefixes), or a .safetensors file. Without one the model starts from a seeded initialisation,
reports `weights = "seeded-random"` and logs that its features mean nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from foveal.kernels.geometry import conv_output_length

from .architectures import ARCHS, STAGE_PLANES, ResNet
from .base import VIDEO, OutputSpec, ServedModel
from .fused import FusedResNet

log = logging.getLogger("foveal.service")
DEFAULT_CLASSES = {"image": 1000, "video": 400}  # ImageNet, Kinetics-400


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict file without executing code from it (weights_only loading)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors weights needs the safetensors "
                             "package (pip install safetensors)") from None
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"{path}: not a loadable PyTorch weights file: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_fit(name: str, arch: str, path: str, expected: dict[str, torch.Tensor],
               state: dict[str, torch.Tensor]) -> None:
    """Name the keys and shapes of a weights file that does not fit the architecture."""
    problems = []
    for label, keys in (("missing", [k for k in expected if k not in state]),
                        ("unexpected", [k for k in state if k not in expected]),
                        ("wrong shape", [f"{k} {tuple(state[k].shape)} (wants "
                                         f"{tuple(v.shape)})" for k, v in expected.items()
                                         if k in state and state[k].shape != v.shape])):
        if keys:
            problems.append(f"{label} {keys[:4]}{' and more' if len(keys) > 4 else ''}")
    if problems:
        raise ValueError(f"model {name!r}: {path} does not fit {arch}: " + "; ".join(problems))


class ResNetModel(ServedModel):
    """A ResNet family member whose convolutions run fused on foveal's kernels."""

    def __init__(self, name, input_spec, device, dtype, weights: str | None = None, *,
                 arch: str):
        super().__init__(name, input_spec, device, dtype)
        self.kind = arch
        self.arch = ARCHS[arch]
        state = load_state_dict(weights) if weights else None
        classes = (state["fc.weight"].shape[0] if state and "fc.weight" in state
                   else DEFAULT_CLASSES[self.arch.kind])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            # float64 while BatchNorms fold: the only rounding is the final cast to `dtype`
            net = ResNet(self.arch, num_classes=classes).double()
        if state is None:
            self.weights = "seeded-random"
            log.warning("seeded weights", extra={"fields": {
                "model": name, "kind": arch,
                "note": "no weights file: a seeded initialisation; features are not meaningful"}})
        else:
            _check_fit(name, arch, weights, net.state_dict(), state)
            net.load_state_dict(state)
            self.weights = str(weights)
        self.description = (f"{arch} (torchvision-compatible), BatchNorm folded, convolutions "
                            "fused with their ReLU and residual")
        self._channels = {"stem": 64, "pool": net.feature_channels, "logits": classes}
        expansion = net.feature_channels // STAGE_PLANES[-1]
        for index, planes in enumerate(STAGE_PLANES, start=1):
            self._channels[f"layer{index}"] = planes * expansion
        self._net = FusedResNet(net, device, dtype)

    def all_outputs(self) -> dict[str, OutputSpec]:
        video = self.arch.kind == VIDEO
        where = "clip" if video else "image"
        stride = "spatial stride 2" if video else "stride 4, after the max pool"
        specs = {"stem": OutputSpec("stem", f"the stem's feature maps ({stride})")}
        for index in range(1, 5):
            specs[f"layer{index}"] = OutputSpec(f"layer{index}", f"feature maps after stage "
                                                f"{index} (torchvision's layer{index})")
        specs["pool"] = OutputSpec("pool", f"globally average-pooled features, one vector per "
                                   f"{where}", default=True)
        specs["logits"] = OutputSpec("logits", "the classifier's outputs (fc)")
        return specs

    def output_shape(self, output: str, item_shape: tuple[int, ...]) -> tuple[int, ...]:
        if output in ("pool", "logits"):
            return (self._channels[output],)
        sizes = list(item_shape[1:])  # (H, W) or (T, H, W)
        spatial = slice(len(sizes) - 2, None)
        sizes[spatial] = [conv_output_length(s, 7, 2, 3) for s in sizes[spatial]]
        if self.arch.stem == "resnet":
            sizes = [conv_output_length(s, 3, 2, 1) for s in sizes]  # the max pool
        stages = 1 if output == "stem" else int(output.removeprefix("layer"))
        for _ in range(1, stages):  # layers 2-4 halve every axis (time too, for video)
            sizes = [conv_output_length(s, 3, 2, 1) for s in sizes]
        return (self._channels[output], *sizes)

    def forward(self, batch: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        return self._net(batch, outputs)
