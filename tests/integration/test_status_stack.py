"""``/api/status`` and ``/api/health`` on the real local stack (host, Monitor emulator, SDKs).

A known set of envelopes goes straight into the Monitor emulator (timestamps in the last ten
minutes, so every window sees all of them); the status function — through the local host, the
real ``LogsQueryClient`` and its single queries — must report exactly those numbers. Then the
Monitor emulator is stopped: the cached report is still served (fresh or marked stale), and a
report that was never computed answers a JSON 503 naming the cause.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack import procs
from tests.support import telemetry_gen as gen
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, PipelineStack
from tests.support.status_schema import validate

pytestmark = pytest.mark.integration

# Timers off: a probe or quota run would add rows to the known set.
SETTINGS = {**BASE_SETTINGS, "APP_VERSION": "test-1"}
STATUS_TIMEOUT = 120.0

ANALYZED_MS = [1000.0 + 50 * i for i in range(20)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with PipelineStack(tmp_path_factory.mktemp("status-stack"), SETTINGS) as s:
        yield s


def monitor_base(stack: PipelineStack) -> str:
    return str(stack.endpoints["ingestion_endpoint"]).rstrip("/")


def known_run(now: datetime) -> list[dict[str, Any]]:
    """20 analysed (4 after one 429), 3 failed (503), 2 rejected; 6 probe runs, 1 failed.

    All within the last 4 minutes, so even the 5-minute alert windows see every row (with a
    minute of slack for a slow status request).
    """
    out: list[dict[str, Any]] = []
    t0 = now - timedelta(minutes=4)
    for i, ms in enumerate(ANALYZED_MS):
        t = t0 + timedelta(seconds=11 * i)
        if i < 4:
            out.append(gen.vision_call(t, status=429, duration_ms=10.0))
        out.append(gen.vision_call(t, status=200, duration_ms=ms - 100, attempt=2 if i < 4 else 1))
        out.append(gen.request(t, duration_ms=ms, outcome="analyzed"))
    for i in range(3):
        t = t0 + timedelta(seconds=30 + 40 * i)
        out.append(gen.vision_call(t, status=503, duration_ms=40.0))
        out.append(gen.request(t, duration_ms=300.0, outcome="failed", success=False,
                               error_class="transient", reason="server_error"))
    for i in range(2):
        out.append(gen.request(t0 + timedelta(seconds=45 + i), duration_ms=200.0,
                               outcome="rejected", error_class="invalid_input",
                               reason="invalid_image"))
    for i, ok in enumerate((True, False, True, True)):
        out.append(gen.availability(t0 + timedelta(seconds=40 * i), probe="vision", success=ok,
                                    message="passed" if ok else "server_error: 503"))
    for i in range(2):
        out.append(gen.availability(t0 + timedelta(seconds=60 * i + 20), probe="end_to_end",
                                    success=True))
    out.append(gen.gauge(t0, "quota.used_ratio", 0.3))
    out.append(gen.gauge(t0, "quota.forecast_ratio", 0.6))
    # probe traffic (synthetic) must not count in user KPIs
    out.append(gen.request(t0, duration_ms=99_000.0, outcome="analyzed", synthetic=True))
    return out


def get_status(stack: PipelineStack, **params: str) -> httpx.Response:
    return httpx.get(f"{stack.endpoints['functions_url']}/api/status",
                     params=params, timeout=STATUS_TIMEOUT)


def computed_status(stack: PipelineStack, **params: str) -> httpx.Response:
    """The answer once the report is computed: a first call may be told it is pending."""
    answer: list[httpx.Response] = []

    def settled() -> bool:
        res = get_status(stack, **params)
        answer[:] = [res]
        return not (res.status_code == 503 and res.json()["error"]["cause"] == "report_pending")

    wait_for(settled, timeout=STATUS_TIMEOUT, interval=0.5, what="the first report")
    return answer[0]


def rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def test_status_needs_a_function_key(stack: PipelineStack) -> None:
    assert get_status(stack).status_code == 401
    assert get_status(stack, code="not-the-key").status_code == 401


def test_health_is_anonymous_and_minimal(stack: PipelineStack) -> None:
    res = httpx.get(f"{stack.endpoints['functions_url']}/api/health", timeout=30)
    assert res.status_code == 200
    assert res.json() == {"status": "ok"}


def test_status_reports_the_known_run(stack: PipelineStack) -> None:
    base = monitor_base(stack)
    httpx.post(f"{base}/admin/reset", timeout=30).raise_for_status()
    envelopes = known_run(datetime.now(UTC))
    assert gen.MonitorEmulator(base).post(envelopes) == len(envelopes)

    res = computed_status(stack, code=str(stack.endpoints["function_key"]), history="1",
                          window="15m")
    assert res.status_code == 200, res.text
    body = res.json()
    validate(body)
    assert body["version"] == "test-1"
    for name, minutes in (("15m", 15), ("1h", 60), ("24h", 1440)):
        w = body["windows"][name]
        assert (w["invocations"], w["succeeded"], w["failed"]) == (25, 22, 3), name
        assert (w["analyzed"], w["rejected"]) == (20, 2), name
        assert w["success_rate_pct"] == 88.0
        assert w["throughput_per_min"] == round(25 / minutes, 4)
        assert w["latency_ms"]["p50"] == rank(ANALYZED_MS, 50)
        assert w["latency_ms"]["p95"] == rank(ANALYZED_MS, 95)
        assert (w["vision_calls"], w["throttled"]) == (27, 4)
        assert w["throttle_rate_pct"] == round(100 * 4 / 27, 3)
        assert {(e["outcome"], e["reason"], e["count"]) for e in w["errors"]} == {
            ("failed", "server_error", 3), ("rejected", "invalid_image", 2)}
    probes = {p["probe"]: p for p in body["probes"]["results"]}
    assert (probes["vision"]["runs"], probes["vision"]["passed"]) == (4, 3)
    assert probes["vision"]["last_success"] is True
    assert probes["end_to_end"]["availability_pct"] == 100.0
    assert body["probes"]["availability_pct"] == round(100 * 5 / 6, 3)
    assert (body["quota"]["used_ratio"], body["quota"]["forecast_ratio"]) == (0.3, 0.6)
    assert body["telemetry"]["fresh"] is True and body["telemetry"]["query_errors"] == []
    # 3 of 25 failed (12 % > 5 %; burn rate 12: below 14.4, above 6), 4 of 27 calls throttled
    # (14.8 % > 10 %), probe availability 5/6 (83 % < 90 %); p95 1900 ms < 2 x 3000 ms
    assert set(body["alerts"]["active"]) == {"error-rate", "throttling", "probe-availability",
                                             "slo-burn-slow"}
    assert body["state"] == "unhealthy"
    assert sum(p["requests"] for p in body["series"]["requests"]) == 25
    assert sum(p["throttled"] for p in body["series"]["vision"]) == 4


def test_dashboard_needs_a_key_and_is_html(stack: PipelineStack) -> None:
    url = f"{stack.endpoints['functions_url']}/api/dashboard"
    assert httpx.get(url, timeout=30).status_code == 401
    res = httpx.get(url, params={"code": str(stack.endpoints["function_key"])}, timeout=30)
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in res.headers["content-security-policy"]


def test_backend_down_is_a_json_503(stack: PipelineStack) -> None:
    """Last: stops this stack's Monitor emulator (the process `devstack up` recorded)."""
    state = json.loads((stack.state_dir / "stack.json").read_text())
    assert procs.stop(int(state["processes"]["monitor"]["pid"]))
    cached = get_status(stack, code=str(stack.endpoints["function_key"]))
    assert cached.status_code == 200  # the report computed above, fresh or marked stale
    validate(cached.json())
    res = computed_status(stack, code=str(stack.endpoints["function_key"]), history="1",
                          window="24h")  # a series never computed: nothing to fall back on
    assert res.status_code == 503
    assert res.headers["content-type"].startswith("application/json")
    body = res.json()
    validate(body, "unavailable")
    assert body["error"]["cause"] == "telemetry_unreachable"
    assert "Traceback" not in res.text
