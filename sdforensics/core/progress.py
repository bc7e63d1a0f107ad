"""A progress bar on stderr that stays silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as ``bar(done, total)``; draws at most ~10 times a second."""

    def __init__(self, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self._last = 0.0
        self._start: float | None = None  # the clock starts at the first report, not at creation
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * 30)
        elapsed = now - self._start
        rate = f"{done / elapsed / 1e6:7.0f} MB/s" if elapsed >= 0.2 else " " * 12  # no rate from an instant
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {rate}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()
