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
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import duckdb_kql
from duckdb_kql.types import kusto_type

from devstack.monitor.store import QueryResult, Store
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
    ) -> None:
        super().__init__(detail_message or inner_message or message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.inner_message = inner_message
        self.detail_code = detail_code
        self.detail_message = detail_message

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "correlationId": str(uuid.uuid4())}
        if self.inner_code is not None:
            inner: dict[str, Any] = {"code": self.inner_code, "message": self.inner_message}
            if self.detail_code is not None:
                inner["innererror"] = {"code": self.detail_code, "message": self.detail_message}
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


def _bad_query(inner_code: str, inner_message: str, detail_code: str, detail: str
               ) -> QueryFailure:
    return QueryFailure(400, "BadArgumentError", _INVALID, inner_code=inner_code,
                        inner_message=inner_message, detail_code=detail_code,
                        detail_message=detail)


def classify(exc: Exception) -> QueryFailure | None:
    """Map a KQL/DuckDB failure to the service's error shape; None for a genuine bug."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb_kql.KqlSyntaxError):
        return _bad_query("SyntaxError", "A recognition error occurred in the query.",
                          "SYN0002", first_line)
    if isinstance(exc, duckdb_kql.KqlUnsupportedError):
        return _bad_query(
            "SemanticError", "The query uses KQL the local Monitor emulator cannot run.",
            "UnsupportedByLocalEmulator",
            f"{first_line}. The local emulator refuses rather than guess; Log Analytics may "
            "accept this query.",
        )
    if isinstance(exc, duckdb_kql.KqlError | duckdb.CatalogException | duckdb.BinderException):
        return _bad_query("SemanticError", "A semantic error occurred.", "SEM0100", first_line)
    if isinstance(exc, duckdb.Error):
        return _bad_query("QueryExecutionError", "The query failed while running.", "EXE0001",
                          first_line)
    return None


def _prefer(header: str | None) -> set[str]:
    return {part.strip().lower() for part in (header or "").split(",") if part.strip()}


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
    started = time.perf_counter()
    try:
        result = store.query(query, window)
    except Exception as exc:
        failure = classify(exc)
        if failure is None:
            raise
        raise failure from exc
    answer: dict[str, Any] = {"tables": [encode_table(result)]}
    if "include-statistics=true" in _prefer(prefer):
        answer["statistics"] = {"query": {"executionTime": time.perf_counter() - started}}
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
