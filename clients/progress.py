"""A one-line progress display for batch extraction: inputs, clips, clips/s, ETA.

Drawn on a terminal only (a pipe or a log file gets the final summary and nothing else).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_SECONDS = 0.2


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None,
                 width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.width = width
        self.start = time.monotonic()
        self._drawn = 0.0

    def line(self, done: int, clips: int, failed: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        filled = self.width * done // self.total if self.total else self.width
        eta = _clock(elapsed / done * (self.total - done)) if done else "?"
        failures = f"  {failed} failed" if failed else ""
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} inputs  "
                f"{clips} clips  {clips / elapsed:.1f} clips/s  ETA {eta}{failures}")

    def update(self, done: int, clips: int, failed: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < REFRESH_SECONDS):
            return
        self._drawn = now
        self.stream.write("\r" + self.line(done, clips, failed, now) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
