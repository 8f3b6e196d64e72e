"""Blob-triggered analysis: a thin adapter from ``func.InputStream`` to ``process_blob``, and
the timer that re-drives blobs parked while Vision was down (``shared.parking``).

In Azure (Flex Consumption) the trigger uses the Event Grid source; the infra creates the Event
Grid subscription. Everything below the adapter lives in ``shared.pipeline``. Clients and
settings are built lazily on the first invocation, so importing this module cannot fail on
configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from shared.pipeline import BlobInput

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped


@bp.blob_trigger(
    arg_name="blob",
    path="%IMAGES_CONTAINER%/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def analyze_image(blob: func.InputStream, context: func.Context | None = None) -> None:
    """Analyse one uploaded image; raises only when the host should retry (then poison).

    ``context`` (the worker passes it by name) gives the invocation id and the host's trace
    context for the request span; direct calls in tests may omit it.
    """
    from shared import telemetry
    from shared.pipeline import process_blob
    from shared.runtime import ensure_telemetry, get_pipeline_deps

    ensure_telemetry()
    source = blob_input_from_stream(blob)
    trace_context = context.trace_context if context is not None else None
    with telemetry.invocation(
        (context.function_name if context is not None else None) or "analyze_image",
        trigger=telemetry.Trigger.DATASOURCE,
        invocation_id=context.invocation_id if context is not None else None,
        trace_parent=trace_context.trace_parent if trace_context is not None else None,
        trace_state=trace_context.trace_state if trace_context is not None else None,
        blob=(source.container, source.name),
    ):
        process_blob(source, get_pipeline_deps())


def blob_input_from_stream(stream: func.InputStream) -> BlobInput:
    """Plain values from what the worker builds out of the trigger metadata.

    ``name`` is the ``BlobTrigger`` metadata, ``<container>/<path>``; ``blob_properties`` is the
    host's serialized ``BlobProperties`` (``ETag``, ``ContentType``, ``LastModified``,
    ``ContentLength`` …).
    """
    from shared.pipeline import BlobInput

    full_name = stream.name or ""
    container, _, name = full_name.partition("/")
    if not name:
        container, name = "", full_name
    # the concrete InputStream has blob_properties; the abstract type func exports does not
    properties = getattr(stream, "blob_properties", None) or {}
    return BlobInput(
        container=container,
        name=name,
        data=stream.read(),
        etag=_text(properties.get("ETag") or properties.get("Etag")),
        content_type=_text(properties.get("ContentType")),
        last_modified=_text(properties.get("LastModified")),
        uri=stream.uri,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@bp.timer_trigger(arg_name="timer", schedule="%REDRIVE_SCHEDULE%", run_on_startup=False)
def redrive_parked(timer: func.TimerRequest, context: func.Context | None = None) -> None:
    """Bring blobs parked during a Vision outage back once Vision answers (no operator)."""
    # No request span of its own: it runs every few seconds and would crowd the KPI queries;
    # the blobs it re-drives get their own spans when they are analysed.
    from shared.runtime import ensure_telemetry
    from shared.runtime import redrive_parked as run

    ensure_telemetry()
    run()
