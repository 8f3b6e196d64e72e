"""The Monitor emulator end to end with the real SDKs.

The real ``azure-monitor-opentelemetry`` distro (in a child process: it installs global
providers) sends spans, logs, exceptions, metrics, a custom event and an availability result to
the emulator; the real ``LogsQueryClient`` reads them back with KQL.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsBatchQuery, LogsQueryClient, LogsQueryError, LogsQueryResult

from devstack import procs
from devstack.monitor.config import DEFAULT_WORKSPACE_ID

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
IKEY = "00000000-0000-0000-0000-000000000000"

# Runs in a child interpreter: configure_azure_monitor installs process-global providers.
CHILD = r'''
import logging, os, sys
from azure.monitor.opentelemetry import configure_azure_monitor
from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.trace import SpanKind

port, ikey = sys.argv[1], sys.argv[2]
configure_azure_monitor(
    connection_string=f"InstrumentationKey={ikey};IngestionEndpoint=http://127.0.0.1:{port}/",
    enable_live_metrics=False,
    disable_offline_storage=True,
    logger_name="emulator.child",
)
log = logging.getLogger("emulator.child")
log.setLevel(logging.INFO)
tracer = trace.get_tracer("emulator.child")
meter = metrics.get_meter("emulator.child")

with tracer.start_as_current_span(
    "POST /api/analyze", kind=SpanKind.SERVER,
    attributes={"http.request.method": "POST", "url.full": "http://localhost/api/analyze",
                "http.route": "/api/analyze", "http.response.status_code": 200},
):
    with tracer.start_as_current_span(
        "POST /computervision/imageanalysis:analyze", kind=SpanKind.CLIENT,
        attributes={"http.request.method": "POST", "server.address": "vision.local",
                    "url.full": "http://vision.local/computervision/imageanalysis:analyze",
                    "http.response.status_code": 200},
    ):
        pass
    log.warning("slow image %s", "a.png", extra={"vision.blob": "a.png", "vision.attempt": 2})
    try:
        raise ValueError("bad pixels")
    except ValueError:
        log.exception("analysis failed")
    log.info("ImageAnalysed", extra={"microsoft.custom_event.name": "ImageAnalysed",
                                     "outcome": "analysed"})
log.info("probe done", extra={
    "microsoft.availability.id": "probe-1", "microsoft.availability.name": "vision-probe",
    "microsoft.availability.duration": "0.00:00:00.250",
    "microsoft.availability.success": True, "microsoft.availability.runLocation": "local",
    "microsoft.availability.message": "probe ok",
})
meter.create_counter("vision.images").add(3, {"outcome": "ok"})
latency = meter.create_histogram("vision.latency_ms")
latency.record(100)
latency.record(300)

ok = all([trace.get_tracer_provider().force_flush(30_000),
          get_logger_provider().force_flush(30_000),
          metrics.get_meter_provider().force_flush(30_000)])
sys.stdout.write("flushed\n" if ok else "flush failed\n")
sys.stdout.flush()
# Skip the exit-time shutdown: the metric reader would export the cumulative metrics a second
# time, and the test counts rows exactly.
os._exit(0 if ok else 1)
'''


class DummyCredential:
    """Any non-empty bearer token will do locally."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("local-dummy-token", int(time.time()) + 3600)


@dataclass(frozen=True)
class Emulator:
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> LogsQueryClient:
        # Plain http on loopback: every call passes enforce_https=False (local only).
        return LogsQueryClient(DummyCredential(), endpoint=f"{self.base}/v1")

    def counts(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.base}/admin/tables", timeout=10).json())


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    state = tmp_path_factory.mktemp("monitor")
    port = procs.free_port()
    _, record = procs.spawn(
        "monitor",
        [sys.executable, "-m", "devstack.monitor", "--port", str(port), "--state-dir",
         str(state)],
        log_path=state / "monitor.log", cwd=REPO_ROOT,
    )
    try:
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{port}/healthz"),
                         timeout=60, what="Monitor emulator")
        yield Emulator(port)
    finally:
        procs.stop(record.pid)


@pytest.fixture(scope="module")
def exported(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Emulator:
    """The child app's telemetry, flushed into a freshly reset emulator."""
    httpx.post(f"{emulator.base}/admin/reset", timeout=10).raise_for_status()
    script = tmp_path_factory.mktemp("child") / "emit.py"
    script.write_text(CHILD)
    env = {**os.environ, "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
           "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
           "OTEL_SERVICE_NAME": "visionops-test",
           # Keep every span: the default rate-limited sampler may drop one and counts are exact.
           "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "1.0"}
    done = subprocess.run([sys.executable, str(script), str(emulator.port), IKEY], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0 and "flushed" in done.stdout, done.stdout + done.stderr
    return emulator


def _rows(client: LogsQueryClient, kql: str) -> list[dict[str, Any]]:
    result = client.query_workspace(DEFAULT_WORKSPACE_ID, kql, timespan=None,
                                    enforce_https=False)
    assert isinstance(result, LogsQueryResult)
    table = result.tables[0]
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def test_every_table_gets_exactly_what_was_sent(exported: Emulator) -> None:
    counts = exported.counts()
    for table, expected in {"AppRequests": 1, "AppDependencies": 1, "AppTraces": 1,
                            "AppExceptions": 1, "AppEvents": 1,
                            "AppAvailabilityResults": 1}.items():
        assert counts[table] == expected, (table, counts)
    client = exported.client()
    metrics = _rows(client, "AppMetrics | where Name startswith 'vision.' "
                            "| project Name, Sum, ItemCount, Min, Max | order by Name asc")
    assert metrics == [
        {"Name": "vision.images", "Sum": 3.0, "ItemCount": 1, "Min": 3.0, "Max": 3.0},
        {"Name": "vision.latency_ms", "Sum": 400.0, "ItemCount": 2, "Min": 100.0,
         "Max": 300.0},
    ]


def test_operation_id_links_request_dependency_and_logs(exported: Emulator) -> None:
    client = exported.client()
    [request] = _rows(client, "AppRequests | project Id, Name, OperationId, ParentId, Success, "
                              "ResultCode, DurationMs, AppRoleName, Url")
    assert request["Name"] == "POST /api/analyze"
    assert request["Success"] is True and request["ResultCode"] == "200"
    assert request["AppRoleName"] == "visionops-test"
    assert request["DurationMs"] >= 0
    op = request["OperationId"]
    [dep] = _rows(client, f"AppDependencies | where OperationId == '{op}' "
                          "| project ParentId, Target, DependencyType, Success")
    assert dep["ParentId"] == request["Id"]
    assert dep["DependencyType"] == "HTTP" and dep["Target"].startswith("vision.local")
    [trace] = _rows(client, f"AppTraces | where OperationId == '{op}' | project Message, "
                            "SeverityLevel, ParentId, blob = tostring(Properties['vision.blob'])")
    assert trace == {"Message": "slow image a.png", "SeverityLevel": 2,
                     "ParentId": request["Id"], "blob": "a.png"}
    [exc] = _rows(client, f"AppExceptions | where OperationId == '{op}' "
                          "| project ExceptionType, OuterMessage, ParentId")
    assert exc["ExceptionType"] == "ValueError" and exc["ParentId"] == request["Id"]
    [event] = _rows(client, f"AppEvents | where OperationId == '{op}' "
                            "| project Name, outcome = tostring(Properties.outcome)")
    assert event == {"Name": "ImageAnalysed", "outcome": "analysed"}


def test_availability_result(exported: Emulator) -> None:
    [result] = _rows(exported.client(), "AppAvailabilityResults | project Id, Name, Location, "
                                        "Success, Message, DurationMs")
    assert result == {"Id": "probe-1", "Name": "vision-probe", "Location": "local",
                      "Success": True, "Message": "probe ok", "DurationMs": 250.0}


def test_timespan_restricts_every_table(exported: Emulator) -> None:
    client = exported.client()
    from datetime import UTC, datetime, timedelta

    recent = client.query_workspace(DEFAULT_WORKSPACE_ID, "AppRequests | count",
                                    timespan=timedelta(hours=1), enforce_https=False)
    assert isinstance(recent, LogsQueryResult) and recent.tables[0].rows[0][0] == 1
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    old = client.query_workspace(DEFAULT_WORKSPACE_ID, "AppRequests | count",
                                 timespan=(long_ago, timedelta(days=1)),
                                 enforce_https=False)
    assert isinstance(old, LogsQueryResult) and old.tables[0].rows[0][0] == 0


def test_query_batch_mixes_results_and_errors(exported: Emulator) -> None:
    results = exported.client().query_batch([
        LogsBatchQuery(DEFAULT_WORKSPACE_ID, "AppTraces | count", timespan=None),
        LogsBatchQuery(DEFAULT_WORKSPACE_ID,
                       "AppRequests | make-series n = count() on TimeGenerated step 1m",
                       timespan=None),
    ], enforce_https=False)
    assert isinstance(results[0], LogsQueryResult)
    assert results[0].tables[0].rows[0][0] == 1
    assert isinstance(results[1], LogsQueryError)
    assert results[1].code == "BadArgumentError"
    assert "MakeSeries" in results[1].message


def test_unsupported_kql_is_a_clear_error(exported: Emulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        exported.client().query_workspace(
            DEFAULT_WORKSPACE_ID, "AppRequests | make-series n = count() on TimeGenerated "
            "step 1m", timespan=None, enforce_https=False)
    assert caught.value.status_code == 400
    assert "emulator" in str(caught.value) and "MakeSeries" in str(caught.value)


def test_unknown_workspace_is_404(emulator: Emulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        emulator.client().query_workspace("11111111-1111-1111-1111-111111111111",
                                          "AppRequests | count", timespan=None,
                                          enforce_https=False)
    assert caught.value.status_code == 404


def _envelope(message: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"name": "Microsoft.ApplicationInsights.Message", "iKey": IKEY,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "tags": {"ai.operation.id": "gz" + "0" * 30},
            "data": {"baseType": "MessageData",
                     "baseData": {"ver": 2, "message": message, "severityLevel": 1}}}


def test_gzip_ingestion_and_partial_success(emulator: Emulator) -> None:
    body = gzip.compress(json.dumps([_envelope("zipped one"), _envelope("zipped two")]).encode())
    zipped = httpx.post(f"{emulator.base}/v2.1/track", content=body, timeout=10,
                        headers={"Content-Encoding": "gzip",
                                 "Content-Type": "application/json"})
    assert zipped.status_code == 200
    assert zipped.json() == {"itemsReceived": 2, "itemsAccepted": 2, "errors": []}
    broken = _envelope("half")
    del broken["time"]
    partial = httpx.post(f"{emulator.base}/v2/track", timeout=10,
                         content=json.dumps([_envelope("whole"), broken]))
    assert partial.status_code == 206
    answer = partial.json()
    assert answer["itemsReceived"] == 2 and answer["itemsAccepted"] == 1
    assert answer["errors"][0]["index"] == 1 and answer["errors"][0]["statusCode"] == 400
    rows = _rows(emulator.client(), "AppTraces | where Message in ('zipped one', 'zipped two', "
                                    "'whole', 'half') | summarize n = count()")
    assert rows == [{"n": 3}]


def test_live_metrics_ping_says_not_subscribed(emulator: Emulator) -> None:
    ping = httpx.post(f"{emulator.base}/QuickPulseService.svc/ping?ikey={IKEY}", content=b"{}",
                      timeout=10)
    assert ping.status_code == 200 and ping.headers["x-ms-qps-subscribed"] == "false"


def test_raw_envelopes_are_kept_for_scanning(exported: Emulator) -> None:
    raw = httpx.get(f"{exported.base}/admin/envelopes", params={"limit": 1000}, timeout=10)
    stored = raw.json()
    assert any(item["table"] == "AppRequests" for item in stored)
    assert all(json.loads(item["raw"]) == item["envelope"] for item in stored)
