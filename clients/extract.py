"""Batch feature extraction: each input to one output (npy or safetensors) and a manifest line.

The same pipeline serves the server mode (a FoveaClient) and the in-process mode (a
LocalModel): both `describe` the model, `extract_image` a file and `stream_clips` a video's
clips. Several inputs are in flight at once (`jobs` threads, each with its own clip stream),
so the server's batcher has work. Finished inputs are skipped on a rerun; a corrupt or
unreadable input is recorded in the manifest with its error and the run goes on. The Ray mode
(ray_pipeline) reuses the output and reporting parts.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .models import VIDEO, ModelSpec
from .outputs import ManifestEntry, OutputStore
from .progress import Progress
from .wire import Features

log = logging.getLogger("foveal.clients.extract")


class Extractor(Protocol):
    """What the pipeline needs from a FoveaClient or a LocalModel."""

    def describe(self, model: str) -> ModelSpec: ...

    def extract_image(self, image: Any, model: str, outputs: Sequence[str] | None = None, *,
                      output_dtype: str = "float32") -> Features: ...

    def stream_clips(self, clips: Iterable[Any], model: str, *,
                     outputs: Sequence[str] | None = None,
                     output_dtype: str = "float32") -> Iterator[tuple[Any, Features]]: ...


@dataclass(frozen=True)
class ExtractSettings:
    clip_len: int | None = None      # None: the model's clip length
    stride: int | None = None        # None: clip_len (clips side by side)
    fps: float | None = None         # None: the file's own frames
    outputs: tuple[str, ...] = ()    # empty: the model's default outputs
    output_dtype: str = "float32"

    def resolved(self, spec: ModelSpec) -> ExtractSettings:
        """Defaults filled in from the model, and checked against it."""
        spec.check_outputs(list(self.outputs))
        if spec.kind != VIDEO:
            return self
        clip_len = spec.clip_length(self.clip_len)
        stride = clip_len if self.stride is None else self.stride
        if type(stride) is not int or stride < 1:
            raise ValueError(f"stride must be a positive int (frames between clip starts), "
                             f"got {stride!r}")
        return ExtractSettings(clip_len, stride, self.fps, self.outputs, self.output_dtype)

    def metadata(self, spec: ModelSpec, source: str | Path) -> dict[str, str]:
        meta = {"model": spec.name, "backend": spec.backend, "source": str(source),
                "output_dtype": self.output_dtype}
        if spec.kind == VIDEO:
            meta.update(clip_len=str(self.clip_len), stride=str(self.stride),
                        fps="native" if self.fps is None else str(self.fps))
        return meta


class InputFeatures:
    """One input's features as they arrive (clip by clip, or one image), then written."""

    def __init__(self):
        self.layers: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        self.timestamps: list[np.ndarray] = []

    @property
    def clips(self) -> int:
        return len(self.timestamps)

    def add_clip(self, features: Features, timestamps: np.ndarray) -> None:
        for name, array in features.items():
            self.layers[name].append(array)
        self.timestamps.append(np.asarray(timestamps, dtype=np.float64))

    def write(self, store: OutputStore, source: str | Path, spec: ModelSpec,
              settings: ExtractSettings, seconds: float,
              image: Features | None = None) -> ManifestEntry:
        """Write the output (clips stacked: layer (clips, C, T', H', W'), timestamps
        (clips, clip_len)) and return its manifest entry."""
        if image is not None:
            layers, timestamps = dict(image), None
        else:
            if not self.clips:
                raise ValueError(f"no whole clip: the video is shorter than one clip of "
                                 f"{settings.clip_len} frames"
                                 + (f" at {settings.fps} fps" if settings.fps else ""))
            layers = {name: np.stack(arrays) for name, arrays in self.layers.items()}
            timestamps = np.stack(self.timestamps)
        output = store.write(source, layers, timestamps, settings.metadata(spec, source))
        return ManifestEntry(str(source), str(output), "ok", spec.name, round(seconds, 4),
                             self.clips,
                             {name: list(a.shape) for name, a in layers.items()})


def error_entry(source: str | Path, spec: ModelSpec, error: BaseException | str,
                seconds: float, clips: int = 0) -> ManifestEntry:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    log.warning("skipped %s: %s", source, message)
    return ManifestEntry(str(source), None, "error", spec.name, round(seconds, 4), clips,
                         error=message)


@dataclass
class StageTimes:
    """Busy seconds summed over the clips (or images) that came back, `items` of them; the
    stages overlap in time, so they do not add up to the wall time: reading and decoding
    frames; from an item decoded to its features back (`roundtrip_s`); and the model
    executions (`compute_s` per batch, `item_compute_s` per item: each item waits for its
    whole batch), when the mode can see them."""

    items: int = 0
    decode_s: float = 0.0
    roundtrip_s: float = 0.0
    compute_s: float | None = None
    item_compute_s: float | None = None

    @property
    def transfer_s(self) -> float | None:
        """Round trips less the model: serialisation, network or object store, queueing."""
        if self.item_compute_s is None:
            return None
        return max(self.roundtrip_s - self.item_compute_s, 0.0)

    def as_dict(self) -> dict[str, float | None]:
        return {"decode_s": self.decode_s, "transfer_s": self.transfer_s,
                "compute_s": self.compute_s, "roundtrip_s": self.roundtrip_s}

    def text(self) -> str:
        """Mean milliseconds per item and stage, for people."""
        per = 1000 / max(self.items, 1)
        parts = [f"decode {self.decode_s * per:.1f} ms"]
        if self.compute_s is None:
            parts.append(f"round trip {self.roundtrip_s * per:.1f} ms")
        else:
            parts += [f"transfer+queue {self.transfer_s * per:.1f} ms",
                      f"compute {self.compute_s * per:.1f} ms"]
        return "per clip or image: " + ", ".join(parts)


@dataclass
class Summary:
    model: str
    mode: str
    total: int                    # inputs named
    skipped: int                  # finished in an earlier run
    ok: int = 0
    clips: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    times: StageTimes = field(default_factory=StageTimes)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def text(self) -> str:
        rate = f" ({self.clips / self.seconds:.1f} clips/s)" if self.seconds and self.clips else ""
        lines = [f"{self.model} ({self.mode}): {self.total} inputs: {self.ok} extracted, "
                 f"{self.skipped} already done, {len(self.failures)} failed; {self.clips} clips "
                 f"in {self.seconds:.1f} s{rate}"]
        lines.append(self.times.text())
        lines += [f"failed: {source}: {error}" for source, error in self.failures]
        return "\n".join(lines)


class RunState:
    """Counters shared by the workers; the manifest and the progress line are the main
    thread's."""

    def __init__(self, store: OutputStore, summary: Summary, progress: Progress):
        self.store, self.summary, self.progress = store, summary, progress
        self.times = summary.times
        self._lock = threading.Lock()
        self._clips_seen = 0
        self.done = 0

    def add_times(self, decode_s: float = 0.0, roundtrip_s: float | None = None,
                  clips: int = 0) -> None:
        """Add decoding time, and one item's round trip (`clips`: 1 for a clip, 0 for an
        image)."""
        with self._lock:
            self.times.decode_s += decode_s
            if roundtrip_s is not None:
                self.times.roundtrip_s += roundtrip_s
                self.times.items += 1
            self._clips_seen += clips

    def record(self, entry: ManifestEntry) -> None:
        self.store.record(entry)
        self.done += 1
        if entry.status == "ok":
            self.summary.ok += 1
            self.summary.clips += entry.clips
        else:
            self.summary.failures.append((entry.input, entry.error or ""))
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        self.progress.update(self.done, self._clips_seen, len(self.summary.failures), force)


def start_run(inputs: Sequence[Path], spec: ModelSpec, store: OutputStore,
              settings: ExtractSettings, mode: str, progress: bool | None
              ) -> tuple[ExtractSettings, list[Path], RunState]:
    """Settings checked against the model, leftovers of killed runs removed, and the inputs
    not finished in an earlier run."""
    settings = settings.resolved(spec)
    store.remove_stale_partials()
    finished = store.finished()
    todo = [path for path in inputs if OutputStore.key(path) not in finished]
    summary = Summary(spec.name, mode, len(inputs), len(inputs) - len(todo))
    return settings, todo, RunState(store, summary, Progress(len(todo), enabled=progress))


def _timed_clips(clips: Iterator[Any], state: RunState,
                 decoded_at: collections.deque) -> Iterator[Any]:
    """The clips, timing how long each takes to read and noting when it was ready."""
    while True:
        start = time.perf_counter()
        clip = next(clips, None)
        now = time.perf_counter()
        state.add_times(decode_s=now - start)
        if clip is None:
            return
        decoded_at.append(now)
        yield clip


def extract_video(source: Path, extractor: Extractor, spec: ModelSpec,
                  settings: ExtractSettings, store: OutputStore, state: RunState) -> ManifestEntry:
    from .video import read_clips

    started = time.monotonic()
    result = InputFeatures()
    try:
        clips = read_clips(source, settings.clip_len, settings.stride, settings.fps,
                           spec.frame_size())
        decoded_at: collections.deque = collections.deque()
        stream = extractor.stream_clips(_timed_clips(clips, state, decoded_at), spec.name,
                                        outputs=settings.outputs,
                                        output_dtype=settings.output_dtype)
        for clip, features in stream:
            state.add_times(roundtrip_s=time.perf_counter() - decoded_at.popleft(), clips=1)
            result.add_clip(features, clip.timestamps)
        return result.write(store, source, spec, settings, time.monotonic() - started)
    except Exception as err:
        return error_entry(source, spec, err, time.monotonic() - started, result.clips)


def extract_image(source: Path, extractor: Extractor, spec: ModelSpec,
                  settings: ExtractSettings, store: OutputStore, state: RunState) -> ManifestEntry:
    started = time.monotonic()
    try:
        start = time.perf_counter()
        features = extractor.extract_image(source, spec.name, settings.outputs,
                                           output_dtype=settings.output_dtype)
        state.add_times(roundtrip_s=time.perf_counter() - start)
        return InputFeatures().write(store, source, spec, settings,
                                     time.monotonic() - started, image=features)
    except Exception as err:
        return error_entry(source, spec, err, time.monotonic() - started)


def run_extraction(inputs: Sequence[Path], extractor: Extractor, model: str, store: OutputStore,
                   settings: ExtractSettings = ExtractSettings(), *, jobs: int = 4,
                   mode: str = "server", progress: bool | None = None) -> Summary:
    """Extract every input not finished in an earlier run; returns the run's summary."""
    if type(jobs) is not int or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    spec = extractor.describe(model)
    settings, todo, state = start_run(inputs, spec, store, settings, mode, progress)
    summary = state.summary
    work = extract_video if spec.kind == VIDEO else extract_image
    compute_before = _compute_times(extractor)
    started = time.monotonic()
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="foveal-extract")
    futures: set[Future] = set()
    try:
        remaining = iter(todo)
        for source in remaining:  # at most `jobs` inputs open at once
            futures.add(pool.submit(work, source, extractor, spec, settings, store, state))
            if len(futures) >= jobs:
                futures = _collect(futures, state)
        while futures:
            futures = _collect(futures, state)
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        state.progress.close()
    summary.seconds = time.monotonic() - started
    compute_after = _compute_times(extractor)
    if compute_before and compute_after:
        summary.times.compute_s = compute_after[0] - compute_before[0]
        summary.times.item_compute_s = compute_after[1] - compute_before[1]
    return summary


def _collect(futures: set[Future], state: RunState) -> set[Future]:
    """Wait for at least one input to finish (refreshing the progress line meanwhile)."""
    while True:
        done, waiting = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
        for future in done:
            state.record(future.result())
        if done:
            return waiting
        state.refresh()


def _compute_times(extractor: Any) -> tuple[float, float] | None:
    """Model time so far (per batch, per item), where the extractor runs the model itself."""
    if not hasattr(extractor, "compute_seconds"):
        return None
    return extractor.compute_seconds, extractor.item_compute_seconds
