"""Named KQL queries (``queries/*.kql``) run against Log Analytics through ``LogsQueryClient``.

The ``.kql`` files are the single source for the status page, alerts, the workbook and the tests.
Each starts with a ``//`` comment header (what it returns, columns, parameters). A parameter is a
top-level ``let <name> = <default>;`` statement named in the header's ``Parameters:`` line, so
every file stays valid KQL on its own; ``run(..., params=...)`` substitutes the default.

Credentials: Entra ID (``DefaultAzureCredential``: managed identity in Azure) for real
workspaces; a dummy bearer token plus ``enforce_https=False`` **only** when the query endpoint
is loopback (the devstack Monitor emulator). Nothing here logs a query result or a token.

Errors are classified for callers (the status function shows "telemetry backend unreachable"
differently from "a query is broken"): ``QueryBackendError`` (transport, 5xx, throttling),
``QueryAuthError``, ``QueryConfigError`` (workspace unknown / settings missing) and
``BadQueryError`` (the KQL is rejected; includes KQL the local engine cannot run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from azure.monitor.query import LogsQueryClient

    from shared.settings import Settings

QUERIES_DIR = Path(__file__).resolve().parent.parent / "queries"

Timespan: TypeAlias = timedelta | tuple[datetime, timedelta] | tuple[datetime, datetime] | None
ParamValue: TypeAlias = str | int | float | bool | timedelta

_PARAMS_LINE = re.compile(r"^//\s*Parameters:\s*(?P<body>.*)$", re.IGNORECASE)
_PARAM_NAME = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\(")
_LET = r"^let\s+{name}\s*=\s*(?P<value>[^;\n]+);"


# --------------------------------------------------------------------------- errors


class QueryError(Exception):
    """A named query could not be answered. ``code`` is the service's error code, if any."""

    def __init__(self, message: str, *, query: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.query = query
        self.code = code


class QueryBackendError(QueryError):
    """The Log Analytics endpoint could not be reached or failed (transport, 5xx, 429)."""


class QueryAuthError(QueryError):
    """The credential was refused (401/403)."""


class QueryConfigError(QueryError):
    """Workspace or endpoint not configured or unknown."""


class BadQueryError(QueryError):
    """The KQL was rejected (syntax, unknown column, construct the engine cannot run)."""


_AUTH_CODES = (
    "AuthorizationRequiredError", "InsufficientAccessError", "InvalidAuthenticationTokenError",
)
_BAD_QUERY_CODES = ("BadArgumentError", "SemanticError", "SyntaxError", "PathNotFoundError")


def classify_code(code: str | None, status: int | None) -> type[QueryError]:
    """Map a service error code / HTTP status to our error type."""
    if code in _AUTH_CODES or status in (401, 403):
        return QueryAuthError
    if code == "WorkspaceNotFoundError" or status == 404:
        return QueryConfigError
    if code in _BAD_QUERY_CODES or status == 400:
        return BadQueryError
    return QueryBackendError


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True, slots=True)
class NamedQuery:
    name: str
    text: str
    description: str
    parameters: tuple[str, ...] = ()

    def render(self, params: Mapping[str, ParamValue] | None = None) -> str:
        """The KQL with each given parameter's ``let`` default replaced by ``params[name]``."""
        text = self.text
        for key, value in (params or {}).items():
            if key not in self.parameters:
                raise ValueError(f"query {self.name!r} has no parameter {key!r}")
            pattern = re.compile(_LET.format(name=re.escape(key)), re.MULTILINE)
            replacement = f"let {key} = {kql_literal(value)};"
            # a function, not a template: the literal may contain backslashes
            text, count = pattern.subn(functools.partial(_constant, replacement), text, count=1)
            if count != 1:
                raise ValueError(f"query {self.name!r} does not declare `let {key} = …;`")
        return text


def _constant(value: str, _match: re.Match[str]) -> str:
    return value


def kql_literal(value: ParamValue) -> str:
    """A KQL literal for a parameter value (strings are JSON-escaped, which KQL accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def parse_query(name: str, text: str) -> NamedQuery:
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("//"):
            break
        header.append(line)
    if not header:
        raise ValueError(f"{name}.kql must start with a // comment header")
    parameters: tuple[str, ...] = ()
    for line in header:
        match = _PARAMS_LINE.match(line)
        if match and not match.group("body").strip().lower().startswith("none"):
            parameters = tuple(m.group("name") for m in _PARAM_NAME.finditer(match.group("body")))
    first = header[0].lstrip("/ ").strip()
    for param in parameters:
        if not re.search(_LET.format(name=re.escape(param)), text, re.MULTILINE):
            raise ValueError(f"{name}.kql names parameter {param!r} but has no `let {param} = …;`")
    return NamedQuery(name=name, text=text, description=first, parameters=parameters)


@functools.cache
def load_queries(directory: Path = QUERIES_DIR) -> Mapping[str, NamedQuery]:
    """Every ``*.kql`` in ``directory`` by file stem; read once per process."""
    return {p.stem: parse_query(p.stem, p.read_text(encoding="utf-8"))
            for p in sorted(directory.glob("*.kql"))}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Plain rows of a query's primary table (dicts keyed by column; ``dynamic`` parsed)."""

    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    partial_error: str | None = None

    def column(self, name: str) -> list[Any]:
        return [row[name] for row in self.rows]

    def one(self) -> dict[str, Any]:
        """The single row of a summary query (raises if there is not exactly one)."""
        if len(self.rows) != 1:
            raise ValueError(f"{self.name}: expected one row, got {len(self.rows)}")
        return self.rows[0]


def _to_result(name: str, tables: Sequence[Any], partial_error: str | None = None) -> QueryResult:
    if not tables:
        return QueryResult(name=name, columns=(), partial_error=partial_error)
    table = tables[0]
    columns = tuple(str(c) for c in table.columns)
    types = list(getattr(table, "columns_types", []) or [])
    rows = []
    for row in table.rows:
        values = list(row)
        for i, kind in enumerate(types):
            if kind == "dynamic" and isinstance(values[i], str):
                with contextlib.suppress(ValueError):
                    values[i] = json.loads(values[i])
        rows.append(dict(zip(columns, values, strict=True)))
    return QueryResult(name=name, columns=columns, rows=rows, partial_error=partial_error)


# --------------------------------------------------------------------------- credentials


class LocalTokenCredential:
    """A ``TokenCredential`` for the local emulator only: a fixed, meaningless bearer token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken("devstack-local-token", 4_102_444_800)  # 2100-01-01


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True, slots=True)
class BatchQuery:
    """One item of a batch: a named query, its parameters, its own time range and answer key.

    ``key`` (the name of the answer in ``run_batch``'s result) defaults to ``name``; give one
    when the same query runs more than once in a batch (e.g. once per window). ``timespan``
    ``None`` means the batch call's timespan.
    """

    name: str
    params: Mapping[str, ParamValue] | None = None
    timespan: Timespan = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is None:
            object.__setattr__(self, "key", self.name)


BatchItem: TypeAlias = str | tuple[str, Mapping[str, ParamValue]] | BatchQuery


class LogsQueryRunner:
    """Runs named queries against one workspace; one instance per process is enough."""

    def __init__(
        self,
        client: LogsQueryClient,
        workspace_id: str,
        *,
        loopback: bool = False,
        queries: Mapping[str, NamedQuery] | None = None,
        server_timeout_s: int | None = None,
    ) -> None:
        self._client = client
        self._workspace_id = workspace_id
        # azure-core refuses to send a bearer token over http unless told so, on each call.
        self._call_options: dict[str, Any] = {"enforce_https": False} if loopback else {}
        self._queries = queries if queries is not None else load_queries()
        self._server_timeout_s = server_timeout_s

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: TokenCredential | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> LogsQueryRunner:
        """From ``LOGS_WORKSPACE_ID`` (+ ``LOGS_QUERY_ENDPOINT``); Entra ID unless loopback.

        ``client_options`` go to ``LogsQueryClient`` as azure-core transport and retry settings
        (``connection_timeout``, ``read_timeout``, ``retry_total``, …): an interactive caller
        wants short ones, azure-core's defaults may wait minutes.
        """
        from azure.monitor.query import LogsQueryClient

        t = settings.telemetry
        if not t.workspace_id:
            raise QueryConfigError("LOGS_WORKSPACE_ID is not set", code="not_configured")
        loopback = t.query_is_loopback
        if credential is None:
            if loopback:
                credential = LocalTokenCredential()
            else:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
        options: dict[str, Any] = dict(client_options or {})
        if t.query_endpoint:
            options["endpoint"] = t.query_endpoint
        client = LogsQueryClient(credential, **options)
        return cls(client, t.workspace_id, loopback=loopback)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._queries)

    def query(self, name: str) -> NamedQuery:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in queries/") from None

    def run(
        self,
        name: str,
        timespan: Timespan = timedelta(hours=1),
        *,
        params: Mapping[str, ParamValue] | None = None,
    ) -> QueryResult:
        """Run one named query; raise a ``QueryError`` subclass on failure."""
        from azure.core.exceptions import AzureError, HttpResponseError

        kql = self.query(name).render(params)
        try:
            response = self._client.query_workspace(
                self._workspace_id, kql, timespan=timespan, server_timeout=self._server_timeout_s,
                **self._call_options)
        except HttpResponseError as exc:
            raise _from_http_error(name, exc) from exc
        except AzureError as exc:
            raise QueryBackendError(f"{name}: {type(exc).__name__}", query=name) from exc
        partial = getattr(response, "partial_error", None)
        tables = getattr(response, "tables", None) or getattr(response, "partial_data", None) or []
        return _to_result(name, tables, _error_text(partial) if partial is not None else None)

    def run_batch(
        self, items: Sequence[BatchItem], timespan: Timespan = timedelta(hours=1)
    ) -> dict[str, QueryResult | QueryError]:
        """Run several named queries in one round trip (``query_batch``).

        An item is a query name, ``(name, params)`` or a ``BatchQuery`` (its own timespan and
        key). Answers are keyed by the item's key (a plain item's key is its name; a key may
        not appear twice). Each value is the query's result, or the ``QueryError`` for that
        query alone. A failure of the whole round trip (backend unreachable, auth) raises
        instead.
        """
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.monitor.query import LogsBatchQuery, LogsQueryStatus

        queries = [_batch_query(item) for item in items]
        keys: list[str] = []
        batch: list[LogsBatchQuery] = []
        for q in queries:
            key = q.key or q.name
            if key in keys:
                raise ValueError(f"key {key!r} appears twice in one batch")
            keys.append(key)
            span = q.timespan if q.timespan is not None else timespan
            batch.append(LogsBatchQuery(self._workspace_id, self.query(q.name).render(q.params),
                                        timespan=span))
        try:
            responses = self._client.query_batch(batch, **self._call_options)
        except HttpResponseError as exc:
            raise _from_http_error("batch", exc) from exc
        except AzureError as exc:
            raise QueryBackendError(f"batch: {type(exc).__name__}", query="batch") from exc
        out: dict[str, QueryResult | QueryError] = {}
        for key, q, response in zip(keys, queries, responses, strict=True):
            name = q.name
            status = getattr(response, "status", None)
            if status == LogsQueryStatus.FAILURE:
                code = getattr(response, "code", None)
                kind = classify_code(code, None)
                out[key] = kind(f"{name}: {code}: {getattr(response, 'message', '')}",
                                query=name, code=code)
            elif status == LogsQueryStatus.PARTIAL:
                out[key] = _to_result(name, getattr(response, "partial_data", []) or [],
                                      _error_text(getattr(response, "partial_error", None)))
            else:
                out[key] = _to_result(name, getattr(response, "tables", []) or [])
        return out


def _batch_query(item: BatchItem) -> BatchQuery:
    if isinstance(item, BatchQuery):
        return item
    if isinstance(item, str):
        return BatchQuery(item)
    name, params = item
    return BatchQuery(name, params)


def _error_text(error: Any) -> str:
    return f"{getattr(error, 'code', '')}: {getattr(error, 'message', '')}".strip(": ")


def _from_http_error(name: str, exc: Any) -> QueryError:
    model = getattr(exc, "model", None)
    code = getattr(model, "code", None) or getattr(getattr(exc, "error", None), "code", None)
    message = getattr(model, "message", None) or getattr(exc, "message", None) or str(exc)
    kind = classify_code(code, getattr(exc, "status_code", None))
    return kind(f"{name}: {code or exc.status_code}: {message}", query=name, code=code)


__all__ = [
    "QUERIES_DIR",
    "BadQueryError",
    "BatchItem",
    "BatchQuery",
    "LocalTokenCredential",
    "LogsQueryRunner",
    "NamedQuery",
    "QueryAuthError",
    "QueryBackendError",
    "QueryConfigError",
    "QueryError",
    "QueryResult",
    "classify_code",
    "kql_literal",
    "load_queries",
    "parse_query",
]
