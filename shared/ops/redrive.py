"""The re-drive job: parked blobs (a Vision outage opened the breaker) go back to the trigger.

``redrive_parked`` re-touches at most ``REDRIVE_BATCH`` parked blobs per run, and only as many
as this process's Vision breaker lets through (``shared.analysis.parking.redrive``); the
pipeline then analyses them as if they had just been uploaded.

Must never: re-drive while the breaker is open, or import another job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.analysis.parking import ParkingLot, RedriveReport, redrive
from shared.analysis.results import BlobDocumentStore
from shared.analysis.sources import BlobSourceBlobs
from shared.analysis.vision import VisionClient

if TYPE_CHECKING:
    from shared.analysis.pipeline import PipelineDeps
    from shared.settings import Settings


def redrive_parked(settings: Settings, deps: PipelineDeps) -> RedriveReport:
    """Re-drive parked blobs with ``deps``' Vision breaker as the gate (the timer's job)."""
    lot = deps.parking or ParkingLot(deps.repository.store, settings.pipeline.parked_container)
    store = lot.store
    if not isinstance(store, BlobDocumentStore) or not isinstance(deps.analyzer, VisionClient):
        raise TypeError("redrive needs the real storage and Vision clients")
    return redrive(
        lot, blobs=BlobSourceBlobs(store.service), repository=deps.repository,
        images_container=settings.pipeline.images_container, gate=deps.analyzer.flow.breaker,
        batch=settings.pipeline.redrive_batch,
    )
