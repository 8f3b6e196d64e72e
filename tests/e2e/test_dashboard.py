"""The dashboard in a real browser (Debian chromium driven by npm playwright-core).

On a populated stack — real images analysed through the host (real exporter telemetry) plus an
hour of synthetic history injected into the Monitor emulator — the dashboard must render every
chart with data points, fetch nothing but our own origin, run under a CSP without
'unsafe-inline' that reports no violation while the page works and does refuse an injected
inline handler, and leave a screenshot in artifacts/.
Chromium is a system package (``apt-get install -y chromium``); the test fails, never skips,
when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from devstack import gate
from tests.support import telemetry_gen as gen
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, PipelineStack

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("dashboard.mjs")
ARTIFACTS = REPO / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHARTS = ("latency", "success", "throughput", "availability", "quota", "errors")
SETTINGS = {**BASE_SETTINGS, "APP_VERSION": "e2e"}
SAMPLES = ("invoice.jpg", "dock-sign.png", "astronaut.png")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with PipelineStack(tmp_path_factory.mktemp("dashboard-stack"), SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def populated(stack: PipelineStack) -> PipelineStack:
    uploaded = stack.upload_all((name, (REPO / "samples" / name).read_bytes())
                                for name in SAMPLES)
    stack.wait_processed(uploaded, timeout=240)
    now = datetime.now(UTC)
    history = gen.Traffic(per_minute=2).envelopes(now - timedelta(minutes=58),
                                                  now - timedelta(minutes=1))
    # a few rejected uploads and one short Vision incident, so the error chart has bars
    history += [gen.request(now - timedelta(minutes=20 + i), duration_ms=150.0,
                            outcome="rejected", error_class="invalid_input",
                            reason="invalid_image") for i in range(3)]
    history += [gen.request(now - timedelta(minutes=30, seconds=10 * i), duration_ms=400.0,
                            outcome="failed", success=False, error_class="transient",
                            reason="server_error") for i in range(2)]
    base = str(stack.endpoints["ingestion_endpoint"]).rstrip("/")
    assert gen.MonitorEmulator(base).post(history) == len(history)
    # A deployment marker 40 minutes ago, sent the way the deploy workflow and the local
    # rollout send it.
    connection = str(stack.endpoints["applicationinsights_connection_string"])
    gate.send_marker(connection, gate.marker_envelope(
        connection, "e2e-v2", kind="deploy", outcome="promoted", previous="e2e",
        now=now - timedelta(minutes=40)))
    # A cold instance answers its first status call 503 report_pending until the first report is
    # built (the page retries at Retry-After, but the browser logs the 503); the test is about
    # rendering, so it warms the instance's report cache the way a first visitor would.
    url = f"{stack.endpoints['functions_url']}/api/status"
    params = {"history": "1", "window": "1h", "code": str(stack.endpoints["function_key"])}
    wait_for(lambda: httpx.get(url, params=params, timeout=30).status_code == 200, timeout=120,
             what="the first status report")
    return stack


def test_dashboard_renders_every_chart_with_data(populated: PipelineStack) -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
        "scripts/test does this before the suite")
    node = shutil.which("node")
    assert node, "Node.js is needed for playwright-core"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    functions_url = str(populated.endpoints["functions_url"])
    url = f"{functions_url}/api/dashboard?code={populated.endpoints['function_key']}"
    run = subprocess.run([node, str(SCRIPT), url, str(screenshot)], cwd=REPO,
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == []  # console errors include every CSP refusal chromium logs
    assert result["csp"] and "unsafe-inline" not in result["csp"], result["csp"]
    assert "script-src 'sha256-" in result["csp"] and "style-src 'sha256-" in result["csp"]
    assert result["violations"] == []
    assert result["banner"] not in ("rgba(0, 0, 0, 0)", "transparent")  # the style block applied
    # the control: an inline handler injected after rendering is refused, and reported
    assert result["probe_ran"] is False
    assert [v["directive"] for v in result["probe_violations"]][:1] in (
        ["script-src"], ["script-src-attr"]), result["probe_violations"]
    for chart in CHARTS:
        info = result["charts"][chart]
        assert info["points"] > 0 and info["marks"] > 0, (chart, info)
    assert result["charts"]["latency"]["points"] >= 10  # an hour of 2-minute bins
    # The deployment marker is drawn on every time chart.
    for chart in ("latency", "success", "throughput", "availability"):
        assert result["charts"][chart]["deployments"] == ["e2e-v2"], (chart, result["charts"])
    origin = urlsplit(functions_url).netloc
    assert all(urlsplit(u).netloc == origin for u in result["requests"]), result["requests"]
    assert any("/api/status?" in u for u in result["requests"])
    assert result["state"] in ("healthy", "degraded", "unhealthy")
    assert screenshot.stat().st_size > 10_000
