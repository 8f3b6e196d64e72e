"""The emulator's HTTP surface (Starlette): ingestion, live-metrics pings, query API, admin.

Local-only dev tooling: bound to loopback, no real authentication (the query API only insists
that a ``Bearer`` token is present, as a reminder that the real one needs Entra ID). Every
failure is answered with the service's error shape; an unexpected one is logged here and
answered 500 without a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.monitor.config import MonitorConfig
from devstack.monitor.envelopes import Context
from devstack.monitor.ingest import track
from devstack.monitor.limits import LimitsError, QueryLimiter, Throttled
from devstack.monitor.queryapi import (
    QueryFailure,
    bad_argument,
    path_not_found,
    resource_not_found,
    run_query,
    workspace_not_found,
)
from devstack.monitor.store import Store

logger = logging.getLogger(__name__)

#: Header the live-metrics client reads; "false" tells it nobody is watching, so it keeps to
#: cheap pings and never starts posting.
QPS_SUBSCRIBED_HEADER = "x-ms-qps-subscribed"
MAX_RAW_LIMIT = 100_000
_GUID = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _failure(failure: QueryFailure) -> JSONResponse:
    return JSONResponse(failure.body(), status_code=failure.status)


def _throttled(exc: Throttled) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=429,
                        headers={"Retry-After": str(exc.retry_after_s)})


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorized(request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _unauthorized() -> JSONResponse:
    return _error(401, "AuthorizationRequiredError", "Valid authentication was not provided")


def _loopback_only(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if not _is_loopback(request):
            return _error(403, "Forbidden", "admin endpoints answer loopback clients only")
        return await handler(request)
    return guarded


def _no_stack_traces(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception:  # the boundary: log it here, never leak a stack trace to a client
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            return _error(500, "InternalServerError",
                          "The emulator failed unexpectedly; see its log.")
    return run


class _CollapseSlashes:
    """``IngestionEndpoint=http://host:port/`` makes the exporter post to ``//v2.1/track``.

    The service accepts that; Starlette's router would answer 404, so empty path segments are
    collapsed before routing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = {**scope, "path": re.sub(r"/{2,}", "/", scope["path"])}
        await self.app(scope, receive, send)


class _Emulator:
    """Request handlers over one :class:`Store`, opened by the app's lifespan."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.ctx = Context(workspace_id=config.workspace_id, resource_id=config.resource_id)
        self._store: Store | None = None
        self.limiter = QueryLimiter(config.limits)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store is not open (lifespan not started)")
        return self._store

    # --- lifecycle ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self._store = Store(self.config.db_path,
                            retention=timedelta(days=self.config.retention_days),
                            clock=self.config.clock)
        await run_in_threadpool(self.store.purge)
        task = asyncio.create_task(self._retention_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await run_in_threadpool(self.store.close)
            self._store = None

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_interval_s)
            try:
                deleted = await run_in_threadpool(self.store.purge)
            except Exception:  # a failed purge must not stop the emulator; try again later
                logger.exception("retention purge failed")
            else:
                if deleted:
                    logger.info("retention: deleted %d rows", deleted)

    # --- ingestion ----------------------------------------------------------------------------

    async def track(self, request: Request) -> Response:
        outcome = track(await request.body(), request.headers.get("content-encoding"), self.ctx)
        if outcome.items:
            await run_in_threadpool(self.store.ingest, outcome.items)
        return JSONResponse(outcome.body, status_code=outcome.status)

    async def quickpulse(self, request: Request) -> Response:
        await request.body()
        return Response(status_code=200, headers={QPS_SUBSCRIBED_HEADER: "false"})

    # --- query API ----------------------------------------------------------------------------

    def _served(self, workspace: Any) -> None:
        """Raise unless ``workspace`` is the one this emulator serves."""
        if not _GUID.match(str(workspace)):
            raise path_not_found()
        if str(workspace).lower() != self.config.workspace_id.lower():
            raise workspace_not_found(str(workspace))

    def _answer(self, workspace: Any, body: Any, prefer: str | None) -> tuple[int, Any]:
        try:
            self._served(workspace)
            # A cross-workspace query names more workspaces; each must exist. The one served
            # here is searched once however often it is named (the service's set semantics).
            extra = body.get("workspaces") if isinstance(body, Mapping) else None
            if extra is not None and not isinstance(extra, list):
                raise bad_argument("The 'workspaces' property must be a list of workspace ids.")
            for other in extra or []:
                self._served(other)
            return 200, run_query(self.store, body, now=self.config.clock(), prefer=prefer)
        except QueryFailure as failure:
            return failure.status, failure.body()

    def _workspace_of(self, request: Request) -> str | None:
        """The workspace a route names: its id, or the workspace of a resource id."""
        if "workspace" in request.path_params:
            return str(request.path_params["workspace"])
        resource = "/subscriptions/" + str(request.path_params["resource"])
        # Resource-centric queries: the Application Insights component this emulator stands
        # for lives in the served workspace (its rows all carry this _ResourceId).
        if resource.rstrip("/").lower() == self.config.resource_id.lower():
            return self.config.workspace_id
        return None

    async def query(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized()
        workspace = self._workspace_of(request)
        if workspace is None:
            failure = resource_not_found("/subscriptions/" + request.path_params["resource"])
            return _failure(failure)
        body: Any
        if request.method == "GET":
            body = {"query": request.query_params.get("query"),
                    "timespan": request.query_params.get("timespan")}
        else:
            try:
                body = await request.json()
            except ValueError:
                return _failure(bad_argument("The request body is not valid JSON."))
        try:
            async with self.limiter.admit(request.headers.get("authorization")):
                status, payload = await run_in_threadpool(
                    self._answer, workspace, body, request.headers.get("prefer"))
        except Throttled as exc:
            return _throttled(exc)
        return JSONResponse(payload, status_code=status)

    def _answer_batch_item(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, Mapping):
            failure = bad_argument("Each batch request must be a JSON object.")
            return {"id": None, "status": failure.status, "body": failure.body()}
        headers = item.get("headers")
        prefer = None
        if isinstance(headers, Mapping):
            prefer = next((str(v) for k, v in headers.items() if str(k).lower() == "prefer"),
                          None)
        path = str(item.get("path", "/query")).rstrip("/")
        if path != "/query" or str(item.get("method", "POST")).upper() != "POST":
            failure = bad_argument("Only POST /query is supported in a batch.")
            status, payload = failure.status, failure.body()
        else:
            status, payload = self._answer(item.get("workspace"), item.get("body"), prefer)
        return {"id": item.get("id"), "status": status, "headers": {}, "body": payload}

    async def batch(self, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized()
        try:
            body = await request.json()
        except ValueError:
            body = None
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list):
            return _failure(bad_argument('The body must be {"requests": [...]}.'))
        try:
            async with self.limiter.admit(request.headers.get("authorization"), len(requests)):
                responses = await run_in_threadpool(
                    lambda: [self._answer_batch_item(item) for item in requests])
        except Throttled as exc:
            return _throttled(exc)
        return JSONResponse({"responses": responses})

    # --- admin and health ---------------------------------------------------------------------

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok", "workspaceId": self.config.workspace_id})

    async def admin_tables(self, _: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.store.counts))

    async def admin_reset(self, _: Request) -> Response:
        await run_in_threadpool(self.store.reset)
        return JSONResponse({"reset": True})

    async def admin_limits(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                changes = await request.json()
            except ValueError:
                changes = None
            if not isinstance(changes, dict):
                return _error(400, "BadArgumentError", "the body must be a JSON object of limits")
            try:
                self.limiter.configure(self.limiter.limits.updated(changes))
            except LimitsError as exc:
                return _error(400, "BadArgumentError", str(exc))
        return JSONResponse({"limits": asdict(self.limiter.limits),
                             "stats": self.limiter.stats.to_json()})

    async def admin_limits_reset(self, _: Request) -> Response:
        self.limiter.reset_stats()
        return JSONResponse({"stats": self.limiter.stats.to_json()})

    async def admin_envelopes(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return _error(400, "BadArgumentError", "limit must be an integer")
        if not 1 <= limit <= MAX_RAW_LIMIT:
            return _error(400, "BadArgumentError", f"limit must be 1..{MAX_RAW_LIMIT}")
        return JSONResponse(await run_in_threadpool(self.store.raw_envelopes, limit))


async def _not_found(request: Request, exc: Exception) -> Response:
    """Unknown routes and methods answer in the service's JSON shape, never as plain text."""
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return _error(405, "MethodNotAllowedError",
                      f"The method {request.method} is not allowed on this path")
    return _failure(path_not_found())


def create_app(config: MonitorConfig) -> Starlette:
    """The ASGI app; the store is opened on startup and closed on shutdown."""
    emu = _Emulator(config)

    def route(path: str, handler: Handler, *methods: str) -> Route:
        return Route(path, _no_stack_traces(handler), methods=list(methods))

    return Starlette(
        routes=[
            route("/healthz", emu.healthz, "GET"),
            route("/v2.1/track", emu.track, "POST"),
            route("/v2/track", emu.track, "POST"),
            route("/QuickPulseService.svc/ping", emu.quickpulse, "POST"),
            route("/QuickPulseService.svc/post", emu.quickpulse, "POST"),
            route("/v1/workspaces/{workspace}/query", emu.query, "GET", "POST"),
            route("/workspaces/{workspace}/query", emu.query, "GET", "POST"),
            route("/v1/subscriptions/{resource:path}/query", emu.query, "GET", "POST"),
            route("/subscriptions/{resource:path}/query", emu.query, "GET", "POST"),
            route("/v1/$batch", emu.batch, "POST"),
            route("/$batch", emu.batch, "POST"),
            route("/admin/tables", _loopback_only(emu.admin_tables), "GET"),
            route("/admin/reset", _loopback_only(emu.admin_reset), "POST"),
            route("/admin/envelopes", _loopback_only(emu.admin_envelopes), "GET"),
            route("/admin/limits", _loopback_only(emu.admin_limits), "GET", "PUT"),
            route("/admin/limits/stats/reset", _loopback_only(emu.admin_limits_reset), "POST"),
        ],
        lifespan=emu.lifespan,
        middleware=[Middleware(_CollapseSlashes)],
        exception_handlers={404: _not_found, 405: _not_found},
    )
