"""Analytic filters: Gabor patches in space and drifting Gabors in space-time.

Coordinates are image coordinates: x grows to the right, y grows downwards, both centred on
the kernel. Every filter is normalised to unit L2 norm; even (cosine) filters have their mean
removed so a uniform image gives no response.
"""

from __future__ import annotations

import math

import torch

ENVELOPE_PER_WAVELENGTH = 0.45  # Gaussian sigma / wavelength: about one octave of bandwidth


def _grid(size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float64) - (size - 1) / 2


def _zero_mean(carrier: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
    """Remove the DC component of an even filter in proportion to its envelope."""
    return (carrier - envelope * carrier.sum() / envelope.sum())


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm()


def gabor_pair(orientation_deg: float, wavelength: float, size: int) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """(even, odd) 2-D Gabors whose carrier varies along `orientation_deg` (degrees from +x,
    towards +y): they respond most to a grating whose stripes run perpendicular to it."""
    theta = math.radians(orientation_deg)
    y, x = torch.meshgrid(_grid(size), _grid(size), indexing="ij")
    u = x * math.cos(theta) + y * math.sin(theta)
    sigma = ENVELOPE_PER_WAVELENGTH * wavelength
    envelope = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    phase = 2 * math.pi * u / wavelength
    even = _zero_mean(envelope * torch.cos(phase), envelope)
    odd = envelope * torch.sin(phase)
    return _unit(even), _unit(odd)


def drifting_gabor_pair(direction_deg: float, wavelength: float, speed: float, size: int,
                        frames: int, temporal_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(even, odd) space-time Gabors, shape (frames, size, size), tuned to a grating of
    `wavelength` pixels drifting at `speed` pixels per frame in `direction_deg` (0 rightward,
    90 upward, i.e. towards row 0). Cross-correlated along time (as conv3d does), the carrier
    cos(2*pi*(u - speed*t) / wavelength) matches exactly that motion."""
    theta = math.radians(direction_deg)
    t, y, x = torch.meshgrid(_grid(frames), _grid(size), _grid(size), indexing="ij")
    u = x * math.cos(theta) - y * math.sin(theta)
    sigma = ENVELOPE_PER_WAVELENGTH * wavelength
    envelope = (torch.exp(-(x**2 + y**2) / (2 * sigma**2))
                * torch.exp(-(t**2) / (2 * temporal_sigma**2)))
    phase = 2 * math.pi * (u - speed * t) / wavelength
    even = _zero_mean(envelope * torch.cos(phase), envelope)
    odd = envelope * torch.sin(phase)
    return _unit(even), _unit(odd)


LUMINANCE = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64) / math.sqrt(3)
RED_GREEN = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2)
BLUE_YELLOW = torch.tensor([-1.0, -1.0, 2.0], dtype=torch.float64) / math.sqrt(6)


def colour_filter(spatial: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """A (3, *spatial.shape) RGB filter: `spatial` weighted per channel by `colour` (unit)."""
    return colour.reshape(3, *([1] * spatial.dim())) * spatial
