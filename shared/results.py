"""Result and failure documents: where they live, what they say, and how we avoid duplicates.

Each source blob has at most one document, ``<results>/<safe name>.json`` when analysed or
``<failed>/<safe name>.json`` when rejected for good (see ``shared.naming``). The document's
blob metadata repeats the source ETag and a hash of the source name, so the idempotency check
is one HEAD request per container: the same blob + ETag already documented → no-op; a changed
ETag → analyse again and overwrite. Writing one kind deletes a stale document of the other, so a
blob ends in exactly one of ``results/`` or ``failed/``.

``DocumentStore`` is the narrow seam over Blob Storage (unit tests use an in-memory fake).
The document may contain OCR text (it is the product's output); logs never do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import StorageError
from shared.naming import result_path

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient

    from shared.settings import Settings, StorageConnection

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
META_SOURCE_ETAG = "source_etag"
META_SOURCE_NAME_SHA256 = "source_name_sha256"
META_OUTCOME = "outcome"


def normalize_etag(etag: str | None) -> str | None:
    """ETags arrive quoted from some sources (``"0x8D…"``) and bare from others."""
    if etag is None:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def name_digest(container: str, name: str) -> str:
    return hashlib.sha256(f"{container}/{name}".encode("utf-8", "surrogatepass")).hexdigest()


class DocumentStore(Protocol):
    """The few Blob Storage operations the pipeline and replay need. Raise ``StorageError``."""

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None: ...

    def read(self, container: str, path: str) -> bytes | None: ...

    def write(
        self, container: str, path: str, body: bytes, metadata: Mapping[str, str]
    ) -> None: ...

    def delete(self, container: str, path: str) -> bool: ...

    def list_paths(self, container: str) -> Iterator[str]: ...


@dataclass(frozen=True, slots=True)
class ExistingDocument:
    container: str
    path: str
    outcome: str


class ResultRepository:
    """Idempotent writes of result/failure documents for one app's containers."""

    def __init__(self, store: DocumentStore, *, results_container: str, failed_container: str):
        self.store = store
        self.results_container = results_container
        self.failed_container = failed_container

    @classmethod
    def from_settings(cls, store: DocumentStore, settings: Settings) -> ResultRepository:
        return cls(
            store,
            results_container=settings.results_container,
            failed_container=settings.failed_container,
        )

    def find_current(self, container: str, name: str, etag: str | None) -> ExistingDocument | None:
        """The document already written for exactly this blob version, if any."""
        wanted = normalize_etag(etag)
        if wanted is None:
            return None
        path = result_path(name)
        digest = name_digest(container, name)
        for doc_container in (self.results_container, self.failed_container):
            metadata = self.store.read_metadata(doc_container, path)
            if (
                metadata is not None
                and metadata.get(META_SOURCE_ETAG) == wanted
                and metadata.get(META_SOURCE_NAME_SHA256) == digest
            ):
                return ExistingDocument(doc_container, path, metadata.get(META_OUTCOME, ""))
        return None

    def write_result(
        self, container: str, name: str, etag: str | None, doc: Mapping[str, Any]
    ) -> str:
        """Write ``results/<safe>.json``; remove a stale ``failed/`` document. Returns its path."""
        return self._write(
            self.results_container, self.failed_container, source=(container, name, etag), doc=doc
        )

    def write_failure(
        self, container: str, name: str, etag: str | None, doc: Mapping[str, Any]
    ) -> str:
        """Write ``failed/<safe>.json``; remove a stale ``results/`` document. Returns its path."""
        return self._write(
            self.failed_container, self.results_container, source=(container, name, etag), doc=doc
        )

    def _write(
        self,
        target: str,
        other: str,
        *,
        source: tuple[str, str, str | None],
        doc: Mapping[str, Any],
    ) -> str:
        container, name, etag = source
        path = result_path(name)
        metadata = {
            META_SOURCE_ETAG: normalize_etag(etag) or "",
            META_SOURCE_NAME_SHA256: name_digest(container, name),
            META_OUTCOME: str(doc.get("outcome", "")),
        }
        body = json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
        self.store.write(target, path, body, metadata)
        # a blob ends in exactly one place: drop what an older version of it left behind
        self.store.delete(other, path)
        return f"{target}/{path}"


class BlobDocumentStore:
    """``DocumentStore`` over azure-storage-blob; creates a missing container on first write."""

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    @property
    def service(self) -> BlobServiceClient:
        return self._service

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            props = self._service.get_blob_client(container, path).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading document metadata failed", reason="storage_read") from exc
        return dict(props.metadata or {})

    def read(self, container: str, path: str) -> bytes | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self._service.get_blob_client(container, path).download_blob().readall()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading document failed", reason="storage_read") from exc

    def write(self, container: str, path: str, body: bytes, metadata: Mapping[str, str]) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        blob = self._service.get_blob_client(container, path)
        settings = ContentSettings(content_type="application/json; charset=utf-8")
        try:
            try:
                blob.upload_blob(
                    body, overwrite=True, metadata=dict(metadata), content_settings=settings
                )
            except ResourceNotFoundError:
                self._create_container(container)
                blob.upload_blob(
                    body, overwrite=True, metadata=dict(metadata), content_settings=settings
                )
        except AzureError as exc:
            raise StorageError("writing document failed", reason="storage_write") from exc

    def delete(self, container: str, path: str) -> bool:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self._service.get_blob_client(container, path).delete_blob()
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise StorageError("deleting document failed", reason="storage_delete") from exc
        return True

    def list_paths(self, container: str, prefix: str | None = None) -> Iterator[str]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            client = self._service.get_container_client(container)
            yield from client.list_blob_names(name_starts_with=prefix)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise StorageError("listing documents failed", reason="storage_list") from exc

    def _create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._service.create_container(container)
            logger.info("created missing container %s", container)
        except ResourceExistsError:
            pass


def blob_service_client(
    storage: StorageConnection, *, credential: TokenCredential | None = None
) -> BlobServiceClient:
    """A client for the ``AzureWebJobsStorage`` account (connection string or identity)."""
    from azure.storage.blob import BlobServiceClient

    if storage.connection_string is not None:
        return BlobServiceClient.from_connection_string(storage.connection_string)
    if storage.blob_service_uri is None:  # Settings.from_env guarantees one of the two
        raise StorageError("no blob endpoint configured", reason="storage_config")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=storage.client_id)
    return BlobServiceClient(storage.blob_service_uri, credential=credential)
