"""Hand-written fakes of our own seams, shared by the tests (no mocks, no SDK patching)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from shared.analysis.results import DocumentConflict, StoredDocument, normalize_etag
from shared.analysis.sources import SourceChanged, SourceVersion, too_large
from shared.errors import StorageError
from shared.monitoring.drift import BASELINE_DOCUMENT
from shared.naming import result_path

_etags = itertools.count(1)


def _next_etag(prefix: str) -> str:
    return f'"{prefix}{next(_etags):04d}"'


class MemoryStore:
    """In-memory ``DocumentStore`` with the service's preconditions on each document's ETag.

    ``fail_writes`` makes every write a ``StorageError``. ``before`` hooks run before each
    ``head``/``write``/``delete`` with (operation, container, path): a test uses them to let
    another writer act at an exact point of the commit protocol.
    """

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.etags: dict[tuple[str, str], str] = {}
        self.fail_writes = False
        self.before: list[Callable[[str, str, str], None]] = []
        self.conflicts = 0

    def _hook(self, operation: str, container: str, path: str) -> None:
        for hook in list(self.before):
            hook(operation, container, path)

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None:
        item = self.blobs.get((container, path))
        return None if item is None else dict(item[1])

    def head(self, container: str, path: str) -> StoredDocument | None:
        self._hook("head", container, path)
        item = self.blobs.get((container, path))
        if item is None:
            return None
        return StoredDocument(self.etags[(container, path)], dict(item[1]))

    def read(self, container: str, path: str) -> bytes | None:
        item = self.blobs.get((container, path))
        return None if item is None else item[0]

    def write(
        self, container: str, path: str, body: bytes, metadata: Mapping[str, str], *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str:
        self._hook("write", container, path)
        if self.fail_writes:
            raise StorageError("storage down", reason="storage_write")
        key = (container, path)
        if (if_match is not None and self.etags.get(key) != if_match) or (
            if_absent and key in self.blobs
        ):
            self.conflicts += 1
            raise DocumentConflict(path)
        self.blobs[key] = (body, dict(metadata))
        self.etags[key] = _next_etag("0xD")
        return self.etags[key]

    def delete(self, container: str, path: str, *, if_match: str | None = None) -> bool:
        self._hook("delete", container, path)
        key = (container, path)
        if key not in self.blobs:
            return False
        if if_match is not None and self.etags.get(key) != if_match:
            self.conflicts += 1
            raise DocumentConflict(path)
        self.blobs.pop(key)
        self.etags.pop(key, None)
        return True

    def list_paths(self, container: str) -> Iterator[str]:
        # a snapshot: callers delete while they iterate
        yield from sorted(path for c, path in self.blobs if c == container)

    def doc(self, container: str, name: str) -> dict[str, Any] | None:
        """The result document written for blob ``name`` in ``container``, parsed."""
        raw = self.read(container, result_path(name))
        return None if raw is None else json.loads(raw)


class MemoryBlob:
    """A source blob (``SourceBlob``) that can be overwritten or deleted mid-invocation.

    ``upload`` makes a new version with a fresh ETag and returns it; ``reads`` counts the bytes
    handed out, so a test can prove an oversized blob was never read.
    """

    def __init__(self, name: str = "cats/tom.jpg", data: bytes = b"", *, etag: str | None = None,
                 container: str = "images", content_type: str | None = "image/jpeg",
                 size: int | None = None) -> None:
        self._container = container
        self._name = name
        self.versions: list[tuple[str, bytes]] = []
        self.current: tuple[str, bytes] | None = None
        self.declared_size = size
        self.bytes_read = 0
        self.heads = 0
        self.content_type = content_type
        self.upload(data, etag=etag)

    @property
    def container(self) -> str:
        return self._container

    @property
    def name(self) -> str:
        return self._name

    @property
    def uri(self) -> str | None:
        return f"http://127.0.0.1:10000/devstoreaccount1/{self._container}/{self._name}"

    @property
    def etag(self) -> str:
        """The current version's ETag, unquoted."""
        assert self.current is not None
        return normalize_etag(self.current[0]) or ""

    def upload(self, data: bytes, *, etag: str | None = None) -> str:
        version = (etag or _next_etag("0x8"), data)
        self.versions.append(version)
        self.current = version
        return normalize_etag(version[0]) or ""

    def delete(self) -> None:
        self.current = None

    def properties(self) -> SourceVersion | None:
        self.heads += 1
        if self.current is None:
            return None
        etag, data = self.current
        size = self.declared_size if self.declared_size is not None else len(data)
        return SourceVersion(etag=normalize_etag(etag), size=size,
                             content_type=self.content_type,
                             last_modified="2024-05-01T12:00:00+00:00")

    def read(self, etag: str | None, limit: int) -> bytes:
        if self.current is None or (etag is not None and self.etag != normalize_etag(etag)):
            raise SourceChanged(None if self.current is None else self.etag)
        data = self.current[1]
        if len(data) > limit:
            raise too_large(len(data), limit)
        self.bytes_read += len(data)
        return data


class Documents:
    """The status container's JSON documents in memory (``read_json``/``write_json``), seeded
    with a drift baseline document when ``doc`` is given."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.docs: dict[str, dict[str, Any]] = {} if doc is None else {BASELINE_DOCUMENT: doc}

    def read_json(self, path: str) -> dict[str, Any] | None:
        return self.docs.get(path)

    def write_json(self, path: str, doc: Mapping[str, Any]) -> None:
        self.docs[path] = dict(doc)
