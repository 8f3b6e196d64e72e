"""The one poll-with-deadline loop of the tests: every wait for an outcome goes through it.

The clock and the sleep are injectable, so the loop itself is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A wait ran past its deadline (an ``AssertionError``: the test fails, it does not error)."""


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    timeout: float,
    interval: float = 0.25,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fetch`` until ``done(value)`` holds and return that value; at the deadline fail with
    ``what`` and the last value."""
    deadline = clock() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if clock() >= deadline:
            shown = f"{len(value)} items" if isinstance(value, dict) else repr(value)[:500]
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; "
                              f"last value: {shown}")
        sleep(interval)  # the poll interval, not a wait for an outcome


def wait_for(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.5, what: str,
) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` at the deadline."""
    poll(predicate, timeout=timeout, interval=interval, what=what)
