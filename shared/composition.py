"""The composition root: builds the app's real dependencies once per process, on first use
(never at import).

The only place that turns ``Settings`` into SDK clients: one credential, one
``BlobServiceClient`` per storage connection, one query runner, and the runtimes of the
pipeline, the probes, the quota check, the tuning review and the status service built from
them. Everything below it (ops, monitoring, analysis, telemetry) receives what it needs instead
of calling back up here; only blueprints import this module. Tests build the runtimes with
fakes instead. The tuning overlay (``shared.ops.tuning.review``) is read here, once per its TTL, and
merged into the settings the Vision client and preprocessing are built from.
``ensure_telemetry()`` runs before the first request span so that span is already exported; the
pipeline gets ``shared.analysis.observer.TelemetryObserver``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from azure.identity import DefaultAzureCredential

from shared import telemetry
from shared.analysis import results
from shared.analysis.fleet import BlobHeartbeatStore, Fleet, FleetRunner
from shared.analysis.observer import TelemetryObserver
from shared.analysis.parking import ParkingLot
from shared.analysis.pipeline import NoOpObserver, PipelineDeps
from shared.analysis.preprocessing import PreprocessOptions
from shared.analysis.results import BlobDocumentStore, ResultRepository
from shared.analysis.vision import build_vision_client
from shared.monitoring.drift import load_baseline
from shared.monitoring.logsquery import LogsQueryRunner
from shared.monitoring.status_service import StatusService, client_options
from shared.ops import redrive
from shared.ops.jobs import BlobLeaseLock, StatusStore
from shared.ops.probes import (
    BlobProbeBlobs,
    E2EProbe,
    ProbeRuntime,
    load_probe_assets,
)
from shared.ops.quota import LogsUsageSource, QuotaLimits, QuotaRuntime, read_quota_status
from shared.ops.tuning.policy import Overlay
from shared.ops.tuning.review import (
    BlobTuningStore,
    OverlayCache,
    ReviewContext,
    apply_overlay,
    host_blob_concurrency,
    tuning_summary,
)
from shared.settings import (
    RateMode,
    Settings,
    SettingsError,
    StorageConnection,
    TuningMode,
    get_settings,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient

    from shared.analysis.parking import RedriveReport
    from shared.analysis.pipeline import PipelineObserver
    from shared.analysis.ratecontrol import FlowControl
    from shared.analysis.vision import AttemptHook
    from shared.monitoring.drift import Baseline

logger = logging.getLogger(__name__)


def build_pipeline_deps(
    settings: Settings,
    *,
    observer: PipelineObserver | None = None,
    repository: ResultRepository | None = None,
    flow: FlowControl | None = None,
) -> PipelineDeps:
    """The pipeline's dependencies from ``settings``; ``flow`` keeps an adaptive rate
    controller (its learned rate, budget and breaker) across a rebuild."""
    if repository is None:
        repository = ResultRepository.from_settings(
            BlobDocumentStore(results.blob_service_client(settings.storage)), settings)
    fleet = vision_fleet(settings) if flow is None else None
    analyzer = build_vision_client(settings.vision, flow=flow, fleet=fleet,
                                   credential=None if settings.vision.key else get_credential())
    if flow is None:  # a new controller: its rate is what the gauge reports from now on
        telemetry.watch_vision_rate(analyzer.flow.rate)
        if fleet is not None:
            telemetry.watch_vision_fleet(fleet.members, lambda: fleet.limit)
    return PipelineDeps(
        analyzer=analyzer,
        repository=repository,
        features=settings.vision.features,
        preprocess_options=PreprocessOptions.from_settings(settings),
        observer=observer or NoOpObserver(),
        parking=ParkingLot(repository.store, settings.pipeline.parked_container),
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
    vision = settings.vision
    interval = vision.fleet_heartbeat_seconds
    if vision.rate_mode is not RateMode.ADAPTIVE or interval <= 0:
        return None
    key = (vision.rate_limit_per_second, interval, settings.jobs.status_container)
    with _FLEET_LOCK:
        runner = _fleets.get(key)
        if runner is None:
            try:
                container = blob_service_for(settings.storage).get_container_client(
                    settings.jobs.status_container)
            except Exception as exc:  # bad storage settings must not stop analysis
                logger.warning("no fleet membership (%s): each instance paces alone",
                               type(exc).__name__)
                return None
            runner = FleetRunner(Fleet(vision.rate_limit_per_second, interval_s=interval),
                                 BlobHeartbeatStore(container))
            runner.start()
            atexit.register(runner.leave)
            _fleets[key] = runner
        return runner.fleet


def leave_vision_fleet() -> None:
    """A graceful stop (also run at a normal exit): announce the leave, so every other instance
    takes this one's slots at the same instant (at most one heartbeat interval and a half
    second from now; at once when it is alone), then remove its heartbeat."""
    with _FLEET_LOCK:
        runners = list(_fleets.values())
        _fleets.clear()
    for runner in runners:
        runner.leave()


def get_credential() -> TokenCredential:
    """The app's one Entra ID credential (its managed identity in Azure), built on first use.

    Every identity-based client of the process shares it, so a token is fetched once per
    resource and refreshed by one cache, not per request.
    """
    return credential_for(get_settings().storage.client_id)


@functools.cache
def credential_for(client_id: str | None) -> TokenCredential:
    """One credential per managed identity (the app has one: ``AzureWebJobsStorage__clientId``)."""
    return DefaultAzureCredential(managed_identity_client_id=client_id)


def get_blob_service() -> BlobServiceClient:
    """The process's one client of the ``AzureWebJobsStorage`` account."""
    return blob_service_for(get_settings().storage)


@functools.cache
def blob_service_for(storage: StorageConnection) -> BlobServiceClient:
    """One client per storage connection (the app has one; operator tools may name another)."""
    credential = credential_for(storage.client_id) if storage.uses_identity else None
    return results.blob_service_client(storage, credential=credential)




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
    settings = get_settings()
    service = get_blob_service()
    overlay = None
    if settings.tuning.mode is not TuningMode.OFF:
        store = BlobTuningStore(service.get_container_client(settings.jobs.status_container))
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
    rt = _pipeline_runtime()
    overlay = rt.overlay.get() if rt.overlay is not None else Overlay()
    with rt.lock:
        if rt.deps is None or overlay.version != rt.version:
            effective = apply_overlay(rt.settings, overlay)
            # the adaptive controller's learned state survives unless its ceiling moved
            keep = (rt.deps is not None and rt.effective is not None
                    and rt.effective.vision.rate_limit_per_second
                    == effective.vision.rate_limit_per_second)
            flow = getattr(rt.deps.analyzer, "flow", None) if keep and rt.deps else None
            rt.deps = build_pipeline_deps(effective, observer=rt.observer,
                                          repository=rt.repository, flow=flow)
            rt.version, rt.effective = overlay.version, effective
        return rt.deps


@functools.cache
def get_review_context() -> ReviewContext:
    """What the tuning review needs, built once per process."""
    settings = get_settings()
    status = get_blob_service().get_container_client(settings.jobs.status_container)
    lock = BlobLeaseLock(status, lease_seconds=settings.jobs.lock_lease_seconds)
    return ReviewContext(
        settings=settings, runner=get_query_runner(),
        store=BlobTuningStore(status), host_concurrency=host_blob_concurrency(),
        event=telemetry.track_event, hold=lock.hold)


_BASELINE_TTL_S = 60.0
_baseline_cache: dict[str, tuple[float, Baseline]] = {}


def load_drift_baseline(settings: Settings) -> Baseline:
    """The drift baseline in force: the pinned document in the status container, else rolling.

    Read at most once a minute per process: pinning is rare, the status page is not.
    """
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
    try:
        settings: Settings | None = get_settings()
    except SettingsError:
        settings = None
    telemetry.configure(settings)


def redrive_parked() -> RedriveReport:
    """Re-drive parked blobs with this process's Vision breaker as the gate (the timer's job)."""
    return redrive.redrive_parked(get_settings(), get_pipeline_deps())


def status_store(settings: Settings) -> StatusStore:
    """The status container over the one blob client of ``settings``' storage connection."""
    return StatusStore(BlobDocumentStore(blob_service_for(settings.storage)),
                       settings.jobs.status_container)


@functools.cache
def get_query_runner() -> LogsQueryRunner:
    """The process's one query runner (status, quota check, tuning review), built on first use;
    its identity is the app's one credential."""
    settings = get_settings()
    q = settings.logs_query
    return LogsQueryRunner.from_settings(
        settings, client_options=client_options(settings),
        credential=None if q.is_loopback else get_credential(),
        server_timeout_s=max(1, math.ceil(q.timeout_s)), max_concurrency=q.max_concurrency)


@functools.cache
def get_status_service() -> StatusService:
    """The process's status service (settings, runner and cache built once, on first use)."""
    settings = get_settings()
    store = status_store(settings)
    return StatusService(settings, get_query_runner(),
                         quota_loader=lambda _s: read_quota_status(store),
                         tuning_loader=lambda: tuning_summary(get_review_context()),
                         baseline_loader=load_drift_baseline)


@functools.cache
def get_probe_runtime() -> ProbeRuntime:
    """What the probe timers need: the one blob client, the lock, the probe's own Vision client
    (built on first use) and the end-to-end probe over the pipeline's result store."""
    settings = get_settings()
    p, jobs = settings.probes, settings.jobs
    service = get_blob_service()
    store = BlobDocumentStore(service)
    lock = BlobLeaseLock(service.get_container_client(jobs.status_container),
                         lease_seconds=jobs.lock_lease_seconds)
    probe_vision = p.vision
    analyzer = functools.cache(lambda: build_vision_client(
        probe_vision, credential=None if probe_vision.key else get_credential()))

    def e2e() -> E2EProbe:
        return E2EProbe(
            blobs=BlobProbeBlobs(service),
            repository=ResultRepository.from_settings(store, settings),
            images_container=settings.pipeline.images_container, prefix=p.e2e_prefix,
            asset=load_probe_assets()[0], deadline_seconds=p.e2e_deadline_seconds,
            poll_seconds=p.e2e_poll_seconds, run_location=jobs.run_location,
        )

    return ProbeRuntime(settings=settings, lock=lock, status=StatusStore(store,
                        jobs.status_container), analyzer_factory=analyzer, e2e_factory=e2e,
                        on_vision_attempt=_probe_attempt_hook(settings))


def _probe_attempt_hook(settings: Settings) -> AttemptHook:
    """Probe calls appear as Vision dependencies too (they use quota), marked synthetic."""
    return TelemetryObserver.from_settings(settings).record_vision_attempt


@functools.cache
def get_quota_runtime() -> QuotaRuntime:
    """What the quota check needs: the query runner, the status container and the lock."""
    settings = get_settings()
    jobs = settings.jobs
    service = get_blob_service()
    return QuotaRuntime(
        limits=QuotaLimits.from_settings(settings), source=LogsUsageSource(get_query_runner()),
        status=status_store(settings),
        lock=BlobLeaseLock(service.get_container_client(jobs.status_container),
                           lease_seconds=jobs.lock_lease_seconds),
        run_location=jobs.run_location,
    )
