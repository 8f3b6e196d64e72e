"""A tiny function app that proves the local Functions host (never deployed).

It uses ``func.FunctionApp`` plus a ``Blueprint`` like the real app, and records every invocation
as one JSON line in the file named by ``HOST_TEST_RECORD`` so tests can see what ran, how often and
when. ``TEST_OVERLAP_TARGET`` makes each blob invocation wait (up to ``TEST_OVERLAP_WAIT`` seconds)
until that many run at once, so a test can prove parallelism without guessing at timing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
blueprint = func.Blueprint()

_lock = threading.Lock()
_overlap = threading.Condition()
_running = {"count": 0}


def _record(**event: Any) -> None:
    path = os.environ.get("HOST_TEST_RECORD")
    if not path:
        return
    event["t"] = time.monotonic()
    event["pid"] = os.getpid()
    with _lock, Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(event) + "\n")


@blueprint.blob_trigger(arg_name="blob", path="%TEST_CONTAINER%/{name}",
                        connection="AzureWebJobsStorage")
def record_blob(blob: func.InputStream, context: func.Context) -> None:
    properties = blob.blob_properties or {}
    _record(fn="record_blob", event="start", name=blob.name, uri=blob.uri, length=blob.length,
            etag=properties.get("ETag"), invocation=context.invocation_id,
            thread=threading.get_ident(), body=blob.read().decode("utf-8", "replace"))
    target = int(os.environ.get("TEST_OVERLAP_TARGET", "1"))
    with _overlap:
        _running["count"] += 1
        _overlap.notify_all()
        _overlap.wait_for(lambda: _running["count"] >= target,
                          timeout=float(os.environ.get("TEST_OVERLAP_WAIT", "10")))
    with _overlap:
        _running["count"] -= 1
    _record(fn="record_blob", event="end", name=blob.name, invocation=context.invocation_id)


@blueprint.blob_trigger(arg_name="blob", path="%TEST_FAIL_CONTAINER%/{name}",
                        connection="AzureWebJobsStorage")
def always_fails(blob: func.InputStream) -> None:
    _record(fn="always_fails", name=blob.name)
    raise RuntimeError(f"always_fails refuses {blob.name}")


@app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%", run_on_startup=False,
                   use_monitor=True)
def tick(timer: func.TimerRequest) -> None:
    status = timer.schedule_status or {}
    _record(fn="tick", past_due=timer.past_due, last=status.get("Last"), next=status.get("Next"))


@app.route(route="items/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    body = {"id": req.route_params.get("id"), "q": req.params.get("q"), "method": req.method}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@blueprint.route(route="ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")


@app.route(route="admin-only", auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> str:
    return "secret"


# Not supported by the local host: it must be logged and skipped, never crash the host.
@app.queue_trigger(arg_name="message", queue_name="host-test-ignored",
                   connection="AzureWebJobsStorage")
def ignored_queue(message: func.QueueMessage) -> None:
    _record(fn="ignored_queue")


app.register_functions(blueprint)
