"""The Log Analytics query API's semantics: request body → KQL run → response or error body.

Shapes follow what ``azure.monitor.query.LogsQueryClient`` sends and reads: a body
``{"query", "timespan", "workspaces"}``; a result ``{"tables": [{"name": "PrimaryResult",
"columns": [{"name", "type"}], "rows": [[...]]}]}`` with values JSON-encoded as the service does
(datetimes ISO 8601 with ``Z``, ``dynamic`` as JSON text, ``timespan`` as ``[d.]hh:mm:ss``); and
errors ``{"error": {"code", "message", "innererror": {"code", "message", "innererror": ...}}}``,
whose innermost message the client surfaces as ``LogsQueryError.message``.

A query the local engine cannot run is always an error, never a plausible wrong answer.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import duckdb_kql
from duckdb_kql.types import kusto_type

from devstack.monitor.store import QueryResult, QueryTimeout, Store
from devstack.monitor.timeparse import format_instant, format_kql_timespan, parse_timespan


class QueryFailure(Exception):
    """A query answered with an error body instead of tables."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        inner_code: str | None = None,
        inner_message: str | None = None,
        detail_code: str | None = None,
        detail_message: str | None = None,
        detail_extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail_message or inner_message or message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.inner_message = inner_message
        self.detail_code = detail_code
        self.detail_message = detail_message
        self.detail_extra = dict(detail_extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "correlationId": str(uuid.uuid4())}
        if self.inner_code is not None:
            inner: dict[str, Any] = {"code": self.inner_code, "message": self.inner_message}
            if self.detail_code is not None:
                inner["innererror"] = {"code": self.detail_code, "message": self.detail_message,
                                       **self.detail_extra}
            error["innererror"] = inner
        return {"error": error}


_INVALID = "The request had some invalid properties"


def bad_argument(message: str) -> QueryFailure:
    return QueryFailure(400, "BadArgumentError", _INVALID, inner_code="BadArgumentError",
                        inner_message=message)


def workspace_not_found(workspace_id: str) -> QueryFailure:
    return QueryFailure(
        404, "WorkspaceNotFoundError", "The workspace could not be found",
        inner_code="WorkspaceNotFoundError",
        inner_message=f"Workspace '{workspace_id}' is not served by this emulator.",
    )


def path_not_found() -> QueryFailure:
    """What the service answers for a route it does not have (also a malformed workspace id)."""
    return QueryFailure(404, "PathNotFoundError", "The requested path does not exist")


def resource_not_found(resource_id: str) -> QueryFailure:
    return QueryFailure(
        404, "ResourceNotFoundError", "The resource could not be found",
        inner_code="ResourceNotFoundError",
        inner_message=f"Resource '{resource_id}' is not served by this emulator.",
    )


def _bad_query(inner_code: str, inner_message: str, detail_code: str, detail: str,
               extra: Mapping[str, Any] | None = None) -> QueryFailure:
    return QueryFailure(400, "BadArgumentError", _INVALID, inner_code=inner_code,
                        inner_message=inner_message, detail_code=detail_code,
                        detail_message=detail, detail_extra=extra)


_PARSE_AT = re.compile(r"at (\d+):(\d+)")
_MISSING_COLUMN = re.compile(r'(?:Referenced column|Column) "([^"]+)"')
_MISSING_TABLE = re.compile(r"Table with name ([^ ]+) does not exist")


def _semantic(detail: str) -> QueryFailure:
    return _bad_query("SemanticError", "A semantic error occurred.", "SEM0100", detail)


def _syntax(exc: Exception, query: str) -> QueryFailure:
    """Kusto's SYN0002 shape: the offending token and its 1-based line and position."""
    where = _PARSE_AT.search(str(exc))
    if where is None:
        return _bad_query("SyntaxError", "A recognition error occurred in the query.",
                          "SYN0002", f"Query could not be parsed: {_first_line(exc)}")
    line, column = int(where.group(1)), int(where.group(2))
    lines = query.splitlines() or [""]
    rest = lines[line - 1][column:] if 0 < line <= len(lines) else ""
    token = rest.split()[0] if rest.split() else "<end of query>"
    return _bad_query(
        "SyntaxError", "A recognition error occurred in the query.", "SYN0002",
        f"Query could not be parsed at '{token}' on line [{line},{column + 1}]",
        {"line": line, "pos": column + 1, "token": token},
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unresolved(duckdb_message: str) -> str:
    """Kusto's SEM0100 wording for DuckDB's unknown table/column messages."""
    table = _MISSING_TABLE.search(duckdb_message)
    if table:
        return f"Failed to resolve table or column expression named '{table.group(1)}'"
    column = _MISSING_COLUMN.search(duckdb_message)
    if column:
        return f"Failed to resolve scalar expression named '{column.group(1)}'"
    return f"Semantic error (local engine): {duckdb_message}"


def classify(exc: Exception, query: str = "") -> QueryFailure | None:
    """Map a KQL/DuckDB failure to the service's error shape; None for a genuine bug.

    Messages follow Kusto's wording where the meaning is the same (an unknown table or column
    is SEM0100 "Failed to resolve ..."); DuckDB's own text is kept only where no Kusto
    equivalent is known, prefixed so it is never mistaken for the service's.
    """
    first_line = _first_line(exc)
    if isinstance(exc, duckdb_kql.KqlSyntaxError):
        return _syntax(exc, query)
    if isinstance(exc, duckdb_kql.KqlUnsupportedError):
        return _bad_query(
            "SemanticError", "The query uses KQL the local Monitor emulator cannot run.",
            "UnsupportedByLocalEmulator",
            f"{first_line}. The local emulator refuses rather than guess; Log Analytics may "
            "accept this query.",
        )
    if isinstance(exc, duckdb.CatalogException | duckdb.BinderException):
        return _semantic(_unresolved(first_line))
    if isinstance(exc, duckdb_kql.KqlError):
        return _semantic(first_line)
    if isinstance(exc, duckdb.Error):
        return _bad_query("QueryExecutionError", "The query failed while running.", "EXE0001",
                          f"Query execution failed (local engine): {first_line}")
    return None


def _prefer(header: str | None) -> set[str]:
    return {part.strip().lower() for part in (header or "").split(",") if part.strip()}


#: The service's server timeout: 3 minutes unless ``Prefer: wait=N`` asks otherwise, at most 10.
DEFAULT_WAIT_S = 180.0
MAX_WAIT_S = 600.0


def server_timeout(preferences: set[str]) -> float:
    """Seconds a query may run: ``wait=N`` from the Prefer header, within the service's bounds."""
    for item in preferences:
        key, _, value = item.partition("=")
        if key.strip() == "wait":
            try:
                wait = float(value)
            except ValueError as exc:
                raise bad_argument(f"Prefer: wait={value!r} is not a number of seconds") from exc
            if not wait > 0:
                raise bad_argument("Prefer: wait must be a positive number of seconds")
            return min(wait, MAX_WAIT_S)
    return DEFAULT_WAIT_S


def gateway_timeout() -> QueryFailure:
    return QueryFailure(504, "GatewayTimeout", "Gateway timeout", inner_code="GatewayTimeout",
                        inner_message="ADX query timed out")


def run_query(store: Store, body: Any, *, now: datetime, prefer: str | None = None
              ) -> dict[str, Any]:
    """Answer one query body; raises :class:`QueryFailure` for anything the service refuses."""
    if not isinstance(body, Mapping):
        raise bad_argument("The request body must be a JSON object.")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad_argument("The 'query' property is required and must be a non-empty string.")
    timespan = body.get("timespan")
    if timespan is not None and not isinstance(timespan, str):
        raise bad_argument("The 'timespan' property must be an ISO 8601 string.")
    try:
        window = parse_timespan(timespan, now)
    except ValueError as exc:
        raise bad_argument(f"Invalid timespan: {exc}") from exc
    preferences = _prefer(prefer)
    started = time.perf_counter()
    try:
        result = store.query(query, window, timeout_s=server_timeout(preferences))
    except QueryTimeout as exc:
        raise gateway_timeout() from exc
    except QueryFailure:
        raise
    except Exception as exc:
        failure = classify(exc, query)
        if failure is None:
            raise
        raise failure from exc
    answer: dict[str, Any] = {"tables": [encode_table(result)]}
    if "include-statistics=true" in preferences:
        answer["statistics"] = {"query": {"executionTime": time.perf_counter() - started}}
    if "include-render=true" in preferences:
        answer["render"] = result.render.body(query_sorted=result.sorted)
    if result.warnings:
        # The service's partial success: the tables plus an error naming what went wrong.
        answer["error"] = {
            "code": "PartialError",
            "message": "There were some errors when processing your query.",
            "details": [{
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {"code": "-2133196788", "message": warning, "severity": 2,
                               "severityName": "Error"},
            } for warning in result.warnings],
        }
    return answer


def encode_table(result: QueryResult) -> dict[str, Any]:
    types = [kusto_type(duck) for _, duck in result.columns]
    return {
        "name": "PrimaryResult",
        "columns": [{"name": name, "type": kind}
                    for (name, _), kind in zip(result.columns, types, strict=True)],
        "rows": [[encode_value(v, k) for v, k in zip(row, types, strict=True)]
                 for row in result.rows],
    }


def _encode_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


#: Checked in order (bool before int, datetime before date).
_ENCODERS: tuple[tuple[type | tuple[type, ...], Callable[[Any], Any]], ...] = (
    ((bool, int, str), lambda v: v),
    (float, _encode_float),
    (datetime, format_instant),
    (date, lambda v: format_instant(datetime(v.year, v.month, v.day))),
    (timedelta, format_kql_timespan),
    ((Decimal, uuid.UUID), str),
    ((bytes, bytearray), lambda v: base64.b64encode(bytes(v)).decode("ascii")),
)


def encode_value(value: Any, kql_type: str) -> Any:
    """One cell as the query API writes it in JSON."""
    if value is None:
        return None
    if kql_type == "dynamic":
        # dynamic cells travel as JSON text; DuckDB's JSON columns already are text.
        return value if isinstance(value, str) else _json_text(value)
    for kinds, encode in _ENCODERS:
        if isinstance(value, kinds):
            return encode(value)
    return _json_text(value)


def _json_text(value: Any) -> str:
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, bool | int | str) or v is None:
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)
        return encode_value(v, "")

    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))
