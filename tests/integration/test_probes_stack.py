"""Probes and the quota check on a private local stack, driven through the local host.

Timers get a yearly schedule so they never fire by themselves; each test runs one now through
the host's admin endpoint (``POST /admin/functions/{name}``) and reads back what it reported:
availability rows through ``shared.monitoring.logsquery`` (``queries/probe_results.kql``) and the
status
documents through ``read_probe_results`` / ``read_quota_status``. Faults come from the Vision
emulator's admin API. Every wait polls with a deadline.
"""

from __future__ import annotations

import calendar
import json
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import procs
from shared.composition import status_store
from shared.monitoring.logsquery import LogsQueryRunner
from shared.ops.probes import read_probe_results
from shared.ops.quota import read_quota_status
from shared.settings import Settings
from tests.support import images
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, IMAGES, REPO_ROOT, RESULTS, PipelineStack

pytestmark = [pytest.mark.integration]

NEVER = "0 0 0 1 1 *"  # 1 January: the tests run timers through the admin endpoint instead
LOCATION = "it-local"
PROBE_FOLDER = "synthetic/probe/"
DEADLINE = 120.0
SETTINGS = {
    **BASE_SETTINGS,
    "PROBE_SCHEDULE": NEVER,
    "PROBE_E2E_SCHEDULE": NEVER,
    "QUOTA_SCHEDULE": NEVER,
    "PROBE_TIMEOUT_SECONDS": "60",  # the emulator's OCR takes seconds on a busy machine
    "PROBE_E2E_DEADLINE_SECONDS": "150",
    "PROBE_E2E_POLL_SECONDS": "0.5",
    "PROBE_RUN_LOCATION": LOCATION,
    "STATUS_CONTAINER": "status",
    "QUOTA_WARN_THRESHOLDS": "0.8,0.95",
    "PROBE_E2E_PREFIX": PROBE_FOLDER,
}
# The synthetic month fed to the Monitor emulator (see test_quota_forecast_…).
QUOTA_CALLS, THROTTLED, PEAK = 1200, 60, 3


def _quota_for_this_month() -> int:
    """A monthly quota the synthetic month overshoots (forecast ≈ 125 %), so an exhaustion
    date exists whatever day of the month the test runs."""
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    fraction = max((now - start).total_seconds(), 3600) / (
        calendar.monthrange(now.year, now.month)[1] * 86400)
    return max(1, int(QUOTA_CALLS / fraction / 1.25))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    settings = {**SETTINGS, "QUOTA_MONTHLY_CALLS": str(_quota_for_this_month())}
    state_dir = tmp_path_factory.mktemp("probes-stack")
    with PipelineStack(state_dir, settings, disabled=()) as s:  # the timers are under test
        yield s


def app_settings(stack: PipelineStack, **extra: str) -> Settings:
    e = stack.endpoints
    return Settings.from_env({
        **stack.app_environment(),
        "LOGS_QUERY_ENDPOINT": str(e["query_endpoint"]),
        "LOGS_WORKSPACE_ID": str(e["workspace_id"]),
        **extra,
    })


def invoke(base_url: str, master_key: str, function: str) -> None:
    reply = httpx.post(f"{base_url}/admin/functions/{function}", json={"input": ""},
                       headers={"x-functions-key": master_key}, timeout=10)
    assert reply.status_code == 202, reply.text


def availability_rows(stack: PipelineStack) -> list[dict[str, Any]]:
    runner = LogsQueryRunner.from_settings(app_settings(stack))
    return runner.run("probe_results", timedelta(hours=2)).rows


def next_row(stack: PipelineStack, probe: str, run: Any, *, timeout: float = DEADLINE
             ) -> dict[str, Any]:
    """Run ``run()`` and wait for the one new availability row of ``probe`` it produced."""
    before = len([r for r in availability_rows(stack) if r["Probe"] == probe])
    run()
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        rows = [r for r in availability_rows(stack) if r["Probe"] == probe]
        found[:] = rows
        return len(rows) > before

    try:
        wait_for(arrived, timeout=timeout, interval=0.5, what=f"an availability row of {probe}")
    except Exception:
        print(stack.host_log()[-4000:])
        raise
    assert len(found) == before + 1, "one availability row per run"
    return found[0]  # newest first


def run_timer(stack: PipelineStack, function: str) -> None:
    invoke(str(stack.endpoints["functions_url"]), str(stack.endpoints["master_key"]), function)


# --------------------------------------------------------------------------- quota (first: the
# Monitor emulator must hold only the synthetic month when the check runs)


def _envelope(at: datetime, result_code: str, ikey: str) -> dict[str, Any]:
    """A Vision attempt as the exporter sends shared.telemetry's CLIENT span."""
    return {
        "name": "Microsoft.ApplicationInsights.RemoteDependency", "time": at.isoformat(),
        "iKey": ikey,
        "tags": {"ai.operation.id": uuid.uuid4().hex, "ai.cloud.role": "visionops",
                 "ai.operation.name": "POST /computervision/imageanalysis:analyze"},
        "data": {"baseType": "RemoteDependencyData", "baseData": {
            "ver": 2, "name": "POST /computervision/imageanalysis:analyze",
            "id": uuid.uuid4().hex[:16], "resultCode": result_code,
            "duration": "0.00:00:00.800", "success": result_code == "200", "type": "HTTP",
            "target": "127.0.0.1:7081",
            "data": "http://127.0.0.1:7081/computervision/imageanalysis:analyze?features=read",
            "properties": {"vision.attempt": "1", "vision.features": "read",
                           "vision.throttled": str(result_code == "429")}}},
    }


def test_quota_forecast_and_exhaustion_match_a_hand_computation(stack: PipelineStack) -> None:
    monitor = str(stack.endpoints["ingestion_endpoint"]).rstrip("/")
    httpx.post(f"{monitor}/admin/reset", timeout=30).raise_for_status()
    # A synthetic month: QUOTA_CALLS admitted calls spread evenly from the start of the month
    # to a minute ago, THROTTLED 429s among them, and one second with PEAK calls.
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if now - start < timedelta(hours=1):
        pytest.skip("the first hour of a month has no history to feed")
    step = (now - timedelta(minutes=1) - start) / QUOTA_CALLS  # >= 2.95 s
    times = [start + step * i + timedelta(milliseconds=1) for i in range(QUOTA_CALLS)]
    peak_at = times[QUOTA_CALLS // 2].replace(microsecond=100_000)
    envelopes = [_envelope(t, "200", "k") for t in times[: QUOTA_CALLS - (PEAK - 1)]]
    envelopes += [_envelope(peak_at + timedelta(milliseconds=10 * i), "200", "k")
                  for i in range(PEAK - 1)]
    envelopes += [_envelope(times[i * 7] + timedelta(milliseconds=500), "429", "k")
                  for i in range(THROTTLED)]
    for i in range(0, len(envelopes), 500):
        reply = httpx.post(f"{monitor}/v2.1/track", json=envelopes[i:i + 500], timeout=30)
        assert reply.json()["itemsAccepted"] == len(envelopes[i:i + 500]), reply.text
    quota_calls, calls = QUOTA_CALLS, QUOTA_CALLS + THROTTLED

    settings = app_settings(stack)
    marker = datetime.now(UTC)
    run_timer(stack, "quota_check")
    holder: list[Any] = []

    def stored() -> bool:
        status = read_quota_status(status_store(settings))
        holder[:] = [status]
        return status is not None and status.computed_at >= marker

    wait_for(stored, timeout=DEADLINE, interval=0.5, what="the quota status document")
    status = holder[0]

    # By hand, from the moment the check ran (computed_at):
    t = status.computed_at
    month_start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(t.year, t.month)[1]
    month_end = month_start + timedelta(days=days)
    elapsed = (t - month_start).total_seconds()
    fraction = elapsed / (days * 86400)
    quota = settings.quota.monthly_calls
    forecast = quota_calls / fraction
    exhaustion = month_start + timedelta(seconds=quota * elapsed / quota_calls)

    assert (status.calls, status.quota_calls, status.throttled_calls) == (
        calls, quota_calls, THROTTLED)
    assert status.peak_tps == PEAK
    assert status.month_start == month_start and status.month_end == month_end
    assert status.forecast_calls == pytest.approx(forecast, rel=1e-9)
    assert status.forecast_ratio == pytest.approx(forecast / quota, rel=1e-9)
    assert status.used_ratio == pytest.approx(quota_calls / quota)
    assert status.throttled_ratio == pytest.approx(THROTTLED / calls)
    assert status.avg_tps == pytest.approx(calls / elapsed, rel=1e-9)
    assert exhaustion <= month_end  # the synthetic pace overshoots the quota by design
    assert status.exhaustion_at is not None
    assert abs(status.exhaustion_at - exhaustion) < timedelta(milliseconds=1)


# --------------------------------------------------------------------------- healthy probes


def test_healthy_vision_probe_reports_success_with_a_plausible_duration(
    stack: PipelineStack,
) -> None:
    row = next_row(stack, "vision-analyze", lambda: run_timer(stack, "vision_probe"))
    assert row["Success"] is True, row["Message"]
    assert row["Location"] == LOCATION
    assert 0 < row["DurationMs"] < 60_000
    assert str(row["Message"]).startswith("passed")
    kept = read_probe_results(status_store(app_settings(stack)))["vision-analyze"]
    assert kept.success and kept.run_location == LOCATION


def request_rows(stack: PipelineStack) -> list[dict[str, Any]]:
    """The analyze_image requests of blobs under the probe folder: name, synthetic or not."""
    runner = LogsQueryRunner.from_settings(app_settings(stack))
    found = runner._client.query_workspace(  # ad-hoc: per-blob rows no named query needs
        str(stack.endpoints["workspace_id"]),
        'AppRequests | where Name == "analyze_image" '
        '| extend Blob = tostring(Properties["faas.document.name"]) '
        f'| where Blob startswith "{PROBE_FOLDER}" | project Blob, SyntheticSource',
        timespan=timedelta(hours=2), enforce_https=False)
    return [{"Blob": b, "SyntheticSource": s} for b, s in found.tables[0].rows]


def test_healthy_e2e_probe_proves_the_pipeline_and_spares_user_data(
    stack: PipelineStack,
) -> None:
    """A user's blob in the probe's folder (analysed before the run, so the sweep meets it)
    survives the run with its document and counts as user traffic; the probe's own is gone."""
    user = f"{PROBE_FOLDER}customer-upload-{uuid.uuid4().hex[:8]}.png"
    user_etag = stack.upload(user, images.png_alpha())
    stack.wait_processed({user: user_etag}, timeout=DEADLINE)
    assert [d.container for d in stack.documents({user: user_etag})[user]] == [RESULTS]

    row = next_row(stack, "pipeline-e2e", lambda: run_timer(stack, "e2e_probe"),
                   timeout=DEADLINE + 60)
    assert row["Success"] is True, row["Message"]
    assert 0 < row["DurationMs"] < 150_000
    assert list(stack.container(IMAGES).list_blob_names(name_starts_with=PROBE_FOLDER)) == [user]
    assert stack.upload_etag(user) == user_etag  # the same version, untouched
    [doc] = stack.documents({user: user_etag})[user]
    assert doc.container == RESULTS and doc.body["source"]["name"] == user
    assert list(stack.container(RESULTS).list_blob_names(name_starts_with=PROBE_FOLDER)) == [
        doc.path]
    assert read_probe_results(status_store(app_settings(stack)))["pipeline-e2e"].success

    # KPIs tell the two apart by the probe's marker, not by the folder both share
    rows: list[dict[str, Any]] = []

    def both_ingested() -> bool:
        rows[:] = request_rows(stack)
        return any(r["Blob"] == user for r in rows) and any(r["Blob"] != user for r in rows)

    wait_for(both_ingested, timeout=60, interval=0.5, what="the requests of both blobs")
    mine = [r for r in rows if r["Blob"] == user]
    probes = [r for r in rows if r["Blob"] != user]
    assert len(mine) == 1 and not mine[0]["SyntheticSource"], mine
    assert probes and all(r["SyntheticSource"] for r in probes), probes


# --------------------------------------------------------------------------- faults

FAULTS = [
    ("outage-503", {"outages": [{"start_in_s": 0, "duration_s": 600, "mode": "503"}]},
     "server_error: HTTP 503"),
    ("outage-reset", {"outages": [{"start_in_s": 0, "duration_s": 600, "mode": "reset"}]},
     "unreachable:"),
    ("429-storm", {"error_rates": {"429": 1.0}, "retry_after_s": 5}, "throttled: HTTP 429"),
    ("corrupt", {"corrupt": {"rate": 1.0, "mode": "truncate"}}, "wrong_content: unreadable"),
]


@pytest.mark.parametrize(("fault", "schedule", "message"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_a_failed_row_with_its_class(
    stack: PipelineStack, fault: str, schedule: dict[str, Any], message: str
) -> None:
    stack.set_faults({"seed": 1, **schedule})
    try:
        row = next_row(stack, "vision-analyze", lambda: run_timer(stack, "vision_probe"))
    finally:
        stack.reset_faults()
    assert row["Success"] is False
    assert str(row["Message"]).startswith(message), row["Message"]
    assert row["Location"] == LOCATION
    kept = read_probe_results(status_store(app_settings(stack)))["vision-analyze"]
    assert not kept.success and kept.message == row["Message"]


PROBE_KEY = "probe-only-key-3f9c1e"


def test_wrong_probe_key_is_an_auth_failure(stack: PipelineStack, tmp_path: Path) -> None:
    """A second host on the same stack whose probe key is wrong (the pipeline key is fine)."""
    e = stack.endpoints
    port = procs.free_port()
    env = {
        **os.environ, **stack.settings,
        "AzureWebJobsStorage": str(e["storage_connection_string"]),
        "VISION_ENDPOINT": str(e["vision_endpoint"]), "VISION_KEY": str(e["vision_key"]),
        "PROBE_VISION_KEY": PROBE_KEY,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": str(e["applicationinsights_connection_string"]),
        "LOGS_QUERY_ENDPOINT": str(e["query_endpoint"]),
        "LOGS_WORKSPACE_ID": str(e["workspace_id"]),
        "AzureFunctionsWebHost__hostid": "probe-wrong-key",
        "AzureWebJobs.analyze_image.Disabled": "true",  # the stack's host owns the images
    }
    state = tmp_path / "host"
    argv = [sys.executable, "-m", "devstack.host", "--script-root", str(REPO_ROOT),
            "--port", str(port), "--state-dir", str(state)]
    proc, _ = procs.spawn("host-wrong-key", argv, log_path=tmp_path / "host.log", env=env,
                          cwd=REPO_ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.http_ok(f"{url}/") or proc.poll() is not None,
                         timeout=DEADLINE, what="second host")
        assert proc.poll() is None, (tmp_path / "host.log").read_text()
        master = str(json.loads((state / "keys.json").read_text())["masterKey"])
        row = next_row(stack, "vision-analyze", lambda: invoke(url, master, "vision_probe"))
    finally:
        procs.stop(proc.pid)
    assert row["Success"] is False
    assert str(row["Message"]).startswith("auth: HTTP 401"), row["Message"]
    # the probe's own key (a secret distinct from VISION_KEY) never leaves the process: not in
    # one stored envelope (the host flushed its telemetry on stop), not in its log
    base = str(e["ingestion_endpoint"]).rstrip("/")
    envelopes = httpx.get(f"{base}/admin/envelopes", params={"limit": 100000}, timeout=30).json()
    raw = [str(item["raw"]) for item in envelopes]
    log = (tmp_path / "host.log").read_text(errors="replace")
    assert len(raw) > 10 and "vision_probe" in log  # what was scanned is not nothing
    assert [text for text in raw if PROBE_KEY in text] == []
    assert PROBE_KEY not in log


def test_quota_check_reported_its_own_availability(stack: PipelineStack) -> None:
    rows = [r for r in availability_rows(stack) if r["Probe"] == "quota-check"]
    assert rows and rows[-1]["Success"] is True  # the check run by the first test
