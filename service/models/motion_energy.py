"""`motion-energy`: Adelson-Bergen spatiotemporal energy over video clips.

Drifting Gabor quadrature pairs tuned to 8 directions of motion (every 45 degrees; 0 is
rightward, 90 upward) at 2 wavelengths and a speed of 1 pixel per frame, each in four phases
(0, 90, 180, 270 degrees) and run with one conv3d with a fused ReLU: the sum of the squared
half-wave rectified phases is the pair's energy (even^2 + odd^2), which grows with motion in
the preferred direction whatever the stimulus's phase.

Outputs: `energy` (16 maps: direction x wavelength, the default) and `opponent` (8 maps: energy
in a direction minus energy in the opposite one, signed: > 0 for motion along the first).
"""

from __future__ import annotations

import torch

import foveal.kernels as fk
from foveal.kernels.geometry import conv_output_length

from .base import OutputSpec, ServedModel
from .filters import LUMINANCE, colour_filter, drifting_gabor_pair

KERNEL, FRAMES, STRIDE = 11, 7, 4
TEMPORAL_SIGMA = 1.5
SPEED = 1.0
DIRECTIONS = tuple(i * 45.0 for i in range(8))
WAVELENGTHS = (4.0, 8.0)


def filter_bank() -> tuple[torch.Tensor, list[str]]:
    """(64, 3, 7, 11, 11) float64 filters, four phases per (direction, wavelength) channel."""
    filters, labels = [], []
    for direction in DIRECTIONS:
        for wavelength in WAVELENGTHS:
            even, odd = drifting_gabor_pair(direction, wavelength, SPEED, KERNEL, FRAMES,
                                            TEMPORAL_SIGMA)
            for spatiotemporal in (even, odd, -even, -odd):
                filters.append(colour_filter(spatiotemporal, LUMINANCE))
            labels.append(f"direction={direction:g} wavelength={wavelength:g} speed={SPEED:g}")
    return torch.stack(filters), labels


class MotionEnergyModel(ServedModel):
    kind = "motion-energy"
    description = ("Adelson-Bergen motion energy: drifting Gabor quadrature pairs (conv3d, "
                   "7 frames x 11 x 11, spatial stride 4) tuned to 8 directions at 2 "
                   "wavelengths, 1 pixel/frame.")
    weights = "analytic"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bank, self._labels = filter_bank()
        self._bank = bank.to(self.device, self.dtype)

    def all_outputs(self) -> dict[str, OutputSpec]:
        half = len(DIRECTIONS) // 2
        opponent = tuple(f"{label} opponent={DIRECTIONS[i // len(WAVELENGTHS) + half]:g}"
                         for i, label in enumerate(self._labels[:half * len(WAVELENGTHS)]))
        return {
            "energy": OutputSpec("energy", "motion energy per direction and wavelength",
                                 tuple(self._labels), default=True),
            "opponent": OutputSpec("opponent", "energy minus the opposite direction's energy",
                                   opponent),
        }

    def output_shape(self, output: str, item_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, frames, height, width = item_shape
        channels = len(self._labels) // (2 if output == "opponent" else 1)
        return (channels, conv_output_length(frames, FRAMES), conv_output_length(
            height, KERNEL, STRIDE), conv_output_length(width, KERNEL, STRIDE))

    def forward(self, batch: torch.Tensor, outputs: frozenset[str]) -> dict[str, torch.Tensor]:
        rectified = fk.conv3d(batch, self._bank, stride=(1, STRIDE, STRIDE), activation="relu")
        n, _, *rest = rectified.shape
        energy = (rectified.float() ** 2).reshape(n, -1, 4, *rest).sum(dim=2)
        result = {}
        if "energy" in outputs:
            result["energy"] = energy.to(batch.dtype)
        if "opponent" in outputs:
            half = energy.shape[1] // 2
            result["opponent"] = (energy[:, :half] - energy[:, half:]).to(batch.dtype)
        return result
