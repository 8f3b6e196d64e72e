"""HTTP status surface: ``/api/status`` (JSON), ``/api/health`` (anonymous) and ``/api/dashboard``.

Thin adapters: each handler turns the request into plain values, calls ``shared.status`` and
maps the result or the error to a response. Nothing is built at import; the telemetry runner is
created on the first request. A failure never leaks a stack trace: the report's own errors map to
a JSON 503 naming the cause.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped

JSON = "application/json"
# The dashboard fetches only its own origin; everything else is inline.
DASHBOARD_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'")


@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    """The operator's first look: state, reasons, KPIs, probes, quota, alerts, freshness."""
    from shared import telemetry
    from shared.runtime import ensure_telemetry

    ensure_telemetry()
    with telemetry.invocation("status", trigger=telemetry.Trigger.HTTP):
        code, body = status_response(req.params.get("history"), req.params.get("window"))
    return _json(code, body, cache="no-store")


def status_response(history: str | None, window: str | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``/api/status`` for the given query parameters."""
    from shared.logsquery import QueryError
    from shared.runtime import load_drift_baseline
    from shared.settings import SettingsError, get_settings
    from shared.status import (
        WINDOWS_BY_NAME,
        StatusUnavailable,
        build_status,
        get_batch_runner,
        unavailable_from,
    )

    now = datetime.now(UTC)
    try:
        settings = get_settings()
    except SettingsError as exc:
        return 503, StatusUnavailable(
            "invalid_settings", "; ".join(exc.problems)).to_json(now=now, version="unknown")
    version = settings.monitoring.app_version
    series = None
    if history in ("1", "true", "yes"):
        series = WINDOWS_BY_NAME.get(window or "1h")
        if series is None:
            return 400, {"error": {"cause": "bad_request",
                                   "message": f"window must be one of {sorted(WINDOWS_BY_NAME)}"}}
    try:
        report = build_status(settings, get_batch_runner(), now=now, history=series,
                              baseline_loader=load_drift_baseline)
    except QueryError as exc:  # building the runner: workspace not configured
        return 503, unavailable_from(exc).to_json(now=now, version=version)
    except StatusUnavailable as exc:
        return 503, exc.to_json(now=now, version=version)
    return 200, report.to_json()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness for availability tests: the app is loaded and its settings parse. No internals."""
    from shared.settings import SettingsError, get_settings

    try:
        get_settings()
    except SettingsError:
        return _json(503, {"status": "unavailable"}, cache="no-store")
    return _json(200, {"status": "ok"}, cache="no-store")


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The local web dashboard: one self-contained page that polls ``/api/status``."""
    return func.HttpResponse(
        dashboard_html(), status_code=200, mimetype="text/html", charset="utf-8",
        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-store",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"},
    )


@functools.cache
def dashboard_html() -> str:
    """The page, read from the package once per process."""
    return resources.files("shared").joinpath("static/dashboard.html").read_text("utf-8")


def _json(code: int, body: dict[str, Any], *, cache: str) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, allow_nan=False), status_code=code, mimetype=JSON, charset="utf-8",
        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
    )
