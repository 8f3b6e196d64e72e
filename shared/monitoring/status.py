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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.monitoring.alerts import (
    STATUS_QUERY,
    STATUS_QUERY_RULES,
    AlertRule,
    AlertState,
    alert_rules,
    evaluate,
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
from shared.monitoring.status_sections import (
    PROBES_WINDOW,
    Q_DRIFT_DISTRIBUTION,
    Q_DRIFT_SERIES,
    Q_FRESHNESS,
    Q_PROBES,
    Q_QUOTA,
    Q_SERIES_AVAILABILITY,
    Q_SERIES_DEPLOYMENTS,
    Q_SERIES_REQUESTS,
    Q_SERIES_VISION,
    Q_VISION_RATE,
    Q_WINDOWS,
    VISION_RATE_WINDOW,
    WINDOWS,
    WINDOWS_BY_NAME,
    BaselineLoader,
    QuotaLoader,
    TuningLoader,
    Window,
    alert_json,
    drift_section,
    freshness_section,
    iso_text,
    jsonable,
    load_baseline_or_rolling,
    probes_section,
    public_config,
    quota_section,
    series_section,
    tuning_section,
    vision_rate_section,
    windows_section,
)

if TYPE_CHECKING:
    from shared.settings import Settings

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


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
        return {"state": "unknown", "checked_at": iso_text(now), "version": version,
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
            "checked_at": iso_text(self.checked_at),
            "version": self.version,
            "windows": {k: dict(v) for k, v in self.windows.items()},
            "probes": dict(self.probes),
            "quota": dict(self.quota),
            "alerts": {"active": [a.rule.name for a in self.active_alerts],
                       "rules": [alert_json(a) for a in self.alerts]},
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
        cleaned: dict[str, Any] = jsonable(body)
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
    baseline = load_baseline_or_rolling(settings, baseline_loader)
    requests, rules = plan(settings, baseline=baseline, now=now)
    series_requests = (series_plan(history, settings, baseline, now) if history is not None
                       else [])
    # one run_many for both, so the series' queries overlap the core's
    answers, query_errors = _ask(runner, [*requests, *series_requests])

    def rows(key: str) -> list[dict[str, Any]]:
        answer = answers.get(key)
        return list(answer.rows) if isinstance(answer, QueryResult) else []

    windows = windows_section(rows(Q_WINDOWS))
    probes = probes_section(rows(Q_PROBES))
    telemetry = freshness_section(rows(Q_FRESHNESS), settings.monitoring.freshness_max_age_s)
    quota = quota_section(rows(Q_QUOTA), settings, quota_loader)
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
        tuning=tuning_section(tuning_loader),
        drift=drift_section(settings, baseline, now, rows if history is not None else None),
        vision_rate=vision_rate_section(rows(Q_VISION_RATE), settings),
    )
    if history is not None:
        report = replace(report, series=series_section(history, rows))
    return report


def build_series(runner: QueryRunner, history: Window, *, settings: Settings | None = None,
                 baseline_loader: BaselineLoader | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """One window's dashboard series; raises ``StatusUnavailable`` as ``build_status`` does.

    With ``settings``, its ``drift`` key holds the window's drift view (current vs baseline
    distribution, scores over time), which the service moves into the report's ``drift``.
    """
    now = now or datetime.now(UTC)
    baseline = load_baseline_or_rolling(settings, baseline_loader) if settings is not None else None
    answers, _failed = _ask(runner, series_plan(history, settings, baseline, now))

    def rows(key: str) -> list[dict[str, Any]]:
        answer = answers.get(key)
        return list(answer.rows) if isinstance(answer, QueryResult) else []

    series = series_section(history, rows)
    if settings is not None and baseline is not None:
        drift = drift_section(settings, baseline, now, rows)
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


__all__ = [
    "CLIENT_OPTIONS",
    "WINDOWS",
    "WINDOWS_BY_NAME",
    "BaselineLoader",
    "QueryRunner",
    "QuotaLoader",
    "State",
    "Status",
    "StatusUnavailable",
    "TuningLoader",
    "Window",
    "build_series",
    "build_status",
    "decide",
    "plan",
    "public_config",
    "series_plan",
    "unavailable_from",
]
