"""Builds the pipeline's real dependencies once per process, on first use (never at import).

The only place that turns ``Settings`` into SDK clients. Tests build ``PipelineDeps`` with
fakes instead. ``ensure_telemetry()`` runs before the first request span so that span is
already exported; the pipeline gets ``shared.telemetry.TelemetryObserver``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from shared.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from shared.parking import RedriveReport
    from shared.pipeline import PipelineDeps, PipelineObserver


def build_pipeline_deps(
    settings: Settings, *, observer: PipelineObserver | None = None
) -> PipelineDeps:
    from shared import telemetry
    from shared.parking import ParkingLot
    from shared.pipeline import NoOpObserver, PipelineDeps
    from shared.preprocessing import PreprocessOptions
    from shared.results import BlobDocumentStore, ResultRepository, blob_service_client
    from shared.vision import build_vision_client

    store = BlobDocumentStore(blob_service_client(settings.storage))
    analyzer = build_vision_client(settings)
    telemetry.watch_vision_rate(analyzer.flow.rate)
    return PipelineDeps(
        analyzer=analyzer,
        repository=ResultRepository.from_settings(store, settings),
        features=settings.vision_features,
        preprocess_options=PreprocessOptions.from_settings(settings),
        observer=observer or NoOpObserver(),
        parking=ParkingLot(store, settings.parked_container),
    )


@functools.cache
def get_pipeline_deps() -> PipelineDeps:
    """Thread-safe enough: a race at first use builds two sets and keeps one; both are valid."""
    from shared.telemetry import TelemetryObserver

    settings = get_settings()
    return build_pipeline_deps(settings, observer=TelemetryObserver.from_settings(settings))


def ensure_telemetry() -> None:
    """Configure telemetry once (cheap after the first call). Never raises.

    Bad settings leave it unconfigured; the invocation then fails on them as before, and the
    next invocation tries again.
    """
    from shared import telemetry

    try:
        settings: Settings | None = get_settings()
    except SettingsError:
        settings = None
    telemetry.configure(settings)


def redrive_parked() -> RedriveReport:
    """Re-drive parked blobs with this process's Vision breaker as the gate (the timer's job)."""
    from shared.parking import ParkingLot, redrive
    from shared.replay import BlobSourceBlobs
    from shared.results import BlobDocumentStore
    from shared.vision import VisionClient

    settings = get_settings()
    deps = get_pipeline_deps()
    lot = deps.parking or ParkingLot(deps.repository.store, settings.parked_container)
    store = lot.store
    if not isinstance(store, BlobDocumentStore) or not isinstance(deps.analyzer, VisionClient):
        raise TypeError("redrive needs the real storage and Vision clients")
    return redrive(
        lot, blobs=BlobSourceBlobs(store.service), repository=deps.repository,
        images_container=settings.images_container, gate=deps.analyzer.flow.breaker,
        batch=settings.redrive_batch,
    )  # fmt: skip
