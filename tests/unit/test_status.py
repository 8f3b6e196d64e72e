"""The status report over a fake query runner, its JSON schema, the shared report cache and
the HTTP adapters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared import composition
from shared.blueprints import status as status_bp
from shared.monitoring import status as status_mod
from shared.monitoring.alerts import STATUS_QUERY_RULES, alert_rules
from shared.monitoring.drift import Baseline
from shared.monitoring.logsquery import (
    BadQueryError,
    QueryBackendError,
    QueryError,
    QueryResult,
    QuerySpec,
    QueryThrottledError,
)
from shared.monitoring.reportcache import ReportCache
from shared.monitoring.status import (
    WINDOWS_BY_NAME,
    StatusUnavailable,
    build_status,
    plan,
    series_plan,
)
from shared.monitoring.status_service import StatusService
from shared.settings import Settings
from tests.support.polling import wait_for
from tests.support.status_answers import NOW, FakeRunner, alert_rows, healthy_answers
from tests.support.status_schema import validate
from tests.support.tuning_review import FakeStore, context

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(ENV)


def report(settings: Settings, answers: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    runner = FakeRunner(answers)
    out = build_status(settings, runner, now=NOW, quota_loader=lambda _s: None, **kwargs)
    history = kwargs.get("history")
    # six core queries and the three drift rules' own; a window's series four, its drift two
    assert runner.queries == 9 + (6 if history else 0), "nine queries per report (+6 series)"
    body = out.to_json()
    json.dumps(body, allow_nan=False)
    validate(body)
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
    assert len(body["alerts"]["rules"]) == len(alert_rules())
    assert body["drift"]["baseline"]["kind"] == "rolling"
    assert "series" not in body


def test_a_report_is_nine_single_queries_and_a_series_four(settings: Settings) -> None:
    requests, rules = plan(settings)
    assert [r.name for r in requests] == [
        "status_windows", "status_alerts", "status_probes", "status_freshness", "status_quota",
        "status_vision_rate", "drift_input", "drift_output", "drift_model_version"]
    assert len({r.key for r in requests}) == len(requests)
    assert requests[0].timespan == timedelta(hours=24)
    alerts = requests[1]
    assert alerts.timespan == max(r.window for r in rules
                                  if r.name in STATUS_QUERY_RULES) == timedelta(hours=6)
    params = dict(alerts.params or {})
    by = {r.name: r for r in rules}
    assert params["errorWindow"] == by["error-rate"].window == timedelta(minutes=5)
    assert params["errorMinRequests"] == settings.monitoring.min_requests
    assert params["throttleMinCalls"] == by["throttling"].params["minCalls"]
    assert (params["slowLong"], params["slowShort"]) == (timedelta(hours=6),
                                                         timedelta(minutes=30))
    # the drift rules compare with a baseline and keep their own queries; no other rule does
    assert {r.name for r in rules} - STATUS_QUERY_RULES == {
        "input-drift", "output-confidence-drop", "model-version-changed"}
    series = series_plan(WINDOWS_BY_NAME["24h"])
    assert [s.name for s in series] == ["status_series_requests", "status_series_vision",
                                        "status_series_availability",
                                        "status_series_deployments"]
    assert {dict(s.params or {})["binSize"] for s in series} == {timedelta(minutes=30)}


def test_a_rule_the_shared_scan_does_not_cover_runs_its_own_query(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    extra = replace(alert_rules(settings)[0], name="error-rate-copy")
    monkeypatch.setattr(status_mod, "alert_rules",
                        lambda s, **kw: (*alert_rules(s, **kw), extra))
    requests, _rules = plan(settings)
    [own] = [r for r in requests if r.key == "alert:error-rate-copy"]
    assert (own.name, own.timespan) == ("alert_error_rate", timedelta(minutes=5))
    answers = healthy_answers()
    answers["alert:error-rate-copy"] = [{"Invocations": 20, "Failed": 10, "ErrorRate": 0.5}]
    runner = FakeRunner(answers)
    body = build_status(settings, runner, now=NOW, quota_loader=lambda _s: None).to_json()
    assert body["alerts"]["active"] == ["error-rate-copy"]


def test_history_adds_series(settings: Settings) -> None:
    body = report(settings, healthy_answers(), history=WINDOWS_BY_NAME["1h"])
    series = body["series"]
    assert (series["window"], series["span"], series["bin"]) == ("1h", "PT1H", "PT2M")
    assert [p["throughput_per_min"] for p in series["requests"]] == [6.0, 6.0, 6.0]
    assert series["requests"][0]["success_rate_pct"] == 100.0
    assert series["vision"] == [{"time": "2025-03-14T12:00:00Z", "calls": 13, "throttled": 1}]


def test_severe_alert_makes_it_unhealthy(settings: Settings) -> None:
    answers = healthy_answers()
    answers["status_alerts"] = alert_rows(error_rate={"ErrorRate": 0.5, "Total": 20},
                                          throttling={"ThrottleRate": 0.3, "Total": 30})
    body = report(settings, answers)
    assert body["state"] == "unhealthy"
    assert body["alerts"]["active"] == ["error-rate", "throttling"]
    assert body["reasons"][0].startswith("alert error-rate (sev 1)")
    assert body["reasons"][1].startswith("alert throttling (sev 2)")


def test_warning_alert_stale_telemetry_or_failed_probe_degrade(settings: Settings) -> None:
    answers = healthy_answers()
    answers["status_alerts"] = alert_rows(latency_p95={"P95Ms": 9000.0, "Total": 20})
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
    answers["status_alerts"] = BadQueryError("status_alerts: SemanticError: x")
    body = report(settings, answers)
    assert body["state"] == "degraded"
    scanned = [a for a in body["alerts"]["rules"] if a["name"] in STATUS_QUERY_RULES]
    assert all(a["error"] and a["active"] is False for a in scanned)
    assert len(scanned) == 7 and len(body["alerts"]["rules"]) == 10  # + the drift rules
    assert body["telemetry"]["query_errors"] == ["status_alerts: status_alerts: SemanticError: x"]
    assert body["windows"]["15m"]["invocations"] == 90  # the other sections still answer


def test_backend_unreachable_raises_status_unavailable(settings: Settings) -> None:
    runner = FakeRunner({}, fail=QueryBackendError("status_windows: ServiceRequestError"))
    with pytest.raises(StatusUnavailable) as caught:
        build_status(settings, runner, now=NOW, quota_loader=lambda _s: None)
    body = caught.value.to_json(now=NOW, version="1.2.3")
    validate(body, "unavailable")
    assert body["error"]["cause"] == "telemetry_unreachable"
    assert "could not be reached" in body["error"]["message"]


def test_throttled_backend_raises_with_its_retry_after(settings: Settings) -> None:
    answers = healthy_answers()
    answers["status_probes"] = QueryThrottledError("status_probes: 429: busy", retry_after_s=42)
    with pytest.raises(StatusUnavailable) as caught:
        build_status(settings, FakeRunner(answers), now=NOW, quota_loader=lambda _s: None)
    assert caught.value.cause == "telemetry_throttled"
    assert caught.value.retry_after_s == 42


def test_quota_check_result_is_preferred(settings: Settings) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Quota:
        computed_at: datetime
        forecast_ratio: float

    runner = FakeRunner(healthy_answers())
    body = build_status(settings, runner, now=NOW,
                        quota_loader=lambda _s: Quota(NOW, 0.6)).to_json()
    validate(body)
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


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, settings: Settings,
          ticks: Ticks) -> Iterator[FakeRunner]:
    runner = FakeRunner(healthy_answers())
    # the settings carry a (fake) connection string: never set up an exporter in unit tests
    monkeypatch.setattr("shared.composition.ensure_telemetry", lambda: None)
    monkeypatch.setattr("shared.settings.get_settings", lambda: settings)
    cache: ReportCache[Any] = ReportCache(ttl_s=30, wait_s=5, clock=ticks)
    service = StatusService(settings, runner, cache=cache, quota_loader=lambda _s: None,
                            clock=lambda: NOW)
    monkeypatch.setattr(composition, "get_status_service", lambda: service)
    yield runner
    cache.shutdown()


def call(request: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = asyncio.run(status_bp.status(request))
    return response


def wait_until(predicate: Any, what: str) -> None:
    """Polls a background refresh (a fake: it finishes at once) with a deadline."""
    wait_for(predicate, timeout=5, interval=0.01, what=what)


def test_status_function_returns_documented_json(wired: FakeRunner) -> None:
    response = call(http("status", {"history": "1", "window": "15m"}))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = json.loads(response.get_body())
    validate(body)
    assert body["series"]["window"] == "15m"
    assert body["cache"] == {"age_s": 0.0, "stale": False, "ttl_s": 30, "error": None}
    assert response.headers["Cache-Control"] == "private, max-age=30"
    assert response.headers["Age"] == "0"


def test_callers_share_one_report_per_ttl_then_get_it_stale_while_it_refreshes(
        wired: FakeRunner, ticks: Ticks) -> None:
    for _ in range(5):
        assert call(http("status")).status_code == 200
    assert wired.queries == 9  # five callers, one report of nine queries
    ticks.now += 12
    response = call(http("status"))
    assert response.headers["Age"] == "12" and wired.queries == 9
    ticks.now += 20  # 32 s old: stale; served at once while one refresh runs
    body = json.loads(call(http("status")).get_body())
    assert body["cache"]["stale"] is True and body["cache"]["age_s"] == 32.0
    wait_until(lambda: wired.queries == 18, "the refresh")
    wait_until(lambda: not json.loads(call(http("status")).get_body())["cache"]["stale"],
               "the refreshed report")
    assert wired.queries == 18


def test_a_throttled_refresh_serves_the_last_report_stale_and_backs_off(
        wired: FakeRunner, ticks: Ticks) -> None:
    assert call(http("status")).status_code == 200
    wired.fail = QueryThrottledError("status_windows: 429: busy", retry_after_s=90)
    ticks.now += 31
    first = json.loads(call(http("status")).get_body())  # starts the refresh
    assert first["cache"]["stale"] is True
    wait_until(lambda: json.loads(call(http("status")).get_body())["cache"]["error"],
               "the throttled refresh")
    for _ in range(10):  # callers over the next 80 s: no new attempt before Retry-After
        ticks.now += 8
        response = call(http("status"))
        assert response.status_code == 200
        body = json.loads(response.get_body())
        validate(body)
        assert body["cache"]["stale"] is True
        assert body["cache"]["error"]["cause"] == "telemetry_throttled"
        assert body["state"] == "healthy"  # the last good report, as it was
        assert int(response.headers["Age"]) > 30
    assert len(wired.calls) == 2  # one throttled attempt in 80 s, not a retry storm
    ticks.now += 15  # past the 90 s Retry-After: one new attempt
    call(http("status"))
    wait_until(lambda: len(wired.calls) == 3, "the next attempt")


def test_no_report_yet_and_a_slow_backend_is_a_fast_503_pending(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    release = threading.Event()

    class Hung(FakeRunner):
        def run_many(self, items: Sequence[QuerySpec]) -> dict[str, QueryResult | QueryError]:
            release.wait(10)
            return super().run_many(items)

    monkeypatch.setattr("shared.composition.ensure_telemetry", lambda: None)
    monkeypatch.setattr("shared.settings.get_settings", lambda: settings)
    cache: ReportCache[Any] = ReportCache(ttl_s=30, wait_s=0.05)
    service = StatusService(settings, Hung(healthy_answers()), cache=cache,
                            quota_loader=lambda _s: None, clock=lambda: NOW)
    monkeypatch.setattr(composition, "get_status_service", lambda: service)
    try:
        response = call(http("status"))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        body = json.loads(response.get_body())
        validate(body, "unavailable")
        assert body["error"]["cause"] == "report_pending"
        assert cache.computations("core") == 1
        assert call(http("status")).status_code == 503
        assert cache.computations("core") == 1  # single flight: the second call waited on it
        release.set()
        wait_until(lambda: call(http("status")).status_code == 200, "the first report")
    finally:
        release.set()
        cache.shutdown()


def test_status_function_rejects_an_unknown_window(wired: FakeRunner) -> None:
    response = call(http("status", {"history": "1", "window": "7d"}))
    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["cause"] == "bad_request"


def test_status_function_answers_503_json_when_the_backend_is_down(
        wired: FakeRunner) -> None:
    wired.fail = QueryBackendError("status_windows: ServiceRequestError")
    response = call(http("status"))
    assert response.status_code == 503
    body = json.loads(response.get_body())
    validate(body, "unavailable")
    assert body["error"]["cause"] == "telemetry_unreachable"
    assert "Traceback" not in response.get_body().decode()


def test_status_function_answers_503_on_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import SettingsError

    def broken() -> Settings:
        raise SettingsError(["VISION_ENDPOINT is required"])

    monkeypatch.setattr("shared.settings.get_settings", broken)
    code, body, _headers = asyncio.run(status_bp.status_response(None, None))
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


def test_dashboard_csp_allows_only_the_pages_own_inline_blocks_by_hash() -> None:
    response = status_bp.dashboard(http("dashboard"))
    html = response.get_body().decode()
    policy = dict(d.split(" ", 1) for d in response.headers["Content-Security-Policy"].split("; "))
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert "unsafe-hashes" not in response.headers["Content-Security-Policy"]
    code = re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL)
    blocks = re.findall(r"<(script|style)>(.*?)</\1>", code, re.DOTALL)
    assert sorted(kind for kind, _ in blocks) == ["script", "style"]
    for kind, body in blocks:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert policy[f"{kind}-src"] == f"'sha256-{digest}'"
    # what the policy would block must not be in the page: no other script or style element,
    # no style or on… attributes, no javascript: URL (in markup or in generated markup)
    assert len(re.findall(r"<script\b", code)) == 1 and len(re.findall(r"<style\b", code)) == 1
    assert not re.search(r"\sstyle\s*=", code)
    assert not re.search(r"\son[a-z]+\s*=", code, re.IGNORECASE)
    assert "javascript:" not in html.lower()


def test_csp_of_a_page_follows_its_bytes() -> None:
    from shared.monitoring.dashboard import content_security_policy

    one = content_security_policy("<style>a{}</style><script>go()</script>")
    other = content_security_policy("<style>a{}</style><script>go();</script>")
    assert one != other and "style-src" in one
    assert one.split("; ")[2] == other.split("; ")[2]  # same style, same style-src
    commented = content_security_policy(
        "<!-- a <style> here --><style>a{}</style><script>go()</script>")
    assert commented == one  # a tag named in a comment is not a block
    bare = content_security_policy("<p>no code</p>")
    assert "script-src 'none'" in bare and "style-src 'none'" in bare


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


def test_the_report_carries_the_tuning_state(settings: Settings) -> None:
    from shared.errors import StorageError
    from shared.ops.tuning.policy import Overlay, pin
    from shared.ops.tuning.review import tuning_summary

    store = FakeStore()
    store.overlay = pin(Overlay(), "vision_max_retries", 2)
    ctx = context(store, [], mode="recommend")
    body = report(settings, healthy_answers(), tuning_loader=lambda: tuning_summary(ctx))
    assert body["tuning"]["mode"] == "recommend"
    assert body["tuning"]["overlay"]["effective"] == {"vision_max_retries": 2.0}
    assert body["tuning"]["last_review"] is None

    def broken() -> dict[str, Any]:
        raise StorageError("down", reason="storage_read")

    failed = report(settings, healthy_answers(), tuning_loader=broken)
    assert failed["tuning"] == {"error": {"cause": "storage_unavailable",
                                          "message": "storage_read"}}
    assert failed["state"] == body["state"]  # tuning never changes the verdict


def test_the_tuning_state_after_a_review_fits_the_schema(settings: Settings) -> None:
    from shared.ops.tuning.review import run_review, tuning_summary

    store = FakeStore()
    ctx = context(store, [], mode="apply")
    result = run_review(ctx)
    assert result is not None and result.applied
    body = report(settings, healthy_answers(), tuning_loader=lambda: tuning_summary(ctx))
    last = body["tuning"]["last_review"]
    assert last["id"] == result.id and last["applied"] == len(result.applied)
    assert {c["tunable"] for c in last["changes"]} >= {"vision_timeout_seconds"}
    assert body["tuning"]["overlay"]["pending"] == ["vision_timeout_seconds"]


def test_drift_section_names_the_baseline_and_carries_the_panels(settings: Settings) -> None:
    answers = healthy_answers()
    answers["drift_distribution"] = [
        {"Descriptor": "brightness", "Bin": "0.4", "Current": 3, "Baseline": 30,
         "CurrentShare": 0.1, "BaselineShare": 1.0},
        {"Descriptor": "brightness", "Bin": "0.1", "Current": 27, "Baseline": 0,
         "CurrentShare": 0.9, "BaselineShare": 0.0}]
    answers["drift_series"] = [{"bin_start": NOW, "Descriptor": "brightness", "Images": 30,
                                "Psi": 3.2}]
    answers["alert:input-drift"] = [{"Descriptor": "brightness", "Psi": 3.2},
                                    {"Descriptor": "format", "Psi": 0.0}]
    pinned = Baseline.pinned(NOW - timedelta(days=3), NOW - timedelta(days=2), pinned_at=NOW)
    body = report(settings, answers, history=WINDOWS_BY_NAME["1h"],
                  baseline_loader=lambda _s: pinned)
    drift = body["drift"]
    assert drift["baseline"]["kind"] == "pinned"
    assert drift["baseline"]["from"] == (NOW - timedelta(days=3)).isoformat().replace(
        "+00:00", "Z")
    assert [d["current_share"] for d in drift["distribution"]] == [0.1, 0.9]
    assert drift["scores"] == [{"time": body["checked_at"], "descriptor": "brightness",
                                "images": 30, "psi": 3.2}]
    [rule] = [r for r in body["alerts"]["rules"] if r["name"] == "input-drift"]
    assert rule["active"] and rule["breaching"] == ["brightness Psi 3.2"]
    assert "input-drift" in body["alerts"]["active"]


def test_a_failing_baseline_loader_falls_back_to_rolling(settings: Settings) -> None:
    def broken(_s: Settings) -> Baseline:
        raise OSError("storage down")

    body = report(settings, healthy_answers(), baseline_loader=broken)
    assert body["drift"]["baseline"]["kind"] == "rolling"
    assert "distribution" not in body["drift"]


def test_vision_rate_is_the_sum_of_instances_against_the_tier_limit(settings: Settings) -> None:
    answers = healthy_answers()
    answers["status_vision_rate"] = [{"instances": 3, "effective_per_second": 9.4,
                                      "reported": NOW - timedelta(seconds=30)}]
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
