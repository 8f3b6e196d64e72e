"""The status report: KPIs per window, probes, quota, active alerts, freshness and configuration.

``build_status(settings, runner, now=...)`` asks every telemetry question as single Log Analytics
queries (``runner.run_many``: a few at a time, never the deprecated ``$batch``) — five for the
core report (``plan``):

* ``status_windows`` — every KPI of the three windows (15m, 1h, 24h) in one scan;
* ``status_alerts`` — every alert rule of ``shared.monitoring.alerts``, each over its own window,
in one
  (the drift rules, which compare with a baseline, run their own three queries);
* ``status_probes``, ``status_freshness``, ``status_quota``;

and four more for a dashboard's ``history`` series, plus its two drift views. Then it decides
the overall state:

* ``unhealthy`` — an active alert of severity 0-1 (error rate, fast SLO burn, probe availability);
* ``degraded`` — any other active alert, stale or missing telemetry, a probe whose last run
  failed, or a query that could not be answered;
* ``healthy`` — none of that.

When the telemetry backend cannot be asked (unreachable, throttled, refusing us),
``StatusUnavailable`` names the cause; ``shared.monitoring.status_service`` (the cache every caller
of one
instance shares) then serves the last good report marked stale, or the HTTP adapter answers a
JSON 503. ``config`` carries tunables only: never a key, a connection string
or an endpoint URL. ``Status.to_json()`` is documented by ``docs/status.schema.json`` (see
docs/status-api.md).

Must never: raise a stack trace to HTTP, or hide that a query failed. Past 450 lines because
the report is one thing: its plan, the sections it maps and the state it decides belong
together.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared import telemetry
from shared.errors import StorageError
from shared.monitoring.alerts import (
    STATUS_QUERY,
    STATUS_QUERY_RULES,
    AlertRule,
    AlertState,
    alert_rules,
    evaluate,
    iso_duration,
    not_evaluated,
    status_query_params,
    status_query_window,
)
from shared.monitoring.drift import Baseline
from shared.monitoring.logsquery import (
    BadQueryError,
    QueryAuthError,
    QueryConfigError,
    QueryError,
    QueryResult,
    QuerySkipped,
    QuerySpec,
    QueryThrottledError,
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

# The status queries (queries/status_*.kql).
Q_WINDOWS: Final = "status_windows"
Q_PROBES: Final = "status_probes"
Q_FRESHNESS: Final = "status_freshness"
Q_VISION_RATE: Final = "status_vision_rate"
#: gauges are exported every minute or so; older values belong to instances that are gone
VISION_RATE_WINDOW: Final = timedelta(minutes=5)
Q_QUOTA: Final = "status_quota"
Q_SERIES_REQUESTS: Final = "status_series_requests"
Q_SERIES_VISION: Final = "status_series_vision"
Q_SERIES_AVAILABILITY: Final = "status_series_availability"
Q_SERIES_DEPLOYMENTS: Final = "status_series_deployments"
Q_DRIFT_DISTRIBUTION: Final = "drift_distribution"
Q_DRIFT_SERIES: Final = "drift_series"


# --------------------------------------------------------------------------- the query seam

# A status page must answer quickly even when the backend does not: short timeouts and no
# retries here (the report cache retries once per TTL; azure-core's defaults would wait minutes
# and retry a 429 after its Retry-After).
CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "connection_timeout": 3, "read_timeout": 10, "retry_total": 0,
}


class QueryRunner(Protocol):
    """Runs named queries as single requests (``LogsQueryRunner.run_many``).

    Returns each query's ``QueryResult`` or its own ``QueryError`` by key.
    """

    def run_many(
        self, items: Sequence[QuerySpec]
    ) -> Mapping[str, QueryResult | QueryError]: ...


# --------------------------------------------------------------------------- errors


class StatusUnavailable(Exception):
    """The report cannot be built; ``cause`` is a stable code, ``message`` says why."""

    def __init__(self, cause: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message
        #: The backend's hint (a 429's Retry-After); the report cache waits at least this long.
        self.retry_after_s = retry_after_s

    def to_json(self, *, now: datetime, version: str) -> dict[str, Any]:
        return {"state": "unknown", "checked_at": _iso(now), "version": version,
                "error": self.error_json()}

    def error_json(self) -> dict[str, Any]:
        return {"cause": self.cause, "message": self.message}


def unavailable_from(exc: QueryError) -> StatusUnavailable:
    if isinstance(exc, QueryThrottledError):
        return StatusUnavailable("telemetry_throttled",
                                 "the telemetry backend (Log Analytics) throttled our queries: "
                                 + str(exc), retry_after_s=exc.retry_after_s)
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
    tuning: Mapping[str, Any] | None = None
    #: the drift baseline in force (``shared.monitoring.drift``)
    drift: Mapping[str, Any] | None = None
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
        if self.tuning is not None:
            body["tuning"] = dict(self.tuning)
        if self.drift is not None:
            body["drift"] = dict(self.drift)
        if self.vision_rate is not None:
            body["vision_rate"] = dict(self.vision_rate)
        cleaned: dict[str, Any] = _jsonable(body)
        return cleaned


def plan(
    settings: Settings, *, baseline: Baseline | None = None, now: datetime | None = None,
) -> tuple[list[QuerySpec], tuple[AlertRule, ...]]:
    """Every query of the core report (six, plus one per rule the shared scan does not cover:
    the drift rules), and the alert rules they evaluate."""
    rules = alert_rules(settings, baseline=baseline, now=now)
    requests = [
        QuerySpec(Q_WINDOWS, timespan=max(w.span for w in WINDOWS)),
        QuerySpec(STATUS_QUERY, status_query_params(rules), status_query_window(rules)),
        QuerySpec(Q_PROBES, timespan=PROBES_WINDOW),
        QuerySpec(Q_FRESHNESS, timespan=timedelta(hours=24)),
        QuerySpec(Q_QUOTA, timespan=timedelta(days=2)),
        QuerySpec(Q_VISION_RATE, timespan=VISION_RATE_WINDOW),
    ]
    # A rule the shared scan does not cover is still evaluated, with its own query.
    requests += [QuerySpec(r.query, r.params, r.window, key=f"alert:{r.name}")
                 for r in rules if r.name not in STATUS_QUERY_RULES]
    return requests, rules


def series_plan(history: Window, settings: Settings | None = None,
                baseline: Baseline | None = None, now: datetime | None = None) -> list[QuerySpec]:
    """The queries of one window's dashboard series (and, with ``settings``, its drift view)."""
    binned = {"binSize": history.bin_size}
    specs = [QuerySpec(Q_SERIES_REQUESTS, binned, history.span),
             QuerySpec(Q_SERIES_VISION, binned, history.span),
             QuerySpec(Q_SERIES_AVAILABILITY, binned, history.span),
             QuerySpec(Q_SERIES_DEPLOYMENTS, binned, history.span)]
    if settings is not None:
        specs += _drift_queries(settings, history, baseline or Baseline(),
                                now or datetime.now(UTC))
    return specs


def _drift_queries(
    settings: Settings, history: Window, baseline: Baseline, now: datetime
) -> list[QuerySpec]:
    """Current vs baseline distribution and the drift score over the history window."""
    params = baseline.query_params(settings.drift, now)
    start = params["baselineStart"]
    span = (start if isinstance(start, timedelta) else history.span) + timedelta(minutes=1)
    distribution = {k: v for k, v in params.items() if k != "minImages"}
    scores = {"baselineStart": params["baselineStart"], "baselineEnd": params["baselineEnd"],
              "minImages": params["minImages"], "binSize": settings.drift.window,
              "seriesWindow": history.span}
    return [QuerySpec(Q_DRIFT_DISTRIBUTION, distribution, span, key=Q_DRIFT_DISTRIBUTION),
            QuerySpec(Q_DRIFT_SERIES, scores, span, key=Q_DRIFT_SERIES)]


QuotaLoader = Callable[["Settings"], Any]
BaselineLoader = Callable[["Settings"], "Baseline"]
#: the tuning review's state for the report (``shared.ops.tuning.review.tuning_summary``)
TuningLoader = Callable[[], Mapping[str, Any] | None]


def _ask(runner: QueryRunner, requests: Sequence[QuerySpec]
         ) -> tuple[Mapping[str, QueryResult | QueryError], list[str]]:
    """Every answer, and the errors of queries that failed on their own (bad KQL).

    Raises ``StatusUnavailable`` when the backend failed us (unreachable, throttled, refused):
    then the report would be wrong, not merely incomplete, and the cache keeps the last one.
    """
    answers = runner.run_many(requests)
    backend = [a for a in answers.values()
               if isinstance(a, QueryError) and not isinstance(a, BadQueryError | QuerySkipped)]
    if backend:
        logger.warning("status: telemetry query failed (%s)", type(backend[0]).__name__)
        raise unavailable_from(backend[0]) from backend[0]
    failed = [f"{key}: {a}" for key, a in answers.items() if isinstance(a, QueryError)]
    return answers, failed


def build_status(
    settings: Settings,
    runner: QueryRunner,
    *,
    now: datetime | None = None,
    history: Window | None = None,
    quota_loader: QuotaLoader | None = None,
    tuning_loader: TuningLoader | None = None,
    baseline_loader: BaselineLoader | None = None,
) -> Status:
    """One status report; raises ``StatusUnavailable`` when telemetry cannot be asked at all."""
    now = now or datetime.now(UTC)
    baseline = _load_baseline(settings, baseline_loader)
    requests, rules = plan(settings, baseline=baseline, now=now)
    series_requests = (series_plan(history, settings, baseline, now) if history is not None
                       else [])
    # one run_many for both, so the series' queries overlap the core's
    answers, query_errors = _ask(runner, [*requests, *series_requests])

    def rows(key: str) -> list[dict[str, Any]]:
        answer = answers.get(key)
        return list(answer.rows) if isinstance(answer, QueryResult) else []

    windows = _windows(rows(Q_WINDOWS))
    probes = _probes(rows(Q_PROBES))
    telemetry = _freshness(rows(Q_FRESHNESS), settings.monitoring.freshness_max_age_s)
    quota = _quota(rows(Q_QUOTA), settings, quota_loader)
    shared_scan = answers.get(STATUS_QUERY)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for row in rows(STATUS_QUERY):
        by_rule.setdefault(str(row.get("Rule")), []).append(row)
    alerts: list[AlertState] = []
    for rule in rules:
        answer = shared_scan if rule.name in STATUS_QUERY_RULES else answers.get(
            f"alert:{rule.name}")
        if isinstance(answer, QueryError):
            alerts.append(not_evaluated(rule, str(answer)))
        elif rule.name in STATUS_QUERY_RULES:
            alerts.append(evaluate(rule, by_rule.get(rule.name, [])))
        else:
            alerts.append(evaluate(rule, answer.rows if answer is not None else []))
    telemetry = {**telemetry, "query_errors": query_errors}
    state, reasons = decide(alerts, probes, telemetry, query_errors)
    report = Status(
        state=state, reasons=tuple(reasons), checked_at=now,
        version=settings.monitoring.app_version, windows=windows, probes=probes, quota=quota,
        alerts=tuple(alerts), telemetry=telemetry, config=public_config(settings),
        tuning=_tuning(tuning_loader),
        drift=_drift(settings, baseline, now, rows if history is not None else None),
        vision_rate=_vision_rate(rows(Q_VISION_RATE), settings),
    )
    if history is not None:
        report = replace(report, series=_series(history, rows))
    return report


def build_series(runner: QueryRunner, history: Window, *, settings: Settings | None = None,
                 baseline_loader: BaselineLoader | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """One window's dashboard series; raises ``StatusUnavailable`` as ``build_status`` does.

    With ``settings``, its ``drift`` key holds the window's drift view (current vs baseline
    distribution, scores over time), which the service moves into the report's ``drift``.
    """
    now = now or datetime.now(UTC)
    baseline = _load_baseline(settings, baseline_loader) if settings is not None else None
    answers, _failed = _ask(runner, series_plan(history, settings, baseline, now))

    def rows(key: str) -> list[dict[str, Any]]:
        answer = answers.get(key)
        return list(answer.rows) if isinstance(answer, QueryResult) else []

    series = _series(history, rows)
    if settings is not None and baseline is not None:
        drift = _drift(settings, baseline, now, rows)
        series["drift"] = {k: v for k, v in drift.items() if k != "baseline"}
    return series


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


def _windows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((str(row.get("Window")), str(row.get("Scope"))), []).append(row)

    def scoped(window: str, scope: str) -> list[dict[str, Any]]:
        return by.get((window, scope), [])

    return {w.name: _window(w, functools.partial(scoped, w.name)) for w in WINDOWS}


def _window(w: Window, rows: RowsOf) -> dict[str, Any]:
    success = _first(rows("requests"))
    invocation = _first(rows("invocation"))
    vision = _first(rows("vision_call"))
    throttle = _first(rows("attempts"))
    invocations = _int(success.get("Invocations"))
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
                   for r in rows("errors")],
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


def _tuning(loader: TuningLoader | None) -> Mapping[str, Any] | None:
    """The tuning review's last review and the overlay in force; never fails the report."""
    if loader is None:
        return None
    try:
        return loader()
    except StorageError as exc:
        logger.warning("status: tuning state unreadable (%s)", exc.reason)
        return {"error": {"cause": "storage_unavailable", "message": exc.reason}}


def _quota(
    rows: list[dict[str, Any]], settings: Settings, loader: QuotaLoader | None
) -> dict[str, Any]:
    metrics = {str(r.get("metric")): r for r in rows}
    used = metrics.get(telemetry.METRIC_QUOTA_USED_RATIO, {})
    forecast = metrics.get(telemetry.METRIC_QUOTA_FORECAST_RATIO, {})
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
    """The quota check's last result, from the loader the composition root injects
    (``shared.ops.quota.read_quota_status`` over the status container); none without a loader."""
    if loader is None:
        return None
    try:
        return loader(settings)
    # The quota document lives in storage (StorageError, azure-core errors, bad JSON): whatever
    # breaks there, the quota section is optional and the report must still answer.
    except Exception as exc:
        logger.warning("status: quota status unavailable (%s)", type(exc).__name__)
        return None


def _load_baseline(settings: Settings, loader: BaselineLoader | None) -> Baseline:
    """The drift baseline ``loader`` finds (the pinned document), else the rolling one."""
    if loader is None:
        return Baseline()
    try:
        return loader(settings)
    # Like the quota document: storage trouble must not take the report down; the rolling
    # baseline is always available.
    except Exception as exc:
        logger.warning("status: drift baseline unavailable (%s); rolling", type(exc).__name__)
        return Baseline()


def _drift(
    settings: Settings, baseline: Baseline, now: datetime, rows: RowsOf | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"baseline": baseline.describe(settings.drift, now)}
    if rows is not None:
        out["distribution"] = [
            {"descriptor": str(r.get("Descriptor")), "bin": str(r.get("Bin")),
             "current_share": _num(r.get("CurrentShare")),
             "baseline_share": _num(r.get("BaselineShare"))}
            for r in rows(Q_DRIFT_DISTRIBUTION)]
        out["scores"] = [
            {"time": _iso(r.get("bin_start")), "descriptor": str(r.get("Descriptor")),
             "images": _int(r.get("Images")), "psi": _num(r.get("Psi"))}
            for r in rows(Q_DRIFT_SERIES)]
    return out


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
        # Deployment markers (the deploy workflow, python -m devstack rollout) for the charts.
        "deployments": [{"time": _iso(r.get("at")), "version": str(r.get("version") or ""),
                         "kind": str(r.get("deploy_kind") or ""),
                         "outcome": str(r.get("outcome") or "")}
                        for r in rows(Q_SERIES_DEPLOYMENTS)],
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
            "runbook": r.runbook_url, "error": a.error, "breaching": list(a.breaching)}


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
    "QueryRunner",
    "State",
    "Status",
    "StatusUnavailable",
    "Window",
    "build_series",
    "build_status",
    "decide",
    "plan",
    "public_config",
    "series_plan",
    "unavailable_from",
]
