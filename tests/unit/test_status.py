"""The status report over a fake batch runner, its JSON schema, and the HTTP adapters."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared import status as status_mod
from shared.blueprints import status as status_bp
from shared.logsquery import BatchQuery, QueryBackendError, QueryError, QueryResult
from shared.settings import Settings
from shared.status import (
    WINDOWS_BY_NAME,
    StatusUnavailable,
    build_status,
    plan,
)
from tests.e2e.status_schema import SCHEMA, validate

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
SECRET_KEY = "vision-key-that-must-never-appear-0123456789"
ENV = {
    "VISION_ENDPOINT": "https://secret-name.cognitiveservices.azure.com",
    "VISION_KEY": SECRET_KEY,
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=acct;"
                           "AccountKey=c2VjcmV0LWFjY291bnQta2V5LXZhbHVl;EndpointSuffix=x",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=ikey-1234-5678-abcd;"
                                             "IngestionEndpoint=https://ingest.example/",
    "LOGS_WORKSPACE_ID": "00000000-0000-4000-8000-0000000010ca",
    "APP_VERSION": "1.2.3",
}


# --------------------------------------------------------------------------- a fake runner


def result(name: str, rows: list[dict[str, Any]]) -> QueryResult:
    return QueryResult(name=name, columns=tuple(rows[0]) if rows else (), rows=rows)


class FakeRunner:
    """Answers each request from canned rows; records every round trip."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]] | QueryError],
                 fail: QueryError | None = None) -> None:
        self.answers = answers
        self.fail = fail
        self.calls: list[Sequence[BatchQuery]] = []

    def run_batch(self, items: Sequence[BatchQuery]) -> dict[str, QueryResult | QueryError]:
        self.calls.append(items)
        if self.fail is not None:
            raise self.fail
        out: dict[str, QueryResult | QueryError] = {}
        for r in items:
            key = r.key or r.name
            answer = self.answers.get(key, self.answers.get(r.name, []))
            out[key] = answer if isinstance(answer, QueryError) else result(r.name, answer)
        return out


def healthy_answers() -> dict[str, list[dict[str, Any]] | QueryError]:
    answers: dict[str, list[dict[str, Any]] | QueryError] = {}
    for name, n in (("15m", 90), ("1h", 360), ("24h", 8640)):
        answers[f"success_rate:{name}"] = [{
            "Invocations": n, "Succeeded": n - 1, "Failed": 1, "Analyzed": n - 3, "Rejected": 2,
            "Duplicates": 0, "SuccessRatePct": round(100 * (n - 1) / n, 3), "AnalyzedPct": 0.0}]
        answers[f"analysis_latency:{name}"] = [
            {"Scope": "invocation", "Count": n, "P50Ms": 800.0, "P95Ms": 1200.0, "P99Ms": 1500.0,
             "AvgMs": 850.0, "MaxMs": 2000.0},
            {"Scope": "vision_call", "Count": n, "P50Ms": 600.0, "P95Ms": 900.0, "P99Ms": 1000.0,
             "AvgMs": 650.0, "MaxMs": 1800.0}]
        answers[f"throttle_rate:{name}"] = [{"Calls": n + 2, "Throttled": 2, "Operations": n,
                                             "ThrottledOperations": 2, "ThrottleRatePct": 2.0}]
        answers[f"error_breakdown:{name}"] = [
            {"Outcome": "rejected", "ErrorClass": "invalid_input", "Reason": "invalid_image",
             "StatusCode": "", "ServiceCode": "", "Count": 2},
            {"Outcome": "failed", "ErrorClass": "transient", "Reason": "server_error",
             "StatusCode": "503", "ServiceCode": "", "Count": 1}]
    answers["status_probes"] = [
        {"probe": "vision", "runs": 288, "passed": 288, "availability_pct": 100.0,
         "last_time": NOW - timedelta(minutes=2), "last_success": True,
         "last_duration_ms": 900.0, "last_message": "passed", "last_location": "westeurope"}]
    answers["status_freshness"] = [
        {"table_name": "AppRequests", "newest": NOW - timedelta(seconds=70), "age_s": 70.0},
        {"table_name": "AppMetrics", "newest": NOW - timedelta(seconds=40), "age_s": 40.0}]
    answers["status_quota"] = [
        {"metric": "quota.used_ratio", "value": 0.25, "reported": NOW - timedelta(hours=1)},
        {"metric": "quota.forecast_ratio", "value": 0.5, "reported": NOW - timedelta(hours=1)}]
    answers["alert:error-rate"] = [{"Invocations": 20, "Failed": 0, "ErrorRate": 0.0}]
    answers["alert:latency-p95"] = [{"Analyzed": 20, "P95Ms": 1200.0}]
    answers["alert:probe-availability"] = [{"Probe": "vision", "Runs": 3, "Passed": 3,
                                            "AvailabilityPct": 100.0}]
    answers["alert:throttling"] = [{"Calls": 30, "Throttled": 0, "ThrottleRate": 0.0}]
    answers["alert:quota-forecast"] = [{"ForecastRatio": 0.5, "Reported": NOW}]
    answers["alert:slo-burn-fast"] = [{"BurnRate": 0.0}]
    answers["alert:slo-burn-slow"] = [{"BurnRate": 0.5}]
    answers["status_series_requests"] = [
        {"bin_start": NOW - timedelta(minutes=4 - i), "requests": 12, "failed": 0,
         "success_rate": 1.0, "p50_ms": 800.0, "p95_ms": 1100.0} for i in range(3)]
    answers["status_series_vision"] = [{"bin_start": NOW, "calls": 13, "throttled": 1}]
    answers["status_series_availability"] = [{"bin_start": NOW, "runs": 2, "passed": 2,
                                              "availability_pct": 100.0}]
    return answers


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(ENV)


def report(settings: Settings, answers: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    runner = FakeRunner(answers)
    out = build_status(settings, runner, now=NOW, quota_loader=lambda _s: None, **kwargs)
    assert len(runner.calls) == 1, "one telemetry round trip per report"
    body = out.to_json()
    json.dumps(body, allow_nan=False)
    validate(body, SCHEMA)
    return body


# --------------------------------------------------------------------------- the report


def test_healthy_report_maps_every_number(settings: Settings) -> None:
    body = report(settings, healthy_answers())
    assert body["state"] == "healthy" and body["reasons"] == []
    assert body["version"] == "1.2.3"
    w = body["windows"]["15m"]
    assert (w["invocations"], w["failed"], w["rejected"]) == (90, 1, 2)
    assert w["success_rate_pct"] == round(100 * 89 / 90, 3)
    assert w["throughput_per_min"] == 6.0
    assert w["latency_ms"] == {"p50": 800.0, "p95": 1200.0, "p99": 1500.0}
    assert w["vision_latency_ms"]["p95"] == 900.0
    assert (w["vision_calls"], w["throttled"], w["throttle_rate_pct"]) == (92, 2, 2.0)
    assert [e["reason"] for e in w["errors"]] == ["invalid_image", "server_error"]
    assert body["windows"]["24h"]["throughput_per_min"] == 6.0
    assert body["probes"]["availability_pct"] == 100.0
    assert body["probes"]["results"][0]["last_time"] == "2025-03-14T11:58:00Z"
    assert body["telemetry"]["age_s"] == 40.0 and body["telemetry"]["fresh"] is True
    assert (body["quota"]["used_ratio"], body["quota"]["forecast_ratio"]) == (0.25, 0.5)
    assert body["quota"]["source"] == "telemetry"
    assert body["alerts"]["active"] == []
    assert len(body["alerts"]["rules"]) == 7
    assert "series" not in body


def test_the_batch_holds_every_query_once_per_window(settings: Settings) -> None:
    requests, rules = plan(settings, history=WINDOWS_BY_NAME["24h"])
    keys = [r.key for r in requests]
    assert len(keys) == len(set(keys))
    for w, span in (("15m", 15), ("1h", 60), ("24h", 1440)):
        for q in ("success_rate", "analysis_latency", "throttle_rate", "error_breakdown"):
            [item] = [r for r in requests if r.key == f"{q}:{w}"]
            assert item.timespan == timedelta(minutes=span)
    for rule in rules:
        [item] = [r for r in requests if r.key == f"alert:{rule.name}"]
        assert (item.name, item.timespan, dict(item.params or {})) == (
            rule.query, rule.window, dict(rule.params))
    series = [r for r in requests if r.name.startswith("status_series_")]
    assert {dict(r.params or {})["binSize"] for r in series} == {timedelta(minutes=30)}


def test_history_adds_series(settings: Settings) -> None:
    body = report(settings, healthy_answers(), history=WINDOWS_BY_NAME["1h"])
    series = body["series"]
    assert (series["window"], series["span"], series["bin"]) == ("1h", "PT1H", "PT2M")
    assert [p["throughput_per_min"] for p in series["requests"]] == [6.0, 6.0, 6.0]
    assert series["requests"][0]["success_rate_pct"] == 100.0
    assert series["vision"] == [{"time": "2025-03-14T12:00:00Z", "calls": 13, "throttled": 1}]


def test_severe_alert_makes_it_unhealthy(settings: Settings) -> None:
    answers = healthy_answers()
    answers["alert:error-rate"] = [{"Invocations": 20, "Failed": 10, "ErrorRate": 0.5}]
    answers["alert:throttling"] = [{"Calls": 30, "Throttled": 9, "ThrottleRate": 0.3}]
    body = report(settings, answers)
    assert body["state"] == "unhealthy"
    assert body["alerts"]["active"] == ["error-rate", "throttling"]
    assert body["reasons"][0].startswith("alert error-rate (sev 1)")
    assert body["reasons"][1].startswith("alert throttling (sev 2)")


def test_warning_alert_stale_telemetry_or_failed_probe_degrade(settings: Settings) -> None:
    answers = healthy_answers()
    answers["alert:latency-p95"] = [{"Analyzed": 20, "P95Ms": 9000.0}]
    assert report(settings, answers)["state"] == "degraded"

    answers = healthy_answers()
    answers["status_freshness"] = [{"table_name": "AppRequests",
                                    "newest": NOW - timedelta(hours=2), "age_s": 7200.0}]
    body = report(settings, answers)
    assert body["state"] == "degraded"
    assert body["reasons"] == ["telemetry is stale: newest row is 7200 s old"]

    answers = healthy_answers()
    answers["status_probes"] = [{**healthy_answers()["status_probes"][0],  # type: ignore[dict-item]
                                 "last_success": False, "last_message": "auth: 401"}]
    body = report(settings, answers)
    assert body["state"] == "degraded"
    assert body["reasons"] == ["probe vision failed its last run: auth: 401"]


def test_no_telemetry_at_all_is_degraded_not_a_crash(settings: Settings) -> None:
    body = report(settings, {})
    assert body["state"] == "degraded"
    assert body["reasons"] == ["no telemetry in the last 24 h"]
    assert body["windows"]["1h"]["success_rate_pct"] is None
    assert body["windows"]["1h"]["throughput_per_min"] == 0.0


def test_one_broken_query_degrades_and_is_named(settings: Settings) -> None:
    answers = healthy_answers()
    answers["alert:throttling"] = QueryBackendError("alert_throttling: SemanticError: x")
    body = report(settings, answers)
    assert body["state"] == "degraded"
    throttling = next(a for a in body["alerts"]["rules"] if a["name"] == "throttling")
    assert throttling["error"] and throttling["active"] is False
    assert body["telemetry"]["query_errors"] == [
        "alert:throttling: alert_throttling: SemanticError: x"]


def test_backend_unreachable_raises_status_unavailable(settings: Settings) -> None:
    runner = FakeRunner({}, fail=QueryBackendError("batch: ServiceRequestError"))
    with pytest.raises(StatusUnavailable) as caught:
        build_status(settings, runner, now=NOW, quota_loader=lambda _s: None)
    body = caught.value.to_json(now=NOW, version="1.2.3")
    validate(body, SCHEMA["$defs"]["unavailable"])
    assert body["error"]["cause"] == "telemetry_unreachable"
    assert "could not be reached" in body["error"]["message"]


def test_quota_check_result_is_preferred(settings: Settings) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Quota:
        computed_at: datetime
        forecast_ratio: float

    runner = FakeRunner(healthy_answers())
    body = build_status(settings, runner, now=NOW,
                        quota_loader=lambda _s: Quota(NOW, 0.6)).to_json()
    validate(body, SCHEMA)
    assert body["quota"]["source"] == "quota_check"
    assert body["quota"]["details"] == {"computed_at": "2025-03-14T12:00:00Z",
                                        "forecast_ratio": 0.6}


def test_config_has_tunables_and_no_secret(settings: Settings) -> None:
    body = report(settings, healthy_answers())
    text = json.dumps(body)
    for secret in (SECRET_KEY, "c2VjcmV0LWFjY291bnQta2V5LXZhbHVl", "ikey-1234-5678-abcd",
                   "secret-name", "AccountKey", "InstrumentationKey", "ingest.example"):
        assert secret not in text
    config = body["config"]
    assert config["vision"]["tier"] == "S1"
    assert config["vision"]["features"] == ["read", "people", "smartCrops"]
    assert config["alerts"]["slo_target"] == 0.99


# --------------------------------------------------------------------------- HTTP adapters


def http(route: str, params: dict[str, str] | None = None) -> func.HttpRequest:
    return func.HttpRequest(method="GET", url=f"http://localhost/api/{route}", body=b"",
                            params=params or {}, headers={})


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> FakeRunner:
    runner = FakeRunner(healthy_answers())
    # the settings carry a (fake) connection string: never set up an exporter in unit tests
    monkeypatch.setattr("shared.runtime.ensure_telemetry", lambda: None)
    monkeypatch.setattr("shared.settings.get_settings", lambda: settings)
    monkeypatch.setattr(status_mod, "get_batch_runner", lambda: runner)
    monkeypatch.setattr(status_mod, "_load_quota", lambda _s, _l: None)
    return runner


def test_status_function_returns_documented_json(wired: FakeRunner) -> None:
    response = status_bp.status(http("status", {"history": "1", "window": "15m"}))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = json.loads(response.get_body())
    validate(body, SCHEMA)
    assert body["series"]["window"] == "15m"


def test_status_function_rejects_an_unknown_window(wired: FakeRunner) -> None:
    response = status_bp.status(http("status", {"history": "1", "window": "7d"}))
    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["cause"] == "bad_request"


def test_status_function_answers_503_json_when_the_backend_is_down(
        wired: FakeRunner) -> None:
    wired.fail = QueryBackendError("batch: ServiceRequestError")
    response = status_bp.status(http("status"))
    assert response.status_code == 503
    body = json.loads(response.get_body())
    validate(body, SCHEMA["$defs"]["unavailable"])
    assert body["error"]["cause"] == "telemetry_unreachable"
    assert "Traceback" not in response.get_body().decode()


def test_status_function_answers_503_on_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import SettingsError

    def broken() -> Settings:
        raise SettingsError(["VISION_ENDPOINT is required"])

    monkeypatch.setattr("shared.settings.get_settings", broken)
    code, body = status_bp.status_response(None, None)
    assert code == 503
    assert body["error"] == {"cause": "invalid_settings",
                             "message": "VISION_ENDPOINT is required"}


def test_health_is_minimal(wired: FakeRunner) -> None:
    response = status_bp.health(http("health"))
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok"}
    assert wired.calls == []  # no telemetry query behind the anonymous endpoint


def test_dashboard_is_self_contained() -> None:
    response = status_bp.dashboard(http("dashboard"))
    assert response.status_code == 200
    html = response.get_body().decode()
    assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    # no URL to anywhere but our own relative endpoints
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "fetch(`status?" in html
    for chart in ("latency", "success", "throughput", "availability", "quota", "rate", "errors"):
        assert f'data-chart="{chart}"' in html


def test_function_app_registers_the_status_functions() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("status_test_function_app",
                                                  REPO / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bindings = {f.get_function_name(): json.loads(f.get_function_json())["bindings"][0]
                for f in module.app.get_functions()}
    assert bindings["status"]["authLevel"].upper() == "FUNCTION"
    assert bindings["status"]["route"] == "status"
    assert bindings["dashboard"]["authLevel"].upper() == "FUNCTION"
    assert bindings["health"]["authLevel"].upper() == "ANONYMOUS"
    assert bindings["health"]["methods"] == ["GET"]


def test_vision_rate_is_the_sum_of_instances_against_the_tier_limit(settings: Settings) -> None:
    answers = healthy_answers()
    answers["status_vision_rate"] = [{"instances": 3, "effective_per_second": 9.4,
                                      "reported": NOW - timedelta(seconds=30)}]  # fmt: skip
    rate = report(settings, answers)["vision_rate"]
    assert (rate["mode"], rate["instances"], rate["effective_per_second"]) == ("adaptive", 3, 9.4)
    assert rate["tier_limit_per_second"] == 10.0 and rate["share_of_limit"] == 0.94
    assert rate["reported_at"] == "2025-03-14T11:59:30Z"
    [item] = [r for r in plan(settings)[0] if r.name == "status_vision_rate"]
    assert item.timespan == timedelta(minutes=5)


def test_no_rate_gauge_yet_says_so(settings: Settings) -> None:
    rate = report(settings, healthy_answers())["vision_rate"]
    assert (rate["instances"], rate["effective_per_second"], rate["share_of_limit"]) == (
        0, None, None)
