"""Injectable time for tests: clocks that move only when someone sleeps (or the test sets them).

* ``FakeClock`` — monotonic seconds (a float), for ``clock=``/``sleep=`` seams;
* ``WallClock`` — the same over UTC ``datetime``s, for code that reads the wall clock;
* ``TimerClock`` — a wall clock whose ``sleep`` is async and that ends a timer driver's run at
  ``end`` (the driver awaits ``stopping``).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta


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


class WallClock:
    """UTC time that only moves when someone sleeps or the test sets ``now``; records every
    sleep."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


class TimerClock:
    """Time that moves only when the driver sleeps; stops the run at ``end``."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.end: datetime | None = None
        self.stopping: asyncio.Event | None = None
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.end is not None and self.now >= self.end and self.stopping is not None:
            self.stopping.set()
