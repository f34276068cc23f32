"""What every served model provides: its input spec, its outputs and a batched forward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import torch

IMAGE, VIDEO = "image", "video"


@dataclass(frozen=True)
class InputSpec:
    """What a model accepts and how the server prepares it (see foveal.v1.InputSpec)."""

    kind: str = IMAGE
    height: int = 0          # 0: any size
    width: int = 0
    channels: int = 3
    frames: int = 0          # clip length for video models
    resize: bool = True
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    max_pixels: int = 4096 * 4096
    dtypes: tuple[str, ...] = ("uint8", "float32")

    @property
    def fixed_size(self) -> bool:
        return self.height > 0 and self.width > 0


@dataclass(frozen=True)
class OutputSpec:
    name: str
    description: str
    channels: tuple[str, ...] = field(default=())   # one label per channel
    default: bool = False


class ServedModel(ABC):
    """A model the batcher can run: `forward` takes a prepared batch on the model's device.

    Images arrive as (N, C, H, W), clips as (N, C, T, H, W), already scaled, resized and
    normalised per `input_spec`, in the model's dtype.
    """

    kind: str
    description: str
    weights: str                      # a path, "analytic" or "seeded-random"

    def __init__(self, name: str, input_spec: InputSpec, device: torch.device,
                 dtype: torch.dtype):
        self.name = name
        self.input_spec = input_spec
        self.device = device
        self.dtype = dtype
        self.precision = str(dtype).removeprefix("torch.")  # what the arithmetic runs in

    @abstractmethod
    def all_outputs(self) -> dict[str, OutputSpec]:
        """Every output this kind of model can compute, by name, with the kind's defaults."""

    def select_outputs(self, served: tuple[str, ...] = (), defaults: tuple[str, ...] = ()) -> None:
        """Serve only `served` (empty: all), returning `defaults` when a request names none.

        Without `defaults`, the kind's defaults that are served are used, else the first served.
        """
        available = self.all_outputs()
        for name in (*served, *defaults):
            if name not in available:
                raise ValueError(f"model {self.name!r}: unknown output {name!r}; "
                                 f"{self.kind} models have {sorted(available)}")
        chosen = {n: available[n] for n in (served or tuple(available))}
        if defaults and not set(defaults) <= set(chosen):
            raise ValueError(f"model {self.name!r}: default_outputs {list(defaults)} must be "
                             f"among the served outputs {list(chosen)}")
        if not defaults:
            defaults = tuple(n for n, o in chosen.items() if o.default) or (next(iter(chosen)),)
        self._outputs = {n: replace(o, default=n in defaults) for n, o in chosen.items()}

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """The outputs this model serves, by name, in a stable order."""
        if not hasattr(self, "_outputs"):
            self.select_outputs()
        return self._outputs

    @abstractmethod
    def output_shape(self, output: str, item_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one item's `output` for one prepared item of `item_shape`."""

    @abstractmethod
    def forward(self, batch: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        """Run a batch; return each requested output with the batch as its first dimension."""

    @property
    def default_outputs(self) -> tuple[str, ...]:
        return tuple(name for name, spec in self.outputs.items() if spec.default)

    def item_shape(self) -> tuple[int, ...] | None:
        """The prepared item's shape for the model's own input size (None if any size)."""
        spec = self.input_spec
        if not spec.fixed_size:
            return None
        if spec.kind == VIDEO:
            return (spec.channels, spec.frames, spec.height, spec.width)
        return (spec.channels, spec.height, spec.width)
