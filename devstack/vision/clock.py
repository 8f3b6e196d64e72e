"""Injectable time for the limiter and the fault schedule.

Unit tests pass a :class:`FakeClock` and move time with :meth:`FakeClock.advance`; nothing in the
emulator may call ``time.sleep`` or read the system clock other than through a :class:`Clock`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic clock (rate windows)."""
        ...

    def time(self) -> float:
        """Seconds since the epoch, UTC (outage windows, monthly quota)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait (injected latency, held requests, trickled bodies)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of waiting."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1_000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
