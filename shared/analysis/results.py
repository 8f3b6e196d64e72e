"""Result and failure documents: where they live, what they say, and how we avoid duplicates.

Each source blob has at most one document, ``<results>/<safe name>.json`` when analysed or
``<failed>/<safe name>.json`` when rejected for good (see ``shared.naming``). The document's
blob metadata repeats the source ETag and a hash of the source name, so the idempotency check
is one HEAD request per container: the same blob + ETag already documented → no-op; a changed
ETag → analyse again and overwrite. Writing one kind deletes a stale document of the other, so a
blob ends in exactly one of ``results/`` or ``failed/``.

**Last version wins.** ``ResultRepository.commit`` writes a document only while the version it
describes is the source blob's current one, and only over the exact document it looked at
(``If-Match`` on that document's own ETag, ``If-None-Match: *`` when there was none): read both
documents' ETags → HEAD the source (not current → *superseded*, nothing written) → conditional
write (412 → start again) → conditional delete of the other container's document → HEAD the
source again (no longer current → withdraw what was just written, conditionally, → superseded).
Any writer of an older version that races a writer of the newer one either fails its
precondition or sees the newer ETag in one of its two HEADs, so the document left at the end
describes the version that was current when the last writer checked (docs/pipeline.md).

``DocumentStore`` is the narrow seam over Blob Storage (unit tests use an in-memory fake).
The document may contain OCR text (it is the product's output); logs never do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient, ContentSettings

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
#: Rounds of read → check → conditional write before giving up to the host's retry: each lost
#: round means another writer changed the document in between, which a handful of versions
#: uploaded seconds apart cannot do more than a few times in a row.
COMMIT_ATTEMPTS = 6


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


class DocumentConflict(Exception):
    """A conditional write or delete lost: the document is not the one the caller looked at."""


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document blob's own ETag (for conditional writes) and its metadata."""

    etag: str
    metadata: Mapping[str, str]


class DocumentStore(Protocol):
    """The few Blob Storage operations the pipeline and replay need. Raise ``StorageError``.

    ``write`` and ``delete`` take preconditions on the document blob's own ETag: ``if_match``
    (only that version of it) or ``if_absent`` (only if there is none); a failed one raises
    ``DocumentConflict``. ``write`` returns the new document's ETag.
    """

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None: ...

    def head(self, container: str, path: str) -> StoredDocument | None: ...

    def read(self, container: str, path: str) -> bytes | None: ...

    def write(
        self, container: str, path: str, body: bytes, metadata: Mapping[str, str], *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str: ...

    def delete(self, container: str, path: str, *, if_match: str | None = None) -> bool: ...

    def list_paths(self, container: str) -> Iterator[str]: ...


class Commit(StrEnum):
    """How ``ResultRepository.commit`` ended."""

    WRITTEN = "written"
    #: a document for exactly this version was already there (a concurrent or earlier run)
    ALREADY_WRITTEN = "already_written"
    #: the version is no longer the blob's current one: nothing of it is left behind
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class CommitResult:
    status: Commit
    path: str
    #: the source's ETag when the commit gave up on an out-of-date version (None: deleted)
    current_etag: str | None = None


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
            results_container=settings.pipeline.results_container,
            failed_container=settings.pipeline.failed_container,
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

    def commit_result(
        self, container: str, name: str, etag: str | None, doc: Mapping[str, Any], *,
        current_etag: Callable[[], str | None],
    ) -> CommitResult:
        """``results/<safe>.json`` for this version, only while it is current (module doc)."""
        return self._commit(self.results_container, self.failed_container,
                            source=(container, name, etag), doc=doc, current_etag=current_etag)

    def commit_failure(
        self, container: str, name: str, etag: str | None, doc: Mapping[str, Any], *,
        current_etag: Callable[[], str | None],
    ) -> CommitResult:
        """``failed/<safe>.json`` for this version, only while it is current (module doc)."""
        return self._commit(self.failed_container, self.results_container,
                            source=(container, name, etag), doc=doc, current_etag=current_etag)

    def _commit(
        self,
        target: str,
        other: str,
        *,
        source: tuple[str, str, str | None],
        doc: Mapping[str, Any],
        current_etag: Callable[[], str | None],
    ) -> CommitResult:
        container, name, etag = source
        ours = normalize_etag(etag)
        path = result_path(name)
        digest = name_digest(container, name)
        where = f"{target}/{path}"
        metadata, body = _encode(ours, digest, doc)

        def describes_ours(found: StoredDocument | None) -> bool:
            return (found is not None and found.metadata.get(META_SOURCE_ETAG) == ours
                    and found.metadata.get(META_SOURCE_NAME_SHA256) == digest)

        wrote = False  # by this call, in an earlier round that then lost a delete
        for _ in range(COMMIT_ATTEMPTS):
            mine = self.store.head(target, path)
            theirs = self.store.head(other, path)
            current = normalize_etag(current_etag())
            if current != ours:
                return CommitResult(Commit.SUPERSEDED, where, current)
            try:
                if mine is not None and describes_ours(mine):
                    written = mine.etag
                else:
                    written = self.store.write(
                        target, path, body, metadata,
                        if_match=mine.etag if mine is not None else None, if_absent=mine is None,
                    )
                    wrote = True
                if theirs is not None:
                    # a blob ends in exactly one place: drop what another version left behind,
                    # but only the document looked at (a newer writer's is not ours to delete)
                    self.store.delete(other, path, if_match=theirs.etag)
            except DocumentConflict:
                continue
            # A newer version may have arrived while we wrote: then its own run documents it,
            # and ours must not be what is left if that run finished first.
            current = normalize_etag(current_etag())
            if current != ours:
                with contextlib.suppress(DocumentConflict):  # already replaced by a newer one
                    self.store.delete(target, path, if_match=written)
                return CommitResult(Commit.SUPERSEDED, where, current)
            return CommitResult(Commit.WRITTEN if wrote else Commit.ALREADY_WRITTEN, where)
        raise StorageError(
            f"the document kept changing during {COMMIT_ATTEMPTS} conditional writes",
            reason="document_conflict",
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
        metadata, body = _encode(normalize_etag(etag), name_digest(container, name), doc)
        self.store.write(target, path, body, metadata)
        # a blob ends in exactly one place: drop what an older version of it left behind
        self.store.delete(other, path)
        return f"{target}/{path}"


def _encode(
    etag: str | None, digest: str, doc: Mapping[str, Any]
) -> tuple[dict[str, str], bytes]:
    metadata = {
        META_SOURCE_ETAG: etag or "",
        META_SOURCE_NAME_SHA256: digest,
        META_OUTCOME: str(doc.get("outcome", "")),
    }
    return metadata, json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")


class BlobDocumentStore:
    """``DocumentStore`` over azure-storage-blob; creates a missing container on first write."""

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    @property
    def service(self) -> BlobServiceClient:
        return self._service

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None:
        try:
            props = self._service.get_blob_client(container, path).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading document metadata failed", reason="storage_read") from exc
        return dict(props.metadata or {})

    def read(self, container: str, path: str) -> bytes | None:
        try:
            return self._service.get_blob_client(container, path).download_blob().readall()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading document failed", reason="storage_read") from exc

    def head(self, container: str, path: str) -> StoredDocument | None:
        try:
            props = self._service.get_blob_client(container, path).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading document metadata failed", reason="storage_read") from exc
        return StoredDocument(etag=str(props.etag), metadata=dict(props.metadata or {}))

    def write(
        self, container: str, path: str, body: bytes, metadata: Mapping[str, str], *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str:
        blob = self._service.get_blob_client(container, path)
        options: dict[str, Any] = {
            "metadata": dict(metadata),
            "content_settings": ContentSettings(content_type="application/json; charset=utf-8"),
        }
        if if_match is not None:
            options.update(overwrite=True, etag=if_match,
                           match_condition=MatchConditions.IfNotModified)
        else:
            # overwrite=False sends If-None-Match: *
            options["overwrite"] = not if_absent
        try:
            try:
                written = blob.upload_blob(body, **options)
            except ResourceNotFoundError:
                if if_match is not None:  # the document we looked at is gone
                    raise DocumentConflict(path) from None
                self._create_container(container)
                written = blob.upload_blob(body, **options)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise DocumentConflict(path) from exc
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                raise DocumentConflict(path) from exc
            raise StorageError("writing document failed", reason="storage_write") from exc
        return str(written["etag"])

    def delete(self, container: str, path: str, *, if_match: str | None = None) -> bool:
        options: dict[str, Any] = {}
        if if_match is not None:
            options.update(etag=if_match, match_condition=MatchConditions.IfNotModified)
        try:
            self._service.get_blob_client(container, path).delete_blob(**options)
        except ResourceNotFoundError:
            return False  # gone is what a delete wants, whoever deleted it
        except ResourceModifiedError as exc:
            raise DocumentConflict(path) from exc
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                raise DocumentConflict(path) from exc
            raise StorageError("deleting document failed", reason="storage_delete") from exc
        return True

    def list_paths(self, container: str, prefix: str | None = None) -> Iterator[str]:
        try:
            client = self._service.get_container_client(container)
            yield from client.list_blob_names(name_starts_with=prefix)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise StorageError("listing documents failed", reason="storage_list") from exc

    def _create_container(self, container: str) -> None:
        try:
            self._service.create_container(container)
            logger.info("created missing container %s", container)
        except ResourceExistsError:
            pass


def blob_service_client(
    storage: StorageConnection, *, credential: TokenCredential | None = None
) -> BlobServiceClient:
    """A client for the ``AzureWebJobsStorage`` account (connection string or identity)."""
    if storage.connection_string is not None:
        return BlobServiceClient.from_connection_string(storage.connection_string)
    if storage.blob_service_uri is None:  # Settings.from_env guarantees one of the two
        raise StorageError("no blob endpoint configured", reason="storage_config")
    if credential is None:
        credential = DefaultAzureCredential(managed_identity_client_id=storage.client_id)
    return BlobServiceClient(storage.blob_service_uri, credential=credential)
