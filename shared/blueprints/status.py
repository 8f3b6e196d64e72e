"""HTTP status surface: ``/api/status`` (JSON), ``/api/health`` (anonymous) and ``/api/dashboard``.

Thin adapters: each handler turns the request into plain values, calls ``shared.monitoring.status``
and
maps the result or the error to a response. Nothing is built at import; the report service
(runner and cache) is created on the first request. A failure never leaks a stack trace: the
report's own errors map to a JSON 503 naming the cause (with ``Retry-After`` when known).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped

JSON = "application/json"


@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def status(req: func.HttpRequest) -> func.HttpResponse:
    """The operator's first look: state, reasons, KPIs, probes, quota, alerts, freshness.

    A coroutine, so a status call never holds one of the worker's threads (the blob trigger's):
    it reads the instance's report cache and at most waits a moment for the report being built.
    """
    from shared import telemetry
    from shared.composition import ensure_telemetry

    ensure_telemetry()
    with telemetry.invocation("status", trigger=telemetry.Trigger.HTTP):
        code, body, headers = await status_response(req.params.get("history"),
                                                    req.params.get("window"))
    return _json(code, body, headers=headers)


async def status_response(
    history: str | None, window: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, JSON body, headers) of ``/api/status`` for the given query parameters."""
    from shared.composition import get_status_service
    from shared.monitoring.logsquery import QueryError
    from shared.monitoring.reportcache import ReportPending
    from shared.monitoring.status import WINDOWS_BY_NAME, StatusUnavailable, unavailable_from
    from shared.settings import SettingsError, get_settings

    now = datetime.now(UTC)
    try:
        settings = get_settings()
    except SettingsError as exc:
        return 503, StatusUnavailable(
            "invalid_settings", "; ".join(exc.problems)).to_json(now=now, version="unknown"), {}
    version = settings.monitoring.app_version
    series = None
    if history in ("1", "true", "yes"):
        series = WINDOWS_BY_NAME.get(window or "1h")
        if series is None:
            return 400, {"error": {"cause": "bad_request",
                                   "message": f"window must be one of {sorted(WINDOWS_BY_NAME)}"}
                         }, {}
    try:
        served = await get_status_service().report(series)
    except QueryError as exc:  # building the runner: workspace not configured
        return 503, unavailable_from(exc).to_json(now=now, version=version), {}
    except StatusUnavailable as exc:
        return 503, exc.to_json(now=now, version=version), _retry_after(exc.retry_after_s)
    except ReportPending as exc:
        pending = StatusUnavailable("report_pending", "the first report is being computed;"
                                    " ask again shortly")
        return 503, pending.to_json(now=now, version=version), _retry_after(exc.retry_after_s)
    # A stale report's Age exceeds max-age, so an HTTP cache treats it as stale too.
    return 200, served.body, {"Cache-Control": f"private, max-age={int(served.ttl_s)}",
                              "Age": str(int(served.age_s))}


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds else {}


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness for availability tests: the app is loaded and its settings parse. No internals."""
    from shared.settings import SettingsError, get_settings

    try:
        get_settings()
    except SettingsError:
        return _json(503, {"status": "unavailable"})
    return _json(200, {"status": "ok"})


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The local web dashboard: one self-contained page that polls ``/api/status``; its CSP
    allows the page's own inline script and style by hash (``shared.monitoring.dashboard``)."""
    from shared.monitoring.dashboard import dashboard_page

    page = dashboard_page()
    return func.HttpResponse(
        page.html, status_code=200, mimetype="text/html", charset="utf-8",
        headers={"Content-Security-Policy": page.csp, "Cache-Control": "no-store",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"},
    )


def _json(code: int, body: dict[str, Any], *, headers: dict[str, str] | None = None
          ) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, allow_nan=False), status_code=code, mimetype=JSON, charset="utf-8",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                 **(headers or {})},
    )
