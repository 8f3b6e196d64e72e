"""Builds the pipeline's real dependencies once per process, on first use (never at import).

The only place that turns ``Settings`` into SDK clients. Tests build ``PipelineDeps`` with
fakes instead. The tuning overlay (``shared.tuning_jobs``) is read here, once per its TTL, and
merged into the settings the Vision client and preprocessing are built from.
``ensure_telemetry()`` runs before the first request span so that span is already exported; the
pipeline gets ``shared.telemetry.TelemetryObserver``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.settings import Settings, SettingsError, StorageConnection, get_settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient

    from shared.drift import Baseline
    from shared.fleet import Fleet, FleetRunner
    from shared.parking import RedriveReport
    from shared.pipeline import PipelineDeps, PipelineObserver
    from shared.ratecontrol import FlowControl
    from shared.results import ResultRepository
    from shared.tuning_jobs import OverlayCache, ReviewContext


def build_pipeline_deps(
    settings: Settings,
    *,
    observer: PipelineObserver | None = None,
    repository: ResultRepository | None = None,
    flow: FlowControl | None = None,
) -> PipelineDeps:
    """The pipeline's dependencies from ``settings``; ``flow`` keeps an adaptive rate
    controller (its learned rate, budget and breaker) across a rebuild."""
    from shared import telemetry
    from shared.parking import ParkingLot
    from shared.pipeline import NoOpObserver, PipelineDeps
    from shared.preprocessing import PreprocessOptions
    from shared.results import BlobDocumentStore, ResultRepository, blob_service_client
    from shared.vision import build_vision_client

    if repository is None:
        repository = ResultRepository.from_settings(
            BlobDocumentStore(blob_service_client(settings.storage)), settings)
    fleet = vision_fleet(settings) if flow is None else None
    analyzer = build_vision_client(settings, flow=flow, fleet=fleet,
                                   credential=None if settings.vision_key else get_credential())
    if flow is None:  # a new controller: its rate is what the gauge reports from now on
        telemetry.watch_vision_rate(analyzer.flow.rate)
        if fleet is not None:
            telemetry.watch_vision_fleet(fleet.members, lambda: fleet.limit)
    return PipelineDeps(
        analyzer=analyzer,
        repository=repository,
        features=settings.vision_features,
        preprocess_options=PreprocessOptions.from_settings(settings),
        observer=observer or NoOpObserver(),
        parking=ParkingLot(repository.store, settings.parked_container),
    )


_FLEET_LOCK = threading.Lock()
_fleets: dict[tuple[float, float, str], FleetRunner] = {}


def vision_fleet(settings: Settings) -> Fleet | None:
    """This process's membership of the instances sharing the Vision limit: heartbeats under
    ``fleet/vision/`` in the status container of the app's storage account, from a daemon
    thread, removed at a normal exit. ``None`` when off (static rate, or
    ``VISION_FLEET_HEARTBEAT_SECONDS=0``) or when no storage client can be built; a storage
    failure later only makes the client pace from its own observations until storage answers.
    """
    import atexit
    import logging

    from shared.fleet import BlobHeartbeatStore, Fleet, FleetRunner
    from shared.settings import RateMode

    interval = settings.vision_fleet_heartbeat_seconds
    if settings.vision_rate_mode is not RateMode.ADAPTIVE or interval <= 0:
        return None
    key = (settings.rate_limit_per_second, interval, settings.health.status_container)
    with _FLEET_LOCK:
        runner = _fleets.get(key)
        if runner is None:
            try:
                container = blob_service_for(settings.storage).get_container_client(
                    settings.health.status_container)
            except Exception as exc:  # bad storage settings must not stop analysis
                logging.getLogger(__name__).warning(
                    "no fleet membership (%s): each instance paces alone", type(exc).__name__)
                return None
            runner = FleetRunner(Fleet(settings.rate_limit_per_second, interval_s=interval),
                                 BlobHeartbeatStore(container))  # fmt: skip
            runner.start()
            atexit.register(runner.stop)
            _fleets[key] = runner
        return runner.fleet


def leave_vision_fleet() -> None:
    """A graceful stop: remove this process's heartbeats now, so the other instances take its
    slots at their next listing (also run at a normal exit)."""
    with _FLEET_LOCK:
        runners = list(_fleets.values())
        _fleets.clear()
    for runner in runners:
        runner.stop()


def get_credential() -> TokenCredential:
    """The app's one Entra ID credential (its managed identity in Azure), built on first use.

    Every identity-based client of the process shares it, so a token is fetched once per
    resource and refreshed by one cache, not per request.
    """
    return credential_for(get_settings().storage.client_id)


@functools.cache
def credential_for(client_id: str | None) -> TokenCredential:
    """One credential per managed identity (the app has one: ``AzureWebJobsStorage__clientId``)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


def get_blob_service() -> BlobServiceClient:
    """The process's one client of the ``AzureWebJobsStorage`` account."""
    return blob_service_for(get_settings().storage)


@functools.cache
def blob_service_for(storage: StorageConnection) -> BlobServiceClient:
    """One client per storage connection (the app has one; operator tools may name another)."""
    from shared.results import blob_service_client

    credential = credential_for(storage.client_id) if storage.uses_identity else None
    return blob_service_client(storage, credential=credential)


@dataclass(slots=True)
class _PipelineRuntime:
    """Built once per process; ``deps`` is rebuilt only when the tuning overlay's version moves."""

    settings: Settings
    observer: PipelineObserver
    repository: ResultRepository
    overlay: OverlayCache | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = -1
    deps: PipelineDeps | None = None
    effective: Settings | None = None


@functools.cache
def _pipeline_runtime() -> _PipelineRuntime:
    from shared.results import BlobDocumentStore, ResultRepository
    from shared.settings import TuningMode
    from shared.telemetry import TelemetryObserver
    from shared.tuning_jobs import BlobTuningStore, OverlayCache

    settings = get_settings()
    service = get_blob_service()
    overlay = None
    if settings.tuning.mode is not TuningMode.OFF:
        store = BlobTuningStore(service.get_container_client(settings.health.status_container))
        overlay = OverlayCache(lambda: store.read_overlay()[0],
                               ttl_s=settings.tuning.overlay_ttl_seconds)
    return _PipelineRuntime(
        settings=settings, observer=TelemetryObserver.from_settings(settings),
        repository=ResultRepository.from_settings(BlobDocumentStore(service), settings),
        overlay=overlay)


def get_pipeline_deps() -> PipelineDeps:
    """The pipeline's dependencies with the tuning overlay in force (one overlay read per TTL).

    Clients are built once; a new overlay version (a review applied a change, or a pin) builds
    a new Vision client and preprocessing options from the merged settings, nothing else.
    """
    from shared.tuning import Overlay
    from shared.tuning_jobs import apply_overlay

    rt = _pipeline_runtime()
    overlay = rt.overlay.get() if rt.overlay is not None else Overlay()
    with rt.lock:
        if rt.deps is None or overlay.version != rt.version:
            effective = apply_overlay(rt.settings, overlay)
            # the adaptive controller's learned state survives unless its ceiling moved
            keep = (rt.deps is not None and rt.effective is not None
                    and rt.effective.vision_rate_limit_per_second
                    == effective.vision_rate_limit_per_second)
            flow = getattr(rt.deps.analyzer, "flow", None) if keep and rt.deps else None
            rt.deps = build_pipeline_deps(effective, observer=rt.observer,
                                          repository=rt.repository, flow=flow)
            rt.version, rt.effective = overlay.version, effective
        return rt.deps


@functools.cache
def get_review_context() -> ReviewContext:
    """What the tuning review needs, built once per process."""
    from shared.probes import BlobLeaseLock
    from shared.status_service import get_query_runner
    from shared.telemetry import track_event
    from shared.tuning_jobs import BlobTuningStore, ReviewContext, host_blob_concurrency

    settings = get_settings()
    status = get_blob_service().get_container_client(settings.health.status_container)
    lock = BlobLeaseLock(status, lease_seconds=settings.health.lock_lease_seconds)
    return ReviewContext(
        settings=settings, runner=get_query_runner(),
        store=BlobTuningStore(status), host_concurrency=host_blob_concurrency(),
        event=track_event, hold=lock.hold)


_BASELINE_TTL_S = 60.0
_baseline_cache: dict[str, tuple[float, Baseline]] = {}


def load_drift_baseline(settings: Settings) -> Baseline:
    """The drift baseline in force: the pinned document in the status container, else rolling.

    Read at most once a minute per process: pinning is rare, the status page is not.
    """
    import time

    from shared.drift import load_baseline
    from shared.probes import status_store

    cached = _baseline_cache.get("baseline")
    if cached is not None and time.monotonic() - cached[0] < _BASELINE_TTL_S:
        return cached[1]
    baseline = load_baseline(status_store(settings))
    _baseline_cache["baseline"] = (time.monotonic(), baseline)
    return baseline


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
