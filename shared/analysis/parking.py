"""Parking: blob versions that met a Vision outage wait here and are re-driven when it answers.

When the Vision client's breaker is open the pipeline does not raise (which would spend the
host's five tries in seconds and poison the blob) but *parks* the blob version: one small
document in ``PARKED_CONTAINER`` at ``<safe name>/<etag>.json`` saying which blob, which
version, why and when. The invocation then succeeds, so the host completes its receipt.

``redrive`` (the ``redrive_parked`` timer, every ``REDRIVE_SCHEDULE``) brings them back without
an operator: for each parked document, if the blob is gone, has a newer version (that version
triggers by itself) or its version already has a result document, the parked document is
dropped; otherwise the blob is *re-touched* exactly as ``devstack.replay`` does (same bytes,
content settings and metadata, under ``If-Match`` on the parked ETag), which gives it a new ETag
and a new BlobCreated event, and only then is the parked document deleted. A crash in between
leaves the document, whose ETag is then stale, so the next run drops it: nothing is lost and
nothing is analysed twice for one version.

How many per run depends on the breaker of this instance: closed (Vision answers) → up to
``REDRIVE_BATCH``; open → one blob when a probing call is due (its analysis *is* the probe), none
otherwise. So during an outage the parked blobs cost no Vision calls beyond the probes.

Never logs blob contents; names only as the host already does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from shared.analysis.results import DocumentStore, ResultRepository, normalize_etag
from shared.errors import StorageError
from shared.naming import safe_stem

if TYPE_CHECKING:
    from shared.analysis.sources import SourceBlobs

logger = logging.getLogger(__name__)

PARKED_SCHEMA_VERSION = 1

__all__ = ["ParkedBlob", "ParkingLot", "RedriveGate", "RedriveReport", "redrive"]


@dataclass(frozen=True, slots=True)
class ParkedBlob:
    path: str
    container: str
    name: str
    etag: str


class ParkingLot:
    """Parked blob versions in one container of the app's storage account."""

    def __init__(self, store: DocumentStore, container: str) -> None:
        self.store = store
        self.container = container

    @staticmethod
    def path_for(name: str, etag: str) -> str:
        # the ETag is the last segment: two versions of one blob are two documents, so
        # releasing one never deletes the other
        return f"{safe_stem(name)}/{etag}.json"

    def park(self, container: str, name: str, etag: str | None, *, reason: str,
             now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
        """Record the blob version; returns ``<parked container>/<path>``."""
        version = normalize_etag(etag) or "unknown"
        path = self.path_for(name, version)
        body = json.dumps({
            "schema_version": PARKED_SCHEMA_VERSION,
            "source": {"container": container, "name": name, "etag": version},
            "reason": reason,
            "parked_at": now().isoformat(),
        }, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self.store.write(self.container, path, body, {"source_etag": version})
        return f"{self.container}/{path}"

    def parked(self) -> Iterator[ParkedBlob | str]:
        """Every parked document, or its path when it cannot be read as one."""
        for path in list(self.store.list_paths(self.container)):
            raw = self.store.read(self.container, path)
            parsed = _parse(path, raw)
            yield parsed if parsed is not None else path

    def release(self, path: str) -> None:
        self.store.delete(self.container, path)


def _parse(path: str, raw: bytes | None) -> ParkedBlob | None:
    try:
        doc = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    source = doc.get("source") if isinstance(doc, dict) else None
    if not isinstance(source, dict):
        return None
    container, name, etag = source.get("container"), source.get("name"), source.get("etag")
    if not (isinstance(container, str) and isinstance(name, str) and isinstance(etag, str)):
        return None
    return ParkedBlob(path, container, name, etag)


class RedriveGate(Protocol):
    """What ``redrive`` needs from the Vision client's breaker."""

    def probe_due(self) -> bool: ...

    @property
    def closed(self) -> bool: ...


@dataclass(slots=True)
class RedriveReport:
    requeued: int = 0
    dropped: int = 0  # gone, newer version, or already has a result
    undecodable: int = 0
    errors: int = 0
    left: int = 0  # parked documents not looked at this run (allowance used up)

    @property
    def seen(self) -> int:
        return self.requeued + self.dropped + self.undecodable + self.errors


def allowance(gate: RedriveGate, batch: int) -> int:
    if gate.closed:
        return batch
    return 1 if gate.probe_due() else 0


def redrive(lot: ParkingLot, *, blobs: SourceBlobs, repository: ResultRepository,
            images_container: str, gate: RedriveGate, batch: int) -> RedriveReport:
    """Re-touch parked blob versions while Vision answers (see the module docstring)."""
    report = RedriveReport()
    budget = allowance(gate, batch)
    if budget == 0:
        return report
    for item in lot.parked():
        if report.requeued >= budget:
            report.left += 1
            continue
        if isinstance(item, str):
            report.undecodable += 1
            logger.warning("parked document %s is unreadable; left for an operator", item)
            continue
        try:
            _redrive_one(item, lot=lot, blobs=blobs, repository=repository,
                         images_container=images_container, report=report)
        except StorageError:
            report.errors += 1  # kept for the next run
    if report.seen:
        logger.info("redrive: %d re-driven, %d dropped, %d errors, %d left", report.requeued,
                    report.dropped, report.errors, report.left)
    return report


def _redrive_one(item: ParkedBlob, *, lot: ParkingLot, blobs: SourceBlobs,
                 repository: ResultRepository, images_container: str,
                 report: RedriveReport) -> None:
    current = normalize_etag(blobs.current_etag(item.container, item.name))
    if item.container != images_container or current != item.etag:
        lot.release(item.path)  # gone, foreign, or a newer version that triggers by itself
        report.dropped += 1
        return
    existing = repository.find_current(item.container, item.name, current)
    if existing is not None:
        lot.release(item.path)
        report.dropped += 1
        return
    blobs.retouch(item.container, item.name, f'"{current}"')
    lot.release(item.path)
    report.requeued += 1
