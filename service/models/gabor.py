"""`gabor`: an analytic filter bank shaped like AlexNet's first layer.

96 filters of 11x11x3 with stride 4 (227x227x3 -> 55x55x96), as 48 even/odd quadrature pairs:
luminance Gabors at 8 orientations and 3 wavelengths (24 pairs) and colour-opponent Gabors
(red-green and blue-yellow) at 6 orientations and 2 wavelengths (24 pairs): the oriented,
multi-scale edge and colour detectors AlexNet learns, with no training.

Outputs: `simple` (96 half-wave rectified maps, the default) and `energy` (48 quadrature-energy
maps sqrt(even^2 + odd^2), independent of the stimulus's phase). Both come from one conv2d
with a fused ReLU over the bank and its negation: relu(z)^2 + relu(-z)^2 = z^2.
"""

from __future__ import annotations

import torch

import foveal.kernels as fk
from foveal.kernels.geometry import conv_output_length

from .base import OutputSpec, ServedModel
from .filters import BLUE_YELLOW, LUMINANCE, RED_GREEN, colour_filter, gabor_pair

KERNEL, STRIDE = 11, 4
LUMINANCE_ORIENTATIONS = tuple(i * 22.5 for i in range(8))
LUMINANCE_WAVELENGTHS = (3.0, 5.0, 8.0)
COLOUR_ORIENTATIONS = tuple(i * 30.0 for i in range(6))
COLOUR_WAVELENGTHS = (4.0, 7.0)
COLOURS = (("red-green", RED_GREEN), ("blue-yellow", BLUE_YELLOW))


def filter_bank() -> tuple[torch.Tensor, list[str]]:
    """The (96, 3, 11, 11) float64 bank, pairs (even, odd) adjacent, and one label per pair."""
    filters, labels = [], []
    pathways = [("luminance", LUMINANCE, LUMINANCE_ORIENTATIONS, LUMINANCE_WAVELENGTHS)]
    pathways += [(name, colour, COLOUR_ORIENTATIONS, COLOUR_WAVELENGTHS)
                 for name, colour in COLOURS]
    for pathway, colour, orientations, wavelengths in pathways:
        for wavelength in wavelengths:
            for orientation in orientations:
                for spatial in gabor_pair(orientation, wavelength, KERNEL):
                    filters.append(colour_filter(spatial, colour))
                labels.append(f"pathway={pathway} orientation={orientation:g} "
                              f"wavelength={wavelength:g}")
    return torch.stack(filters), labels


class GaborModel(ServedModel):
    kind = "gabor"
    description = ("Analytic Gabor filter bank shaped like AlexNet's first layer: 96 filters "
                   "11x11x3, stride 4; oriented even/odd luminance Gabors at 8 orientations and "
                   "3 wavelengths, colour-opponent Gabors at 6 orientations and 2 wavelengths.")
    weights = "analytic"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bank, self._pair_labels = filter_bank()
        self._bank = torch.cat([bank, -bank]).to(self.device, self.dtype)
        self._filters = bank.shape[0]

    def all_outputs(self) -> dict[str, OutputSpec]:
        simple = tuple(f"{label} phase={phase}" for label in self._pair_labels
                       for phase in ("even", "odd"))
        return {
            "simple": OutputSpec("simple", "half-wave rectified responses of the 96 filters "
                                 "(simple cells)", simple, default=True),
            "energy": OutputSpec("energy", "quadrature energy sqrt(even^2 + odd^2) of the 48 "
                                 "pairs (complex cells)", tuple(self._pair_labels)),
        }

    def output_shape(self, output: str, item_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, height, width = item_shape
        channels = self._filters if output == "simple" else self._filters // 2
        return (channels, conv_output_length(height, KERNEL, STRIDE),
                conv_output_length(width, KERNEL, STRIDE))

    def forward(self, batch: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        bank = self._bank if "energy" in outputs else self._bank[:self._filters]
        rectified = fk.conv2d(batch, bank, stride=STRIDE, activation="relu")
        result = {}
        if "simple" in outputs:
            result["simple"] = rectified[:, :self._filters]
        if "energy" in outputs:
            squared = rectified[:, :self._filters] ** 2 + rectified[:, self._filters:] ** 2
            result["energy"] = (squared[:, 0::2] + squared[:, 1::2]).sqrt()
        return result
