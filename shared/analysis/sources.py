"""The triggering blob: its current version, and the bytes of exactly one version, capped.

The pipeline never receives image bytes from the Functions host. It gets a handle on the blob
(``SourceBlob``) and asks, in this order:

* ``properties()`` — one HEAD: the blob's current ETag and ``ContentLength`` (``None`` once the
  blob is gone). The size is checked against ``PREPROCESS_MAX_INPUT_BYTES`` *before* any byte is
  read, so an oversized upload costs one HEAD, not its size in memory;
* ``read(etag, limit)`` — the bytes of that version only (``If-Match``), streamed in chunks and
  abandoned past ``limit``, so the bytes, the size and the SHA-256 the document records all
  describe the ETag it records. A newer version (412) or a deleted blob (404) raises
  ``SourceChanged``: the version asked for is no longer the blob's;
* ``properties()`` again just before a document is written, to tell whether the version
  analysed is still the current one (see ``shared.analysis.results.ResultRepository.commit``).

``BlobClientSource`` implements it over an ``azure.storage.blob.BlobClient`` (what the trigger
binding hands the function); unit tests use an in-memory fake. Never logs blob content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

from shared.analysis.results import normalize_etag
from shared.errors import InvalidImageError, StorageError

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobServiceClient

__all__ = [
    "INPUT_TOO_LARGE",
    "BlobClientSource",
    "BlobSourceBlobs",
    "SourceBlob",
    "SourceChanged",
    "SourceVersion",
    "too_large",
]

#: ``shared.analysis.imageformat.RejectReason.INPUT_TOO_LARGE``; the same reason whoever finds it.
INPUT_TOO_LARGE = "input_too_large"


@dataclass(frozen=True, slots=True)
class SourceVersion:
    """One version of the source blob, as its properties describe it (ETag unquoted)."""

    etag: str | None
    size: int
    content_type: str | None = None
    last_modified: str | None = None
    #: the blob's user metadata (the end-to-end probe's marker lives here)
    metadata: Mapping[str, str] = field(default_factory=dict)


class SourceChanged(Exception):
    """The version asked for is no longer the blob's: overwritten (``current`` its ETag) or
    deleted (``current`` None). Not an error: the pipeline records the version as superseded."""

    def __init__(self, current: str | None) -> None:
        super().__init__("the blob changed since its properties were read")
        self.current = current


class SourceBlob(Protocol):
    """The few operations the pipeline needs on the triggering blob. Raise ``StorageError``."""

    @property
    def container(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def uri(self) -> str | None: ...

    def properties(self) -> SourceVersion | None: ...

    def read(self, etag: str | None, limit: int) -> bytes: ...


class SourceBlobs(Protocol):
    """Blobs of the images container as replay and re-drive touch them: a re-touch rewrites a
    blob unchanged so the trigger sees a new version."""

    def current_etag(self, container: str, name: str) -> str | None: ...

    def retouch(self, container: str, name: str, etag: str) -> str:
        """Rewrite the blob unchanged under If-Match ``etag``; return its new ETag."""
        ...


def too_large(size: int, limit: int) -> InvalidImageError:
    return InvalidImageError(
        f"{size} bytes exceeds PREPROCESS_MAX_INPUT_BYTES ({limit})", reason=INPUT_TOO_LARGE
    )


class BlobClientSource:
    """``SourceBlob`` over an azure-storage-blob ``BlobClient``."""

    def __init__(self, client: BlobClient) -> None:
        self._client = client

    @property
    def container(self) -> str:
        return str(self._client.container_name)

    @property
    def name(self) -> str:
        return str(self._client.blob_name)

    @property
    def uri(self) -> str | None:
        return str(self._client.url)

    def properties(self) -> SourceVersion | None:
        try:
            props = self._client.get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading the source blob's properties failed",
                               reason="storage_read") from exc
        settings = props.content_settings
        modified = props.last_modified
        return SourceVersion(
            etag=normalize_etag(str(props.etag)) if props.etag else None,
            size=int(props.size or 0),
            content_type=settings.content_type if settings is not None else None,
            last_modified=modified.isoformat() if modified is not None else None,
            metadata={str(k): str(v) for k, v in (props.metadata or {}).items()},
        )

    def read(self, etag: str | None, limit: int) -> bytes:
        chunks: list[bytes] = []
        received = 0
        try:
            if etag is None:
                downloader = self._client.download_blob(max_concurrency=1)
            else:
                downloader = self._client.download_blob(
                    etag=f'"{etag}"', match_condition=MatchConditions.IfNotModified,
                    max_concurrency=1,
                )
            # The cap holds even if the service sent more than the size we checked.
            if downloader.size > limit:
                raise too_large(downloader.size, limit)
            for chunk in downloader.chunks():
                received += len(chunk)
                if received > limit:
                    raise too_large(received, limit)
                chunks.append(chunk)
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise SourceChanged(self._current_etag()) from exc
        except AzureError as exc:
            raise StorageError("reading the source blob failed", reason="storage_read") from exc
        return b"".join(chunks)

    def _current_etag(self) -> str | None:
        current = self.properties()
        return current.etag if current is not None else None


class BlobSourceBlobs:
    """``SourceBlobs`` over azure-storage-blob: the re-touch that re-drive (parked blobs) and the
    operator's replay tool (``devstack.replay``) use to make the trigger fire again."""

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    def current_etag(self, container: str, name: str) -> str | None:
        try:
            props = self._service.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return str(props.etag)

    def retouch(self, container: str, name: str, etag: str) -> str:
        blob = self._service.get_blob_client(container, name)
        try:
            downloader = blob.download_blob(
                etag=etag, match_condition=MatchConditions.IfNotModified
            )
            data = downloader.readall()
            props = downloader.properties
            metadata = dict(props.metadata or {})
            metadata["replayed_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            result = blob.upload_blob(
                data,
                overwrite=True,
                metadata=metadata,
                content_settings=props.content_settings,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except AzureError as exc:
            raise StorageError("re-touching the blob failed", reason="replay_retouch") from exc
        return str(result.get("etag", ""))
