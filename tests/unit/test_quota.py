"""Quota check: forecast and exhaustion vs a hand computation, thresholds once, failures."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.ops.jobs import ProbeFailure, ProbeResult, StatusStore
from shared.ops.quota import (
    QUOTA_STATUS_PATH,
    QuotaCheckError,
    QuotaLimits,
    QuotaRuntime,
    QuotaStatus,
    QuotaUsage,
    check_quota,
    compute_quota_status,
    month_bounds,
    quota_timer,
)
from shared.settings import Settings
from tests.support.fakes import MemoryStore

LIMITS = QuotaLimits(tier="F0", monthly_calls=5000, tps_limit=20 / 60,
                     warn_thresholds=(0.8, 0.95))


def synthetic_month(now: datetime, per_day: int) -> list[datetime]:
    """``per_day`` calls spread evenly over each elapsed day of ``now``'s month."""
    start, _ = month_bounds(now)
    calls: list[datetime] = []
    moment = start
    step = timedelta(days=1) / per_day
    while moment < now:
        calls.append(moment)
        moment += step
    return calls


def usage_of(calls: list[datetime], throttled: int = 0) -> QuotaUsage:
    per_second: dict[datetime, int] = {}
    for c in calls:
        key = c.replace(microsecond=0)
        per_second[key] = per_second.get(key, 0) + 1
    return QuotaUsage(calls=len(calls) + throttled, quota_calls=len(calls),
                      throttled_calls=throttled, peak_tps=float(max(per_second.values())))


def test_month_bounds_handle_leap_february_and_december() -> None:
    assert month_bounds(datetime(2024, 2, 29, 23, 59, tzinfo=UTC)) == (
        datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    assert month_bounds(datetime(2023, 12, 31, 12, tzinfo=UTC))[1] == datetime(
        2024, 1, 1, tzinfo=UTC)


def test_forecast_and_exhaustion_match_a_hand_computation() -> None:
    # February 2024 (29 days); checked on the 10th at 12:00: 9.5 days elapsed.
    now = datetime(2024, 2, 10, 12, 0, tzinfo=UTC)
    calls = synthetic_month(now, per_day=200)
    # By hand: 200 calls/day x 9.5 days = 1,900 calls. Elapsed fraction 9.5 / 29.
    # Forecast 1,900 / (9.5 / 29) = 200 x 29 = 5,800 → 116 % of 5,000.
    # Exhaustion: 5,000 calls at 200/day = 25 days after Feb 1 → 2024-02-26 00:00 UTC.
    assert len(calls) == 1900
    status = compute_quota_status(usage_of(calls, throttled=100), LIMITS, now)
    assert status.quota_calls == 1900 and status.calls == 2000
    assert status.elapsed_fraction == pytest.approx(9.5 / 29)
    assert status.used_ratio == pytest.approx(0.38)
    assert status.forecast_calls == pytest.approx(5800)
    assert status.forecast_ratio == pytest.approx(1.16)
    assert status.exhaustion_at is not None
    assert abs(status.exhaustion_at - datetime(2024, 2, 26, tzinfo=UTC)) < timedelta(seconds=1)
    assert status.throttled_ratio == pytest.approx(100 / 2000)
    assert status.avg_tps == pytest.approx(2000 / (9.5 * 86400))
    assert status.peak_tps == 1.0
    assert status.peak_tps_ratio == pytest.approx(3.0)  # 1 call in a second vs 20/min
    assert status.crossed_thresholds == ()


def test_no_exhaustion_date_when_the_pace_fits_the_month() -> None:
    now = datetime(2024, 4, 16, 0, 0, tzinfo=UTC)  # 15 of 30 days
    status = compute_quota_status(usage_of(synthetic_month(now, per_day=100)), LIMITS, now)
    assert status.forecast_calls == pytest.approx(3000)  # 1,500 / 0.5
    assert status.exhaustion_at is None
    empty = compute_quota_status(QuotaUsage(0, 0, 0, 0.0), LIMITS, now)
    assert (empty.forecast_ratio, empty.exhaustion_at, empty.throttled_ratio) == (0, None, 0)


class FreeLock:
    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        yield True


class Source:
    def __init__(self) -> None:
        self.quota_calls = 0
        self.error: Exception | None = None

    def usage(self) -> QuotaUsage:
        if self.error is not None:
            raise self.error
        return QuotaUsage(calls=self.quota_calls, quota_calls=self.quota_calls,
                          throttled_calls=0, peak_tps=1.0)


def make_runtime(source: Source, clock: list[datetime], store: MemoryStore, *,
                 recorded: list[ProbeResult], events: list[tuple[str, Any]],
                 metrics: list[QuotaStatus]) -> QuotaRuntime:
    return QuotaRuntime(limits=LIMITS, source=source, status=StatusStore(store, "status"),
                        lock=FreeLock(), run_location="test", now=lambda: clock[0],
                        availability=recorded.append,
                        event=lambda name, props: events.append((name, dict(props))),
                        metrics=metrics.append)


def test_thresholds_warn_once_per_crossing_and_again_next_month(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, store = Source(), MemoryStore()
    clock = [datetime(2024, 5, 20, tzinfo=UTC)]
    recorded: list[ProbeResult] = []
    metrics: list[QuotaStatus] = []
    rt = make_runtime(source, clock, store, recorded=recorded, events=[], metrics=metrics)

    def warnings_after(calls: int) -> list[str]:
        source.quota_calls = calls
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="shared.ops.quota"):
            check_quota(rt)
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert warnings_after(3000) == []  # 60 %
    first = warnings_after(4100)  # 82 %: crosses 80 %
    assert len(first) == 1 and "threshold 80%" in first[0]
    assert warnings_after(4200) == []  # still above 80 %: no repeat
    assert warnings_after(4300) == []
    both = warnings_after(4900)  # 98 %: crosses 95 %
    assert len(both) == 1 and "threshold 95%" in both[0]
    assert warnings_after(4950) == []
    clock[0] = datetime(2024, 6, 25, tzinfo=UTC)  # a new month: crossings start afresh
    again = warnings_after(4900)
    assert [m.split("(threshold ")[1][:3] for m in again] == ["80%", "95%"]
    stored = json.loads(store.read("status", QUOTA_STATUS_PATH) or b"")
    assert stored["crossed_thresholds"] == [0.8, 0.95]
    assert len(metrics) == 7  # gauges recorded every run


def test_timer_stores_status_readable_by_the_status_page() -> None:
    source, store = Source(), MemoryStore()
    source.quota_calls = 1234
    recorded: list[ProbeResult] = []
    clock = [datetime(2024, 5, 20, 6, 30, tzinfo=UTC)]
    rt = make_runtime(source, clock, store, recorded=recorded, events=[], metrics=[])
    status = quota_timer(past_due=True, runtime=rt)
    assert status is not None and status.quota_calls == 1234
    from shared.ops.quota import _read_status

    assert _read_status(StatusStore(store, "status")) == status
    assert [(r.name, r.success) for r in recorded] == [("quota-check", True)]


@pytest.mark.parametrize(("error", "failure"), [
    (QuotaCheckError("backend down", reason="QueryBackendError"), ProbeFailure.UNREACHABLE),
    (RuntimeError("bug"), ProbeFailure.UNEXPECTED),
])
def test_failed_check_warns_records_and_never_raises(
    error: Exception, failure: ProbeFailure, caplog: pytest.LogCaptureFixture
) -> None:
    source, store = Source(), MemoryStore()
    source.error = error
    recorded: list[ProbeResult] = []
    events: list[tuple[str, Any]] = []
    rt = make_runtime(source, [datetime(2024, 5, 20, tzinfo=UTC)], store, recorded=recorded,
                      events=events, metrics=[])
    with caplog.at_level(logging.WARNING, logger="shared.ops.quota"):
        assert quota_timer(past_due=False, runtime=rt) is None
    assert "quota: check failed" in caplog.text
    assert [(r.name, r.success, r.failure) for r in recorded] == [
        ("quota-check", False, failure)]
    assert events[0][0] == "quota.check_failed"
    assert events[0][1]["quota.failure"] == failure.value
    assert store.blobs == {}  # the last good status is kept, not overwritten


def test_limits_from_settings_default_by_tier() -> None:
    base = {"VISION_ENDPOINT": "http://x", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    f0 = QuotaLimits.from_settings(Settings.from_env({**base, "VISION_TIER": "F0"}))
    assert (f0.monthly_calls, f0.tps_limit) == (5000, pytest.approx(1 / 3))
    s1 = QuotaLimits.from_settings(Settings.from_env({
        **base, "QUOTA_TPS_LIMIT": "20", "QUOTA_MONTHLY_CALLS": "1000000",
        "QUOTA_WARN_THRESHOLDS": "0.95, 0.5"}))
    assert (s1.monthly_calls, s1.tps_limit, s1.warn_thresholds) == (1_000_000, 20, (0.5, 0.95))


def test_status_round_trips_and_old_documents_still_load() -> None:
    now = datetime(2024, 2, 10, 12, tzinfo=UTC)
    status = compute_quota_status(QuotaUsage(10, 9, 1, 2.0), LIMITS, now)
    assert QuotaStatus.from_dict(json.loads(json.dumps(status.as_dict()))) == status
