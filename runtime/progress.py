"""One progress reporter for every long job: a periodic line with count, rate and ETA.

Lines (not a redrawn bar) so that the same output reads well in a terminal, a SLURM log,
``ray job logs`` and CI. Example::

    curate: 12/50 inputs (24%) clips=40 | 1.20 inputs/s | elapsed 0:00:10 | ETA 0:00:31
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``'1:02:05'``."""
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    return str(timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Count work done and print a line at most every ``interval`` seconds (and at the end).

    ``total`` may be ``None`` when unknown (no percentage or ETA then). ``extra`` counters
    (``clips=40``) are shown beside the main one.
    """

    def __init__(
        self,
        name: str,
        total: int | None,
        unit: str = "items",
        interval: float = 5.0,
        stream: TextIO | None = None,
        start: int = 0,
    ) -> None:
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = start
        self._start_count = start
        self.extra: dict[str, float] = {}
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, **extra: float) -> None:
        self.done += n
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._emit(now)

    def set(self, **values: float) -> None:
        """Set (not add to) extra counters such as the current loss."""
        self.extra.update(values)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self.done - self._start_count) / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self._t0
        rate = (self.done - self._start_count) / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        extras = "".join(f" {k}={v:g}" for k, v in self.extra.items())
        eta = ""
        if self.total is not None:
            left = self.total - self.done
            eta = f" | ETA {format_duration(left / rate) if rate > 0 else '?'}"
        return (
            f"{self.name}: {count} {self.unit}{pct}{extras} | {rate:.2f} {self.unit}/s"
            f" | elapsed {format_duration(elapsed)}{eta}"
        )

    def _emit(self, now: float) -> None:
        self._last = now
        print(self.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        self._emit(time.monotonic())
