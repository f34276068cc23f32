"""The record of one `make gpu-check` run ($OUT/gpu_check.json) and what a resumed run reads
of an earlier one.

The record holds the environment, the plan, each phase's verdict, and the findings of the
phases that are not layer benchmarks (selfcheck rows, test outcomes, kernel metadata); the
layer and network benchmarks write their own result files beside it, named in its "files".
Phases run in their own processes and add to the record as each finding comes in, under a
lock, rewriting it whole each time: a run killed at its limit keeps all it finished.
"""

from __future__ import annotations

import fcntl
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import INTERRUPTED
from .report import load_json, write_json

SCHEMA = "foveal-gpu-check/1"
RECORD_NAME = "gpu_check.json"


class Record:
    """The record file, changed only under an exclusive lock on `lock_path`."""

    def __init__(self, path: Path, lock_path: Path):
        self.path, self.lock_path = Path(path), Path(lock_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self.lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def create(self, document: dict[str, Any]) -> None:
        with self._locked():
            write_json({"schema": SCHEMA, **document}, self.path)

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked():
            document = self.read()
            change(document)
            write_json(document, self.path)

    def append(self, section: str, item: dict[str, Any]) -> None:
        self.update(lambda doc: doc.setdefault(section, []).append(item))


def finished(result: dict[str, Any]) -> bool:
    """A benchmark case measured to the end: run (not skipped), no variant interrupted."""
    return result["status"] != "skipped" and all(
        v.get("message") != INTERRUPTED for v in result["variants"].values())


@dataclass
class Previous:
    """An earlier run's record (GPU_CHECK_RESUME) and what it measured, phase by phase,
    together with what the runs it resumed had measured (its "carried" lists)."""

    path: Path
    record: dict[str, Any]

    def done(self, phase: str) -> set[str]:
        """Keys of what is measured: 'check dtype' for the selfcheck, test node ids, and
        'workload dtype direction' of each benchmark case finished."""
        if phase == "selfcheck":
            found = {f"{r['check']} {r['dtype']}" for r in self.record.get(phase, [])}
        elif phase == "tests":
            found = {r["nodeid"] for r in self.record.get(phase, [])
                     if r["outcome"] in ("passed", "failed", "error")}
        else:
            document = self.document(phase)
            found = {f"{r['workload']} {r['dtype']} {r['direction']}" for r in
                     (document or {}).get("results", []) if finished(r)}
        return found | set(self.record.get("carried", {}).get(phase, []))

    def carried(self, phases: Sequence[str]) -> dict[str, list[str]]:
        """What a run resuming from this one hands on to a run resuming from it."""
        return {phase: sorted(self.done(phase)) for phase in phases}

    def kernel_entries(self) -> list[dict[str, Any]]:
        return list(self.record.get("kernels", {}).get("loaded", []))

    def kernel_rows(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.record.get("kernels", {}).get("rows", [])}

    def document(self, phase: str) -> dict[str, Any] | None:
        """The result file a benchmark phase wrote, found beside the record."""
        name = self.record.get("files", {}).get(phase)
        path = self.path.parent / name if name else None
        return load_json(path) if path is not None and path.is_file() else None


def load_previous(path: str | Path) -> Previous:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"GPU_CHECK_RESUME={path}: cannot read it: {err}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"GPU_CHECK_RESUME={path} is not a gpu-check record ({SCHEMA}): name "
                         f"the {RECORD_NAME} an earlier run wrote")
    return Previous(path, record)


def phase_findings(name: str, record: dict[str, Any]) -> str:
    """What a phase that is not a benchmark found, as ' (counts)', or ''."""
    counts: dict[str, int] = {}
    if name == "selfcheck":
        counts = Counter("passed" if r["passed"] else "failed" for r in record.get(name, []))
    elif name == "tests":
        counts = Counter(r["outcome"] for r in record.get(name, []))
    elif name == "kernels":
        counts = dict(record.get(name, {}).get("summary", {}))
    return f" ({', '.join(f'{v} {k}' for k, v in counts.items())})" if counts else ""
