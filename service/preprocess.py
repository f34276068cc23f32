"""Turn what a client sent into the tensors a model takes, or say precisely what is wrong.

Images become (C, H, W) and clips (C, T, H, W) float32 tensors: uint8 pixels scaled to [0, 1],
resized to the model's size when its spec allows, normalised per channel. Runs in a worker
thread (decoding is CPU work), never on the event loop.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .errors import invalid
from .models.base import InputSpec

ENCODED_FORMATS = ("JPEG", "PNG")


def _check_size(height: int, width: int, spec: InputSpec, what: str) -> None:
    if height * width > spec.max_pixels:
        raise invalid(f"{what}: {height}x{width} is {height * width} pixels; this model accepts "
                      f"at most {spec.max_pixels}")
    if spec.fixed_size and not spec.resize and (height, width) != (spec.height, spec.width):
        raise invalid(f"{what}: size {height}x{width} does not match the model's "
                      f"{spec.height}x{spec.width} (this model does not resize)")


def decode_image(data: bytes, spec: InputSpec, what: str) -> torch.Tensor:
    """JPEG/PNG bytes -> (H, W, C) uint8, checking the size before decoding the pixels."""
    if not data:
        raise invalid(f"{what}: empty image bytes")
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ENCODED_FORMATS:
                raise invalid(f"{what}: not a JPEG or PNG image (found {image.format})")
            width, height = image.size
            _check_size(height, width, spec, what)
            image = image.convert("RGB" if spec.channels == 3 else "L")
            pixels = np.asarray(image)
    except UnidentifiedImageError:
        raise invalid(f"{what}: not a decodable JPEG or PNG image ({len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise invalid(f"{what}: corrupt image data: {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy())


def _to_unit_range(pixels: torch.Tensor, what: str) -> torch.Tensor:
    if pixels.dtype == torch.uint8:
        return pixels.float() / 255.0
    pixels = pixels.float()
    if not torch.isfinite(pixels).all():
        raise invalid(f"{what}: float pixels must be finite (found NaN or infinity)")
    return pixels


def _normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(..., C, H, W) with channels at dim -3."""
    mean = torch.tensor(spec.mean).reshape(-1, 1, 1)
    std = torch.tensor(spec.std).reshape(-1, 1, 1)
    return (x - mean) / std


def _resize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, C, H, W) -> the model's size, if it has one and x differs."""
    if not spec.fixed_size or tuple(x.shape[-2:]) == (spec.height, spec.width):
        return x
    return F.interpolate(x, size=(spec.height, spec.width), mode="bilinear",
                         align_corners=False, antialias=True)


def _check_channels(pixels: torch.Tensor, spec: InputSpec, what: str, layout: str) -> None:
    if pixels.shape[-1] != spec.channels:
        raise invalid(f"{what}: has {pixels.shape[-1]} channels (last axis of {layout}); "
                      f"this model takes {spec.channels}")


def prepare_image(pixels: torch.Tensor, spec: InputSpec, what: str) -> torch.Tensor:
    """(H, W, C) pixels -> the model's (C, H, W) float32 input."""
    if pixels.dim() != 3:
        raise invalid(f"{what}: image pixels must be 3-D (height, width, channels), got shape "
                      f"{list(pixels.shape)}")
    _check_channels(pixels, spec, what, "(height, width, channels)")
    _check_size(pixels.shape[0], pixels.shape[1], spec, what)
    x = _to_unit_range(pixels, what).permute(2, 0, 1).unsqueeze(0)
    return _normalise(_resize(x, spec), spec)[0].contiguous()


def prepare_clip(frames: torch.Tensor, spec: InputSpec, what: str) -> torch.Tensor:
    """(T, H, W, C) frames -> the model's (C, T, H, W) float32 input."""
    if frames.dim() != 4:
        raise invalid(f"{what}: a clip must be 4-D (frames, height, width, channels), got shape "
                      f"{list(frames.shape)}")
    if frames.shape[0] != spec.frames:
        amount = "too many" if frames.shape[0] > spec.frames else "too few"
        raise invalid(f"{what}: {amount} frames: got {frames.shape[0]}, this model takes clips "
                      f"of exactly {spec.frames}")
    _check_channels(frames, spec, what, "(frames, height, width, channels)")
    _check_size(frames.shape[1], frames.shape[2], spec, what)
    x = _to_unit_range(frames, what).permute(0, 3, 1, 2)      # (T, C, H, W)
    return _normalise(_resize(x, spec), spec).permute(1, 0, 2, 3).contiguous()
