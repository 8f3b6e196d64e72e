"""The tuning review: a daily timer, an on-demand run, its state, and manual pins.

Thin adapters over ``shared.ops.tuning.review``: the timer runs on ``%TUNING_SCHEDULE%`` and never
on start-up; ``POST /api/tuning/review[?mode=recommend|apply]`` runs one now (function key);
``GET /api/tuning`` returns the last review and the overlay in force (function key);
``PUT``/``DELETE /api/tuning/pins/{tunable}`` pins or unpins a runtime tunable (admin key:
it changes what production runs with).
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped


def _json(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, sort_keys=True), status_code=status,
                             mimetype="application/json",
                             headers={"Cache-Control": "no-store"})


def _context() -> Any:
    from shared.composition import ensure_telemetry, get_review_context

    ensure_telemetry()
    return get_review_context()


@bp.timer_trigger(arg_name="timer", schedule="%TUNING_SCHEDULE%", run_on_startup=False)
def tuning_review(timer: func.TimerRequest, context: func.Context) -> None:
    """Review retries, timeout, backoff, preprocessing and rate from the last window's telemetry."""
    from shared.ops.tuning.review import tuning_timer

    tuning_timer(_context(), past_due=timer.past_due,
                 invocation_id=context.invocation_id)


@bp.route(route="tuning/review", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def tuning_review_now(req: func.HttpRequest) -> func.HttpResponse:
    from shared.ops.tuning.review import review_now

    return _json(*review_now(_context(), req.params.get("mode")))


@bp.route(route="tuning", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def tuning_get(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import StorageError
    from shared.ops.tuning.review import tuning_state

    try:
        return _json(200, tuning_state(_context()))
    except StorageError as exc:
        return _json(503, {"error": "storage_unavailable", "message": exc.reason})


@bp.route(route="tuning/pins/{tunable}", methods=["PUT", "DELETE"],
          auth_level=func.AuthLevel.ADMIN)
def tuning_pin(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import StorageError
    from shared.ops.tuning.review import set_pin

    tunable = req.route_params.get("tunable", "")
    value: float | None = None
    if req.method == "PUT":
        try:
            body = req.get_json()
            raw = body.get("value") if isinstance(body, dict) else None
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError
            value = float(raw)
        except ValueError:
            return _json(400, {"error": "bad_pin", "message": 'body must be {"value": <number>}'})
    try:
        return _json(*set_pin(_context(), tunable, value))
    except StorageError as exc:
        return _json(503, {"error": "storage_unavailable", "message": exc.reason})
