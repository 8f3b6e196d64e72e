"""Blob-triggered analysis: a thin adapter from the trigger's ``BlobClient`` to ``process_blob``.
Also the timer that re-drives blobs parked while Vision was down (``shared.analysis.parking``).

The trigger parameter is an SDK type (``azurefunctions-extensions-bindings-blob``): the worker
declares the binding as deferred, so the host never reads the blob — it sends the blob's
connection, container and name, and the worker builds an ``azure.storage.blob.BlobClient`` from
the ``AzureWebJobsStorage`` setting. With ``func.InputStream`` the host would read the whole blob
and ship it to the worker before our code could look at its size (a 200 MB upload = 200 MB+ of
host and worker memory per invocation). ``shared.analysis.pipeline`` reads the size first and the
bytes of
one version only, capped.

The SDK type must be importable when the worker indexes the app (it resolves the annotation),
so it is imported at module level; it pulls in azure-storage-blob and azure-identity, which the
app imports anyway. In Azure (Flex Consumption) the trigger uses the Event Grid source; the
infra creates the Event Grid subscription. Clients and settings are built lazily on the first
invocation, so importing this module cannot fail on configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_sdk

if TYPE_CHECKING:
    from shared.analysis.sources import SourceBlob

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped


@bp.blob_trigger(
    arg_name="blob",
    path="%IMAGES_CONTAINER%/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def analyze_image(blob: blob_sdk.BlobClient, context: func.Context) -> None:
    """Analyse one uploaded image; raises only when the host should retry (then poison).

    ``blob`` is a plain ``azure.storage.blob.BlobClient`` at run time (the annotation is what
    tells the worker to defer the binding). ``context`` gives the invocation id and the host's
    trace context for the request span. It is annotated ``func.Context`` exactly: the worker
    refuses to load a function whose ``context`` annotation is anything else (e.g. Optional).
    """
    from shared.analysis.sources import BlobClientSource

    run_analysis(BlobClientSource(blob), context)


def run_analysis(source: SourceBlob, context: func.Context) -> None:
    """The handler's body over our own seam (tests pass an in-memory blob)."""
    from shared import telemetry
    from shared.analysis.pipeline import process_blob
    from shared.composition import ensure_telemetry, get_pipeline_deps

    ensure_telemetry()
    trace_context = context.trace_context
    with telemetry.invocation(
        context.function_name or "analyze_image",
        trigger=telemetry.Trigger.DATASOURCE,
        invocation_id=context.invocation_id,
        trace_parent=trace_context.trace_parent if trace_context is not None else None,
        trace_state=trace_context.trace_state if trace_context is not None else None,
        blob=(source.container, source.name),
    ):  # synthetic or not is known once the pipeline read the blob's marker (on_started)
        process_blob(source, get_pipeline_deps())


@bp.timer_trigger(arg_name="timer", schedule="%REDRIVE_SCHEDULE%", run_on_startup=False)
def redrive_parked(timer: func.TimerRequest, context: func.Context) -> None:
    """Bring blobs parked during a Vision outage back once Vision answers (no operator)."""
    # No request span of its own: it runs every few seconds and would crowd the KPI queries;
    # the blobs it re-drives get their own spans when they are analysed.
    from shared.composition import ensure_telemetry
    from shared.composition import redrive_parked as run

    ensure_telemetry()
    run()
