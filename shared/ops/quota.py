"""The quota check: Vision use this month vs the tier's limits, a month-end forecast, warnings.

Inputs come from telemetry through ``queries/calls_this_month.kql`` (every Vision HTTP attempt
the app recorded, probes included — they use quota too). Limits come from settings
(``QUOTA_MONTHLY_CALLS``, ``QUOTA_TPS_LIMIT``, the tier). The formulas (also in
docs/probes-and-quota.md), with ``f`` the elapsed fraction of the calendar month (UTC)::

    used_ratio     = quota_calls / monthly_quota
    forecast_calls = quota_calls / f                      (linear: the same pace all month)
    forecast_ratio = forecast_calls / monthly_quota
    exhaustion_at  = month_start + monthly_quota / rate,  rate = quota_calls / elapsed seconds
                     (only when that falls before month end, i.e. forecast_ratio >= 1)
    avg_tps        = calls / elapsed seconds;  throttled_ratio = throttled / calls

Each result is kept in the status container at ``quota/latest.json`` (``read_quota_status``
reads it) and published as the gauges ``quota.used_ratio`` / ``quota.forecast_ratio``. A WARNING
is logged once per threshold crossing per month (``QUOTA_WARN_THRESHOLDS``); the thresholds
already crossed this month travel in the stored status. A failed check (telemetry backend
unreachable, storage down) logs a WARNING, records a failed ``quota-check`` availability result
and a ``quota.check_failed`` event, and never raises into the host.

Must never: raise from the timer, log a key or a connection string.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared import telemetry
from shared.errors import StorageError, VisionOpsError
from shared.monitoring.logsquery import QueryError
from shared.ops.jobs import (
    ProbeFailure,
    ProbeResult,
    RunLock,
    StatusStore,
    run_timer,
    track_probe_availability,
)

if TYPE_CHECKING:
    from shared.monitoring.logsquery import LogsQueryRunner
    from shared.settings import Settings

logger = logging.getLogger(__name__)

QUOTA_STATUS_PATH: Final = "quota/latest.json"
QUOTA_CHECK: Final = "quota-check"  # availability test name
USAGE_QUERY: Final = "calls_this_month"
#: The query cuts at the start of the month itself; the timespan only has to cover a month.
USAGE_TIMESPAN: Final = timedelta(days=32)
SCHEMA_VERSION: Final = 1


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """What telemetry says about this month's Vision calls."""

    calls: int  # every HTTP attempt
    quota_calls: int  # attempts the service admitted (not 429 / 403 quota / no response)
    throttled_calls: int  # 429
    peak_tps: float  # most attempts in one clock second


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    tier: str
    monthly_calls: int
    tps_limit: float
    warn_thresholds: tuple[float, ...] = (0.8, 0.95)

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaLimits:
        q = settings.quota
        tps = q.tps_limit
        if tps is None:
            tps = settings.vision.tier_limit_per_second
        return cls(tier=settings.vision.tier.value, monthly_calls=q.monthly_calls,
                   tps_limit=tps, warn_thresholds=q.warn_thresholds)


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """One quota check: usage, limits, ratios, forecast and projected exhaustion (UTC)."""

    computed_at: datetime
    month_start: datetime
    month_end: datetime
    elapsed_fraction: float
    tier: str
    monthly_quota: int
    tps_limit: float
    calls: int
    quota_calls: int
    throttled_calls: int
    throttled_ratio: float
    peak_tps: float
    avg_tps: float
    peak_tps_ratio: float
    used_ratio: float
    forecast_calls: float
    forecast_ratio: float
    exhaustion_at: datetime | None
    warn_thresholds: tuple[float, ...] = ()
    crossed_thresholds: tuple[float, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def month(self) -> str:
        return self.month_start.strftime("%Y-%m")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> QuotaStatus:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue  # a field added later keeps its default
            value = raw[f.name]
            if f.name in ("computed_at", "month_start", "month_end", "exhaustion_at"):
                value = None if value is None else datetime.fromisoformat(str(value))
            elif f.name in ("warn_thresholds", "crossed_thresholds"):
                value = tuple(float(v) for v in value)
            kwargs[f.name] = value
        return cls(**kwargs)


# --------------------------------------------------------------------------- the arithmetic


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Start of this calendar month and of the next, in UTC."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(now.year, now.month)[1]
    return start, start + timedelta(days=days)


def compute_quota_status(
    usage: QuotaUsage,
    limits: QuotaLimits,
    now: datetime,
    *,
    previously_crossed: tuple[float, ...] = (),
) -> QuotaStatus:
    """The status from usage and limits at ``now`` (pure; see the module docstring)."""
    start, end = month_bounds(now)
    elapsed = max((now - start).total_seconds(), 1.0)  # never divide by zero on the 1st, 00:00
    fraction = elapsed / (end - start).total_seconds()
    used = usage.quota_calls
    quota = limits.monthly_calls
    forecast = used / fraction
    exhaustion: datetime | None = None
    if used > 0:
        at = start + timedelta(seconds=quota / (used / elapsed))
        exhaustion = at if at <= end else None
    used_ratio = used / quota
    crossed = tuple(sorted({*previously_crossed,
                            *(t for t in limits.warn_thresholds if used_ratio >= t)}))
    return QuotaStatus(
        computed_at=now, month_start=start, month_end=end, elapsed_fraction=fraction,
        tier=limits.tier, monthly_quota=quota, tps_limit=limits.tps_limit,
        calls=usage.calls, quota_calls=used, throttled_calls=usage.throttled_calls,
        throttled_ratio=usage.throttled_calls / usage.calls if usage.calls else 0.0,
        peak_tps=usage.peak_tps, avg_tps=usage.calls / elapsed,
        peak_tps_ratio=usage.peak_tps / limits.tps_limit,
        used_ratio=used_ratio, forecast_calls=forecast, forecast_ratio=forecast / quota,
        exhaustion_at=exhaustion, warn_thresholds=limits.warn_thresholds,
        crossed_thresholds=crossed,
    )


def new_crossings(status: QuotaStatus, previously_crossed: tuple[float, ...]) -> list[float]:
    """Thresholds this status crossed that no earlier check this month had crossed."""
    return [t for t in status.crossed_thresholds if t not in previously_crossed]


# --------------------------------------------------------------------------- sources and sinks


class UsageSource(Protocol):
    def usage(self) -> QuotaUsage:
        """This month's usage; raise ``QuotaCheckError`` when telemetry cannot say."""
        ...


class QuotaCheckError(Exception):
    """The check could not get its inputs; ``reason`` is a short stable code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class LogsUsageSource:
    """``UsageSource`` over ``shared.monitoring.logsquery`` and ``queries/calls_this_month.kql``."""

    def __init__(self, runner: LogsQueryRunner) -> None:
        self._runner = runner

    def usage(self) -> QuotaUsage:
        try:
            result = self._runner.run(USAGE_QUERY, USAGE_TIMESPAN)
            rows = result.rows
        except QueryError as exc:
            raise QuotaCheckError(str(exc), reason=type(exc).__name__) from exc
        if not rows:
            return QuotaUsage(calls=0, quota_calls=0, throttled_calls=0, peak_tps=0.0)
        row = rows[0]
        return QuotaUsage(calls=_int(row.get("Calls")), quota_calls=_int(row.get("QuotaCalls")),
                          throttled_calls=_int(row.get("Throttled")),
                          peak_tps=float(row.get("PeakTps") or 0.0))


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) and value != "" else 0


def publish_metrics(status: QuotaStatus) -> None:
    """Record both gauges; telemetry must never break the check."""
    try:
        gauges = telemetry.quota_gauges()
        attributes = {telemetry.ATTR_QUOTA_TIER: status.tier}
        gauges.used_ratio.set(status.used_ratio, attributes)
        gauges.forecast_ratio.set(status.forecast_ratio, attributes)
    except Exception as exc:  # telemetry never breaks the app (see shared.telemetry)
        logger.warning("quota: metrics not recorded (%s)", type(exc).__name__)


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True, slots=True)
class QuotaRuntime:
    limits: QuotaLimits
    source: UsageSource
    status: StatusStore
    lock: RunLock
    run_location: str = "local"
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    availability: Callable[[ProbeResult], None] | None = None
    event: Callable[[str, Mapping[str, object]], None] | None = None
    metrics: Callable[[QuotaStatus], None] = publish_metrics


def check_quota(rt: QuotaRuntime) -> QuotaStatus:
    """One check: usage → status → warnings → stored. Raises ``QuotaCheckError``/storage."""
    now = rt.now()
    previous = _read_status(rt.status)
    start, _ = month_bounds(now)
    crossed_before = (previous.crossed_thresholds
                      if previous is not None and previous.month_start == start else ())
    status = compute_quota_status(rt.source.usage(), rt.limits, now,
                                  previously_crossed=crossed_before)
    for threshold in new_crossings(status, crossed_before):
        logger.warning(
            "quota: %.0f%% of the monthly Vision quota used (threshold %.0f%%): %d of %d calls;"
            " month-end forecast %.0f%%%s",
            status.used_ratio * 100, threshold * 100, status.quota_calls, status.monthly_quota,
            status.forecast_ratio * 100,
            f", exhausted around {status.exhaustion_at:%Y-%m-%d %H:%M} UTC"
            if status.exhaustion_at else "",
        )
    rt.metrics(status)
    rt.status.write_json(QUOTA_STATUS_PATH, status.as_dict())
    logger.info("quota: used %.1f%%, forecast %.1f%% of %d calls (%s)", status.used_ratio * 100,
                status.forecast_ratio * 100, status.monthly_quota, status.tier)
    return status


def quota_timer(
    *, past_due: bool, runtime: QuotaRuntime | Callable[[], QuotaRuntime],
    invocation_id: str | None = None,
) -> QuotaStatus | None:
    """The quota check's timer body. Never raises; ``None`` when skipped or failed.

    ``runtime`` may be the factory the composition root offers: a failure to build it is then
    a failed check too."""
    started_at, t0 = datetime.now(UTC), time.perf_counter()
    out: list[QuotaStatus] = []
    rt: QuotaRuntime | None = None
    try:
        rt = runtime if isinstance(runtime, QuotaRuntime) else runtime()
        bound = rt

        def job() -> None:
            status = check_quota(bound)
            out.append(status)
            (bound.availability or track_probe_availability)(ProbeResult(
                name=QUOTA_CHECK, success=True,
                duration_ms=round((time.perf_counter() - t0) * 1e3, 3),
                message=f"passed: used {status.used_ratio:.1%}, forecast"
                        f" {status.forecast_ratio:.1%}",
                run_location=bound.run_location, started_at=started_at))

        run_timer("quota_check", job, past_due=past_due, lock=rt.lock,
                  invocation_id=invocation_id)
    except Exception as exc:  # a failed check is reported, never raised into the host
        reason = (exc.reason if isinstance(exc, QuotaCheckError | VisionOpsError)
                  else type(exc).__name__)
        failure = (ProbeFailure.STORAGE if isinstance(exc, StorageError)
                   else ProbeFailure.UNREACHABLE if isinstance(exc, QuotaCheckError)
                   else ProbeFailure.CONFIG if isinstance(exc, VisionOpsError)
                   else ProbeFailure.UNEXPECTED)
        logger.warning("quota: check failed (%s: %s)", failure.value, reason,
                       exc_info=failure is ProbeFailure.UNEXPECTED)
        result = ProbeResult(
            name=QUOTA_CHECK, success=False, duration_ms=round((time.perf_counter() - t0) * 1e3, 3),
            message=f"{failure.value}: {reason}",
            run_location=rt.run_location if rt is not None else "unknown",
            started_at=started_at, failure=failure,
        )
        (rt.availability if rt is not None and rt.availability else track_probe_availability)(
            result)
        emit = rt.event if rt is not None and rt.event else telemetry.track_event
        emit(telemetry.EVENT_QUOTA_CHECK_FAILED, {telemetry.ATTR_QUOTA_FAILURE: failure.value,
                                                  telemetry.ATTR_QUOTA_REASON: reason})
        return None
    return out[-1] if out else None


# --------------------------------------------------------------------------- for the status page


def _read_status(store: StatusStore) -> QuotaStatus | None:
    raw = store.read_json(QUOTA_STATUS_PATH)
    if raw is None:
        return None
    try:
        return QuotaStatus.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        logger.warning("quota: stored status unreadable; ignored")
        return None


def read_quota_status(store: StatusStore) -> QuotaStatus | None:
    """The last successful quota check (``quota/latest.json`` in ``STATUS_CONTAINER``).

    ``None`` when no check has succeeded yet (or the document is unreadable); raises
    ``StorageError`` when storage cannot be read. ``computed_at`` tells how fresh it is.
    """
    return _read_status(store)
