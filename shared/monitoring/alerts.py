"""Alert rules defined once, as data: evaluated by the status endpoint, rendered into Azure.

Each ``AlertRule`` names a query file in ``queries/`` (``alert_*.kql``), the parameters bound into
it, the column it measures, how rows aggregate, the comparison, the window and frequency, the
severity and its runbook section (``docs/runbook.md``). ``alert_rules(settings)`` builds them with
the thresholds from app settings; the same objects feed

* ``evaluate(rule, rows)`` — the status endpoint evaluates every rule over the rule's window
  and reports the active ones: all in one query, ``queries/status_alerts.kql``, whose
  parameters ``status_query_params(rules)`` binds from the rules (a rule it does not cover runs
  its own query);
* ``render_alert_rules(settings)`` — the Bicep-relevant fields of one Azure Monitor scheduled query
  rule per alert (``infra/app/alerts.bicep`` consumes them).

Must never: run a query itself (callers do), or hold a threshold anywhere but here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

import isodate

from shared.monitoring.drift import ROLLING, Baseline
from shared.monitoring.logsquery import load_queries
from shared.settings import DriftSettings, MonitoringSettings, Settings

if TYPE_CHECKING:
    from shared.monitoring.logsquery import NamedQuery, ParamValue
    from shared.settings import DriftSettings, MonitoringSettings, Settings

RUNBOOK = "docs/runbook.md"


class Operator(StrEnum):
    """ARM ``scheduledQueryRules`` operators."""

    GREATER_THAN = "GreaterThan"
    GREATER_THAN_OR_EQUAL = "GreaterThanOrEqual"
    LESS_THAN = "LessThan"
    LESS_THAN_OR_EQUAL = "LessThanOrEqual"

    def holds(self, value: float, threshold: float) -> bool:
        if self is Operator.GREATER_THAN:
            return value > threshold
        if self is Operator.GREATER_THAN_OR_EQUAL:
            return value >= threshold
        if self is Operator.LESS_THAN:
            return value < threshold
        return value <= threshold


class Aggregation(StrEnum):
    """ARM ``timeAggregation`` over the rows the query returns in one evaluation."""

    MAXIMUM = "Maximum"
    MINIMUM = "Minimum"
    AVERAGE = "Average"
    TOTAL = "Total"
    COUNT = "Count"


class Severity(IntEnum):
    """Azure Monitor alert severities (0 is the most severe)."""

    CRITICAL = 0
    ERROR = 1
    WARNING = 2
    INFORMATIONAL = 3
    VERBOSE = 4


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert: a named query, a measure, a comparison, a window and what to do about it."""

    name: str
    title: str
    description: str
    query: str  # file stem in queries/
    measure: str  # column compared with the threshold ("" for Count)
    aggregation: Aggregation
    operator: Operator
    threshold: float
    window: timedelta
    frequency: timedelta
    severity: Severity
    runbook: str  # section anchor in docs/runbook.md
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    #: columns that tell the query's rows apart (e.g. which descriptor drifted): Azure splits
    #: the alert by them, status names the rows that breach
    dimensions: tuple[str, ...] = ()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK}#{self.runbook}"

    def kql(self, queries: Mapping[str, NamedQuery] | None = None) -> str:
        """The rule's query text with its parameters bound."""
        return (queries or load_queries())[self.query].render(self.params)


def alert_rules(
    settings: Settings | MonitoringSettings | None = None,
    *,
    baseline: Baseline | None = None,
    now: datetime | None = None,
) -> tuple[AlertRule, ...]:
    """Every alert rule, thresholds from ``settings`` (defaults when ``None``).

    The drift rules compare with ``baseline`` as of ``now`` (default: the rolling baseline,
    which is what the rendered Azure rules use).
    """
    m = settings if isinstance(settings, MonitoringSettings) else (
        settings.monitoring if settings is not None else MonitoringSettings())
    drift = settings.drift if isinstance(settings, Settings) else DriftSettings()
    return (*_core_rules(m), *_drift_rules(drift, baseline, now))


def _core_rules(m: MonitoringSettings) -> tuple[AlertRule, ...]:
    return (
        AlertRule(
            name="error-rate",
            title="Analysis error rate",
            description=(f"More than {m.error_rate_threshold:.1%} of analysis invocations failed"
                         " (raised for a host retry) in the last 5 minutes."),
            query="alert_error_rate", measure="ErrorRate", aggregation=Aggregation.MAXIMUM,
            operator=Operator.GREATER_THAN, threshold=m.error_rate_threshold,
            window=timedelta(minutes=5), frequency=timedelta(minutes=1),
            severity=Severity.ERROR, runbook="error-rate",
            params={"minRequests": m.min_requests},
        ),
        AlertRule(
            name="latency-p95",
            title="Analysis p95 latency above baseline",
            description=(f"p95 analysis latency above {m.latency_factor:g} x the baseline of"
                         f" {m.latency_baseline_p95_ms:g} ms in the last 5 minutes."),
            query="alert_latency_p95", measure="P95Ms", aggregation=Aggregation.MAXIMUM,
            operator=Operator.GREATER_THAN, threshold=m.latency_threshold_ms,
            window=timedelta(minutes=5), frequency=timedelta(minutes=1),
            severity=Severity.WARNING, runbook="latency-p95",
            params={"minRequests": m.min_requests},
        ),
        AlertRule(
            name="probe-availability",
            title="Probe availability",
            description=(f"A synthetic probe passed less than {m.availability_threshold_pct:g} %"
                         " of its runs in the last 15 minutes."),
            query="alert_probe_availability", measure="AvailabilityPct",
            aggregation=Aggregation.MINIMUM, operator=Operator.LESS_THAN,
            threshold=m.availability_threshold_pct,
            window=timedelta(minutes=15), frequency=timedelta(minutes=5),
            severity=Severity.ERROR, runbook="probe-availability",
        ),
        AlertRule(
            name="throttling",
            title="Vision throttling",
            description=(f"More than {m.throttle_rate_threshold:.1%} of Vision calls were"
                         " answered 429 in the last 5 minutes."),
            query="alert_throttling", measure="ThrottleRate", aggregation=Aggregation.MAXIMUM,
            operator=Operator.GREATER_THAN, threshold=m.throttle_rate_threshold,
            window=timedelta(minutes=5), frequency=timedelta(minutes=1),
            severity=Severity.WARNING, runbook="throttling",
            params={"minCalls": max(2 * m.min_requests, 1)},
        ),
        AlertRule(
            name="quota-forecast",
            title="Monthly quota forecast",
            description=(f"The month-end forecast of Vision quota use is at or above"
                         f" {m.quota_forecast_threshold:.0%} of the monthly quota."),
            query="alert_quota_forecast", measure="ForecastRatio",
            aggregation=Aggregation.MAXIMUM, operator=Operator.GREATER_THAN_OR_EQUAL,
            threshold=m.quota_forecast_threshold,
            window=timedelta(hours=6), frequency=timedelta(hours=1),
            severity=Severity.INFORMATIONAL, runbook="quota-forecast",
        ),
        _burn_rate_rule("fast", m.slo_target, 14.4, long=timedelta(hours=1),
                        short=timedelta(minutes=5), frequency=timedelta(minutes=1),
                        severity=Severity.ERROR, budget="2 % of a 30-day budget in an hour"),
        _burn_rate_rule("slow", m.slo_target, 6.0, long=timedelta(hours=6),
                        short=timedelta(minutes=30), frequency=timedelta(minutes=5),
                        severity=Severity.WARNING, budget="5 % of a 30-day budget in 6 hours"),
    )


# --------------------------------------------------------------------------- one scan for status

#: The query that evaluates the rules below for the status page in one request.
STATUS_QUERY = "status_alerts"
#: Rules ``status_alerts.kql`` evaluates (its ``Rule`` column); any other rule runs its own query.
STATUS_QUERY_RULES = frozenset({
    "error-rate", "latency-p95", "probe-availability", "throttling", "quota-forecast",
    "slo-burn-fast", "slo-burn-slow",
})


def status_query_params(rules: Sequence[AlertRule]) -> dict[str, ParamValue]:
    """``status_alerts.kql``'s parameters, bound from the rules it covers (windows, minimums)."""
    by = {r.name: r for r in rules}
    params: dict[str, ParamValue] = {}
    if "error-rate" in by:
        params |= {"errorWindow": by["error-rate"].window,
                   "errorMinRequests": by["error-rate"].params["minRequests"]}
    if "latency-p95" in by:
        params |= {"latencyWindow": by["latency-p95"].window,
                   "latencyMinRequests": by["latency-p95"].params["minRequests"]}
    if "probe-availability" in by:
        params["probeWindow"] = by["probe-availability"].window
    if "throttling" in by:
        params |= {"throttleWindow": by["throttling"].window,
                   "throttleMinCalls": by["throttling"].params["minCalls"]}
    if "quota-forecast" in by:
        params["quotaWindow"] = by["quota-forecast"].window
    for speed in ("fast", "slow"):
        rule = by.get(f"slo-burn-{speed}")
        if rule is not None:
            params |= {"slo": rule.params["slo"], f"{speed}Long": rule.params["longWindow"],
                       f"{speed}Short": rule.params["shortWindow"],
                       "burnMinRequests": rule.params["minRequests"]}
    return params


def status_query_window(rules: Sequence[AlertRule]) -> timedelta:
    """The time range ``status_alerts`` needs: the longest window of the rules it covers."""
    return max((r.window for r in rules if r.name in STATUS_QUERY_RULES),
               default=timedelta(hours=1))


def _drift_rules(
    d: DriftSettings, baseline: Baseline | None, now: datetime | None
) -> tuple[AlertRule, ...]:
    """Input drift, output-confidence drop and model-version change (docs/drift.md)."""
    baseline = baseline or Baseline()
    params = baseline.query_params(d, now or datetime.now(UTC))
    start = params["baselineStart"]
    window = start if isinstance(start, timedelta) else d.window + d.baseline
    frequency = timedelta(minutes=5)
    against = (f"the {baseline.kind} baseline" if baseline.kind != ROLLING
               else f"the previous {d.baseline_hours:g} hours")
    return (
        AlertRule(
            name="input-drift",
            title="Input image drift",
            description=(f"An image descriptor's distribution over the last {d.window_minutes}"
                         f" minutes moved from {against}: PSI at or above"
                         f" {d.psi_threshold:g}."),
            query="drift_input", measure="Psi", aggregation=Aggregation.MAXIMUM,
            operator=Operator.GREATER_THAN_OR_EQUAL, threshold=d.psi_threshold,
            window=window, frequency=frequency, severity=Severity.WARNING,
            runbook="input-drift", params=params, dimensions=("Descriptor",),
        ),
        AlertRule(
            name="output-confidence-drop",
            title="Output confidence drop",
            description=(f"A mean output confidence over the last {d.window_minutes} minutes"
                         f" is {d.confidence_drop:g} or more below {against}."),
            query="drift_output", measure="Shift", aggregation=Aggregation.MINIMUM,
            operator=Operator.LESS_THAN_OR_EQUAL, threshold=-d.confidence_drop,
            window=window, frequency=frequency, severity=Severity.WARNING,
            runbook="output-confidence-drop", params=params, dimensions=("Descriptor",),
        ),
        AlertRule(
            name="model-version-changed",
            title="Vision model version changed",
            description=(f"Vision answered with a model version in the last {d.window_minutes}"
                         f" minutes that {against} never saw (informational)."),
            query="drift_model_version", measure="Changed", aggregation=Aggregation.MAXIMUM,
            operator=Operator.GREATER_THAN_OR_EQUAL, threshold=1.0,
            window=window, frequency=frequency, severity=Severity.INFORMATIONAL,
            runbook="model-version-changed", params=params, dimensions=("Version",),
        ),
    )


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class AlertState:
    """One rule's evaluation: whether it fires, the measured value and why."""

    rule: AlertRule
    active: bool
    value: float | None
    rows: int
    error: str | None = None
    #: the dimension values of the rows that breach (e.g. the descriptors that drifted)
    breaching: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        r = self.rule
        if self.error is not None:
            return f"{r.title}: not evaluated ({self.error})"
        if self.value is None:
            return f"{r.title}: no data in the last {iso_duration(r.window)}"
        verb = "breaches" if self.active else "within"
        which = f" ({', '.join(self.breaching)})" if self.breaching else ""
        return (f"{r.title}: {r.measure} {_fmt(self.value)} {verb} "
                f"{r.operator.value} {_fmt(r.threshold)}{which}")


def evaluate(rule: AlertRule, rows: Sequence[Mapping[str, Any]]) -> AlertState:
    """Apply the rule's aggregation and comparison to the rows its query returned.

    No rows means "no data": the rule does not fire (as an Azure log alert with a measure
    column does not), which is why each query returns nothing below its minimum traffic.
    """
    value = aggregate(rule, rows)
    active = value is not None and rule.operator.holds(value, rule.threshold)
    return AlertState(rule=rule, active=active, value=value, rows=len(rows),
                      breaching=_breaching(rule, rows) if active else ())


def _breaching(rule: AlertRule, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Each breaching row's dimension values with its measure, worst first."""
    if not rule.dimensions or rule.aggregation is Aggregation.COUNT:
        return ()
    found: list[tuple[float, str]] = []
    for row in rows:
        value = _number(row.get(rule.measure))
        if value is not None and rule.operator.holds(value, rule.threshold):
            label = "/".join(str(row.get(d)) for d in rule.dimensions)
            found.append((value, f"{label} {rule.measure} {_fmt(value)}"))
    worst_first = rule.operator in (Operator.GREATER_THAN, Operator.GREATER_THAN_OR_EQUAL)
    return tuple(label for _, label in sorted(found, reverse=worst_first))


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def aggregate(rule: AlertRule, rows: Sequence[Mapping[str, Any]]) -> float | None:
    if rule.aggregation is Aggregation.COUNT:
        return float(len(rows))
    values = [float(v) for v in (row.get(rule.measure) for row in rows)
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not values:
        return None
    if rule.aggregation is Aggregation.MAXIMUM:
        return max(values)
    if rule.aggregation is Aggregation.MINIMUM:
        return min(values)
    if rule.aggregation is Aggregation.AVERAGE:
        return sum(values) / len(values)
    return sum(values)


def not_evaluated(rule: AlertRule, error: str) -> AlertState:
    return AlertState(rule=rule, active=False, value=None, rows=0, error=error)


# --------------------------------------------------------------------------- rendering


def iso_duration(delta: timedelta) -> str:
    """ISO 8601 duration as ARM expects it (``PT5M``, ``PT1H``, ``P1D``), in whole seconds.

    isodate writes it; the check is ours: a rule's window or frequency is never zero or
    negative, and isodate would happily write ``P0D`` or ``-PT5M``.
    """
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return str(isodate.duration_isoformat(timedelta(seconds=seconds)))


def _burn_rate_rule(
    speed: str, slo: float, factor: float, *, long: timedelta, short: timedelta,
    frequency: timedelta, severity: Severity, budget: str,
) -> AlertRule:
    """One tier of the multiwindow multi-burn-rate recipe: both windows burn ``factor``x."""
    return AlertRule(
        name=f"slo-burn-{speed}",
        title=f"SLO burn rate ({speed})",
        description=(f"The analysis success SLO ({slo:.3%}) burns its error budget at"
                     f" {factor:g}x or faster over both {_span(long)} and {_span(short)}"
                     f" ({budget})."),
        query="alert_burn_rate", measure="BurnRate", aggregation=Aggregation.MAXIMUM,
        operator=Operator.GREATER_THAN_OR_EQUAL, threshold=factor,
        window=long, frequency=frequency, severity=severity, runbook="slo-burn-rate",
        params={"slo": slo, "longWindow": long, "shortWindow": short, "minRequests": 1},
    )


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes % 60:
        return f"{minutes} minutes"
    hours = minutes // 60
    return "1 hour" if hours == 1 else f"{hours} hours"

def render_alert_rules(
    settings: Settings | MonitoringSettings | None = None,
    queries: Mapping[str, NamedQuery] | None = None,
) -> list[dict[str, Any]]:
    """One dict per rule, shaped like ``scheduledQueryRuleType`` in ``infra/app/alerts.bicep``."""
    out: list[dict[str, Any]] = []
    for rule in alert_rules(settings):
        criterion: dict[str, Any] = {
            "query": rule.kql(queries),
            "timeAggregation": rule.aggregation.value,
            "operator": rule.operator.value,
            "threshold": rule.threshold,
            "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1},
        }
        if rule.aggregation is not Aggregation.COUNT:
            criterion["metricMeasureColumn"] = rule.measure
        if rule.dimensions:
            criterion["dimensions"] = [{"name": d, "operator": "Include", "values": ["*"]}
                                       for d in rule.dimensions]
        out.append({
            "name": f"sqr-{rule.name}",
            "displayName": f"VisionOps: {rule.title}",
            "description": f"{rule.description} Runbook: {rule.runbook_url}",
            "severity": int(rule.severity),
            "evaluationFrequency": iso_duration(rule.frequency),
            "windowSize": iso_duration(rule.window),
            "autoMitigate": True,
            "criterion": criterion,
        })
    return out


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shared.monitoring.alerts``: print the rendered rules (defaults) as JSON."""
    del argv
    print(json.dumps(render_alert_rules(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
