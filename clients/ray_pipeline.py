"""`foveal extract --ray`: the extraction pipeline on Ray Data (the `ray` extra).

    inputs --flat_map(decode, CPU tasks)--> clip rows --map_batches(ModelActor)--> feature rows
           --> driver: assembled per input, written, recorded in the manifest

Decoding runs in CPU tasks; the model runs in actors (`map_batches` with a callable class, one
GPU each and as many actors as GPUs when the cluster has GPUs, CPU actors otherwise). Rows
carry arrays as .npy bytes, so clip rows, image rows and the end-of-input markers share one
schema. Each input ends with a marker row giving its clip count and any decode error; the
driver writes an input once its marker and all its clips have arrived (rows come in any
order), with the same code as the other modes. Without an address, a local Ray instance is
started (and stopped at the end); with one, the same pipeline runs on that cluster (outputs
are written by the driver).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .extract import ExtractSettings, InputFeatures, RunState, Summary, error_entry, start_run
from .inputs import collect_inputs
from .models import VIDEO, ModelSpec
from .outputs import OutputStore

log = logging.getLogger("foveal.clients.ray")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None       # None: start a local Ray instance
    actors: int | None = None        # model actors; None: one per GPU, or one CPU actor
    models_file: str | None = None
    backend: str = "auto"
    device: str = "auto"             # for the actors: auto picks the GPU Ray assigned
    batch_size: int | None = None    # clips or images per model execution
    num_cpus: int | None = None      # for a local instance (None: all of this machine's)


def pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def pack_features(features: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **features)
    return buffer.getvalue()


def unpack_features(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _row(source: str, index: int, *, frames: bytes = b"", timestamps: bytes = b"",
         end: bool = False, error: str = "", decode_s: float = 0.0) -> dict[str, Any]:
    return {"input": source, "index": index, "frames": frames, "timestamps": timestamps,
            "end": end, "error": error, "decode_s": decode_s, "decoded_at": time.time()}


def decode_input(row: dict[str, Any], kind: str, clip_len: int | None, stride: int | None,
                 fps: float | None, size: tuple[int, int] | None) -> Iterator[dict[str, Any]]:
    """A Ray task: one input's clips (or its image's pixels) as rows, then its end marker."""
    source, count = row["input"], 0
    started = time.perf_counter()
    try:
        if kind == VIDEO:
            from .video import read_clips

            for clip in read_clips(source, clip_len, stride, fps, size):
                now = time.perf_counter()
                yield _row(source, count, frames=pack(clip.frames),
                           timestamps=pack(clip.timestamps), decode_s=now - started)
                count, started = count + 1, time.perf_counter()
        else:
            # decoded as the server decodes it (the actor's model knows the spec)
            yield _row(source, 0, frames=Path(source).read_bytes(),
                       decode_s=time.perf_counter() - started)
            count = 1
    except Exception as err:
        yield _row(source, count, end=True, error=f"{type(err).__name__}: {err}")
        return
    yield _row(source, count, end=True)


class ModelActor:
    """A Ray actor holding the model (on its GPU when Ray gave it one); runs batches of rows."""

    def __init__(self, model: str, models_file: str | None, backend: str, device: str,
                 batch_size: int | None, outputs: Sequence[str], output_dtype: str):
        from .local import LocalModel

        self.local = LocalModel(model, models_file, backend=backend, device=device,
                                batch_size=batch_size)
        self.outputs, self.output_dtype = list(outputs), output_dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["input"])
        features = np.array([b""] * size, dtype=object)
        errors = np.array(list(batch["error"]), dtype=object)
        share_s, wait_s = np.zeros(size), np.zeros(size)  # a batch's time split / waited
        work, tensors = [], []
        for i in range(size):
            if batch["end"][i] or errors[i]:
                continue  # markers pass through
            try:
                tensors.append(self._prepare(batch["frames"][i], batch["input"][i],
                                             int(batch["index"][i])))
                work.append(i)
            except Exception as err:
                errors[i] = f"{type(err).__name__}: {err}"
        for rows, group in _same_shapes(work, tensors):
            start = time.perf_counter()
            try:
                results = self.local.run(group, self.outputs, self.output_dtype)
            except Exception as err:  # fails these rows' inputs, not the run
                for i in rows:
                    errors[i] = f"{type(err).__name__}: {err}"
                continue
            seconds = time.perf_counter() - start
            for i, result in zip(rows, results, strict=True):
                features[i] = pack_features(result)
                share_s[i], wait_s[i] = seconds / len(rows), seconds
        return {"input": batch["input"], "index": batch["index"], "end": batch["end"],
                "timestamps": batch["timestamps"], "decode_s": batch["decode_s"],
                "decoded_at": batch["decoded_at"], "error": errors, "features": features,
                "compute_s": share_s, "item_compute_s": wait_s,
                "backend": np.array([self.local.spec.backend] * size, dtype=object)}

    def _prepare(self, data: bytes, source: str, index: int):
        from foveal.service.preprocess import decode_image, prepare_image

        spec = self.local.model.input_spec
        if self.local.spec.kind == VIDEO:
            return self.local.prepare_clip(unpack(data), f"{source}: clip {index}")
        return prepare_image(decode_image(data, spec, source), spec, source)


def _same_shapes(rows: list[int], tensors: list) -> Iterator[tuple[list[int], list]]:
    """Rows grouped by their prepared shape (only same-shape items share a model execution)."""
    groups: dict[tuple, tuple[list[int], list]] = {}
    for i, tensor in zip(rows, tensors, strict=True):
        group = groups.setdefault(tuple(tensor.shape), ([], []))
        group[0].append(i)
        group[1].append(tensor)
    yield from groups.values()


class _Assembler:
    """The driver's side: rows of any input in any order -> one output per finished input."""

    def __init__(self, spec: ModelSpec, settings: ExtractSettings, state: RunState):
        self.spec, self.settings, self.state = spec, settings, state
        self.clips: dict[str, dict[int, tuple[dict, np.ndarray]]] = {}
        self.expected: dict[str, int] = {}
        self.first_seen: dict[str, float] = {}
        self.failed: set[str] = set()
        self.backend = spec.backend

    def add(self, row: dict[str, Any]) -> None:
        source = row["input"]
        self.first_seen.setdefault(source, time.monotonic())
        times = self.state.times
        times.decode_s += float(row["decode_s"])
        if source in self.failed:
            return
        if row["error"]:
            self.failed.add(source)
            self._record(error_entry(source, self.spec, row["error"], self._seconds(source),
                                     len(self.clips.pop(source, {}))))
            return
        if row["end"]:
            self.expected[source] = int(row["index"])
        else:
            times.compute_s = (times.compute_s or 0.0) + float(row["compute_s"])
            times.item_compute_s = (times.item_compute_s or 0.0) + float(row["item_compute_s"])
            self.backend = row["backend"]
            self.clips.setdefault(source, {})[int(row["index"])] = (
                unpack_features(row["features"]), row["timestamps"])
            self.state.add_times(roundtrip_s=max(time.time() - float(row["decoded_at"]), 0.0),
                                 clips=1 if self.spec.kind == VIDEO else 0)
        if len(self.clips.get(source, {})) == self.expected.get(source, -1):
            self._write(source)

    def _seconds(self, source: str) -> float:
        return time.monotonic() - self.first_seen[source]

    def _write(self, source: str) -> None:
        received = self.clips.pop(source, {})
        del self.expected[source]
        spec = dataclasses.replace(self.spec, backend=self.backend)
        try:
            if spec.kind == VIDEO:
                result = InputFeatures()
                for index in sorted(received):
                    features, timestamps = received[index]
                    result.add_clip(features, unpack(timestamps))
                entry = result.write(self.state.store, source, spec, self.settings,
                                     self._seconds(source))
            else:
                entry = InputFeatures().write(self.state.store, source, spec, self.settings,
                                              self._seconds(source), image=received[0][0])
        except Exception as err:
            entry = error_entry(source, spec, err, self._seconds(source), len(received))
        self._record(entry)

    def _record(self, entry) -> None:
        self.state.record(entry)


def ray_init(options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    if options.address:
        ray.init(address=options.address, **kwargs)
        return True
    try:
        ray.init(num_cpus=options.num_cpus, **kwargs)
    except Exception as err:  # seen now and then: "The current node timed out during startup"
        log.warning("starting a local Ray instance failed (%s); trying once more", err)
        ray.shutdown()
        ray.init(num_cpus=options.num_cpus, **kwargs)
    return True


def run_ray(arguments: Sequence[str | Path], model: str, store: OutputStore,
            settings: ExtractSettings | None = None, options: RayOptions = RayOptions(), *,
            progress: bool | None = None) -> Summary:
    """Extract the inputs named by `arguments` (files, folders, lists) on Ray Data."""
    settings = settings or ExtractSettings()
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError("--ray needs Ray Data: pip install 'foveal[ray]'") from err
    from .local import LocalModel, find_model_config

    find_model_config(model, options.models_file)  # a wrong name fails before Ray starts
    # The model's spec, from a copy on this machine's CPU (the actors build their own).
    spec = LocalModel(model, options.models_file, backend="torch", device="cpu").spec
    inputs = collect_inputs(arguments, spec.kind)
    started_here = ray_init(options)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        mode = f"ray, {options.actors or max(gpus, 1)} {'GPU' if gpus else 'CPU'} actor(s)"
        settings, todo, state = start_run(inputs, spec, store, settings, mode, progress)
        started = time.monotonic()
        if todo:
            _run_dataset(todo, model, spec, settings, options, gpus, _Assembler(spec, settings,
                                                                                 state))
        state.progress.close()
        state.summary.seconds = time.monotonic() - started
        return state.summary
    finally:
        if started_here:
            ray.shutdown()


def _run_dataset(todo: list[Path], model: str, spec: ModelSpec, settings: ExtractSettings,
                 options: RayOptions, gpus: int, assembler: _Assembler) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is drawn by the driver
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would break our line
    actors = options.actors or max(gpus, 1)
    batch_size = options.batch_size or spec.max_batch_size
    dataset = ray.data.from_items([{"input": str(path)} for path in todo],
                                  override_num_blocks=len(todo))
    dataset = dataset.flat_map(decode_input, num_cpus=1, fn_kwargs={
        "kind": spec.kind, "clip_len": settings.clip_len, "stride": settings.stride,
        "fps": settings.fps, "size": spec.frame_size()})
    dataset = dataset.map_batches(
        ModelActor, batch_size=batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0, num_cpus=1,
        fn_constructor_kwargs={
            "model": model, "models_file": options.models_file, "backend": options.backend,
            "device": options.device, "batch_size": batch_size,
            "outputs": list(settings.outputs), "output_dtype": settings.output_dtype})
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for i in range(len(batch["input"])):
            assembler.add({name: column[i] for name, column in batch.items()})
        assembler.state.refresh()
