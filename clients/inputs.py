"""Which files one extraction run reads: files, folders (searched recursively), lists of paths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".ts", ".flv", ".wmv", ".ogv"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})  # what the server decodes
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


def collect_inputs(arguments: Sequence[str | Path], kind: str) -> list[Path]:
    """Input files in order, each once.

    A folder contributes its files (recursively, sorted) with a video suffix when `kind` is
    "video", an image suffix when "image"; a .txt/.lst/.list file names one path (file or
    folder) per line, relative to the list's folder (blank lines and # comments skipped); any
    other path is an input as it is. Paths that do not exist stay in: they fail in the run and
    are reported with the other unreadable inputs.
    """
    suffixes = VIDEO_SUFFIXES if kind == "video" else IMAGE_SUFFIXES
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    _add(path.parent / Path(line).expanduser(), suffixes, found)
        else:
            _add(path, suffixes, found)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _add(path: Path, suffixes: frozenset[str], found: list[Path]) -> None:
    if path.is_dir():
        found.extend(sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in suffixes))
    else:
        found.append(path)
