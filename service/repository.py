"""The model repository: which models to serve, read from a TOML file or the built-in list.

    [[models]]
    name = "gabor-small"          # how clients name it
    kind = "gabor"                # gabor | motion-energy | torchvision | python
    architecture = "resnet50"     # torchvision: any classification or video architecture
    factory = "pkg.module:fn"     # python: a function returning an nn.Module
    weights = "weights.pt"        # torchvision and python: a state_dict file (else seeded)
    device = "auto"               # auto | cpu | cuda | cuda:N
    devices = ["cuda:0", "cuda:1"]    # or several: instances are spread over them (not with
                                      # device; default: the server's --devices or --device)
    instances = 2                 # copies of the model taking batches from its one queue
                                  # (default: the server's --instances, else one per device)
    precision = "float32"         # float32 | float16 | bfloat16 | float8 (torchvision and
                                  # python models on GPUs of compute capability 8.9+)
    outputs = ["simple", "energy"]    # outputs served (default: all the kind has; torchvision
                                      # and python: node names, default the classifier's input)
    default_outputs = ["energy"]      # returned when a request names none

    [models.options]              # torchvision and python: keyword arguments for the builder
    num_classes = 10

    [models.input]
    size = [64, 64]               # height, width; omit (or [0, 0]) for any size
    channels = 3
    kind = "image"                # python models: image | video
    resize = true                 # resize other sizes to `size` (false: reject them)
    frames = 16                   # clip length (video kinds)
    mean = [0.5, 0.5, 0.5]        # normalisation after scaling uint8 to [0, 1]
    std = [0.25, 0.25, 0.25]
    max_pixels = 16777216         # largest height * width accepted

    [models.batching]             # any key left out takes the server's flag value
    max_batch_size = 8
    max_queue_delay_ms = 2.0
    max_queue_size = 256
    timeout_ms = 30000

Every error names the file, the model and the key, and unknown keys are errors (a typo should
not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .devices import check_device, check_devices, check_instances
from .models.base import IMAGE, VIDEO, InputSpec
from .models.registry import BUILTIN_MODELS, KINDS, check_settings, default_input

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRECISIONS = ("float32", "float16", "bfloat16", "float8")
FP8_KINDS = ("torchvision", "python")  # float8: convolutions traced and fused by optimize()


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    timeout_ms: float = 30_000.0

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_queue_delay_ms, int | float) or self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms!r}")
        if not isinstance(self.timeout_ms, int | float) or self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {self.timeout_ms!r}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    kind: str
    input: InputSpec
    weights: str | None = None
    device: str = "auto"
    precision: str = "float32"
    outputs: tuple[str, ...] = ()
    default_outputs: tuple[str, ...] = ()
    batching: dict[str, Any] = field(default_factory=dict)  # overrides of the server's policy
    architecture: str | None = None
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ()     # several devices (then `device` is the first)
    instances: int | None = None

    def batch_policy(self, server_default: BatchPolicy) -> BatchPolicy:
        return dataclasses.replace(server_default, **self.batching)

    def instance_devices(self, default_devices: tuple[str, ...],
                         default_instances: int | None = None) -> list[str]:
        """The device of each instance: round-robin over the entry's devices (else its device,
        else the server's defaults); as many instances as it says, else one per device."""
        devices = self.devices or ((self.device,) if self.device != "auto" else default_devices)
        count = self.instances or default_instances or len(devices)
        if count < len(devices):
            raise ValueError(f"model {self.name!r}: {count} instance(s) cannot cover "
                             f"{len(devices)} devices {list(devices)}; set instances to at "
                             "least the number of devices")
        return [devices[i % len(devices)] for i in range(count)]


def builtin_models() -> list[ModelConfig]:
    return [ModelConfig(name, kind, default_input(kind))
            for name, kind in BUILTIN_MODELS.items()]


_MODEL_KEYS = {"name", "kind", "weights", "device", "devices", "instances", "precision",
               "outputs", "default_outputs", "input", "batching", "architecture", "factory",
               "options"}
_INPUT_KEYS = {"size", "channels", "resize", "frames", "mean", "std", "max_pixels", "kind"}
_BATCH_KEYS = {f.name for f in dataclasses.fields(BatchPolicy)}


class RepositoryError(ValueError):
    """The model repository file is unreadable or breaks a rule (the message says which)."""


def _check_keys(where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RepositoryError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RepositoryError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _input_spec(where: str, kind: str, table: Any, architecture: str | None) -> InputSpec:
    if not isinstance(table, dict):
        raise RepositoryError(f"{where}: input must be a table, got {table!r}")
    _check_keys(f"{where}.input", table, _INPUT_KEYS)
    input_kind = table.get("kind")
    if input_kind is not None and (kind != "python" or input_kind not in (IMAGE, VIDEO)):
        raise RepositoryError(f"{where}.input: kind is for python models only, and is "
                              f"{IMAGE!r} or {VIDEO!r}; got {input_kind!r} for a {kind} model")
    base = default_input(kind, architecture, input_kind)
    changes: dict[str, Any] = {}
    if "size" in table:
        size = table["size"]
        if (not isinstance(size, list) or len(size) != 2
                or not all(type(s) is int and s >= 0 for s in size)):
            raise RepositoryError(f"{where}.input: size must be [height, width] of integers >= 0, "
                                  f"got {size!r}")
        changes["height"], changes["width"] = size
    for key in ("channels", "frames", "max_pixels"):
        if key in table:
            if type(table[key]) is not int or table[key] < 1:
                raise RepositoryError(f"{where}.input: {key} must be a positive integer, "
                                      f"got {table[key]!r}")
            changes[key] = table[key]
    if "frames" in changes and base.kind != "video":
        raise RepositoryError(f"{where}.input: frames applies to video kinds only, not {kind}")
    if "resize" in table:
        if not isinstance(table["resize"], bool):
            raise RepositoryError(f"{where}.input: resize must be true or false")
        changes["resize"] = table["resize"]
    for key in ("mean", "std"):
        if key in table:
            values = table[key]
            if (not isinstance(values, list)
                    or not all(isinstance(v, int | float) and not isinstance(v, bool)
                               for v in values)):
                raise RepositoryError(f"{where}.input: {key} must be a list of numbers")
            changes[key] = tuple(float(v) for v in values)
    spec = dataclasses.replace(base, **changes)
    if spec.channels != 3:
        raise RepositoryError(f"{where}.input: {kind} models take 3 channels (RGB), "
                              f"got {spec.channels}")
    for key in ("mean", "std"):
        if len(getattr(spec, key)) != spec.channels:
            raise RepositoryError(f"{where}.input: {key} needs one value per channel "
                                  f"({spec.channels}), got {list(getattr(spec, key))}")
    if any(s <= 0 for s in spec.std):
        raise RepositoryError(f"{where}.input: std values must be > 0, got {list(spec.std)}")
    if (spec.height > 0) != (spec.width > 0):
        raise RepositoryError(f"{where}.input: size must give both height and width or neither")
    if base.kind == "video" and not spec.fixed_size:
        raise RepositoryError(f"{where}.input: video models need a size")
    return spec


def _placement(where: str, table: dict) -> tuple[str, tuple[str, ...], int | None]:
    """device, devices and instances of an entry, checked against each other."""
    if "device" in table and "devices" in table:
        raise RepositoryError(f"{where}: give device or devices, not both")
    try:
        device = check_device(table.get("device", "auto"))
        devices = check_devices(table["devices"]) if "devices" in table else ()
        instances = check_instances(table["instances"]) if "instances" in table else None
    except ValueError as err:
        raise RepositoryError(f"{where}: {err}") from None
    if instances is not None and instances < len(devices):
        raise RepositoryError(f"{where}: instances ({instances}) must be at least the number "
                              f"of devices ({len(devices)}): every device listed runs one")
    return (devices[0] if devices else device), devices, instances


def _model(where: str, table: Any, base_dir: Path) -> ModelConfig:
    if not isinstance(table, dict):
        raise RepositoryError(f"{where}: each [[models]] entry must be a table")
    _check_keys(where, table, _MODEL_KEYS)
    for key in ("name", "kind"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise RepositoryError(f"{where}: {key} is required and must be a non-empty string")
    name, kind = table["name"], table["kind"]
    where = f"{where} ({name})"
    if kind not in KINDS:
        raise RepositoryError(f"{where}: unknown kind {kind!r}; known kinds: {sorted(KINDS)}")
    precision = table.get("precision", "float32")
    if precision not in PRECISIONS:
        raise RepositoryError(f"{where}: precision must be one of {PRECISIONS}, "
                              f"got {precision!r}")
    if precision == "float8" and kind not in FP8_KINDS:
        raise RepositoryError(f"{where}: precision float8 is for {' and '.join(FP8_KINDS)} "
                              f"models (their convolutions run on FP8 kernels); {kind} models "
                              "take float32, float16 or bfloat16")
    device, devices, instances = _placement(where, table)
    weights = table.get("weights")
    if weights is not None:
        if not isinstance(weights, str):
            raise RepositoryError(f"{where}: weights must be a file path")
        if not KINDS[kind].takes_weights:
            raise RepositoryError(f"{where}: {kind} models are analytic and take no weights")
        path = (base_dir / weights).resolve()
        if not path.is_file():
            raise RepositoryError(f"{where}: weights file {str(path)!r} does not exist")
        weights = str(path)
    settings = {key: table.get(key) for key in ("architecture", "factory")}
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise RepositoryError(f"{where}: options must be a table")
    try:
        check_settings(kind, settings["architecture"], settings["factory"], options)
    except ValueError as err:
        raise RepositoryError(f"{where}: {err}") from None
    batching = table.get("batching", {})
    if not isinstance(batching, dict):
        raise RepositoryError(f"{where}: batching must be a table")
    _check_keys(f"{where}.batching", batching, _BATCH_KEYS)
    try:
        BatchPolicy(**{**dataclasses.asdict(BatchPolicy()), **batching})
    except ValueError as err:
        raise RepositoryError(f"{where}.batching: {err}") from None
    return ModelConfig(
        name=name, kind=kind,
        input=_input_spec(where, kind, table.get("input", {}), settings["architecture"]),
        weights=weights, device=device, devices=devices, instances=instances,
        precision=precision,
        outputs=_strings(where, "outputs", table.get("outputs", [])),
        default_outputs=_strings(where, "default_outputs", table.get("default_outputs", [])),
        batching=dict(batching), options=dict(options), **settings)


def load_repository(path: str | Path) -> list[ModelConfig]:
    """Read and validate a TOML model repository; relative weight paths are from its folder."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as err:
        raise RepositoryError(f"cannot read model repository {str(path)!r}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise RepositoryError(f"{path}: not valid TOML: {err}") from None
    _check_keys(str(path), document, {"models"})
    entries = document.get("models")
    if not isinstance(entries, list) or not entries:
        raise RepositoryError(f"{path}: needs at least one [[models]] entry")
    models = [_model(f"{path}: models[{i}]", entry, path.parent)
              for i, entry in enumerate(entries)]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RepositoryError(f"{path}: model names must be unique; repeated: {duplicates}")
    return models
