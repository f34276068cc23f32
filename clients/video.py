"""Read fixed-length clips from a video file with PyAV (the `video` extra).

`read_clips(path, clip_len, stride, fps=None, size=None)` yields `Clip`s of uint8 RGB frames
(T, H, W, C) in order. Sampling is by presentation time, so variable-frame-rate files come out
evenly spaced when `fps` is given: the sample at time t is the last frame shown at or before t.
Rotation metadata is applied so frames come out upright. Long gaps between clips are skipped by
seeking. A corrupt or truncated file raises `VideoReadError` naming the file and the frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Seek instead of decoding through a gap longer than this (seconds): a keyframe seek plus
# decoding up to the target costs about one GOP, typically 0.5-2 s of video.
SEEK_GAP_SECONDS = 4.0
# A file that ends before this fraction of its declared duration counts as truncated.
TRUNCATION_TOLERANCE = 0.9


class VideoReadError(ValueError):
    """A video that cannot be read as declared: unreadable, corrupt or truncated."""


@dataclass(frozen=True)
class Clip:
    index: int
    frames: np.ndarray  # (T, H, W, 3) uint8, RGB
    timestamps: np.ndarray  # (T,) seconds: the presentation time sampled by each frame

    @property
    def start(self) -> float:
        return float(self.timestamps[0])

    @property
    def end(self) -> float:
        return float(self.timestamps[-1])


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float  # average frame rate
    frames: int  # declared frame count (0 if the container does not say)
    width: int
    height: int
    rotation: int  # degrees counter-clockwise needed to display upright


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("reading video needs PyAV: pip install 'foveal[video]'") from err
    return av


def _open(path: str | Path):
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoReadError(f"{path}: cannot open as a video: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: contains no video stream")
    return container


def _stream_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def probe(path: str | Path) -> VideoInfo:
    """Duration, frame rate, size and rotation of a video's first video stream."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        rotation = 0
        for frame in container.decode(stream):
            rotation = _rotation(frame)
            break
        return VideoInfo(duration=_stream_duration(container, stream),
                         fps=float(rate) if rate else 0.0, frames=stream.frames or 0,
                         width=stream.codec_context.width, height=stream.codec_context.height,
                         rotation=rotation)


def _rotation(frame) -> int:
    """Degrees (a multiple of 90) to rotate counter-clockwise to display the frame upright."""
    angle = getattr(frame, "rotation", 0) or 0
    return round(angle / 90.0) * 90 % 360


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    rotation = _rotation(frame)
    image = frame.to_ndarray(format="rgb24")
    if rotation:
        image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
    if size is not None and image.shape[:2] != tuple(size):
        from PIL import Image

        height, width = size
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return image


def _check_args(clip_len: int, stride: int, fps: float | None,
                size: tuple[int, int] | None) -> None:
    if not isinstance(clip_len, int) or clip_len < 1:
        raise ValueError(f"clip_len must be a positive int, got {clip_len!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int (frames between clip starts), "
                         f"got {stride!r}")
    if fps is not None and not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if size is not None and (len(size) != 2 or any(not isinstance(s, int) or s < 1
                                                   for s in size)):
        raise ValueError(f"size must be (height, width) with positive ints, got {size!r}")


class _FrameSource:
    """Decoded frames in presentation order with their times, seeking across long gaps."""

    def __init__(self, container, path: str | Path):
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.path = path
        self.decoded = 0
        self.last_time = -math.inf
        self._frames = self._decode()

    def _decode(self):
        av = _av()
        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                self.decoded += 1
                yield frame, float(frame.pts * frame.time_base)
        except av.error.FFmpegError as err:
            raise VideoReadError(f"{self.path}: corrupt data after frame {self.decoded} "
                                 f"(t={max(self.last_time, 0.0):.3f}s): {err}") from err

    def seek(self, seconds: float) -> None:
        target = int(seconds / self.stream.time_base)
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        self._frames = self._decode()

    def __iter__(self):
        return self

    def __next__(self):
        frame, time = next(self._frames)
        self.last_time = time
        return frame, time


def _sample_times(start: float, fps: float, count: int) -> np.ndarray:
    return start + np.arange(count) / fps


def read_clips(path: str | Path, clip_len: int, stride: int, fps: float | None = None,
               size: tuple[int, int] | None = None) -> Iterator[Clip]:
    """Yield clips of `clip_len` frames whose starts are `stride` frames apart.

    Frames are counted at `fps` when given (frames resampled by presentation time), else the
    file's own frames. `size` is (height, width) to resize to. Only whole clips are yielded.
    """
    _check_args(clip_len, stride, fps, size)
    with _open(path) as container:
        source = _FrameSource(container, path)
        declared = _stream_duration(container, source.stream)
        if fps is None:
            yield from _native_clips(source, clip_len, stride, size)
        else:
            yield from _resampled_clips(source, clip_len, stride, float(fps), size)
        if declared and source.decoded and source.last_time < TRUNCATION_TOLERANCE * declared - 1:
            raise VideoReadError(
                f"{path}: truncated or corrupt: the last decodable frame "
                f"(frame {source.decoded}, t={source.last_time:.3f}s) is far short of the declared "
                f"duration "
                f"{declared:.3f}s")
        if source.decoded == 0:
            raise VideoReadError(f"{path}: no decodable frame")


def _native_clips(source: _FrameSource, clip_len: int, stride: int,
                  size: tuple[int, int] | None) -> Iterator[Clip]:
    window: list[tuple[np.ndarray, float]] = []
    index = 0
    skip = 0  # frames to drop before the next clip starts (when stride > clip_len)
    for frame, time in source:
        if skip:
            skip -= 1
            continue
        window.append((_to_rgb(frame, size), time))
        if len(window) == clip_len:
            yield Clip(index, np.stack([f for f, _ in window]),
                       np.array([t for _, t in window]))
            index += 1
            if stride >= clip_len:
                window, skip = [], stride - clip_len
            else:
                window = window[stride:]
    for _ in range(skip):
        if next(source, None) is None:
            break


def _resampled_clips(source: _FrameSource, clip_len: int, stride: int, fps: float,
                     size: tuple[int, int] | None) -> Iterator[Clip]:
    """Clips sampled at `fps`: sample k shows the last frame presented at or before its time."""
    epsilon = 1e-6
    first = next(source, None)
    if first is None:
        return
    origin = first[1]
    current, upcoming = first, next(source, None)
    index = 0
    while True:
        times = _sample_times(origin + index * stride / fps, fps, clip_len)
        if (upcoming is not None and times[0] - current[1] > SEEK_GAP_SECONDS):
            source.seek(times[0])
            current, upcoming = next(source, None), next(source, None)
            if current is None:
                return
        frames = []
        for t in times:
            while upcoming is not None and upcoming[1] <= t + epsilon:
                current, upcoming = upcoming, next(source, None)
            if upcoming is None and t >= current[1] + _frame_span(source) - epsilon:
                return  # past the end of the last frame: no whole clip left
            frames.append(_to_rgb(current[0], size))
        yield Clip(index, np.stack(frames), times)
        index += 1


def _frame_span(source: _FrameSource) -> float:
    """How long the last frame stays on screen (its nominal duration)."""
    rate = source.stream.average_rate or source.stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.0
