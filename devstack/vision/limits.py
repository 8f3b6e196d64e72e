"""Tier rate limits of the emulated account: decided before any image work is done.

* S1: at most ``tps`` calls in any rolling one-second window (a sliding log, so there is no burst
  allowance beyond the limit itself: N admitted calls per rolling second, never 2N at a window
  edge as with a fixed window or a full token bucket).
* F0: at most ``per_minute`` calls in any rolling 60 s window, and ``monthly_quota`` admitted calls
  per calendar month (UTC).

``Retry-After`` is computed from the log: when the oldest call in the window leaves it. Time comes
from an injected :class:`~devstack.vision.clock.Clock`, so tests never wait.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Literal

from devstack.vision.clock import Clock
from devstack.vision.config import Tier


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    reason: Literal["ok", "rate", "quota"] = "ok"
    retry_after_s: float = 0.0


class SlidingWindowLog:
    """At most ``limit`` events in any window of ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._events: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.window_s:
            self._events.popleft()

    def try_acquire(self, now: float) -> float | None:
        """Record an event and return None, or return seconds until one would be allowed."""
        self._expire(now)
        if len(self._events) < self.limit:
            self._events.append(now)
            return None
        return self._events[0] + self.window_s - now

    def in_window(self, now: float) -> int:
        self._expire(now)
        return len(self._events)


def window_for_tps(tps: float) -> SlidingWindowLog:
    """N calls per second for tps >= 1; one call per 1/tps seconds below that."""
    if tps >= 1:
        return SlidingWindowLog(math.floor(tps), 1.0)
    return SlidingWindowLog(1, 1.0 / tps)


def _month_key(epoch_s: float) -> tuple[int, int]:
    moment = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)
    return moment.year, moment.month


def seconds_to_next_month(epoch_s: float) -> float:
    moment = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() - epoch_s


class TierLimiter:
    def __init__(
        self,
        clock: Clock,
        *,
        tier: Tier,
        tps: float,
        per_minute: int,
        monthly_quota: int,
    ) -> None:
        self._clock = clock
        self.tier: Tier = tier
        self.tps = tps
        self.per_minute = per_minute
        self.monthly_quota = monthly_quota
        self._window = self._new_window()
        self._month = _month_key(clock.time())
        self.used_this_month = 0

    def _new_window(self) -> SlidingWindowLog:
        if self.tier == "S1":
            return window_for_tps(self.tps)
        return SlidingWindowLog(self.per_minute, 60.0)

    def configure(
        self,
        *,
        tier: Tier,
        tps: float | None = None,
        per_minute: int | None = None,
        monthly_quota: int | None = None,
        reset_usage: bool = False,
    ) -> None:
        """Switch tier/limits; the rolling window restarts empty."""
        self.tier = tier
        if tps is not None:
            self.tps = tps
        if per_minute is not None:
            self.per_minute = per_minute
        if monthly_quota is not None:
            self.monthly_quota = monthly_quota
        self._window = self._new_window()
        if reset_usage:
            self.used_this_month = 0

    def admit(self) -> Admission:
        now_wall = self._clock.time()
        month = _month_key(now_wall)
        if month != self._month:
            self._month, self.used_this_month = month, 0
        if self.tier == "F0" and self.used_this_month >= self.monthly_quota:
            return Admission(False, "quota", seconds_to_next_month(now_wall))
        wait = self._window.try_acquire(self._clock.monotonic())
        if wait is not None:
            return Admission(False, "rate", wait)
        self.used_this_month += 1
        return Admission(True)

    def snapshot(self) -> dict[str, Any]:
        limits: dict[str, Any] = (
            {"tps": self.tps}
            if self.tier == "S1"
            else {"per_minute": self.per_minute, "monthly_quota": self.monthly_quota}
        )
        return {
            "tier": self.tier,
            **limits,
            "window_s": self._window.window_s,
            "window_limit": self._window.limit,
            "in_window": self._window.in_window(self._clock.monotonic()),
            "used_this_month": self.used_this_month,
        }
