"""Blob-triggered analysis: a thin adapter from ``func.InputStream`` to ``process_blob``.

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
def analyze_image(blob: func.InputStream) -> None:
    """Analyse one uploaded image; raises only when the host should retry (then poison)."""
    from shared.pipeline import process_blob
    from shared.runtime import get_pipeline_deps

    process_blob(blob_input_from_stream(blob), get_pipeline_deps())


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
