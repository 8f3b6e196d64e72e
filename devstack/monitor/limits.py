"""Log Analytics' per-caller query limits, enforced by the emulator so every consumer meets them.

The service limits each caller (one Entra identity: every instance of an app shares it):

* **concurrency** — ``max_concurrent`` queries run at once (5); more wait in a FIFO queue;
* **queue** — a query waiting longer than ``queue_timeout_s`` (3 min), or arriving when
  ``max_queued`` (200) already wait, is refused with 429;
* **rate** — at most ``rate_limit`` queries (200) start in any ``rate_window_s`` (30 s); past
  that, 429 with ``Retry-After`` = seconds until the oldest one leaves the window.

Each is configurable (``--query-max-concurrent`` …, or ``PUT /admin/limits`` at run time, so a
test can throttle a running stack). The caller is told apart by its bearer token (hashed, never
kept): the emulator validates no token, and a token stands for an identity. A ``$batch`` counts
each of its queries against the rate and holds one concurrency slot while its items run, one
after another.

``QueryLimiter.admit`` is the only entry point; it never sleeps except to wait in the queue, and
its clock is injectable so the rate window is tested without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

#: What the service's documentation gives per caller.
DEFAULT_MAX_CONCURRENT = 5
DEFAULT_MAX_QUEUED = 200
DEFAULT_QUEUE_TIMEOUT_S = 180.0
DEFAULT_RATE_LIMIT = 200
DEFAULT_RATE_WINDOW_S = 30.0


class LimitsError(ValueError):
    """Raised with every problem of a limits document at once."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    max_queued: int = DEFAULT_MAX_QUEUED
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    rate_limit: int = DEFAULT_RATE_LIMIT
    rate_window_s: float = DEFAULT_RATE_WINDOW_S

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise LimitsError("invalid query limits: " + "; ".join(problems))

    def problems(self) -> list[str]:
        found: list[str] = []
        if not 1 <= self.max_concurrent <= 10_000:
            found.append(f"max_concurrent must be 1..10000, not {self.max_concurrent}")
        if not 0 <= self.max_queued <= 100_000:
            found.append(f"max_queued must be 0..100000, not {self.max_queued}")
        if not self.queue_timeout_s > 0:
            found.append(f"queue_timeout_s must be > 0, not {self.queue_timeout_s}")
        if not 1 <= self.rate_limit <= 1_000_000:
            found.append(f"rate_limit must be 1..1000000, not {self.rate_limit}")
        if not self.rate_window_s > 0:
            found.append(f"rate_window_s must be > 0, not {self.rate_window_s}")
        return found

    def updated(self, changes: Mapping[str, Any]) -> QueryLimits:
        """A copy with ``changes`` applied; unknown keys and bad types are errors."""
        known = {f.name: f.type for f in fields(self)}
        problems = [f"unknown limit {key!r}" for key in changes if key not in known]
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{key} must be a number, not {value!r}")
            elif known[key] == "int" and not float(value).is_integer():
                problems.append(f"{key} must be an integer, not {value!r}")
            else:
                values[key] = int(value) if known[key] == "int" else float(value)
        if problems:
            raise LimitsError("invalid query limits: " + "; ".join(problems))
        return replace(self, **values)


class Throttled(Exception):
    """The caller is over a limit; answer 429 with ``Retry-After: retry_after_s``."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        # The error code is the emulator's choice; clients should key on the status (429).
        return {"error": {"code": "ThrottledError", "message": self.message,
                          "innererror": {"code": self.reason, "message": self.message}}}


@dataclass(slots=True)
class _Caller:
    running: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    started: collections.deque[float] = field(default_factory=collections.deque)


@dataclass(slots=True)
class LimiterStats:
    """Counters since start (or the last reset), for tests and ``GET /admin/limits``."""

    #: Requests admitted, and the queries they carried (a batch's items each count).
    admitted: int = 0
    queries: int = 0
    queued: int = 0
    throttled: dict[str, int] = field(default_factory=dict)
    max_running: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def caller_of(authorization: str | None) -> str:
    """A stable, non-reversible name for the identity behind an ``Authorization`` header."""
    return hashlib.sha256((authorization or "").encode()).hexdigest()[:16]


class QueryLimiter:
    """Per-caller admission for the query API. Use only from the event loop's thread."""

    def __init__(self, limits: QueryLimits | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or QueryLimits()
        self.stats = LimiterStats()
        self._clock = clock
        self._callers: dict[str, _Caller] = {}

    def configure(self, limits: QueryLimits) -> None:
        """New limits apply to queries admitted from now on; waiting ones may now start."""
        self.limits = limits
        for caller in self._callers.values():
            self._wake(caller)

    def reset_stats(self) -> None:
        self.stats = LimiterStats()

    def _throttle(self, reason: str, message: str, retry_after_s: float) -> Throttled:
        self.stats.throttled[reason] = self.stats.throttled.get(reason, 0) + 1
        return Throttled(reason, message, max(1, math.ceil(retry_after_s)))

    def _check_rate(self, caller: _Caller, cost: int) -> None:
        now = self._clock()
        window = self.limits.rate_window_s
        while caller.started and caller.started[0] <= now - window:
            caller.started.popleft()
        if len(caller.started) + cost > self.limits.rate_limit:
            oldest = caller.started[0] if caller.started else now
            raise self._throttle(
                "RateLimitExceeded",
                f"More than {self.limits.rate_limit} queries in {window:g} s from this caller.",
                oldest + window - now)
        caller.started.extend([now] * cost)

    def _wake(self, caller: _Caller) -> None:
        while caller.waiting and caller.running < self.limits.max_concurrent:
            waiter = caller.waiting.popleft()
            if not waiter.done():
                caller.running += 1
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def admit(self, authorization: str | None, cost: int = 1) -> AsyncIterator[None]:
        """Hold one concurrency slot for the body; raise ``Throttled`` instead of admitting.

        ``cost`` is how many queries the request carries (a batch's item count).
        """
        caller = self._callers.setdefault(caller_of(authorization), _Caller())
        self._check_rate(caller, max(1, cost))
        if caller.running >= self.limits.max_concurrent:
            if len(caller.waiting) >= self.limits.max_queued:
                raise self._throttle(
                    "QueueFull", f"{self.limits.max_queued} queries of this caller already wait.",
                    self.limits.rate_window_s / 10)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            caller.waiting.append(waiter)
            self.stats.queued += 1
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.limits.queue_timeout_s)
            except TimeoutError:
                if waiter.done():  # granted just as the wait ran out: give the slot back
                    caller.running -= 1
                    self._wake(caller)
                else:
                    waiter.cancel()
                raise self._throttle(
                    "QueueTimeout",
                    f"The query waited {self.limits.queue_timeout_s:g} s for one of this"
                    f" caller's {self.limits.max_concurrent} concurrent slots.",
                    self.limits.rate_window_s / 10) from None
            except asyncio.CancelledError:  # the client went away while waiting
                if waiter.done() and not waiter.cancelled():
                    caller.running -= 1
                    self._wake(caller)
                waiter.cancel()
                raise
        else:
            caller.running += 1
        self.stats.admitted += 1
        self.stats.queries += max(1, cost)
        self.stats.max_running = max(self.stats.max_running, caller.running)
        try:
            yield
        finally:
            caller.running -= 1
            self._wake(caller)


__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_QUEUE_TIMEOUT_S",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_WINDOW_S",
    "LimiterStats",
    "LimitsError",
    "QueryLimiter",
    "QueryLimits",
    "Throttled",
    "caller_of",
]
