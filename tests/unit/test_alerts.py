"""Alert rules as data: definitions, evaluation semantics and the rendering for Bicep."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import isodate
import pytest

from shared.monitoring.alerts import (
    Aggregation,
    AlertRule,
    Operator,
    Severity,
    alert_rules,
    evaluate,
    iso_duration,
    render_alert_rules,
)
from shared.monitoring.logsquery import load_queries
from shared.settings import MonitoringSettings, Settings

REPO = Path(__file__).resolve().parents[2]
BASE_ENV = {"VISION_ENDPOINT": "http://127.0.0.1:9",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
# The fields infra/app/alerts.bicep reads from each rendered rule (scheduledQueryRuleType).
BICEP_KEYS = {"name", "displayName", "description", "severity", "evaluationFrequency",
              "windowSize", "autoMitigate", "criterion"}
CRITERION_KEYS = {"query", "timeAggregation", "metricMeasureColumn", "operator", "threshold",
                  "failingPeriods"}


def test_every_issue_alert_is_defined_once() -> None:
    rules = alert_rules()
    names = [r.name for r in rules]
    assert len(names) == len(set(names))
    assert set(names) == {"error-rate", "latency-p95", "probe-availability", "throttling",
                          "quota-forecast", "slo-burn-fast", "slo-burn-slow", "input-drift",
                          "output-confidence-drop", "model-version-changed"}


def test_each_rule_names_a_query_file_with_its_parameters_and_measure() -> None:
    queries = load_queries()
    for rule in alert_rules():
        assert rule.query in queries, rule.name
        assert (REPO / "queries" / f"{rule.query}.kql").is_file()
        assert set(rule.params) <= set(queries[rule.query].parameters), rule.name
        assert rule.measure in queries[rule.query].text, rule.name
        assert rule.window >= rule.frequency, rule.name


def test_burn_rate_rules_follow_the_multiwindow_recipe() -> None:
    rules = {r.name: r for r in alert_rules(MonitoringSettings(slo_target=0.995))}
    fast, slow = rules["slo-burn-fast"], rules["slo-burn-slow"]
    assert (fast.threshold, fast.window, fast.params["shortWindow"]) == (
        14.4, timedelta(hours=1), timedelta(minutes=5))
    assert (slow.threshold, slow.window, slow.params["shortWindow"]) == (
        6.0, timedelta(hours=6), timedelta(minutes=30))
    assert fast.params["longWindow"] == fast.window and slow.params["longWindow"] == slow.window
    assert fast.params["slo"] == slow.params["slo"] == 0.995
    assert "let slo = 0.995;" in fast.kql()
    assert "let longWindow = 21600s;" in slow.kql()


def test_thresholds_come_from_settings() -> None:
    settings = Settings.from_env({**BASE_ENV, "LATENCY_BASELINE_P95_MS": "1500",
                                  "ALERT_LATENCY_FACTOR": "3", "ALERT_ERROR_RATE_THRESHOLD": "0.2",
                                  "ALERT_AVAILABILITY_THRESHOLD_PCT": "99",
                                  "ALERT_MIN_REQUESTS": "7"})
    rules = {r.name: r for r in alert_rules(settings)}
    assert rules["latency-p95"].threshold == 4500.0
    assert rules["error-rate"].threshold == 0.2
    assert rules["error-rate"].params["minRequests"] == 7
    assert rules["probe-availability"].threshold == 99.0


def test_runbook_has_a_section_per_rule() -> None:
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^## (.+)$", runbook, re.MULTILINE)}
    for rule in alert_rules():
        assert rule.runbook in anchors, rule.runbook
        assert rule.query in runbook, f"runbook section {rule.runbook} shows {rule.query}"


def rule(**overrides: object) -> AlertRule:
    base: dict[str, object] = dict(
        name="x", title="X", description="d", query="alert_error_rate", measure="V",
        aggregation=Aggregation.MAXIMUM, operator=Operator.GREATER_THAN, threshold=1.0,
        window=timedelta(minutes=5), frequency=timedelta(minutes=1), severity=Severity.ERROR,
        runbook="x")
    base.update(overrides)
    return AlertRule(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("aggregation", "operator", "rows", "active", "value"), [
    (Aggregation.MAXIMUM, Operator.GREATER_THAN, [], False, None),  # no data never fires
    (Aggregation.MAXIMUM, Operator.GREATER_THAN, [{"V": 0.5}, {"V": 2.0}], True, 2.0),
    (Aggregation.MAXIMUM, Operator.GREATER_THAN, [{"V": 1.0}], False, 1.0),
    (Aggregation.MAXIMUM, Operator.GREATER_THAN_OR_EQUAL, [{"V": 1.0}], True, 1.0),
    (Aggregation.MINIMUM, Operator.LESS_THAN, [{"V": 0.5}, {"V": 2.0}], True, 0.5),
    (Aggregation.AVERAGE, Operator.LESS_THAN_OR_EQUAL, [{"V": 0.5}, {"V": 2.0}], False, 1.25),
    (Aggregation.TOTAL, Operator.GREATER_THAN, [{"V": 0.5}, {"V": 0.6}], True, 1.1),
    (Aggregation.COUNT, Operator.GREATER_THAN, [{"V": None}, {"V": None}], True, 2.0),
    (Aggregation.MAXIMUM, Operator.GREATER_THAN, [{"V": None}, {"V": "NaN"}], False, None),
])
def test_evaluate(aggregation: Aggregation, operator: Operator, rows: list[dict[str, object]],
                  active: bool, value: float | None) -> None:
    state = evaluate(rule(aggregation=aggregation, operator=operator), rows)
    assert state.active is active
    assert state.value == pytest.approx(value) if value is not None else state.value is None


@pytest.mark.parametrize(("delta", "iso"), [
    (timedelta(minutes=1), "PT1M"), (timedelta(minutes=5), "PT5M"), (timedelta(hours=1), "PT1H"),
    (timedelta(hours=6), "PT6H"), (timedelta(days=1), "P1D"), (timedelta(minutes=90), "PT1H30M"),
    (timedelta(seconds=30), "PT30S"),
])
def test_iso_duration(delta: timedelta, iso: str) -> None:
    assert iso_duration(delta) == iso


def _designators(seconds: int) -> str:
    """The ISO 8601 duration ARM reads, spelled out: days, then T and hours, minutes, seconds,
    each left out when zero."""
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + ("T" + time if time else "")


def test_iso_duration_over_whole_seconds_days_hours_and_minutes() -> None:
    # every second of the first two days, then whole minutes and hours out to 60 days
    values = [*range(1, 2 * 86_400 + 1), *range(2 * 86_400, 60 * 86_400 + 1, 60),
              *(d * 86_400 + h * 3600 + 1 for d in range(0, 60) for h in range(24))]
    checked = 0
    for seconds in values:
        text = iso_duration(timedelta(seconds=seconds))
        assert text == _designators(seconds), seconds
        assert isodate.parse_duration(text) == timedelta(seconds=seconds), text
        checked += 1
    assert checked == len(values) > 250_000
    assert {"P1D", "P1DT1S", "PT23H59M59S", "P59DT23H1S", "P60D"} <= {
        iso_duration(timedelta(seconds=v)) for v in (86_400, 86_401, 86_399, 59 * 86_400 + 82_801,
                                                      60 * 86_400)}


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=-300),
                                   timedelta(milliseconds=999), timedelta(days=-1)])
def test_iso_duration_refuses_what_is_not_a_positive_whole_second(delta: timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        iso_duration(delta)


def test_iso_duration_drops_a_fraction_of_a_second() -> None:
    assert iso_duration(timedelta(seconds=90, milliseconds=750)) == "PT1M30S"


def test_render_alert_rules_has_the_bicep_shape() -> None:
    rendered = render_alert_rules()
    assert len(rendered) == len(alert_rules())
    queries = load_queries()
    for item, r in zip(rendered, alert_rules(), strict=True):
        assert set(item) == BICEP_KEYS
        assert set(item["criterion"]) == CRITERION_KEYS | ({"dimensions"} if r.dimensions
                                                           else set())
        assert item["name"] == f"sqr-{r.name}"
        assert item["severity"] in range(5)
        assert re.fullmatch(r"P(\d+D)?(T(\d+H)?(\d+M)?)?", item["windowSize"]), item["windowSize"]
        assert item["windowSize"] == iso_duration(r.window)
        assert item["evaluationFrequency"].startswith("PT")
        assert "docs/runbook.md#" in item["description"]
        criterion = item["criterion"]
        assert criterion["query"] == queries[r.query].render(r.params)
        assert criterion["operator"] in {o.value for o in Operator}
        assert criterion["timeAggregation"] in {a.value for a in Aggregation}
        assert criterion["metricMeasureColumn"] == r.measure
        assert isinstance(criterion["threshold"], float)


def test_drift_rules_name_the_rows_that_breach_and_split_by_them_in_azure() -> None:
    rules = {r.name: r for r in alert_rules()}
    drift = rules["input-drift"]
    rows = [{"Descriptor": "brightness", "Psi": 1.9}, {"Descriptor": "format", "Psi": 0.01},
            {"Descriptor": "sharpness", "Psi": 0.7}]
    state = evaluate(drift, rows)
    assert state.active and state.value == 1.9
    assert state.breaching == ("brightness Psi 1.9", "sharpness Psi 0.7")
    assert "(brightness Psi 1.9, sharpness Psi 0.7)" in state.summary
    assert evaluate(drift, rows[1:2]).breaching == ()
    drop = evaluate(rules["output-confidence-drop"],
                    [{"Descriptor": "word_confidence_mean", "Shift": -0.12},
                     {"Descriptor": "model_version", "Shift": None}])
    assert drop.active and drop.breaching == ("word_confidence_mean Shift -0.12",)
    [rendered] = [r for r in render_alert_rules() if r["name"] == "sqr-input-drift"]
    assert rendered["criterion"]["dimensions"] == [
        {"name": "Descriptor", "operator": "Include", "values": ["*"]}]
    assert rendered["windowSize"] == "P7DT15M"


def test_drift_rules_follow_a_pinned_baseline() -> None:
    from datetime import UTC, datetime

    from shared.monitoring.drift import Baseline

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    pinned = Baseline.pinned(datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 27, tzinfo=UTC),
                             pinned_at=now)
    rules = {r.name: r for r in alert_rules(None, baseline=pinned, now=now)}
    params = rules["input-drift"].params
    assert params["baselineStart"] == timedelta(days=11, hours=12)
    assert params["baselineEnd"] == timedelta(days=4, hours=12)
    assert rules["input-drift"].window == timedelta(days=11, hours=12)
    assert "pinned baseline" in rules["model-version-changed"].description
