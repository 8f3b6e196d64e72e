"""Envelope → Log Analytics row mapping, for envelopes shaped as the real exporter sends them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devstack.monitor.envelopes import (
    TABLES,
    Context,
    EnvelopeError,
    map_envelope,
    performance_bucket,
    severity_level,
)

CTX = Context(workspace_id="00000000-0000-4000-8000-0000000010ca", resource_id="/rid")
TAGS = {
    "ai.device.id": "vm", "ai.device.type": "Other",
    "ai.internal.sdkVersion": "ulm_py3.11.7:otel1.45.1:dst1.8.11",
    "ai.cloud.role": "visionops", "ai.cloud.roleInstance": "host-1",
    "ai.operation.id": "62ac9438eaa45a00ef64e29a3a4db02e",
}


def envelope(name: str, base_type: str, base: dict[str, Any], **tags: str) -> dict[str, Any]:
    return {
        "name": f"Microsoft.ApplicationInsights.{name}", "iKey": "ikey-1",
        "time": "2024-05-01T12:00:00.605142Z", "tags": {**TAGS, **tags},
        "data": {"baseType": base_type, "baseData": {"ver": 2, **base}},
    }


def one_row(env: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    mapped = map_envelope(env, CTX, billed_size=123)
    assert len(mapped.rows) == 1
    table, row = mapped.rows[0]
    assert set(row) == {name for name, _ in TABLES[table]}
    return table, row


def test_request_row_with_context_columns() -> None:
    table, row = one_row(envelope("Request", "RequestData", {
        "name": "POST /api/analyze", "id": "70fa7f6226be4f33", "duration": "0.00:00:00.009",
        "responseCode": "200", "success": True, "url": "http://localhost/api/analyze",
        "properties": {"vision.features": "people"}, "measurements": {"bytes": 12.0},
    }, **{"ai.operation.name": "POST /api/analyze"}))
    assert table == "AppRequests"
    assert row["TimeGenerated"] == datetime(2024, 5, 1, 12, 0, 0, 605142, tzinfo=UTC)
    assert (row["Id"], row["Name"], row["ResultCode"], row["Success"]) == (
        "70fa7f6226be4f33", "POST /api/analyze", "200", True)
    assert row["DurationMs"] == pytest.approx(9.0)
    assert row["OperationId"] == TAGS["ai.operation.id"]
    assert row["ParentId"] == row["OperationId"]  # a root operation is its own parent
    assert row["OperationName"] == "POST /api/analyze"
    assert (row["AppRoleName"], row["AppRoleInstance"]) == ("visionops", "host-1")
    assert row["SDKVersion"] == TAGS["ai.internal.sdkVersion"]
    assert row["ClientType"] == "Other" and row["ItemCount"] == 1
    assert json.loads(row["Properties"]) == {"vision.features": "people"}
    assert json.loads(row["Measurements"]) == {"bytes": 12.0}
    assert (row["TenantId"], row["_ResourceId"], row["Type"], row["IKey"]) == (
        CTX.workspace_id, "/rid", "AppRequests", "ikey-1")
    assert row["_BilledSize"] == 123.0
    assert row["SessionId"] == ""  # strings are never NULL in Kusto


def test_sample_rate_becomes_item_count() -> None:
    env = envelope("Request", "RequestData", {"id": "a", "duration": "0.00:00:00.001",
                                               "responseCode": "200", "success": True})
    env["sampleRate"] = 50.0
    assert one_row(env)[1]["ItemCount"] == 2


def test_dependency_row() -> None:
    table, row = one_row(envelope("RemoteDependency", "RemoteDependencyData", {
        "name": "POST /analyze", "id": "8037b0b7e98ff199", "resultCode": "429",
        "duration": "0.00:00:01.250", "success": False, "type": "HTTP",
        "data": "http://vision.local/analyze", "target": "vision.local",
    }, **{"ai.operation.parentId": "70fa7f6226be4f33"}))
    assert table == "AppDependencies"
    assert (row["Target"], row["DependencyType"], row["Data"], row["ResultCode"]) == (
        "vision.local", "HTTP", "http://vision.local/analyze", "429")
    assert row["Success"] is False and row["DurationMs"] == pytest.approx(1250.0)
    assert row["ParentId"] == "70fa7f6226be4f33"


def test_trace_row_with_numeric_and_named_severity() -> None:
    table, row = one_row(envelope("Message", "MessageData", {
        "message": "slow image", "severityLevel": 2, "properties": {"vision.blob": "a.png"},
    }))
    assert table == "AppTraces"
    assert (row["Message"], row["SeverityLevel"]) == ("slow image", 2)
    assert json.loads(row["Properties"]) == {"vision.blob": "a.png"}
    assert severity_level("Critical") == 4 and severity_level(None) is None
    with pytest.raises(EnvelopeError):
        severity_level(7)


def test_exception_row() -> None:
    table, row = one_row(envelope("Exception", "ExceptionData", {
        "severityLevel": 3, "properties": {},
        "exceptions": [{"typeName": "ValueError", "message": "bad pixels", "hasFullStack": True,
                        "stack": "Traceback ...\nValueError: bad pixels"}],
    }))
    assert table == "AppExceptions"
    assert (row["ExceptionType"], row["OuterType"], row["OuterMessage"], row["InnermostType"],
            row["ProblemId"], row["SeverityLevel"]) == (
        "ValueError", "ValueError", "bad pixels", "ValueError", "ValueError", 3)
    [detail] = json.loads(row["Details"])
    assert detail["type"] == "ValueError" and "Traceback" in detail["rawStack"]


def test_metric_rows_and_performance_counters() -> None:
    mapped = map_envelope(envelope("Metric", "MetricData", {
        "metrics": [{"name": "vision.latency_ms", "value": 400.0, "count": 2, "min": 100.0,
                     "max": 300.0},
                    {"name": "vision.images", "value": 3}],
        "properties": {"outcome": "ok"},
    }), CTX)
    (t1, latency), (t2, images) = mapped.rows
    assert t1 == t2 == "AppMetrics"
    assert (latency["Name"], latency["Sum"], latency["ItemCount"], latency["Min"],
            latency["Max"]) == ("vision.latency_ms", 400.0, 2, 100.0, 300.0)
    assert (images["Sum"], images["ItemCount"], images["Min"], images["Max"]) == (3.0, 1, 3, 3)
    assert json.loads(images["Properties"]) == {"outcome": "ok"}
    table, counter = one_row(envelope("Metric", "MetricData", {
        "metrics": [{"name": "\\Processor(_Total)\\% Processor Time", "value": 7.5}]}))
    assert table == "AppPerformanceCounters"
    assert (counter["Category"], counter["Counter"], counter["Instance"], counter["Value"]) == (
        "Processor", "% Processor Time", "_Total", 7.5)


def test_event_availability_and_page_view_rows() -> None:
    table, event = one_row(envelope("Event", "EventData", {
        "name": "ImageAnalysed", "properties": {"outcome": "analysed"}}))
    assert (table, event["Name"]) == ("AppEvents", "ImageAnalysed")
    table, result = one_row(envelope("Availability", "AvailabilityData", {
        "id": "probe-1", "name": "vision-probe", "duration": "0.00:00:00.250", "success": True,
        "runLocation": "local", "message": "ok"}))
    assert table == "AppAvailabilityResults"
    assert (result["Id"], result["Name"], result["Location"], result["Success"],
            result["Message"], result["DurationMs"]) == (
        "probe-1", "vision-probe", "local", True, "ok", 250.0)
    assert (result["PerformanceBucket"], result["Size"]) == ("250ms-500ms", None)
    _, sized = one_row(envelope("Availability", "AvailabilityData", {
        "id": "probe-2", "name": "vision-probe", "duration": "0.00:00:01", "success": True,
        "size": 2048}))
    assert (sized["PerformanceBucket"], sized["Size"]) == ("1sec-3sec", 2048.0)
    with pytest.raises(EnvelopeError, match="size"):
        map_envelope(envelope("Availability", "AvailabilityData", {
            "id": "p", "name": "n", "duration": "0.00:00:01", "success": True, "size": "big"}),
            CTX)
    table, view = one_row(envelope("PageView", "PageViewData", {"id": "p", "name": "home"}))
    assert table == "AppPageViews" and view["DurationMs"] is None


def test_raw_only_kinds_are_accepted_without_rows() -> None:
    perf = map_envelope(envelope("PageViewPerformance", "PageViewPerfData", {"id": "x"}), CTX)
    assert perf.rows == [] and perf.kind == "PageViewPerfData"
    stats = envelope("Metric", "MetricData", {"metrics": [{"name": "Attach", "value": 1}]})
    stats["iKey"] = "c4a29126-a7cb-47e5-b348-11414998b11e"
    assert map_envelope(stats, CTX).kind == "statsbeat"
    assert map_envelope(stats, CTX).rows == []


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda e: e.pop("time"), "'time'"),
    (lambda e: e.update(time="not a time"), "'time'"),
    (lambda e: e.pop("name"), "'name'"),
    (lambda e: e.pop("data"), "'data'"),
    (lambda e: e["data"].update(baseType="Nonsense"), "Unknown baseType"),
    (lambda e: e["data"]["baseData"].pop("duration"), "'duration'"),
    (lambda e: e["data"]["baseData"].update(duration="1.5"), "'duration'"),
    (lambda e: e["data"]["baseData"].update(success="maybe"), "'success'"),
    (lambda e: e["data"]["baseData"].update(properties=[1]), "'properties'"),
    (lambda e: e["data"]["baseData"].update(measurements={"a": "x"}), "'measurements'"),
])
def test_invalid_envelopes_name_the_problem(mutate: Any, message: str) -> None:
    env = envelope("Request", "RequestData", {"id": "a", "duration": "0.00:00:00.001",
                                               "responseCode": "200", "success": True})
    mutate(env)
    with pytest.raises(EnvelopeError, match=message):
        map_envelope(env, CTX)


def test_non_object_item_is_refused() -> None:
    with pytest.raises(EnvelopeError):
        map_envelope([1, 2], CTX)


@pytest.mark.parametrize(("duration_ms", "bucket"), [
    (0, "<250ms"), (249.9, "<250ms"), (250, "250ms-500ms"), (999, "500ms-1sec"),
    (1000, "1sec-3sec"), (6999, "3sec-7sec"), (7000, "7sec-15sec"), (15000, "15sec-30sec"),
    (30000, "30sec-1min"), (60000, "1min-2min"), (120000, "2min-5min"), (299999, "2min-5min"),
    (300000, ">=5min"), (None, ""),
])
def test_performance_buckets_have_the_service_boundaries(duration_ms: float | None,
                                                         bucket: str) -> None:
    assert performance_bucket(duration_ms) == bucket
