"""A repository model run in this process (no server): `foveal extract --local`, Ray actors.

It stands in for FoveaClient in the extraction pipeline (same `describe`, `extract_image` and
`stream_clips`) and computes with the server's own code: the model is built by the service's
`load_model`, inputs go through the service's `decode_image` / `prepare_image` /
`prepare_clip`, and batches run through a model instance's `run_batch`. Same backend, same inputs:
the same features as the server returns. Imports torch (unlike the thin client).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foveal.service.instances import run_batch
from foveal.service.models.base import VIDEO, ServedModel
from foveal.service.preprocess import decode_image, prepare_clip, prepare_image
from foveal.service.repository import BatchPolicy, ModelConfig, builtin_models, load_repository
from foveal.service.server import choose_backend, load_model, resolve_device

from . import wire
from .models import IMAGE, ModelSpec
from .models import VIDEO as SPEC_VIDEO
from .wire import Features

_TORCH_OUTPUT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def find_model_config(name: str, models_file: str | Path | None = None) -> ModelConfig:
    """The repository entry called `name` (the built-in models without a file)."""
    configs = load_repository(models_file) if models_file else builtin_models()
    for config in configs:
        if config.name == name:
            return config
    where = f"in {models_file}" if models_file else "among the built-in models"
    raise ValueError(f"model {name!r} not found {where}; available: "
                     f"{', '.join(c.name for c in configs)}")


def spec_of(model: ServedModel, max_batch_size: int, backend: str) -> ModelSpec:
    item = model.item_shape()
    outputs = {}
    for name, output in model.outputs.items():
        if item:
            outputs[name] = tuple(model.output_shape(name, item))
        else:
            dims = 3 if model.input_spec.kind == VIDEO else 2
            outputs[name] = (len(output.channels),) + (-1,) * dims
    spec = model.input_spec
    return ModelSpec(name=model.name, kind=SPEC_VIDEO if spec.kind == VIDEO else IMAGE,
                     height=spec.height, width=spec.width, frames=spec.frames,
                     resize=spec.resize, outputs=outputs, default_outputs=model.default_outputs,
                     max_batch_size=max_batch_size, backend=backend, device=str(model.device))


class LocalModel:
    """One model in this process. Thread-safe: batches run one at a time under a lock."""

    def __init__(self, name: str, models_file: str | Path | None = None, *,
                 backend: str = "auto", device: str = "auto", batch_size: int | None = None):
        config = find_model_config(name, models_file)
        resolved = resolve_device(device if config.device == "auto" else config.device)
        self.preference, running, self.backend_reason = choose_backend(backend, resolved)
        self.model = load_model(config, str(resolved), self.preference)
        policy = config.batch_policy(BatchPolicy())
        if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size or policy.max_batch_size
        self.spec = spec_of(self.model, self.batch_size, running)
        self._lock = threading.Lock()
        self.compute_seconds = 0.0        # summed over batches
        self.item_compute_seconds = 0.0   # summed over items: each waits for its whole batch

    def describe(self, model: str | None = None) -> ModelSpec:
        if model is not None and model != self.spec.name:
            raise ValueError(f"this LocalModel runs {self.spec.name!r}, not {model!r}")
        return self.spec

    def run(self, tensors: list[torch.Tensor], outputs: Sequence[str],
            output_dtype: str = "float32") -> list[Features]:
        """Prepared same-shape items -> their features as numpy, as the server would send."""
        wire.output_dtype(output_dtype)
        names = self.spec.check_outputs(list(outputs))
        with self._lock:
            start = time.perf_counter()
            results = run_batch(self.model, self.preference, tensors, frozenset(names))
            seconds = time.perf_counter() - start
            self.compute_seconds += seconds
            self.item_compute_seconds += seconds * len(tensors)
        return [{name: _to_numpy(result[name], output_dtype) for name in names}
                for result in results]

    def extract_image(self, image: str | Path | bytes, model: str | None = None,
                      outputs: Sequence[str] | None = None, *, output_dtype: str = "float32",
                      as_torch: bool = False) -> Features:
        """Features of one encoded image (a JPEG/PNG path or bytes), as the server decodes it."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        what = "image" if isinstance(image, bytes) else str(image)
        self.describe(model)
        spec = self.model.input_spec
        tensor = prepare_image(decode_image(data, spec, what), spec, what)
        (result,) = self.run([tensor], wire.check_outputs(outputs), output_dtype)
        return wire.to_torch(result, output_dtype == "bfloat16") if as_torch else result

    def prepare_clip(self, frames: np.ndarray, what: str) -> torch.Tensor:
        return prepare_clip(torch.from_numpy(np.ascontiguousarray(frames)),
                            self.model.input_spec, what)

    def stream_clips(self, clips: Iterable[Any], model: str | None = None, *,
                     outputs: Sequence[str] | None = None, output_dtype: str = "float32",
                     as_torch: bool = False) -> Iterator[tuple[Any, Features]]:
        """(clip, features) for each clip (a (T, H, W, C) array or a video Clip), in order,
        in batches of `batch_size` clips."""
        self.describe(model)
        names = wire.check_outputs(outputs)
        batch: list[tuple[Any, torch.Tensor]] = []
        try:
            for i, clip in enumerate(clips):
                frames = getattr(clip, "frames", clip)
                batch.append((clip, self.prepare_clip(frames, f"clip {i}")))
                if len(batch) == self.batch_size:
                    yield from self._flush(batch, names, output_dtype, as_torch)
                    batch = []
        except Exception:  # clips read before an error still get features, as from the server
            yield from self._flush(batch, names, output_dtype, as_torch)
            raise
        yield from self._flush(batch, names, output_dtype, as_torch)

    def _flush(self, batch: list[tuple[Any, torch.Tensor]], names: list[str], output_dtype: str,
               as_torch: bool) -> Iterator[tuple[Any, Features]]:
        if not batch:
            return
        results = self.run([tensor for _, tensor in batch], names, output_dtype)
        for (clip, _), result in zip(batch, results, strict=True):
            yield clip, wire.to_torch(result, output_dtype == "bfloat16") if as_torch else result


def _to_numpy(t: torch.Tensor, output_dtype: str) -> np.ndarray:
    """Round to the requested dtype as the server's wire encoding does (bfloat16 -> float32)."""
    t = t.to(_TORCH_OUTPUT[output_dtype])
    if t.dtype is torch.bfloat16:
        t = t.float()
    return t.numpy().copy()
