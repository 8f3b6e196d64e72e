"""Hand-written fakes of our own seams, shared by the unit tests (no mocks, no SDK patching)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from shared.errors import StorageError
from shared.naming import result_path


class MemoryStore:
    """In-memory ``DocumentStore``; ``fail_writes`` makes every write a ``StorageError``."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.fail_writes = False

    def read_metadata(self, container: str, path: str) -> Mapping[str, str] | None:
        item = self.blobs.get((container, path))
        return None if item is None else dict(item[1])

    def read(self, container: str, path: str) -> bytes | None:
        item = self.blobs.get((container, path))
        return None if item is None else item[0]

    def write(self, container: str, path: str, body: bytes, metadata: Mapping[str, str]) -> None:
        if self.fail_writes:
            raise StorageError("storage down", reason="storage_write")
        self.blobs[(container, path)] = (body, dict(metadata))

    def delete(self, container: str, path: str) -> bool:
        return self.blobs.pop((container, path), None) is not None

    def list_paths(self, container: str) -> Iterator[str]:
        # a snapshot: callers delete while they iterate
        yield from sorted(path for c, path in self.blobs if c == container)

    def doc(self, container: str, name: str) -> dict[str, Any] | None:
        """The result document written for blob ``name`` in ``container``, parsed."""
        raw = self.read(container, result_path(name))
        return None if raw is None else json.loads(raw)
