"""Writing extracted features to disk: one output per input, atomic, with a resumable manifest.

Layout under the output folder:
- `npy`: a folder `<name>/` holding `<layer>.npy` per layer (and `timestamps.npy` for video);
- `safetensors`: one file `<name>.safetensors` with a tensor per layer (and `timestamps`);
- `manifest.jsonl`: one JSON line per attempt (input, output, status, error, clips, shapes,
  model, seconds), appended and flushed as each input finishes.

Outputs are written under a temporary name and renamed into place, so an interrupted run never
leaves a half-written output that looks finished; on a rerun, inputs whose last manifest entry
is "ok" and whose output exists are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("npy", "safetensors")
MANIFEST = "manifest.jsonl"
_SAFETENSORS_DTYPES = {
    np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("float64"): "F64",
    np.dtype("uint8"): "U8", np.dtype("int32"): "I32", np.dtype("int64"): "I64",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors in the safetensors format (a JSON header, then raw little-endian data)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"cannot store {name!r} of dtype {array.dtype} in safetensors")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


@dataclass
class ManifestEntry:
    input: str
    output: str | None
    status: str  # "ok" or "error"
    model: str
    seconds: float
    clips: int = 0
    shapes: dict[str, list[int]] = field(default_factory=dict)
    error: str | None = None
    finished_at: float = field(default_factory=time.time)


class OutputStore:
    """Where one extraction run writes its outputs and manifest."""

    def __init__(self, directory: str | Path, format: str = "npy"):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.directory = Path(directory).absolute()  # the manifest names outputs wherever run
        self.format = format
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.directory / MANIFEST

    @staticmethod
    def key(source: str | Path) -> str:
        """How the manifest names an input: its resolved path."""
        return str(Path(source).resolve())

    def output_path(self, source: str | Path) -> Path:
        """A stable, collision-free output name for an input: its stem plus a path hash."""
        resolved = self.key(source)
        digest = hashlib.sha1(resolved.encode()).hexdigest()[:10]
        stem = _UNSAFE.sub("_", Path(source).stem)[:80] or "input"
        suffix = ".safetensors" if self.format == "safetensors" else ""
        return self.directory / f"{stem}-{digest}{suffix}"

    def finished(self) -> set[str]:
        """Inputs (resolved paths) whose latest entry is ok and whose output still exists."""
        latest: dict[str, dict] = {}
        if self.manifest_path.exists():
            with open(self.manifest_path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by an interrupted run
                    latest[entry["input"]] = entry
        return {source for source, entry in latest.items()
                if entry.get("status") == "ok" and entry.get("output")
                and Path(entry["output"]).exists()}

    def write(self, source: str | Path, layers: Mapping[str, np.ndarray],
              timestamps: np.ndarray | None = None,
              metadata: Mapping[str, str] | None = None) -> Path:
        """Write one input's features atomically and return the output path."""
        final = self.output_path(source)
        tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
        arrays = dict(layers)
        if timestamps is not None:
            if "timestamps" in arrays:
                raise ValueError("a layer may not be called 'timestamps'")
            arrays["timestamps"] = np.asarray(timestamps, dtype=np.float64)
        _remove(tmp)
        if self.format == "safetensors":
            write_safetensors(tmp, arrays, metadata)
        else:
            tmp.mkdir()
            for name, array in arrays.items():
                np.save(tmp / f"{_UNSAFE.sub('_', name)}.npy", np.ascontiguousarray(array))
            if metadata:
                (tmp / "metadata.json").write_text(json.dumps(dict(metadata), indent=1))
        _remove(final)
        os.replace(tmp, final)
        return final

    def remove_stale_partials(self) -> list[Path]:
        """Delete temporary outputs left by runs that were killed mid-write (their process is
        gone); a run still writing keeps its own. Returns what was removed."""
        removed = []
        for path in self.directory.glob(".*.partial-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(path)
                removed.append(path)
        return removed

    def record(self, entry: ManifestEntry) -> None:
        """Append one manifest line and flush it to disk."""
        line = asdict(entry)
        line["input"] = self.key(entry.input)
        with open(self.manifest_path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
