"""Named KQL queries (``queries/*.kql``) run against Log Analytics through ``LogsQueryClient``.

The ``.kql`` files are the single source for the status page, alerts, the workbook and the tests.
Each starts with a ``//`` comment header (what it returns, columns, parameters). A parameter is a
top-level ``let <name> = <default>;`` statement named in the header's ``Parameters:`` line, so
every file stays valid KQL on its own; ``run(..., params=...)`` substitutes the default.

Credentials: Entra ID (``DefaultAzureCredential``: managed identity in Azure) for real
workspaces; a dummy bearer token plus ``enforce_https=False`` **only** when the query endpoint
is loopback (the devstack Monitor emulator). Nothing here logs a query result or a token.

Several queries run as single ``query_workspace`` requests (``run_many``), a few at a time on
the runner's own threads: the ``$batch`` operation (``query_batch``) is deprecated by Azure and
is not used.

Errors are classified for callers (the status function shows "telemetry backend unreachable"
differently from "a query is broken"): ``QueryBackendError`` (transport, 5xx) with its
``QueryThrottledError`` (429, with the service's ``Retry-After``) and ``QuerySkipped``,
``QueryAuthError``, ``QueryConfigError`` (workspace unknown / settings missing) and
``BadQueryError`` (the KQL is rejected; includes KQL the local engine cannot run).

A little past 450 lines because it is one thing: the query files, their runner and the errors
that runner raises are read together.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from azure.core.credentials import AccessToken
from azure.core.exceptions import AzureError, HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.monitor.query import LogsQueryClient

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from azure.monitor.query import LogsQueryClient

    from shared.settings import Settings

QUERIES_DIR = Path(__file__).resolve().parents[2] / "queries"  # the app root: shared/monitoring/..

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


class QueryThrottledError(QueryBackendError):
    """429: the caller is over Log Analytics' limits; ``retry_after_s`` is the service's hint."""

    def __init__(self, message: str, *, query: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, query=query, code=code)
        self.retry_after_s = retry_after_s


class QuerySkipped(QueryBackendError):
    """Not sent: an earlier query of the same ``run_many`` was throttled or could not reach
    the backend."""


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
    if status == 429:
        return QueryThrottledError
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
        return AccessToken("devstack-local-token", 4_102_444_800)  # 2100-01-01


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """One query of ``run_many``: a named query, its parameters, its time range and answer key.

    ``key`` (the name of the answer in ``run_many``'s result) defaults to ``name``; give one
    when the same query runs more than once (e.g. once per window). ``timespan`` ``None`` means
    the ``run_many`` call's timespan.
    """

    name: str
    params: Mapping[str, ParamValue] | None = None
    timespan: Timespan = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is None:
            object.__setattr__(self, "key", self.name)


QueryItem: TypeAlias = str | tuple[str, Mapping[str, ParamValue]] | QuerySpec

#: Log Analytics runs at most 5 queries of one caller (identity) at once; more wait in its queue.
SERVICE_MAX_CONCURRENT = 5


class LogsQueryRunner:
    """Runs named queries against one workspace; one instance per process is enough.

    ``max_concurrency`` bounds the queries this process has in flight through ``run_many``
    (its own threads, never the caller's): the service's limit is per identity, shared by
    every instance and every other user of it, so one process should take only part of it.
    """

    def __init__(
        self,
        client: LogsQueryClient,
        workspace_id: str,
        *,
        loopback: bool = False,
        queries: Mapping[str, NamedQuery] | None = None,
        server_timeout_s: int | None = None,
        max_concurrency: int = 3,
    ) -> None:
        if not 1 <= max_concurrency <= SERVICE_MAX_CONCURRENT:
            raise ValueError(f"max_concurrency must be 1..{SERVICE_MAX_CONCURRENT}")
        self._client = client
        self._workspace_id = workspace_id
        # azure-core refuses to send a bearer token over http unless told so, on each call.
        self._call_options: dict[str, Any] = {"enforce_https": False} if loopback else {}
        self._queries = queries if queries is not None else load_queries()
        self._server_timeout_s = server_timeout_s
        self._max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: TokenCredential | None = None,
        client_options: Mapping[str, Any] | None = None,
        server_timeout_s: int | None = None,
        max_concurrency: int = 3,
    ) -> LogsQueryRunner:
        """From ``LOGS_WORKSPACE_ID`` (+ ``LOGS_QUERY_ENDPOINT``); Entra ID unless loopback.

        ``client_options`` go to ``LogsQueryClient`` as azure-core transport and retry settings
        (``connection_timeout``, ``read_timeout``, ``retry_total``, …): an interactive caller
        wants short ones, azure-core's defaults may wait minutes.
        """
        q = settings.logs_query
        if not q.workspace_id:
            raise QueryConfigError("LOGS_WORKSPACE_ID is not set", code="not_configured")
        loopback = q.is_loopback
        if credential is None:
            credential = LocalTokenCredential() if loopback else DefaultAzureCredential()
        options: dict[str, Any] = dict(client_options or {})
        if q.endpoint:
            options["endpoint"] = q.endpoint
        client = LogsQueryClient(credential, **options)
        return cls(client, q.workspace_id, loopback=loopback, server_timeout_s=server_timeout_s,
                   max_concurrency=max_concurrency)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._queries)

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

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

    def run_many(
        self, items: Sequence[QueryItem], timespan: Timespan = timedelta(hours=1)
    ) -> dict[str, QueryResult | QueryError]:
        """Run several named queries, each its own request, ``max_concurrency`` at a time.

        An item is a query name, ``(name, params)`` or a ``QuerySpec`` (its own timespan and
        key). Answers are keyed by the item's key, in the items' order (a key may not appear
        twice). Each value is the query's result or its own ``QueryError``. Once one query is
        throttled, refused or cannot reach the backend, the ones not yet started are not sent
        (``QuerySkipped``): the next would meet the same wall and only spend the budget.
        """
        specs = [_query_spec(item) for item in items]
        keys = [spec.key or spec.name for spec in specs]
        if len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"key {twice!r} appears twice in one run_many")
        for spec in specs:
            self.query(spec.name).render(spec.params)  # unknown names / parameters fail here
        stop = threading.Event()

        def one(spec: QuerySpec) -> QueryResult | QueryError:
            if stop.is_set():
                return QuerySkipped(f"{spec.name}: not sent after an earlier query failed",
                                    query=spec.name)
            span = spec.timespan if spec.timespan is not None else timespan
            try:
                return self.run(spec.name, span, params=spec.params)
            except BadQueryError as exc:
                return exc
            except QueryError as exc:
                stop.set()
                return exc

        futures = [self._executor().submit(one, spec) for spec in specs]
        return {key: future.result() for key, future in zip(keys, futures, strict=True)}

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._max_concurrency,
                                                thread_name_prefix="logs-query")
            return self._pool


def _query_spec(item: QueryItem) -> QuerySpec:
    if isinstance(item, QuerySpec):
        return item
    if isinstance(item, str):
        return QuerySpec(item)
    name, params = item
    return QuerySpec(name, params)


def _error_text(error: Any) -> str:
    return f"{getattr(error, 'code', '')}: {getattr(error, 'message', '')}".strip(": ")


def _from_http_error(name: str, exc: Any) -> QueryError:
    model = getattr(exc, "model", None)
    code = getattr(model, "code", None) or getattr(getattr(exc, "error", None), "code", None)
    message = getattr(model, "message", None) or getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    kind = classify_code(code, status)
    text = f"{name}: {code or status}: {message}"
    if kind is QueryThrottledError:
        return QueryThrottledError(text, query=name, code=code,
                                   retry_after_s=_retry_after(getattr(exc, "response", None)))
    return kind(text, query=name, code=code)


def _retry_after(response: Any) -> float | None:
    """``Retry-After`` in seconds (the service sends a number; an HTTP date is ignored)."""
    headers = getattr(response, "headers", None)
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


__all__ = [
    "QUERIES_DIR",
    "SERVICE_MAX_CONCURRENT",
    "BadQueryError",
    "LocalTokenCredential",
    "LogsQueryRunner",
    "NamedQuery",
    "QueryAuthError",
    "QueryBackendError",
    "QueryConfigError",
    "QueryError",
    "QueryItem",
    "QueryResult",
    "QuerySkipped",
    "QuerySpec",
    "QueryThrottledError",
    "classify_code",
    "kql_literal",
    "load_queries",
    "parse_query",
]
