"""The shared report cache on its own: single flight across threads, errors and their backoff."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from shared.monitoring.reportcache import ReportCache, ReportPending
from tests.support.polling import poll


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Flaky(Exception):
    retry_after_s = 45.0


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def cache(ticks: Ticks) -> Iterator[ReportCache[str]]:
    c: ReportCache[str] = ReportCache(ttl_s=30, wait_s=5, clock=ticks)
    yield c
    c.shutdown()


def test_concurrent_callers_share_one_computation(cache: ReportCache[str]) -> None:
    release = threading.Event()
    entered = threading.Event()

    def compute() -> str:
        entered.set()
        release.wait(5)
        return "report"

    got: list[str] = []
    callers = [threading.Thread(target=lambda: got.append(cache.get("k", compute).value))
               for _ in range(20)]
    for t in callers:
        t.start()
    assert entered.wait(5)
    release.set()
    for t in callers:
        t.join(10)
    assert got == ["report"] * 20
    assert cache.computations("k") == 1


def test_an_error_with_nothing_cached_is_raised_and_not_retried_before_its_backoff(
        cache: ReportCache[str], ticks: Ticks) -> None:
    calls = 0

    def compute() -> str:
        nonlocal calls
        calls += 1
        raise Flaky("throttled")

    with pytest.raises(Flaky):
        cache.get("k", compute)
    ticks.now += 40  # past the TTL, not past the error's 45 s Retry-After
    with pytest.raises(Flaky):
        cache.get("k", compute)
    assert calls == 1
    ticks.now += 10
    with pytest.raises(Flaky):
        cache.get("k", compute)
    assert calls == 2


def test_a_slow_first_computation_answers_pending_within_the_wait(ticks: Ticks) -> None:
    release = threading.Event()
    cache: ReportCache[str] = ReportCache(ttl_s=30, wait_s=0.05, clock=ticks)
    try:
        with pytest.raises(ReportPending) as caught:
            cache.get("k", lambda: release.wait(5) and "late")
        assert caught.value.retry_after_s == 1.0
        release.set()
        def answer() -> str | None:
            try:
                return cache.get("k", lambda: "other").value
            except ReportPending:
                return None

        assert poll(answer, timeout=5, interval=0.001, what="the slow computation") == "late"
        assert cache.computations("k") == 1
    finally:
        release.set()
        cache.shutdown()
