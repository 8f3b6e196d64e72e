"""Application Insights envelopes → rows of the Log Analytics workspace tables.

The shapes here are what ``azure-monitor-opentelemetry-exporter`` sends to ``/v2.1/track``
(``TelemetryItem`` with ``data.baseType`` / ``data.baseData``) and what a workspace-based
Application Insights resource shows in Log Analytics (``AppRequests``, ``AppDependencies`` …,
columns as in the Azure Monitor table reference). Pure functions, no I/O: an invalid envelope
raises :class:`EnvelopeError`, whose message becomes the per-item error of the track response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from devstack.monitor.timeparse import parse_ai_duration, parse_instant

# --- table shapes ---------------------------------------------------------------------------

#: (column, DuckDB type). Strings are never NULL in Kusto, so string columns default to "".
Column = tuple[str, str]

_HEAD: Final[list[Column]] = [("TenantId", "VARCHAR"), ("TimeGenerated", "TIMESTAMPTZ")]


def _context(*, measurements: bool = True, item_count: bool = True) -> list[Column]:
    cols: list[Column] = [("Properties", "JSON")]
    if measurements:
        cols.append(("Measurements", "JSON"))
    cols += [(name, "VARCHAR") for name in (
        "OperationName", "OperationId", "ParentId", "SyntheticSource", "SessionId", "UserId",
        "UserAuthenticatedId", "UserAccountId", "AppVersion", "AppRoleName", "AppRoleInstance",
        "ClientType", "ClientModel", "ClientOS", "ClientIP", "ClientCity",
        "ClientStateOrProvince", "ClientCountryOrRegion", "ClientBrowser", "ResourceGUID",
        "IKey", "SDKVersion",
    )]
    if item_count:
        cols.append(("ItemCount", "INTEGER"))
    cols += [("SourceSystem", "VARCHAR"), ("Type", "VARCHAR"), ("_ResourceId", "VARCHAR"),
             ("_SubscriptionId", "VARCHAR"), ("_BilledSize", "DOUBLE"), ("_IsBillable", "VARCHAR")]
    return cols


def _s(*names: str) -> list[Column]:
    return [(name, "VARCHAR") for name in names]


TABLES: Final[dict[str, list[Column]]] = {
    "AppRequests": [*_HEAD, *_s("Id", "Source", "Name", "Url"), ("Success", "BOOLEAN"),
                    *_s("ResultCode"), ("DurationMs", "DOUBLE"), *_s("PerformanceBucket"),
                    *_s("ReferencedItemId", "ReferencedType"), *_context()],
    "AppDependencies": [*_HEAD, *_s("Id", "Target", "DependencyType", "Name", "Data"),
                        ("Success", "BOOLEAN"), *_s("ResultCode"), ("DurationMs", "DOUBLE"),
                        *_s("PerformanceBucket", "ReferencedItemId", "ReferencedType"),
                        *_context()],
    "AppTraces": [*_HEAD, *_s("Message"), ("SeverityLevel", "INTEGER"),
                  *_s("ReferencedItemId", "ReferencedType"), *_context()],
    "AppExceptions": [*_HEAD, *_s("ProblemId", "HandledAt", "ExceptionType", "Assembly",
                                  "Method", "OuterType", "OuterMessage", "OuterAssembly",
                                  "OuterMethod", "InnermostType", "InnermostMessage",
                                  "InnermostAssembly", "InnermostMethod"),
                      ("SeverityLevel", "INTEGER"), ("Details", "JSON"), *_s("Message"),
                      *_context()],
    "AppMetrics": [*_HEAD, *_s("Name"), ("Sum", "DOUBLE"), ("Min", "DOUBLE"), ("Max", "DOUBLE"),
                   *_context(measurements=False)],
    "AppEvents": [*_HEAD, *_s("Name"), *_context()],
    "AppAvailabilityResults": [*_HEAD, *_s("Id", "Name", "Location"), ("Success", "BOOLEAN"),
                               *_s("Message"), ("Size", "DOUBLE"), ("DurationMs", "DOUBLE"),
                               *_s("PerformanceBucket"), *_context()],
    "AppPageViews": [*_HEAD, *_s("Id", "Name", "Url"), ("DurationMs", "DOUBLE"),
                     *_s("PerformanceBucket"), *_context()],
    "AppPerformanceCounters": [*_HEAD, *_s("Name", "Category", "Counter", "Instance"),
                               ("Value", "DOUBLE"),
                               *_context(measurements=False, item_count=False)],
    # Tables every workspace-based Application Insights resource has, even when nothing writes
    # them; here nothing ever does (browser SDK, system events), so they stay empty.
    "AppBrowserTimings": [*_HEAD, *_s("Name", "Url"), *[(n, "DOUBLE") for n in (
        "ProcessingDurationMs", "TotalDurationMs", "NetworkDurationMs", "SendDurationMs",
        "ReceiveDurationMs")], *_s("PerformanceBucket"), *_context()],
    "AppSystemEvents": [*_HEAD, *_s("EventType", "Name"), *_context()],
}

#: Tables of the workspace itself, present (and empty: no agent or subscription feeds this
#: emulator) so that the queries every workspace answers also run here. Columns as in the
#: Azure Monitor table reference, the ones queries use; the hidden ``_*`` columns are left out.
WORKSPACE_TABLES: Final[dict[str, list[Column]]] = {
    "AzureActivity": [*_HEAD, *_s(
        "OperationName", "OperationNameValue", "Level", "ActivityStatus", "ActivityStatusValue",
        "ActivitySubstatus", "ActivitySubstatusValue", "ResourceGroup", "SubscriptionId",
        "CorrelationId", "Caller", "CallerIpAddress", "Category", "CategoryValue", "HTTPRequest",
        "Properties", "EventSubmissionTimestamp", "Authorization", "ResourceId",
        "ResourceProvider", "ResourceProviderValue", "Resource", "EventDataId", "Hierarchy",
        "SourceSystem", "Type", "_ResourceId"),
        ("Properties_d", "JSON"), ("Authorization_d", "JSON"), ("Claims_d", "JSON")],
    "Heartbeat": [*_HEAD, *_s(
        "SourceSystem", "Computer", "ComputerIP", "ComputerPrivateIPs", "Category",
        "ComputerEnvironment", "OSType", "OSName", "OSMajorVersion", "OSMinorVersion",
        "Version", "SCAgentChannel", "IsGatewayInstalled", "RemoteIPCountry",
        "ManagementGroupName", "SourceComputerId", "Solutions", "VMUUID", "SubscriptionId",
        "ResourceGroup", "ResourceProvider", "Resource", "ResourceId", "ResourceType",
        "ComputerAgentId", "Type", "_ResourceId"),
        ("RemoteIPLongitude", "DOUBLE"), ("RemoteIPLatitude", "DOUBLE")],
    "Usage": [*_HEAD, *_s("Computer", "SourceSystem", "DataType", "Solution",
                          "QuantityUnit", "ResourceUri", "LinkedResourceUri", "MeterId",
                          "LinkedMeterId", "Type"),
              ("StartTime", "TIMESTAMPTZ"), ("EndTime", "TIMESTAMPTZ"),
              ("Quantity", "DOUBLE"), ("IsBillable", "BOOLEAN"),
              ("BatchesWithinSla", "BIGINT"), ("BatchesOutsideSla", "BIGINT"),
              ("BatchesCapped", "BIGINT"), ("TotalBatches", "BIGINT"),
              ("AvgLatencyInSeconds", "DOUBLE")],
}

#: The upper bound (exclusive, ms) of each ``PerformanceBucket`` the service files durations
#: under, as Application Insights' own SDKs compute it; past the last one: ``>=5min``.
PERFORMANCE_BUCKETS: Final[tuple[tuple[float, str], ...]] = (
    (250, "<250ms"), (500, "250ms-500ms"), (1_000, "500ms-1sec"), (3_000, "1sec-3sec"),
    (7_000, "3sec-7sec"), (15_000, "7sec-15sec"), (30_000, "15sec-30sec"),
    (60_000, "30sec-1min"), (120_000, "1min-2min"), (300_000, "2min-5min"),
)


def performance_bucket(duration_ms: float | None) -> str:
    """The ``PerformanceBucket`` of a duration; empty (Kusto's null string) without one."""
    if duration_ms is None:
        return ""
    for upper, name in PERFORMANCE_BUCKETS:
        if duration_ms < upper:
            return name
    return ">=5min"

#: Envelope tag → column (``ContextTagKeys`` of the exporter).
TAG_COLUMNS: Final[dict[str, str]] = {
    "ai.operation.id": "OperationId",
    "ai.operation.parentId": "ParentId",
    "ai.operation.name": "OperationName",
    "ai.operation.syntheticSource": "SyntheticSource",
    "ai.session.id": "SessionId",
    "ai.user.id": "UserId",
    "ai.user.authUserId": "UserAuthenticatedId",
    "ai.user.accountId": "UserAccountId",
    "ai.application.ver": "AppVersion",
    "ai.cloud.role": "AppRoleName",
    "ai.cloud.roleInstance": "AppRoleInstance",
    "ai.device.type": "ClientType",
    "ai.device.model": "ClientModel",
    "ai.device.osVersion": "ClientOS",
    "ai.location.ip": "ClientIP",
    "ai.location.city": "ClientCity",
    "ai.location.province": "ClientStateOrProvince",
    "ai.location.country": "ClientCountryOrRegion",
    "ai.internal.sdkVersion": "SDKVersion",
}

#: Instrumentation keys of the SDK's own usage statistics ("statsbeat"). Accepted if they are
#: ever pointed here, kept only in ``RawEnvelopes``: they are not the application's telemetry.
STATSBEAT_IKEYS: Final[frozenset[str]] = frozenset({
    "c4a29126-a7cb-47e5-b348-11414998b11e",
    "7dc56bab-3c0c-4e9f-9ebb-d1acadee8d0f",
})

#: Base types accepted but kept only in ``RawEnvelopes`` (no workspace table here).
RAW_ONLY_BASE_TYPES: Final[frozenset[str]] = frozenset({"PageViewPerfData"})

_SEVERITY: Final[dict[str, int]] = {
    "verbose": 0, "information": 1, "warning": 2, "error": 3, "critical": 4,
}


Rows = list[tuple[str, dict[str, Any]]]
#: ``common(table, item_count=None)``: a row of ``table`` with the envelope-wide columns filled.
CommonRow = Callable[..., dict[str, Any]]
Builder = Callable[[Mapping[str, Any], str, CommonRow], Rows]


class EnvelopeError(ValueError):
    """An envelope the service would refuse (answered as a per-item 400)."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """One accepted envelope: its time and the rows it becomes (none for raw-only kinds)."""

    time: datetime
    kind: str
    rows: Rows = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Context:
    """What every row gets from the emulator rather than from the envelope."""

    workspace_id: str
    resource_id: str


# --- helpers --------------------------------------------------------------------------------

def _require(obj: Mapping[str, Any], key: str, where: str) -> Any:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value):
        raise EnvelopeError(f"Field '{key}' on type '{where}' is required but missing or empty.")
    return value


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _bool(value: Any, key: str, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise EnvelopeError(f"Field '{key}' on type '{where}' must be a boolean, not {value!r}.")


def _duration_ms(obj: Mapping[str, Any], where: str, *, required: bool = True) -> float | None:
    value = obj.get("duration")
    if value is None and not required:
        return None
    if value is None:
        raise EnvelopeError(f"Field 'duration' on type '{where}' is required but missing.")
    try:
        return parse_ai_duration(str(value))
    except ValueError as exc:
        raise EnvelopeError(f"Field 'duration' on type '{where}': {exc}.") from exc


def _json_map(value: Any, key: str, where: str, *, numbers: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise EnvelopeError(f"Field '{key}' on type '{where}' must be an object.")
    if numbers and any(isinstance(v, bool) or not isinstance(v, int | float)
                       for v in value.values()):
        raise EnvelopeError(f"Field '{key}' on type '{where}' must map names to numbers.")
    return json.dumps(dict(value), ensure_ascii=False, sort_keys=True)


def severity_level(value: Any) -> int | None:
    """The exporter sends 0..4; older SDKs send the names (``"Warning"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise EnvelopeError(f"severityLevel {value!r} is not a severity")
    if isinstance(value, int) and 0 <= value <= 4:
        return value
    if isinstance(value, str):
        if value.isdigit() and 0 <= int(value) <= 4:
            return int(value)
        if value.lower() in _SEVERITY:
            return _SEVERITY[value.lower()]
    raise EnvelopeError(f"severityLevel {value!r} is not one of Verbose..Critical (0..4)")


def _item_count(envelope: Mapping[str, Any]) -> int:
    rate = envelope.get("sampleRate")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate <= 100:
        return max(1, round(100.0 / rate))
    return 1


def _split_counter(name: str) -> tuple[str, str, str]:
    r"""``\Processor(_Total)\% Processor Time`` → category, counter, instance."""
    parts = name.strip("\\").split("\\", 1)
    category, counter = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    instance = ""
    if category.endswith(")") and "(" in category:
        category, _, instance = category[:-1].partition("(")
    return category, counter, instance


def is_performance_counter(name: str) -> bool:
    """Breeze files metrics named like Windows performance counters under performanceCounters."""
    return name.startswith("\\") and name.count("\\") >= 2


# --- the mapping ----------------------------------------------------------------------------

def map_envelope(envelope: Any, ctx: Context, *, billed_size: int = 0) -> Mapped:
    """Validate one envelope and turn it into rows. Raises :class:`EnvelopeError`."""
    if not isinstance(envelope, Mapping):
        raise EnvelopeError("Telemetry item must be a JSON object.")
    _require(envelope, "name", "Envelope")
    time_text = _require(envelope, "time", "Envelope")
    try:
        time = parse_instant(str(time_text))
    except ValueError as exc:
        raise EnvelopeError(f"Field 'time' on type 'Envelope' is invalid: {exc}.") from exc
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        raise EnvelopeError("Field 'data' on type 'Envelope' is required but missing or empty.")
    base_type = _require(data, "baseType", "Data")
    base = data.get("baseData")
    if not isinstance(base, Mapping):
        raise EnvelopeError("Field 'baseData' on type 'Data' is required but missing or empty.")
    tags = envelope.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise EnvelopeError("Field 'tags' on type 'Envelope' must be an object.")
    ikey = _str(envelope.get("iKey"))
    if ikey.lower() in STATSBEAT_IKEYS:
        return Mapped(time=time, kind="statsbeat")
    if base_type in RAW_ONLY_BASE_TYPES:
        return Mapped(time=time, kind=str(base_type))
    builder = _BUILDERS.get(str(base_type))
    if builder is None:
        raise EnvelopeError(f"Unknown baseType '{base_type}'.")

    def common(table: str, *, item_count: int | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {name: ("" if kind == "VARCHAR" else None)
                               for name, kind in TABLES[table]}
        for tag, column in TAG_COLUMNS.items():
            if tag in tags and column in row:
                row[column] = _str(tags[tag])
        # The service fills these when the SDK does not: a root operation is its own parent.
        row["ParentId"] = row["ParentId"] or row["OperationId"]
        row["ClientIP"] = row["ClientIP"] or "0.0.0.0"
        row["ClientType"] = row["ClientType"] or "PC"
        row.update(
            TenantId=ctx.workspace_id, TimeGenerated=time, IKey=ikey, SourceSystem="Azure",
            Type=table, _ResourceId=ctx.resource_id, _BilledSize=float(billed_size),
            _IsBillable="true",
        )
        if "ItemCount" in row:
            row["ItemCount"] = item_count if item_count is not None else _item_count(envelope)
        if "Properties" in row:
            row["Properties"] = _json_map(base.get("properties"), "properties", str(base_type))
        if "Measurements" in row:
            row["Measurements"] = _json_map(base.get("measurements"), "measurements",
                                            str(base_type), numbers=True)
        return row

    rows = builder(base, str(base_type), common)
    return Mapped(time=time, kind=str(base_type), rows=rows)


def _request(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppRequests")
    row.update(
        Id=_str(_require(base, "id", where)), Name=_str(base.get("name")),
        Url=_str(base.get("url")), Source=_str(base.get("source")),
        Success=_bool(_require(base, "success", where), "success", where),
        ResultCode=_str(_require(base, "responseCode", where)),
        DurationMs=_duration_ms(base, where),
    )
    row["PerformanceBucket"] = performance_bucket(row["DurationMs"])
    return [("AppRequests", row)]


def _dependency(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppDependencies")
    success = _bool(base.get("success"), "success", where)
    row.update(
        Id=_str(base.get("id")), Name=_str(_require(base, "name", where)),
        Target=_str(base.get("target")), DependencyType=_str(base.get("type")),
        Data=_str(base.get("data")), ResultCode=_str(base.get("resultCode")),
        Success=True if success is None else success, DurationMs=_duration_ms(base, where),
    )
    row["PerformanceBucket"] = performance_bucket(row["DurationMs"])
    return [("AppDependencies", row)]


def _message(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppTraces")
    message = base.get("message")
    if not isinstance(message, str):
        raise EnvelopeError(f"Field 'message' on type '{where}' is required but missing.")
    row.update(Message=message, SeverityLevel=severity_level(base.get("severityLevel")))
    return [("AppTraces", row)]


def _frame(detail: Mapping[str, Any]) -> tuple[str, str]:
    stack = detail.get("parsedStack")
    if isinstance(stack, list) and stack and isinstance(stack[0], Mapping):
        return _str(stack[0].get("assembly")), _str(stack[0].get("method"))
    return "", ""


def _exception(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    details = base.get("exceptions")
    if not isinstance(details, list) or not details or not all(
        isinstance(d, Mapping) for d in details
    ):
        raise EnvelopeError(f"Field 'exceptions' on type '{where}' is required but missing.")
    for detail in details:
        _require(detail, "typeName", "ExceptionDetails")
        if not isinstance(detail.get("message"), str):
            raise EnvelopeError(
                "Field 'message' on type 'ExceptionDetails' is required but missing."
            )
    outer = next((d for d in details if d.get("outerId") in (None, 0, "0")), details[0])
    inner = details[-1]
    outer_assembly, outer_method = _frame(outer)
    inner_assembly, inner_method = _frame(inner)
    exc_type = _str(outer.get("typeName"))
    problem_id = _str(base.get("problemId")) or (
        f"{exc_type} at {outer_method}" if outer_method else exc_type
    )
    shaped = []
    for detail in details:
        item: dict[str, Any] = {
            "id": _str(detail.get("id")), "outerId": _str(detail.get("outerId") or 0),
            "type": _str(detail.get("typeName")), "message": _str(detail.get("message")),
            "severityLevel": None,
        }
        if detail.get("parsedStack") is not None:
            item["parsedStack"] = detail.get("parsedStack")
        else:
            item["rawStack"] = _str(detail.get("stack"))
        shaped.append(item)
    row = common("AppExceptions")
    row.update(
        ProblemId=problem_id, ExceptionType=exc_type, Assembly=outer_assembly,
        Method=outer_method, OuterType=exc_type, OuterMessage=_str(outer.get("message")),
        OuterAssembly=outer_assembly, OuterMethod=outer_method,
        InnermostType=_str(inner.get("typeName")), InnermostMessage=_str(inner.get("message")),
        InnermostAssembly=inner_assembly, InnermostMethod=inner_method,
        SeverityLevel=severity_level(base.get("severityLevel")),
        Details=json.dumps(shaped, ensure_ascii=False), Message=_str(outer.get("message")),
    )
    return [("AppExceptions", row)]


def _number(point: Mapping[str, Any], key: str, *, required: bool = False) -> float | None:
    value = point.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeError(f"Field '{key}' on type 'DataPoint' must be a number.")
    return float(value)


def _metric(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    points = base.get("metrics")
    if not isinstance(points, list) or not points:
        raise EnvelopeError(f"Field 'metrics' on type '{where}' is required but missing.")
    rows: Rows = []
    for point in points:
        if not isinstance(point, Mapping):
            raise EnvelopeError("Field 'metrics' on type 'MetricData' must hold objects.")
        name = _str(_require(point, "name", "DataPoint"))
        value = _number(point, "value", required=True)
        count = point.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise EnvelopeError("Field 'count' on type 'DataPoint' must be an integer.")
        if is_performance_counter(name):
            category, counter, instance = _split_counter(name)
            row = common("AppPerformanceCounters")
            row.update(Name=counter, Category=category, Counter=counter, Instance=instance,
                       Value=value)
            rows.append(("AppPerformanceCounters", row))
            continue
        row = common("AppMetrics", item_count=count if count is not None else 1)
        row.update(Name=name, Sum=value, Min=_number(point, "min"), Max=_number(point, "max"))
        if row["Min"] is None and (count is None or count == 1):
            row["Min"] = row["Max"] = value
        rows.append(("AppMetrics", row))
    return rows


def _event(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppEvents")
    row.update(Name=_str(_require(base, "name", where)))
    return [("AppEvents", row)]


def _availability(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppAvailabilityResults")
    row.update(
        Id=_str(_require(base, "id", where)), Name=_str(_require(base, "name", where)),
        Location=_str(base.get("runLocation")),
        Success=_bool(_require(base, "success", where), "success", where),
        Message=_str(base.get("message")), DurationMs=_duration_ms(base, where),
    )
    row["PerformanceBucket"] = performance_bucket(row["DurationMs"])
    row["Size"] = _size(base.get("size"), where)
    return [("AppAvailabilityResults", row)]


def _size(value: Any, where: str) -> float | None:
    """``size`` is optional on availability data (bytes of the tested response)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeError(f"Field 'size' on type '{where}' must be a number.")
    return float(value)


def _page_view(base: Mapping[str, Any], where: str, common: CommonRow) -> Rows:
    row = common("AppPageViews")
    row.update(
        Id=_str(_require(base, "id", where)), Name=_str(_require(base, "name", where)),
        Url=_str(base.get("url")), DurationMs=_duration_ms(base, where, required=False),
    )
    row["PerformanceBucket"] = performance_bucket(row["DurationMs"])
    return [("AppPageViews", row)]


_BUILDERS: Final[dict[str, Builder]] = {
    "RequestData": _request,
    "RemoteDependencyData": _dependency,
    "MessageData": _message,
    "ExceptionData": _exception,
    "MetricData": _metric,
    "EventData": _event,
    "AvailabilityData": _availability,
    "PageViewData": _page_view,
}
