"""Injectable time for tests: a monotonic clock that moves only when someone sleeps."""

from __future__ import annotations

import threading


class FakeClock:
    """Time that only moves when someone sleeps (``clock=`` and ``sleep=`` seams); records every
    sleep. Thread-safe: clients sleep on their own threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds
