"""The status report: KPIs per window, probes, quota, active alerts, freshness and configuration.

``build_status(settings, runner, now=...)`` asks every telemetry question in **one**
``query_batch`` round trip (the named queries in ``queries/``, one item per window, plus every
alert rule of ``shared.alerts`` over its own window), then decides the overall state:

* ``unhealthy`` — an active alert of severity 0-1 (error rate, fast SLO burn, probe availability);
* ``degraded`` — any other active alert, stale or missing telemetry, a probe whose last run
  failed, or a query that could not be answered;
* ``healthy`` — none of that.

When the telemetry backend cannot be reached (or refuses us), ``StatusUnavailable`` names the
cause; the HTTP adapter turns it into a JSON 503. ``config`` carries tunables only: never a key,
a connection string or an endpoint URL. ``Status.to_json()`` is documented by
``docs/status.schema.json`` (see docs/status-api.md).

Must never: run more than one telemetry round trip per report, or raise a stack trace to HTTP.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.alerts import AlertRule, AlertState, alert_rules, evaluate, iso_duration, not_evaluated
from shared.logsquery import (
    BatchQuery,
    LogsQueryRunner,
    QueryAuthError,
    QueryConfigError,
    QueryError,
    QueryResult,
)

if TYPE_CHECKING:
    from shared.settings import Settings

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Window:
    """A KPI window and the bin size its dashboard series uses (about 15-48 points)."""

    name: str
    span: timedelta
    bin_size: timedelta

    @property
    def minutes(self) -> float:
        return self.span.total_seconds() / 60


WINDOWS: Final = (
    Window("15m", timedelta(minutes=15), timedelta(minutes=1)),
    Window("1h", timedelta(hours=1), timedelta(minutes=2)),
    Window("24h", timedelta(hours=24), timedelta(minutes=30)),
)
WINDOWS_BY_NAME: Final = {w.name: w for w in WINDOWS}
PROBES_WINDOW: Final = timedelta(hours=24)

# Per-window KPI queries (owned by the telemetry queries in queries/) and the status-only ones.
Q_SUCCESS: Final = "success_rate"
Q_LATENCY: Final = "analysis_latency"
Q_THROTTLE: Final = "throttle_rate"
Q_ERRORS: Final = "error_breakdown"
Q_PROBES: Final = "status_probes"
Q_FRESHNESS: Final = "status_freshness"
Q_VISION_RATE: Final = "status_vision_rate"
#: gauges are exported every minute or so; older values belong to instances that are gone
VISION_RATE_WINDOW: Final = timedelta(minutes=5)
Q_QUOTA: Final = "status_quota"
Q_SERIES_REQUESTS: Final = "status_series_requests"
Q_SERIES_VISION: Final = "status_series_vision"
Q_SERIES_AVAILABILITY: Final = "status_series_availability"


# --------------------------------------------------------------------------- the batch seam

# A status page must answer quickly even when the backend does not: short timeouts, few retries
# (azure-core's defaults would wait minutes).
CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "connection_timeout": 5, "read_timeout": 30, "retry_total": 1,
}


class BatchRunner(Protocol):
    """Runs every query in one round trip (``LogsQueryRunner.run_batch``).

    Returns each query's ``QueryResult`` or its own ``QueryError`` by key; raises a
    ``QueryError`` when the round trip as a whole fails (backend unreachable, auth, workspace
    unknown).
    """

    def run_batch(
        self, items: Sequence[BatchQuery]
    ) -> Mapping[str, QueryResult | QueryError]: ...


@functools.cache
def get_batch_runner() -> LogsQueryRunner:
    """The process's runner, built on first use from the app settings."""
    from shared.settings import get_settings

    return LogsQueryRunner.from_settings(get_settings(), client_options=CLIENT_OPTIONS)


# --------------------------------------------------------------------------- errors


class StatusUnavailable(Exception):
    """The report cannot be built; ``cause`` is a stable code, ``message`` says why."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message

    def to_json(self, *, now: datetime, version: str) -> dict[str, Any]:
        return {"state": "unknown", "checked_at": _iso(now), "version": version,
                "error": {"cause": self.cause, "message": self.message}}


def unavailable_from(exc: QueryError) -> StatusUnavailable:
    if isinstance(exc, QueryAuthError):
        return StatusUnavailable("telemetry_auth_failed",
                                 "the telemetry backend refused our credential: " + str(exc))
    if isinstance(exc, QueryConfigError):
        return StatusUnavailable("telemetry_not_configured",
                                 "the telemetry workspace is not configured or unknown: "
                                 + str(exc))
    return StatusUnavailable("telemetry_unreachable",
                             "the telemetry backend (Log Analytics query API) could not be"
                             " reached: " + str(exc))


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    reasons: tuple[str, ...]
    checked_at: datetime
    version: str
    windows: Mapping[str, Mapping[str, Any]]
    probes: Mapping[str, Any]
    quota: Mapping[str, Any]
    alerts: tuple[AlertState, ...]
    telemetry: Mapping[str, Any]
    config: Mapping[str, Any]
    series: Mapping[str, Any] | None = None
    vision_rate: Mapping[str, Any] | None = None

    @property
    def active_alerts(self) -> tuple[AlertState, ...]:
        return tuple(a for a in self.alerts if a.active)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "state": self.state.value,
            "reasons": list(self.reasons),
            "checked_at": _iso(self.checked_at),
            "version": self.version,
            "windows": {k: dict(v) for k, v in self.windows.items()},
            "probes": dict(self.probes),
            "quota": dict(self.quota),
            "alerts": {"active": [a.rule.name for a in self.active_alerts],
                       "rules": [_alert_json(a) for a in self.alerts]},
            "telemetry": dict(self.telemetry),
            "config": dict(self.config),
        }
        if self.series is not None:
            body["series"] = dict(self.series)
        if self.vision_rate is not None:
            body["vision_rate"] = dict(self.vision_rate)
        cleaned: dict[str, Any] = _jsonable(body)
        return cleaned


def plan(
    settings: Settings, *, history: Window | None = None
) -> tuple[list[BatchQuery], tuple[AlertRule, ...]]:
    """Every query of one report (one batch), and the alert rules they evaluate."""
    requests: list[BatchQuery] = []
    for w in WINDOWS:
        for query in (Q_SUCCESS, Q_LATENCY, Q_THROTTLE, Q_ERRORS):
            requests.append(BatchQuery(query, timespan=w.span, key=f"{query}:{w.name}"))
    requests += [
        BatchQuery(Q_PROBES, timespan=PROBES_WINDOW),
        BatchQuery(Q_FRESHNESS, timespan=timedelta(hours=24)),
        BatchQuery(Q_QUOTA, timespan=timedelta(days=2)),
        BatchQuery(Q_VISION_RATE, timespan=VISION_RATE_WINDOW),
    ]
    rules = alert_rules(settings)
    requests += [BatchQuery(r.query, r.params, r.window, key=f"alert:{r.name}") for r in rules]
    if history is not None:
        binned = {"binSize": history.bin_size}
        requests += [
            BatchQuery(Q_SERIES_REQUESTS, binned, history.span),
            BatchQuery(Q_SERIES_VISION, binned, history.span),
            BatchQuery(Q_SERIES_AVAILABILITY, binned, history.span),
        ]
    return requests, rules


QuotaLoader = Callable[["Settings"], Any]


def build_status(
    settings: Settings,
    runner: BatchRunner,
    *,
    now: datetime | None = None,
    history: Window | None = None,
    quota_loader: QuotaLoader | None = None,
) -> Status:
    """One status report; raises ``StatusUnavailable`` when telemetry cannot be asked at all."""
    now = now or datetime.now(UTC)
    requests, rules = plan(settings, history=history)
    try:
        answers = runner.run_batch(requests)
    except QueryError as exc:
        logger.warning("status: telemetry batch failed (%s)", type(exc).__name__)
        raise unavailable_from(exc) from exc
    query_errors: list[str] = []

    def rows(key: str) -> list[dict[str, Any]]:
        answer = answers.get(key)
        if isinstance(answer, QueryError):
            query_errors.append(f"{key}: {answer}")
            return []
        return list(answer.rows) if answer is not None else []

    windows = {w.name: _window(w, rows) for w in WINDOWS}
    probes = _probes(rows(Q_PROBES))
    telemetry = _freshness(rows(Q_FRESHNESS), settings.monitoring.freshness_max_age_s)
    quota = _quota(rows(Q_QUOTA), settings, quota_loader)
    alerts: list[AlertState] = []
    for rule in rules:
        answer = answers.get(f"alert:{rule.name}")
        if isinstance(answer, QueryError):
            query_errors.append(f"alert:{rule.name}: {answer}")
            alerts.append(not_evaluated(rule, str(answer)))
        else:
            alerts.append(evaluate(rule, answer.rows if answer is not None else []))
    series = None
    if history is not None:
        series = _series(history, rows)
    telemetry = {**telemetry, "query_errors": query_errors}
    state, reasons = decide(alerts, probes, telemetry, query_errors)
    return Status(
        state=state, reasons=tuple(reasons), checked_at=now,
        version=settings.monitoring.app_version, windows=windows, probes=probes, quota=quota,
        alerts=tuple(alerts), telemetry=telemetry, config=public_config(settings), series=series,
        vision_rate=_vision_rate(rows(Q_VISION_RATE), settings),
    )


def decide(
    alerts: Sequence[AlertState],
    probes: Mapping[str, Any],
    telemetry: Mapping[str, Any],
    query_errors: Sequence[str],
) -> tuple[State, list[str]]:
    """The overall state and the reasons for it (most severe first)."""
    reasons: list[str] = []
    state = State.HEALTHY
    for alert in sorted((a for a in alerts if a.active), key=lambda a: int(a.rule.severity)):
        reasons.append(f"alert {alert.rule.name} (sev {int(alert.rule.severity)}): "
                       f"{alert.summary}")
        state = _worse(state, State.UNHEALTHY if alert.rule.severity <= 1 else State.DEGRADED)
    for probe in probes.get("results", []):
        if probe.get("last_success") is False:
            reasons.append(f"probe {probe['probe']} failed its last run: "
                           f"{probe.get('last_message') or 'no message'}")
            state = _worse(state, State.DEGRADED)
    if not telemetry.get("fresh"):
        age = telemetry.get("age_s")
        reasons.append("no telemetry in the last 24 h" if age is None else
                       f"telemetry is stale: newest row is {age:.0f} s old")
        state = _worse(state, State.DEGRADED)
    if query_errors:
        reasons.append(f"{len(query_errors)} telemetry queries failed")
        state = _worse(state, State.DEGRADED)
    return state, reasons


_ORDER: Final = {State.HEALTHY: 0, State.DEGRADED: 1, State.UNHEALTHY: 2}


def _worse(a: State, b: State) -> State:
    return a if _ORDER[a] >= _ORDER[b] else b


# --------------------------------------------------------------------------- sections


RowsOf = Callable[[str], list[dict[str, Any]]]


def _window(w: Window, rows: RowsOf) -> dict[str, Any]:
    success = _first(rows(f"{Q_SUCCESS}:{w.name}"))
    latency = {str(r.get("Scope")): r for r in rows(f"{Q_LATENCY}:{w.name}")}
    throttle = _first(rows(f"{Q_THROTTLE}:{w.name}"))
    invocations = _int(success.get("Invocations"))
    invocation = latency.get("invocation", {})
    vision = latency.get("vision_call", {})
    return {
        "window": iso_duration(w.span),
        "invocations": invocations,
        "succeeded": _int(success.get("Succeeded")),
        "failed": _int(success.get("Failed")),
        "analyzed": _int(success.get("Analyzed")),
        "rejected": _int(success.get("Rejected")),
        "success_rate_pct": _num(success.get("SuccessRatePct")),
        "throughput_per_min": round(invocations / w.minutes, 4),
        "latency_ms": {"p50": _num(invocation.get("P50Ms")), "p95": _num(invocation.get("P95Ms")),
                       "p99": _num(invocation.get("P99Ms"))},
        "vision_latency_ms": {"p50": _num(vision.get("P50Ms")), "p95": _num(vision.get("P95Ms")),
                              "p99": _num(vision.get("P99Ms"))},
        "vision_calls": _int(throttle.get("Calls")),
        "throttled": _int(throttle.get("Throttled")),
        "throttle_rate_pct": _num(throttle.get("ThrottleRatePct")),
        "errors": [{"outcome": str(r.get("Outcome") or ""),
                    "error_class": str(r.get("ErrorClass") or ""),
                    "reason": str(r.get("Reason") or ""),
                    "status_code": str(r.get("StatusCode") or ""),
                    "service_code": str(r.get("ServiceCode") or ""),
                    "count": _int(r.get("Count"))}
                   for r in rows(f"{Q_ERRORS}:{w.name}")],
    }


def _probes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    results = [{
        "probe": str(r.get("probe") or ""),
        "runs": _int(r.get("runs")),
        "passed": _int(r.get("passed")),
        "availability_pct": _num(r.get("availability_pct")),
        "last_time": _iso(r.get("last_time")),
        "last_success": bool(r.get("last_success")),
        "last_duration_ms": _num(r.get("last_duration_ms")),
        "last_message": str(r.get("last_message") or ""),
        "last_location": str(r.get("last_location") or ""),
    } for r in rows]
    runs = sum(_int(r.get("runs")) for r in rows)
    passed = sum(_int(r.get("passed")) for r in rows)
    return {"window": iso_duration(PROBES_WINDOW),
            "availability_pct": round(100.0 * passed / runs, 3) if runs else None,
            "results": results}


def _freshness(rows: list[dict[str, Any]], max_age_s: int) -> dict[str, Any]:
    tables = [{"table": str(r.get("table_name") or ""), "newest": _iso(r.get("newest")),
               "age_s": _num(r.get("age_s"))} for r in rows]
    ages = [a for a in (_num(r.get("age_s")) for r in rows) if a is not None]
    age = min(ages) if ages else None
    newest = max((n for n in (_iso(r.get("newest")) for r in rows) if n), default=None)
    return {"newest": newest, "age_s": age, "max_age_s": max_age_s,
            "fresh": age is not None and age <= max_age_s, "tables": tables}


def _quota(
    rows: list[dict[str, Any]], settings: Settings, loader: QuotaLoader | None
) -> dict[str, Any]:
    metrics = {str(r.get("metric")): r for r in rows}
    used = metrics.get("quota.used_ratio", {})
    forecast = metrics.get("quota.forecast_ratio", {})
    out: dict[str, Any] = {
        "tier": settings.vision_tier.value,
        "used_ratio": _num(used.get("value")),
        "forecast_ratio": _num(forecast.get("value")),
        "reported_at": _iso(forecast.get("reported") or used.get("reported")),
        "source": "telemetry" if metrics else "none",
        "details": None,
    }
    loaded = _load_quota(settings, loader)
    if loaded is not None:
        out["details"] = _jsonable(
            asdict(loaded) if is_dataclass(loaded) and not isinstance(loaded, type) else loaded)
        out["source"] = "quota_check"
    return out


def _vision_rate(rows: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What the instances send together against the tier's documented limit."""
    row = rows[0] if rows else {}
    effective = _num(row.get("effective_per_second"))
    limit = settings.tier_limit_per_second
    return {
        "mode": settings.vision_rate_mode.value,
        "tier_limit_per_second": round(limit, 4),
        "ceiling_per_second": round(settings.rate_limit_per_second, 4),
        "instances": _int(row.get("instances")),
        "effective_per_second": effective,
        "share_of_limit": round(effective / limit, 4) if effective is not None else None,
        "reported_at": _iso(row.get("reported")),
    }


def _load_quota(settings: Settings, loader: QuotaLoader | None) -> Any:
    """The quota check's last result (``shared.quota.load_quota_status``), if there is one.

    ADAPTER (issue 6): ``shared.quota`` comes with issue 5; until it exists the telemetry
    metrics above are the only quota source.
    """
    if loader is None:
        try:
            from shared import quota  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            return None
        loader = getattr(quota, "load_quota_status", None)
        if loader is None:
            return None
    try:
        return loader(settings)
    # The quota document lives in storage (StorageError, azure-core errors, bad JSON): whatever
    # breaks there, the quota section is optional and the report must still answer.
    except Exception as exc:
        logger.warning("status: quota status unavailable (%s)", type(exc).__name__)
        return None


def _series(w: Window, rows: RowsOf) -> dict[str, Any]:
    return {
        "window": w.name,
        "span": iso_duration(w.span),
        "bin": iso_duration(w.bin_size),
        "requests": [{"time": _iso(r.get("bin_start")), "requests": _int(r.get("requests")),
                      "failed": _int(r.get("failed")),
                      "success_rate_pct": _pct(r.get("success_rate")),
                      "throughput_per_min": round(_int(r.get("requests"))
                                                  / (w.bin_size.total_seconds() / 60), 4),
                      "p50_ms": _num(r.get("p50_ms")), "p95_ms": _num(r.get("p95_ms"))}
                     for r in rows(Q_SERIES_REQUESTS)],
        "vision": [{"time": _iso(r.get("bin_start")), "calls": _int(r.get("calls")),
                    "throttled": _int(r.get("throttled"))} for r in rows(Q_SERIES_VISION)],
        "availability": [{"time": _iso(r.get("bin_start")), "runs": _int(r.get("runs")),
                          "passed": _int(r.get("passed")),
                          "availability_pct": _num(r.get("availability_pct"))}
                         for r in rows(Q_SERIES_AVAILABILITY)],
    }


def public_config(settings: Settings) -> dict[str, Any]:
    """Tunables, features and tier: never a key, a connection string or an endpoint URL."""
    t = settings.telemetry
    m = settings.monitoring
    return {
        "vision": {
            "tier": settings.vision_tier.value,
            "features": list(settings.vision_features),
            "language": settings.vision_language,
            "model_version": settings.vision_model_version,
            "rate_limit_per_second": settings.rate_limit_per_second,
            "rate_burst": settings.vision_rate_burst,
            "timeout_seconds": settings.vision_timeout_seconds,
            "max_retries": settings.vision_max_retries,
            "key_auth": settings.vision_key is not None,
        },
        "preprocess": {
            "max_dimension": settings.preprocess_max_dimension,
            "jpeg_quality": settings.preprocess_jpeg_quality,
            "max_pixels": settings.preprocess_max_pixels,
            "max_input_bytes": settings.preprocess_max_input_bytes,
        },
        "containers": {"images": settings.images_container,
                       "results": settings.results_container,
                       "failed": settings.failed_container},
        "storage_identity_based": settings.storage.uses_identity,
        "telemetry": {"sampling_ratio": t.sampling_ratio, "hash_blob_names": t.hash_blob_names,
                      "configured_by_worker": t.configured_by_worker,
                      "workspace_configured": bool(t.workspace_id)},
        "alerts": {"slo_target": m.slo_target, "error_rate_threshold": m.error_rate_threshold,
                   "min_requests": m.min_requests,
                   "latency_baseline_p95_ms": m.latency_baseline_p95_ms,
                   "latency_factor": m.latency_factor,
                   "availability_threshold_pct": m.availability_threshold_pct,
                   "throttle_rate_threshold": m.throttle_rate_threshold,
                   "quota_forecast_threshold": m.quota_forecast_threshold,
                   "freshness_max_age_s": m.freshness_max_age_s},
    }


def _alert_json(a: AlertState) -> dict[str, Any]:
    r = a.rule
    return {"name": r.name, "title": r.title, "active": a.active, "severity": int(r.severity),
            "value": a.value, "operator": r.operator.value, "threshold": r.threshold,
            "measure": r.measure, "window": iso_duration(r.window),
            "frequency": iso_duration(r.frequency), "summary": a.summary,
            "runbook": r.runbook_url, "error": a.error}


# --------------------------------------------------------------------------- values


def _first(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return rows[0] if rows else {}


def _int(value: Any) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    number = float(value)
    return number if math.isfinite(number) else None


def _pct(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else round(100.0 * number, 3)


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value:
        return value
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return _iso(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value if value is None or isinstance(value, str | int | bool) else str(value)


__all__ = [
    "CLIENT_OPTIONS",
    "WINDOWS",
    "WINDOWS_BY_NAME",
    "BatchRunner",
    "State",
    "Status",
    "StatusUnavailable",
    "Window",
    "build_status",
    "decide",
    "get_batch_runner",
    "plan",
    "public_config",
    "unavailable_from",
]
