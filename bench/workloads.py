"""Named benchmark workloads: real layer shapes read from `workloads.toml`.

A workload is one layer: an op, a batch, the dtypes and memory layout to run it in, and the
op's own arguments (channels, sizes, stride...). This module knows only the fields every op
shares; each op's adapter (`foveal.bench.ops`) validates the rest, so adding an op never
touches this file. Workloads come in suites: "full" holds the real shapes timed on a GPU,
"smoke" tiny shapes of the same kinds that run through Triton's interpreter on a CPU.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

DEFAULT_FILE = Path(__file__).with_name("workloads.toml")
DTYPES = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn")
LAYOUTS = ("contiguous", "channels_last")
SUITES = ("full", "smoke")
COMMON_FIELDS = ("name", "model", "op", "batch", "dtypes", "layout", "suite", "tags", "source",
                 "note")
DEFAULTABLE_FIELDS = ("batch", "dtypes", "layout", "suite")


class WorkloadError(ValueError):
    """A workload file or a workload selection is invalid; the message names what and where."""


@dataclass(frozen=True)
class Workload:
    """One layer to benchmark. `args` holds the op's own arguments as written in the file."""

    name: str
    op: str
    batch: int
    dtypes: tuple[str, ...]
    layout: str
    args: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""
    suite: str = "full"
    tags: tuple[str, ...] = ()
    source: str = ""  # "model:module.path" of the torchvision layer this shape comes from
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))

    def __reduce__(self):
        """Pickle through a plain dict (a mappingproxy does not pickle): workloads travel to
        worker processes."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return (_workload_from_fields, ({**fields, "args": dict(self.args)},))

    def describe(self) -> dict[str, Any]:
        """The workload as plain data, for JSON."""
        return {"name": self.name, "model": self.model, "op": self.op, "batch": self.batch,
                "layout": self.layout, "suite": self.suite, "tags": list(self.tags),
                "source": self.source, "args": dict(self.args)}


def _workload_from_fields(fields: dict[str, Any]) -> Workload:
    return Workload(**fields)


def _where(index: int, entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    return f"workload {name!r}" if isinstance(name, str) else f"workload #{index + 1}"


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise WorkloadError(f"{what} must be a string or a list of strings, got {value!r}")


def parse_workload(entry: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                   index: int = 0) -> Workload:
    """Check the shared fields of one `[[workload]]` table and build the Workload."""
    where = _where(index, entry)
    merged = {**(defaults or {}), **entry}
    for required in ("name", "op", "batch"):
        if required not in merged:
            raise WorkloadError(f"{where}: missing required field {required!r}")
    name, op, batch = merged["name"], merged["op"], merged["batch"]
    if not isinstance(name, str) or not name:
        raise WorkloadError(f"{where}: name must be a non-empty string, got {name!r}")
    if not isinstance(op, str) or not op:
        raise WorkloadError(f"{where}: op must be a non-empty string, got {op!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise WorkloadError(f"{where}: batch must be a positive integer, got {batch!r}")
    dtypes = _string_list(merged.get("dtypes", "float32"), f"{where}: dtypes")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise WorkloadError(f"{where}: dtype {dtype!r} is not one of {DTYPES}")
    layout = merged.get("layout", "contiguous")
    if layout not in LAYOUTS:
        raise WorkloadError(f"{where}: layout must be one of {LAYOUTS}, got {layout!r}")
    suite = merged.get("suite", "full")
    if suite not in SUITES:
        raise WorkloadError(f"{where}: suite must be one of {SUITES}, got {suite!r}")
    for text_field in ("model", "source", "note"):
        if not isinstance(merged.get(text_field, ""), str):
            raise WorkloadError(f"{where}: {text_field} must be a string")
    args = {k: v for k, v in entry.items() if k not in COMMON_FIELDS}
    return Workload(name=name, op=op, batch=batch, dtypes=dtypes, layout=layout, args=args,
                    model=merged.get("model", ""), suite=suite,
                    tags=_string_list(merged.get("tags", []), f"{where}: tags"),
                    source=merged.get("source", ""), note=merged.get("note", ""))


def parse_workloads(document: Mapping[str, Any]) -> list[Workload]:
    """Build every workload of a parsed TOML document; names must be unique."""
    unknown = set(document) - {"defaults", "workload"}
    if unknown:
        raise WorkloadError(f"unknown top-level table(s) {sorted(unknown)}; expected [defaults] "
                            "and [[workload]]")
    defaults = document.get("defaults", {})
    bad_defaults = set(defaults) - set(DEFAULTABLE_FIELDS)
    if bad_defaults:
        raise WorkloadError(f"[defaults] may only set {DEFAULTABLE_FIELDS}, got "
                            f"{sorted(bad_defaults)}")
    entries = document.get("workload", [])
    if not isinstance(entries, list):
        raise WorkloadError("workloads must be an array of tables: write [[workload]]")
    workloads, seen = [], set()
    for index, entry in enumerate(entries):
        workload = parse_workload(entry, defaults, index)
        if workload.name in seen:
            raise WorkloadError(f"workload name {workload.name!r} appears twice")
        seen.add(workload.name)
        workloads.append(workload)
    return workloads


def load_workloads(path: str | Path = DEFAULT_FILE) -> list[Workload]:
    """Read and check a workloads file (TOML)."""
    if tomllib is None:
        raise WorkloadError("reading workloads needs tomllib (Python 3.11+) or `pip install tomli`")
    path = Path(path)
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise WorkloadError(f"workloads file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise WorkloadError(f"{path} is not valid TOML: {err}") from None
    try:
        return parse_workloads(document)
    except WorkloadError as err:
        raise WorkloadError(f"{path}: {err}") from None


def select(workloads: Sequence[Workload], *, suite: str | None = None,
           names: Iterable[str] | None = None, ops: Iterable[str] | None = None,
           tags: Iterable[str] | None = None, noun: str = "workload") -> list[Workload]:
    """Filter workloads; `names` are exact names or shell patterns ("resnet50.*").

    A name or pattern that matches nothing is an error (a typo must not silently shrink a run);
    its message calls the items `noun`s. With explicit names, the suite filter is not applied.
    """
    chosen = list(workloads)
    if names:
        picked: dict[str, Workload] = {}
        for pattern in names:
            hits = [w for w in workloads if fnmatch.fnmatchcase(w.name, pattern)]
            if not hits:
                known = ", ".join(w.name for w in workloads)
                raise WorkloadError(f"no {noun} matches {pattern!r}; known: {known}")
            picked.update((w.name, w) for w in hits)
        chosen = [w for w in workloads if w.name in picked]
    elif suite is not None:
        chosen = [w for w in chosen if w.suite == suite]
    if ops:
        wanted = set(ops)
        chosen = [w for w in chosen if w.op in wanted]
    if tags:
        wanted_tags = set(tags)
        chosen = [w for w in chosen if wanted_tags & set(w.tags)]
    return chosen


def parse_value(text: str) -> Any:
    """A command-line value as TOML would give it: 3 -> 3, 56x56 -> [56, 56], true -> True."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    parts = lowered.split("x")
    if all(p.strip().lstrip("-").isdigit() for p in parts):
        values = [int(p) for p in parts]
        return values[0] if len(values) == 1 else values
    return text.strip()


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` pairs (values through `parse_value`), naming a malformed item."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WorkloadError(f"expected key=value (e.g. kernel=3x3), got {item!r}")
        args[key.strip()] = parse_value(value)
    return args
