"""Peak resident memory of this process during a block of code (bench helper).

``ru_maxrss`` only ever grows, so it cannot tell phases apart; ``PeakRSS`` samples
``/proc/self/statm`` from a background thread every few milliseconds and keeps the maximum
seen while the ``with`` block runs (a phase shorter than the interval may be under-reported).
"""

from __future__ import annotations

import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Resident set size now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.start_mb``, ``m.peak_mb``, ``m.end_mb``, ``m.seconds``."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start_mb = self.peak_mb = self.end_mb = 0.0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.end_mb = rss_mb()
        self.peak_mb = max(self.peak_mb, self.end_mb)

    @property
    def delta_mb(self) -> float:
        """Peak above the level at the start of the block."""
        return self.peak_mb - self.start_mb
