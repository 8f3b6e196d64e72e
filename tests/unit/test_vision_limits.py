"""Tier limiter of the Vision emulator, on a fake clock (no test waits)."""

from __future__ import annotations

import datetime as dt

import pytest

from devstack.vision.clock import FakeClock
from devstack.vision.limits import SlidingWindowLog, TierLimiter, seconds_to_next_month


def s1(clock: FakeClock, tps: float = 5) -> TierLimiter:
    return TierLimiter(clock, tier="S1", tps=tps, per_minute=20, monthly_quota=5000)


def test_s1_admits_exactly_tps_calls_per_rolling_second() -> None:
    clock = FakeClock()
    limiter = s1(clock, tps=5)
    outcomes = [limiter.admit() for _ in range(15)]
    assert sum(a.allowed for a in outcomes) == 5
    rejected = [a for a in outcomes if not a.allowed]
    assert all(a.reason == "rate" and 0 < a.retry_after_s <= 1.0 for a in rejected)


def test_s1_retry_after_points_at_the_oldest_call_leaving_the_window() -> None:
    clock = FakeClock()
    limiter = s1(clock, tps=2)
    assert limiter.admit().allowed
    clock.advance(0.4)
    assert limiter.admit().allowed
    refused = limiter.admit()
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.6)
    clock.advance(0.6)
    assert limiter.admit().allowed  # first call left the window
    assert not limiter.admit().allowed


def test_no_burst_at_window_edges() -> None:
    clock = FakeClock()
    limiter = s1(clock, tps=3)
    clock.advance(0.9)
    assert [limiter.admit().allowed for _ in range(3)] == [True] * 3
    clock.advance(0.2)  # a fixed 1-second window would have reset here
    assert not limiter.admit().allowed


def test_fractional_tps_spaces_calls() -> None:
    clock = FakeClock()
    limiter = s1(clock, tps=0.5)
    assert limiter.admit().allowed
    refused = limiter.admit()
    assert not refused.allowed and refused.retry_after_s == pytest.approx(2.0)


def test_f0_per_minute_limit() -> None:
    clock = FakeClock()
    limiter = TierLimiter(clock, tier="F0", tps=10, per_minute=20, monthly_quota=5000)
    assert sum(limiter.admit().allowed for _ in range(25)) == 20
    clock.advance(30)
    refused = limiter.admit()
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30)
    clock.advance(30)
    assert limiter.admit().allowed


def test_f0_monthly_quota_then_rollover() -> None:
    start = dt.datetime(2030, 1, 31, 23, 0, tzinfo=dt.UTC).timestamp()
    clock = FakeClock(start=start)
    limiter = TierLimiter(clock, tier="F0", tps=10, per_minute=100, monthly_quota=3)
    assert [limiter.admit().allowed for _ in range(3)] == [True] * 3
    refused = limiter.admit()
    assert refused.reason == "quota"
    assert refused.retry_after_s == pytest.approx(3600)
    clock.advance(3600)  # February
    assert limiter.admit().allowed
    assert limiter.used_this_month == 1


def test_rate_refusals_do_not_use_quota() -> None:
    clock = FakeClock()
    limiter = TierLimiter(clock, tier="F0", tps=10, per_minute=2, monthly_quota=100)
    for _ in range(10):
        limiter.admit()
    assert limiter.used_this_month == 2


def test_configure_switches_tier_and_restarts_window() -> None:
    clock = FakeClock()
    limiter = s1(clock, tps=1)
    assert limiter.admit().allowed
    assert not limiter.admit().allowed
    limiter.configure(tier="S1", tps=4)
    assert sum(limiter.admit().allowed for _ in range(10)) == 4
    limiter.configure(tier="F0", per_minute=1, monthly_quota=10, reset_usage=True)
    assert limiter.snapshot()["tier"] == "F0"
    assert limiter.admit().allowed and not limiter.admit().allowed


def test_window_validation_and_next_month() -> None:
    with pytest.raises(ValueError):
        SlidingWindowLog(0, 1.0)
    dec = dt.datetime(2030, 12, 31, 12, tzinfo=dt.UTC).timestamp()
    assert seconds_to_next_month(dec) == pytest.approx(12 * 3600)
