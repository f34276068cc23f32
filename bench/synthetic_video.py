"""Synthetic videos written with PyAV, for tests and benchmarks: nothing is downloaded."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def drifting_grating(frames: int, height: int = 32, width: int = 48, period: float = 12.0,
                     speed: float = 2.0) -> np.ndarray:
    """(T, H, W, 3) uint8 vertical bars moving right by `speed` pixels per frame."""
    x = np.arange(width)[None, None, :]
    t = np.arange(frames)[:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x - speed * t) / period)
    gray = np.broadcast_to(wave, (frames, height, width))
    return np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=-1)


def frame_index_video(frames: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frames whose mean brightness encodes their index (10 levels apart), to check sampling."""
    values = (np.arange(frames) * 10 % 250 + 2).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (frames, height, width, 3)).copy()


def moving_square(frames: int, height: int = 32, width: int = 48, side: int = 8,
                  velocity: tuple[float, float] = (1.0, 2.0)) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright square on a dark ground moving `velocity` (rows, columns)
    pixels per frame, wrapping around the edges."""
    video = np.full((frames, height, width, 3), 16, np.uint8)
    rows, cols = np.arange(side), np.arange(side)
    for t in range(frames):
        top = round(t * velocity[0]) % height
        left = round(t * velocity[1]) % width
        video[t][np.ix_((top + rows) % height, (left + cols) % width)] = 235
    return video


def write_video(path: Path, frames: np.ndarray, fps: int = 25, *, codec: str = "libx264",
                times: list[float] | None = None, rotation: int = 0) -> Path:
    """Encode frames; `times` (seconds) gives a variable frame rate; `rotation` sets the
    display matrix (degrees counter-clockwise)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"} if codec == "libx264" else {}
        time_base = Fraction(1, 1000)
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            seconds = times[i] if times is not None else i / fps
            frame.pts = round(seconds / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
