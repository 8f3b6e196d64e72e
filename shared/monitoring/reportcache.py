"""A per-process cache of computed reports: TTL, single flight, stale-while-revalidate, backoff.

Every caller of one instance shares it, so however many dashboards poll, one instance computes
each report at most once per TTL:

* **fresh** (younger than ``ttl_s``): served as is;
* **stale**: served at once, marked stale with its age, while one refresh runs in the background
  (stale-while-revalidate);
* **missing**: the caller waits up to ``wait_s`` for the one computation in flight (single
  flight: concurrent callers share it), else gets ``ReportPending`` — never a held thread;
* **failed** refresh: the error is kept and no new attempt starts before ``ttl_s`` (or the
  backend's ``retry_after_s``, if longer) has passed, so a throttled or hung backend sees one
  attempt per TTL per instance, never a retry storm. The last good report keeps being served,
  stale, with the error that keeps it from being refreshed.

Computations run on the cache's own small thread pool, never on the caller's thread: a caller
only ever waits ``wait_s``. Clocks are injectable.

Must never: run two computations of one key at once, or block a caller longer than ``wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ReportPending(Exception):
    """No report is cached and the one being computed was not ready within the wait."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("the report is being computed")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """A report as served: its value, its age, and whether (and why) it is stale."""

    value: T
    age_s: float
    stale: bool
    #: Why the report could not be refreshed (the last refresh's error), if it could not.
    error: BaseException | None = None


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T | None = None
    computed_at: float | None = None
    inflight: Future[T] | None = None
    error: BaseException | None = None
    failed_at: float | None = None
    retry_after_s: float = 0.0
    computations: int = 0


def _retry_after(exc: BaseException) -> float:
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


class ReportCache(Generic[T]):
    """Reports by key; ``get``/``aget`` are safe from any thread and from an event loop."""

    def __init__(
        self,
        *,
        ttl_s: float,
        wait_s: float,
        max_workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry[T]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="report")

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def computations(self, key: str) -> int:
        """How many computations of ``key`` were started (for tests and benchmarks)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.computations if entry is not None else 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- lookup -------------------------------------------------------------------------------

    def _lookup(self, key: str, compute: Callable[[], T]) -> tuple[Cached[T] | None, Future[T]]:
        """The servable report (None if none) and the computation to wait for if there is none.

        Starts a computation when the entry is missing or stale, none is in flight and the last
        failure's backoff has passed. With nothing servable and a failure still backing off,
        the returned future already holds that failure.
        """
        now = self._clock()
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            fresh = (entry.computed_at is not None and now - entry.computed_at < self._ttl_s)
            backing_off = (entry.failed_at is not None
                           and now - entry.failed_at < max(self._ttl_s, entry.retry_after_s))
            if not fresh and entry.inflight is None and not backing_off:
                entry.computations += 1
                entry.inflight = self._pool.submit(self._compute, key, compute)
            cached: Cached[T] | None = None
            if entry.value is not None and entry.computed_at is not None:
                cached = Cached(entry.value, max(0.0, now - entry.computed_at), not fresh,
                                None if fresh else entry.error)
            if entry.inflight is not None:
                return cached, entry.inflight
            failed: Future[T] = Future()
            if entry.error is not None:
                failed.set_exception(entry.error)
            else:  # fresh and nothing in flight: only reached with a cached value
                assert cached is not None
                failed.set_result(cached.value)
            return cached, failed

    def _compute(self, key: str, compute: Callable[[], T]) -> T:
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                entry = self._entries[key]
                entry.inflight = None
                entry.error = exc
                entry.failed_at = self._clock()
                entry.retry_after_s = _retry_after(exc)
            logger.warning("report %s: computation failed (%s); next attempt in %.0f s", key,
                           type(exc).__name__, max(self._ttl_s, _retry_after(exc)))
            raise
        with self._lock:
            entry = self._entries[key]
            entry.inflight = None
            entry.value = value
            entry.computed_at = self._clock()
            entry.error = None
            entry.failed_at = None
            entry.retry_after_s = 0.0
        return value

    def _settled(self, key: str, future: Future[T]) -> Cached[T]:
        value = future.result()  # raises the computation's error
        with self._lock:
            entry = self._entries[key]
            at = entry.computed_at if entry.computed_at is not None else self._clock()
        return Cached(value, max(0.0, self._clock() - at), False)

    def _pending(self) -> ReportPending:
        return ReportPending(retry_after_s=max(1.0, self._wait_s))

    def get(self, key: str, compute: Callable[[], T]) -> Cached[T]:
        """The report for ``key``: cached (fresh or stale) or computed within ``wait_s``.

        Raises the computation's error when there is no report to fall back on, and
        ``ReportPending`` when the computation takes longer than ``wait_s``.
        """
        cached, future = self._lookup(key, compute)
        if cached is not None:
            return cached
        try:
            future.result(timeout=self._wait_s)
        except TimeoutError:
            raise self._pending() from None
        return self._settled(key, future)

    async def aget(self, key: str, compute: Callable[[], T]) -> Cached[T]:
        """``get`` for a coroutine: waits without holding a thread (the event loop stays free)."""
        cached, future = self._lookup(key, compute)
        if cached is not None:
            return cached
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self._wait_s)
        except TimeoutError:
            raise self._pending() from None
        return self._settled(key, future)


__all__ = ["Cached", "ReportCache", "ReportPending"]
