"""One progress line (done/total, percent, rate, ETA) at most every few seconds, for long launch-time loops."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """``label done/total (p%), r items/s, ETA s`` printed at most every ``every_s`` seconds (never at the end)."""

    def __init__(self, label: str, total: int, every_s: float, unit: str = "samples",
                 stream: TextIO | None = None) -> None:
        self.label, self.total, self.every_s, self.unit, self.done = label, total, every_s, unit, 0
        self.stream = stream if stream is not None else sys.stdout
        self.start = self.last = time.monotonic()

    def add(self, k: int) -> None:
        """Count ``k`` more items done; print when ``every_s`` has passed since the last line."""
        self.done += k
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{self.label} {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%), "
                  f"{rate:.0f} {self.unit}/s, ETA {(self.total - self.done) / rate:.0f}s", file=self.stream, flush=True)
