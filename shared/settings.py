"""App settings, parsed once into one frozen ``Settings``.

Every tunable of the pipeline is an app setting (upper-snake name). ``Settings.from_env`` reads a
mapping (``os.environ`` in the app, a plain dict in tests) and reports *all* bad or missing keys
in one ``SettingsError``. ``get_settings()`` parses ``os.environ`` once per process.

Defaults work against the local stack (Vision emulator, Azurite). The emulator computes only
``read``, ``people`` and ``smartCrops``; in Azure you may add ``caption``/``denseCaptions``
(region-dependent), ``tags`` and ``objects`` to ``VISION_FEATURES``.

This module must never log or ``repr`` a key or a connection string.

Why one module past 450 lines: one frozen ``Settings`` parsed by one reader that collects every
problem before raising; the per-concern groups are its nested dataclasses.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from shared.errors import ConfigError

T = TypeVar("T")

#: Canonical feature names of Image Analysis 4.0 (the REST ``features`` query values).
KNOWN_FEATURES: tuple[str, ...] = (
    "caption",
    "denseCaptions",
    "objects",
    "people",
    "read",
    "smartCrops",
    "tags",
)
_FEATURES_BY_LOWER = {name.lower(): name for name in KNOWN_FEATURES}

#: F0 allows 20 calls per minute.
F0_CALLS_PER_SECOND = 20 / 60
#: S1 default when VISION_RATE_LIMIT_PER_SECOND is unset (docs say 10-20 TPS; stay safe).
S1_DEFAULT_CALLS_PER_SECOND = 10.0
#: Parked blobs are re-driven on this schedule (six-field NCRONTAB) while Vision answers.
DEFAULT_REDRIVE_SCHEDULE = "*/10 * * * * *"

#: Pillow warns above this many pixels (``Image.MAX_IMAGE_PIXELS``); stay below it.
PILLOW_BOMB_WARNING_PIXELS = 89_478_485

STORAGE_CONNECTION = "AzureWebJobsStorage"
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class VisionTier(StrEnum):
    F0 = "F0"
    S1 = "S1"


class RateMode(StrEnum):
    """``adaptive``: the client finds its share of the limit; ``static``: it always sends at the
    ceiling (one instance whose limit is known)."""

    ADAPTIVE = "adaptive"
    STATIC = "static"


class SettingsError(ConfigError):
    """One or more app settings are missing or invalid; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "invalid app settings:\n  - " + "\n  - ".join(problems), reason="invalid_settings"
        )


_REDACT = "redact"
#: Connection-string parts that are credentials themselves (redacted as well as the whole).
_SECRET_PARTS = ("accountkey", "sharedaccesssignature")


def secret() -> Any:
    """A field holding a secret: never in ``repr``, and redacted from every log and record.

    Redaction (``secret_values``) is derived from this mark, so a new secret setting is
    redacted as soon as it is declared with ``secret()``.
    """
    return field(default=None, repr=False, metadata={_REDACT: True})


def secret_values(settings: object) -> tuple[str, ...]:
    """Every secret value in ``settings`` (nested dataclasses included), longest first.

    Connection strings also contribute their key parts, so a key copied out of one is caught.
    Values shorter than 8 characters are left out: they would redact ordinary words.
    """
    values: set[str] = set()
    _collect_secrets(settings, values)
    for value in list(values):
        for part in value.split(";"):
            name, _, item = part.partition("=")
            if name.strip().lower() in _SECRET_PARTS:
                values.add(item.strip())
    return tuple(sorted((v for v in values if len(v) >= 8), key=len, reverse=True))


def _collect_secrets(obj: object, into: set[str]) -> None:
    if not is_dataclass(obj) or isinstance(obj, type):
        return
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(_REDACT) and isinstance(value, str) and value:
            into.add(value)
        else:
            _collect_secrets(value, into)


# --------------------------------------------------------------------------- vision


@dataclass(frozen=True, slots=True)
class VisionSettings:
    """One Vision client's settings (``VISION_*``): the pipeline's (``Settings.vision``) or the
    synthetic probe's own (``ProbeSettings.vision``, derived from it at parse time)."""

    endpoint: str
    key: str | None = secret()
    features: tuple[str, ...] = ("read", "people", "smartCrops")
    language: str = "en"
    model_version: str | None = None
    tier: VisionTier = VisionTier.S1
    #: ``VISION_RATE_LIMIT_PER_SECOND`` as set; unset, the ceiling is the tier's limit (read the
    #: ceiling from ``rate_limit_per_second``, never from here)
    rate_limit_override: float | None = None
    rate_burst: int = 1
    connect_timeout_seconds: float = 5.0
    timeout_seconds: float = 30.0
    max_retries: int = 4
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 20.0
    max_retry_after_seconds: float = 60.0
    rate_mode: RateMode = RateMode.ADAPTIVE
    retry_budget_ratio: float = 0.2
    breaker_failures: int = 5
    #: how often an open breaker lets one trial call through (``VISION_PROBE_INTERVAL_SECONDS``)
    probe_interval_seconds: float = 5.0
    #: how often each instance renews its heartbeat in the fleet sharing the limit
    #: (``VISION_FLEET_HEARTBEAT_SECONDS``; 0: no fleet, each instance paces alone)
    fleet_heartbeat_seconds: float = 2.0

    @property
    def tier_limit_per_second(self) -> float:
        """The documented limit of ``VISION_TIER`` (what one account allows, all callers; the
        one place that maps tier → rate)."""
        if self.tier is VisionTier.F0:
            return F0_CALLS_PER_SECOND
        return S1_DEFAULT_CALLS_PER_SECOND

    @property
    def rate_limit_per_second(self) -> float:
        """The client's ceiling: ``VISION_RATE_LIMIT_PER_SECOND`` if set, else the tier's limit.

        With fleet heartbeats it caps the limit all instances learn together; without, one
        instance never sends faster and the adaptive controller finds its share below it."""
        if self.rate_limit_override is not None:
            return self.rate_limit_override
        return self.tier_limit_per_second

    def for_probe(self, *, key: str | None, timeout_seconds: float,
                  max_retries: int) -> VisionSettings:
        """These settings with the synthetic probe's client knobs: its own key, a short timeout,
        few retries, and a limiter that never makes the probe wait (the service's limits still
        apply)."""
        return replace(
            self,
            key=key,
            timeout_seconds=timeout_seconds,
            connect_timeout_seconds=min(self.connect_timeout_seconds, timeout_seconds),
            max_retries=max_retries,
            backoff_base_seconds=0.2,
            backoff_max_seconds=1.0,
            # a Retry-After beyond this fails the probe as throttled instead of waiting
            max_retry_after_seconds=1.0,
            rate_limit_override=1000.0,
            rate_burst=1000,
            # the probe measures Vision: it must always call it, never adapt away or be refused
            rate_mode=RateMode.STATIC,
            breaker_failures=1000,
            fleet_heartbeat_seconds=0.0,
        )


@dataclass(frozen=True, slots=True)
class PreprocessSettings:
    """What preprocessing may do to an image before it is sent (``PREPROCESS_*``)."""

    max_dimension: int = 2048
    jpeg_quality: int = 90
    max_pixels: int = 50_000_000
    max_input_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Where the pipeline's blobs live (the trigger container and its document containers) and
    how parked blobs are re-driven."""

    images_container: str = "images"
    results_container: str = "results"
    failed_container: str = "failed"
    parked_container: str = "parked"
    redrive_schedule: str = DEFAULT_REDRIVE_SCHEDULE
    redrive_batch: int = 200

    @property
    def containers(self) -> tuple[str, ...]:
        return (self.images_container, self.results_container, self.failed_container,
                self.parked_container)


@dataclass(frozen=True, slots=True)
class StorageConnection:
    """The ``AzureWebJobsStorage`` connection: a connection string or identity-based URIs.

    Identity-based (``AzureWebJobsStorage__blobServiceUri`` …) is what runs in Azure; the
    connection string (``UseDevelopmentStorage=true``) is for Azurite.
    """

    connection_string: str | None = secret()
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """The exporter side of telemetry (``shared.telemetry``): where and how records are sent.

    ``connection_string`` only ever reaches the SDK, never a log line.
    """

    connection_string: str | None = secret()
    configured_by_worker: bool = False
    sampling_ratio: float = 1.0
    live_metrics: bool | None = None
    hash_blob_names: bool = False
    role_name: str | None = None
    storage_directory: str | None = None
    storage_retry_seconds: int = 60
    poison_after_attempts: int = 5
    # The hard-crash loss window: a killed process loses what its batch processors held, i.e.
    # what was recorded in the last delay/interval (plus the export in flight). These are the
    # OpenTelemetry SDK's own variables; the SDK defaults are 5 s, 5 s and 60 s.
    span_export_delay_ms: int = 1000
    log_export_delay_ms: int = 1000
    metric_export_interval_ms: int = 15_000
    #: Bound on the flush at shutdown (``telemetry.shutdown``), whatever the exporter does.
    shutdown_timeout_s: float = 5.0

    @property
    def ingestion_is_loopback(self) -> bool:
        """True when the connection string points at a local ingestion endpoint (devstack)."""
        endpoint = _connection_string_field(self.connection_string, "ingestionendpoint")
        return is_loopback_url(endpoint)


@dataclass(frozen=True, slots=True)
class LogsQuerySettings:
    """The Log Analytics query side (``shared.monitoring.logsquery``): which workspace the one
    query runner reads, and its per-query timeout and concurrency (status, quota check and
    tuning review share the runner).

    The endpoint only ever reaches the SDK, never a log line.
    """

    endpoint: str | None = None
    workspace_id: str | None = None
    #: Read timeout (and Log Analytics server timeout) of each query
    #: (``STATUS_QUERY_TIMEOUT_SECONDS``).
    timeout_s: float = 10.0
    #: Queries one instance runs at once (Log Analytics allows 5 per identity;
    #: ``STATUS_QUERY_CONCURRENCY``).
    max_concurrency: int = 3

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.endpoint)


# --------------------------------------------------------------------------- probes, quota, jobs
# Settings of the synthetic probes and the quota check (shared/ops/probes.py, shared/ops/quota.py;
# see docs/probes-and-quota.md). The three schedules are read by the Functions host from
# ``%PROBE_SCHEDULE%`` / ``%PROBE_E2E_SCHEDULE%`` / ``%QUOTA_SCHEDULE%``; they are parsed here too
# so a bad value is reported with every other bad setting.

DEFAULT_PROBE_SCHEDULE = "0 */5 * * * *"
DEFAULT_PROBE_E2E_SCHEDULE = "30 */10 * * * *"
DEFAULT_QUOTA_SCHEDULE = "0 7 * * * *"
#: The Vision probe's client defaults (``PROBE_TIMEOUT_SECONDS``, ``PROBE_MAX_RETRIES``).
PROBE_TIMEOUT_SECONDS = 10.0
PROBE_MAX_RETRIES = 0
#: F0's monthly call volume (*unconfirmed*: configurable through QUOTA_MONTHLY_CALLS).
F0_MONTHLY_CALLS = 5_000


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What the health timers (probes, quota check, tuning review) share: the ``status``
    container their results are kept in, the lease of their run lock, and where they run."""

    status_container: str = "status"
    lock_lease_seconds: int = 60
    #: ``PROBE_RUN_LOCATION`` (unset: ``REGION_NAME``): the location the probes and the quota
    #: check report their availability results from
    run_location: str = "local"


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """The synthetic probes (``PROBE_*``): the Vision probe's client and the end-to-end probe."""

    #: The Vision probe's client: the pipeline's Vision settings with ``PROBE_VISION_KEY`` (unset:
    #: ``VISION_KEY``), ``PROBE_TIMEOUT_SECONDS``, ``PROBE_MAX_RETRIES`` and a limiter and
    #: breaker that never hold it back (``VisionSettings.for_probe``).
    vision: VisionSettings
    schedule: str = DEFAULT_PROBE_SCHEDULE
    e2e_schedule: str = DEFAULT_PROBE_E2E_SCHEDULE
    e2e_deadline_seconds: float = 120.0
    e2e_poll_seconds: float = 2.0
    e2e_prefix: str = "synthetic/probe/"


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    """The quota check (``QUOTA_*``): its schedule and the limits it compares usage with."""

    schedule: str = DEFAULT_QUOTA_SCHEDULE
    monthly_calls: int = F0_MONTHLY_CALLS
    #: unset: the tier's limit (``VisionSettings.tier_limit_per_second``)
    tps_limit: float | None = None
    warn_thresholds: tuple[float, ...] = (0.8, 0.95)


def is_loopback_url(url: str | None) -> bool:
    """True for http(s) URLs whose host is 127.0.0.1, ::1 or localhost."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _connection_string_field(connection_string: str | None, key: str) -> str | None:
    for part in (connection_string or "").split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip().lower() == key:
            return value.strip()
    return None


# ------------------------------------------------------------- status, alerts and dashboards


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    """Thresholds of the alert rules (``shared.monitoring.alerts``) and the status endpoint's
    tunables.

    The same values render into the Azure alert rules and decide the status page's state.
    """

    slo_target: float = 0.99
    error_rate_threshold: float = 0.05
    min_requests: int = 5
    latency_baseline_p95_ms: float = 3000.0
    latency_factor: float = 2.0
    availability_threshold_pct: float = 90.0
    throttle_rate_threshold: float = 0.10
    quota_forecast_threshold: float = 1.0
    freshness_max_age_s: int = 900
    app_version: str = "dev"
    #: How long a computed report is served as fresh to every caller of one instance.
    status_cache_ttl_s: float = 30.0
    #: How long a request with no report to show waits for the one being computed.
    status_wait_s: float = 1.5

    @property
    def latency_threshold_ms(self) -> float:
        return self.latency_baseline_p95_ms * self.latency_factor


# --- end of status, alerts and dashboards ----------------------------------------------------


# --------------------------------------------------------------------------- tuning review
# The periodic review of the slow knobs (shared/ops/tuning/policy.py, docs/tuning.md). The schedule
# is read
# by the Functions host from ``%TUNING_SCHEDULE%``; parsed here too so a bad value is reported.

DEFAULT_TUNING_SCHEDULE = "0 15 3 * * *"  # daily, 03:15 UTC


class TuningMode(StrEnum):
    """``TUNING_MODE``: off, recommend (write the review only) or apply (also the overlay)."""

    OFF = "off"
    RECOMMEND = "recommend"
    APPLY = "apply"


# --------------------------------------------------------------------------- drift
# Input and output drift of the analysed images (shared/analysis/descriptors.py, docs/drift.md).


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """What preprocessing measures and how the drift alerts compare it with the baseline.

    The rolling baseline is the ``baseline_hours`` before the current window; a pinned one (a
    document in the status container) replaces it in the status evaluation.
    """

    descriptors: bool = True
    window_minutes: int = 15
    baseline_hours: float = 168.0
    psi_threshold: float = 0.25
    min_images: int = 30
    confidence_drop: float = 0.05

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.window_minutes)

    @property
    def baseline(self) -> timedelta:
        return timedelta(hours=self.baseline_hours)


@dataclass(frozen=True, slots=True)
class TuningSettings:
    mode: TuningMode = TuningMode.RECOMMEND
    schedule: str = DEFAULT_TUNING_SCHEDULE
    window_hours: float = 24.0
    overlay_ttl_seconds: float = 60.0
    min_samples: int = 30
    revert_p95_tolerance: float = 0.20




@dataclass(frozen=True, slots=True)
class Settings:
    """Every app setting, one frozen group per concern."""

    vision: VisionSettings
    probes: ProbeSettings
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    storage: StorageConnection = field(default_factory=StorageConnection)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    logs_query: LogsQuerySettings = field(default_factory=LogsQuerySettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    tuning: TuningSettings = field(default_factory=TuningSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse app settings; raise ``SettingsError`` naming every bad or missing key."""
        p = _Parser(env)
        vision = p.vision()
        settings = cls(
            vision=vision,
            probes=p.probes(vision),
            quota=p.quota(),
            jobs=p.jobs(),
            preprocess=p.preprocess(),
            pipeline=p.pipeline(),
            storage=p.storage(),
            telemetry=p.telemetry(),
            logs_query=p.logs_query(),
            monitoring=p.monitoring(),
            tuning=p.tuning(),
            drift=p.drift(),
        )
        containers = settings.pipeline.containers
        if len(set(containers)) != len(containers):
            p.problems.append(
                "IMAGES_CONTAINER, RESULTS_CONTAINER, FAILED_CONTAINER and PARKED_CONTAINER must"
                " all differ"
                " (results written into the trigger container would trigger the function)"
            )
        if settings.jobs.status_container in containers:
            p.problems.append("STATUS_CONTAINER must differ from IMAGES_CONTAINER,"
                              " RESULTS_CONTAINER, FAILED_CONTAINER and PARKED_CONTAINER")
        if p.problems:
            raise SettingsError(p.problems)
        return settings


class _Parser:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, key: str) -> str | None:
        value = self.env.get(key)
        if value is None or not value.strip():
            return None
        return value.strip()

    def url(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key)
        if value is None:
            if required:
                self.problems.append(f"{key} is required (e.g. https://<name>.cognitiveservices…)")
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.problems.append(f"{key} must be an http(s) URL, got {value!r}")
            return None
        return value.rstrip("/")

    def number(self, key: str, kind: Callable[[str], T], default: T, low: float, high: float) -> T:
        value = self.optional_number(key, kind, low=low, high=high)
        return default if value is None else value

    def optional_number(
        self, key: str, kind: Callable[[str], T], *, low: float, high: float
    ) -> T | None:
        raw = self.text(key)
        if raw is None:
            return None
        try:
            value = kind(raw)
        except ValueError:
            name = "an integer" if kind is int else "a number"
            self.problems.append(f"{key} must be {name}, got {raw!r}")
            return None
        if not low <= value <= high:  # type: ignore[operator]
            self.problems.append(f"{key} must be between {low:g} and {high:g}, got {raw!r}")
            return None
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.optional_flag(key)
        return default if value is None else value

    def optional_flag(self, key: str) -> bool | None:
        raw = self.text(key)
        if raw is None:
            return None
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{key} must be true or false, got {raw!r}")
        return None

    # --- vision, preprocessing, pipeline

    def vision(self) -> VisionSettings:
        d = VisionSettings(endpoint="")
        vision = VisionSettings(
            endpoint=self.url("VISION_ENDPOINT", required=True) or "",
            key=self.text("VISION_KEY"),
            features=self.features("VISION_FEATURES", d.features),
            language=self.text("VISION_LANGUAGE") or d.language,
            model_version=self.text("VISION_MODEL_VERSION"),
            tier=self.choice("VISION_TIER", VisionTier, d.tier),
            rate_limit_override=self.optional_number(
                "VISION_RATE_LIMIT_PER_SECOND", float, low=0.001, high=1000.0
            ),
            rate_burst=self.number("VISION_RATE_BURST", int, d.rate_burst, 1, 1000),
            connect_timeout_seconds=self.number(
                "VISION_CONNECT_TIMEOUT_SECONDS", float, d.connect_timeout_seconds, 0.1, 300
            ),
            timeout_seconds=self.number(
                "VISION_TIMEOUT_SECONDS", float, d.timeout_seconds, 0.1, 600
            ),
            max_retries=self.number("VISION_MAX_RETRIES", int, d.max_retries, 0, 20),
            backoff_base_seconds=self.number(
                "VISION_BACKOFF_BASE_SECONDS", float, d.backoff_base_seconds, 0.0, 60
            ),
            backoff_max_seconds=self.number(
                "VISION_BACKOFF_MAX_SECONDS", float, d.backoff_max_seconds, 0.0, 600
            ),
            max_retry_after_seconds=self.number(
                "VISION_MAX_RETRY_AFTER_SECONDS", float, d.max_retry_after_seconds, 0.0, 600
            ),
            rate_mode=self.rate_mode("VISION_RATE_MODE", d.rate_mode),
            retry_budget_ratio=self.number(
                "VISION_RETRY_BUDGET_RATIO", float, d.retry_budget_ratio, 0.0, 1.0
            ),
            breaker_failures=self.number(
                "VISION_BREAKER_FAILURES", int, d.breaker_failures, 1, 1000
            ),
            probe_interval_seconds=self.number(
                "VISION_PROBE_INTERVAL_SECONDS", float, d.probe_interval_seconds, 0.1, 3600,
            ),
            fleet_heartbeat_seconds=self.number(
                "VISION_FLEET_HEARTBEAT_SECONDS", float, d.fleet_heartbeat_seconds, 0.0, 60,
            ),
        )
        if vision.backoff_max_seconds < vision.backoff_base_seconds:
            self.problems.append(
                "VISION_BACKOFF_MAX_SECONDS must be >= VISION_BACKOFF_BASE_SECONDS")
        return vision

    def preprocess(self) -> PreprocessSettings:
        d = PreprocessSettings()
        return PreprocessSettings(
            max_dimension=self.number(
                "PREPROCESS_MAX_DIMENSION", int, d.max_dimension, 64, 15_999
            ),
            jpeg_quality=self.number("PREPROCESS_JPEG_QUALITY", int, d.jpeg_quality, 1, 95),
            max_pixels=self.number(
                "PREPROCESS_MAX_PIXELS", int, d.max_pixels, 10_000, PILLOW_BOMB_WARNING_PIXELS
            ),
            max_input_bytes=self.number(
                "PREPROCESS_MAX_INPUT_BYTES", int, d.max_input_bytes, 1024, 1024 * 1024 * 1024
            ),
        )

    def pipeline(self) -> PipelineSettings:
        d = PipelineSettings()
        return PipelineSettings(
            images_container=self.container("IMAGES_CONTAINER", d.images_container),
            results_container=self.container("RESULTS_CONTAINER", d.results_container),
            failed_container=self.container("FAILED_CONTAINER", d.failed_container),
            parked_container=self.container("PARKED_CONTAINER", d.parked_container),
            redrive_schedule=self.schedule("REDRIVE_SCHEDULE", d.redrive_schedule),
            redrive_batch=self.number("REDRIVE_BATCH", int, d.redrive_batch, 1, 100_000),
        )

    # --- status, alerts and dashboards

    def monitoring(self) -> MonitoringSettings:
        d = MonitoringSettings()
        return MonitoringSettings(
            slo_target=self.number("ANALYSIS_SLO_TARGET", float, d.slo_target, 0.5, 0.99999),
            error_rate_threshold=self.number(
                "ALERT_ERROR_RATE_THRESHOLD", float, d.error_rate_threshold, 0.0001, 1.0
            ),
            min_requests=self.number("ALERT_MIN_REQUESTS", int, d.min_requests, 1, 100_000),
            latency_baseline_p95_ms=self.number(
                "LATENCY_BASELINE_P95_MS", float, d.latency_baseline_p95_ms, 1.0, 600_000
            ),
            latency_factor=self.number("ALERT_LATENCY_FACTOR", float, d.latency_factor, 1.0, 100),
            availability_threshold_pct=self.number(
                "ALERT_AVAILABILITY_THRESHOLD_PCT", float, d.availability_threshold_pct, 0.0, 100
            ),
            throttle_rate_threshold=self.number(
                "ALERT_THROTTLE_RATE_THRESHOLD", float, d.throttle_rate_threshold, 0.0001, 1.0
            ),
            quota_forecast_threshold=self.number(
                "ALERT_QUOTA_FORECAST_THRESHOLD", float, d.quota_forecast_threshold, 0.01, 100
            ),
            freshness_max_age_s=self.number(
                "STATUS_FRESHNESS_MAX_AGE_SECONDS", int, d.freshness_max_age_s, 10, 86_400
            ),
            app_version=self.text("APP_VERSION") or packaged_version() or d.app_version,
            status_cache_ttl_s=self.number(
                "STATUS_CACHE_TTL_SECONDS", float, d.status_cache_ttl_s, 1.0, 3600),
            status_wait_s=self.number("STATUS_WAIT_SECONDS", float, d.status_wait_s, 0.0, 30),
        )

    # --- end of status, alerts and dashboards ------------------------------------------------

    def telemetry(self) -> TelemetrySettings:
        d = TelemetrySettings()
        connection_string = self.text("APPLICATIONINSIGHTS_CONNECTION_STRING")
        if connection_string is not None and "instrumentationkey=" not in connection_string.lower():
            # never echo the value: it is a secret-ish identifier
            self.problems.append(
                "APPLICATIONINSIGHTS_CONNECTION_STRING must contain InstrumentationKey=…"
            )
            connection_string = None
        return TelemetrySettings(
            connection_string=connection_string,
            configured_by_worker=self.flag("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", False),
            sampling_ratio=self.number(
                "TELEMETRY_SAMPLING_RATIO", float, d.sampling_ratio, 0.0, 1.0
            ),
            live_metrics=self.optional_flag("TELEMETRY_LIVE_METRICS"),
            hash_blob_names=self.flag("TELEMETRY_HASH_BLOB_NAMES", d.hash_blob_names),
            role_name=self.text("TELEMETRY_ROLE_NAME"),
            storage_directory=self.text("TELEMETRY_STORAGE_DIRECTORY"),
            storage_retry_seconds=self.number(
                "TELEMETRY_STORAGE_RETRY_SECONDS", int, d.storage_retry_seconds, 1, 86_400
            ),
            poison_after_attempts=self.number(
                "TELEMETRY_POISON_AFTER_ATTEMPTS", int, d.poison_after_attempts, 1, 100
            ),
            span_export_delay_ms=self.number(
                "OTEL_BSP_SCHEDULE_DELAY", int, d.span_export_delay_ms, 10, 60_000
            ),
            log_export_delay_ms=self.number(
                "OTEL_BLRP_SCHEDULE_DELAY", int, d.log_export_delay_ms, 10, 60_000
            ),
            metric_export_interval_ms=self.number(
                "OTEL_METRIC_EXPORT_INTERVAL", int, d.metric_export_interval_ms, 100, 600_000
            ),
            shutdown_timeout_s=self.number(
                "TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS", float, d.shutdown_timeout_s, 0.1, 60
            ),
        )


    def logs_query(self) -> LogsQuerySettings:
        d = LogsQuerySettings()
        return LogsQuerySettings(
            endpoint=self.url("LOGS_QUERY_ENDPOINT"),
            workspace_id=self.text("LOGS_WORKSPACE_ID"),
            timeout_s=self.number("STATUS_QUERY_TIMEOUT_SECONDS", float, d.timeout_s, 1.0, 180),
            max_concurrency=self.number(
                "STATUS_QUERY_CONCURRENCY", int, d.max_concurrency, 1, 5),
        )

    def drift(self) -> DriftSettings:
        d = DriftSettings()
        return DriftSettings(
            descriptors=self.flag("DRIFT_DESCRIPTORS", d.descriptors),
            window_minutes=self.number("DRIFT_WINDOW_MINUTES", int, d.window_minutes, 5, 1440),
            baseline_hours=self.number("DRIFT_BASELINE_HOURS", float, d.baseline_hours,
                                       1, 24 * 90),
            psi_threshold=self.number("DRIFT_PSI_THRESHOLD", float, d.psi_threshold, 0.01, 10),
            min_images=self.number("DRIFT_MIN_IMAGES", int, d.min_images, 1, 1_000_000),
            confidence_drop=self.number("DRIFT_CONFIDENCE_DROP", float, d.confidence_drop,
                                        0.001, 1),
        )

    def tuning(self) -> TuningSettings:
        d = TuningSettings()
        raw = self.text("TUNING_MODE")
        mode = d.mode
        if raw is not None:
            try:
                mode = TuningMode(raw.lower())
            except ValueError:
                allowed = ", ".join(m.value for m in TuningMode)
                self.problems.append(f"TUNING_MODE must be one of {allowed}, got {raw!r}")
        return TuningSettings(
            mode=mode,
            schedule=self.schedule("TUNING_SCHEDULE", d.schedule),
            window_hours=self.number("TUNING_WINDOW_HOURS", float, d.window_hours, 1, 24 * 30),
            overlay_ttl_seconds=self.number("TUNING_OVERLAY_TTL_SECONDS", float,
                                            d.overlay_ttl_seconds, 1, 3600),
            min_samples=self.number("TUNING_MIN_SAMPLES", int, d.min_samples, 3, 1_000_000),
            revert_p95_tolerance=self.number("TUNING_REVERT_P95_TOLERANCE", float,
                                             d.revert_p95_tolerance, 0.01, 5),
        )

    # -- probes, quota check, the jobs' shared store and lock

    def probes(self, vision: VisionSettings) -> ProbeSettings:
        d = ProbeSettings(vision=vision)
        return ProbeSettings(
            vision=vision.for_probe(
                # unset: the pipeline's VISION_KEY (or Entra ID when that is unset too)
                key=self.text("PROBE_VISION_KEY") or vision.key,
                timeout_seconds=self.number(
                    "PROBE_TIMEOUT_SECONDS", float, PROBE_TIMEOUT_SECONDS, 0.5, 300),
                max_retries=self.number("PROBE_MAX_RETRIES", int, PROBE_MAX_RETRIES, 0, 3),
            ),
            schedule=self.schedule("PROBE_SCHEDULE", d.schedule),
            e2e_schedule=self.schedule("PROBE_E2E_SCHEDULE", d.e2e_schedule),
            e2e_deadline_seconds=self.number(
                "PROBE_E2E_DEADLINE_SECONDS", float, d.e2e_deadline_seconds, 1, 3600),
            e2e_poll_seconds=self.number(
                "PROBE_E2E_POLL_SECONDS", float, d.e2e_poll_seconds, 0.05, 60),
            e2e_prefix=self.folder("PROBE_E2E_PREFIX", d.e2e_prefix),
        )

    def quota(self) -> QuotaSettings:
        d = QuotaSettings()
        return QuotaSettings(
            schedule=self.schedule("QUOTA_SCHEDULE", d.schedule),
            monthly_calls=self.number("QUOTA_MONTHLY_CALLS", int, d.monthly_calls, 1, 10**12),
            tps_limit=self.optional_number("QUOTA_TPS_LIMIT", float, low=0.001, high=10_000.0),
            warn_thresholds=self.thresholds("QUOTA_WARN_THRESHOLDS", d.warn_thresholds),
        )

    def jobs(self) -> JobSettings:
        d = JobSettings()
        return JobSettings(
            status_container=self.container("STATUS_CONTAINER", d.status_container),
            lock_lease_seconds=self.number(
                "HEALTH_LOCK_LEASE_SECONDS", int, d.lock_lease_seconds, 15, 60),
            # REGION_NAME is set by App Service / Functions in Azure
            run_location=self.text("PROBE_RUN_LOCATION") or self.text("REGION_NAME")
            or d.run_location,
        )

    def schedule(self, key: str, default: str) -> str:
        raw = self.text(key)
        if raw is None:
            return default
        fields_ = raw.split()
        if len(fields_) != 6:
            self.problems.append(
                f"{key} must be a six-field NCRONTAB expression (seconds first, e.g."
                f" '0 */5 * * * *'), got {raw!r}")
            return default
        return " ".join(fields_)

    def thresholds(self, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            values = sorted({float(part) for part in raw.split(",") if part.strip()})
        except ValueError:
            values = []
        if not values or not all(0.0 < v <= 10.0 for v in values):
            self.problems.append(
                f"{key} must be comma-separated ratios in (0, 10], e.g. 0.8,0.95, got {raw!r}")
            return default
        return tuple(values)

    def choice(self, key: str, enum: type[VisionTier], default: VisionTier) -> VisionTier:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            return enum(raw.upper())
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            self.problems.append(f"{key} must be one of {allowed}, got {raw!r}")
            return default

    def rate_mode(self, key: str, default: RateMode) -> RateMode:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            return RateMode(raw.lower())
        except ValueError:
            self.problems.append(f"{key} must be adaptive or static, got {raw!r}")
            return default

    def features(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.text(key)
        if raw is None:
            return default
        names = [part.strip() for part in raw.split(",") if part.strip()]
        unknown = [n for n in names if n.lower() not in _FEATURES_BY_LOWER]
        if unknown or not names:
            allowed = ", ".join(KNOWN_FEATURES)
            self.problems.append(f"{key} must list features from {allowed}, got {raw!r}")
            return default
        canonical = [_FEATURES_BY_LOWER[n.lower()] for n in names]
        return tuple(dict.fromkeys(canonical))

    def folder(self, key: str, default: str) -> str:
        """A blob-name prefix ending in ``/`` (added when missing), not starting with one."""
        raw = self.text(key)
        if raw is None:
            return default
        if raw.startswith("/") or any(not ch.isprintable() for ch in raw):
            self.problems.append(
                f"{key} must be a blob folder such as 'synthetic/probe/' (no leading '/', no"
                f" control characters), got {raw!r}")
            return default
        return raw if raw.endswith("/") else raw + "/"

    def container(self, key: str, default: str) -> str:
        raw = self.text(key)
        if raw is None:
            return default
        if not _CONTAINER_RE.fullmatch(raw):
            self.problems.append(
                f"{key} must be a valid container name (3-63 lowercase letters, digits, hyphens),"
                f" got {raw!r}"
            )
            return default
        return raw

    def storage(self) -> StorageConnection:
        prefix = STORAGE_CONNECTION
        connection_string = self.text(prefix)
        blob_uri = self.url(f"{prefix}__blobServiceUri") or self.url(f"{prefix}__serviceUri")
        queue_uri = self.url(f"{prefix}__queueServiceUri")
        account = self.text(f"{prefix}__accountName")
        if blob_uri is None and account is not None:
            blob_uri = f"https://{account}.blob.core.windows.net"
            queue_uri = queue_uri or f"https://{account}.queue.core.windows.net"
        if connection_string is None and blob_uri is None:
            self.problems.append(
                f"{prefix} (a connection string) or {prefix}__blobServiceUri"
                " (identity-based) is required"
            )
        if connection_string is not None:
            return StorageConnection(connection_string=connection_string)
        return StorageConnection(
            blob_service_uri=blob_uri,
            queue_service_uri=queue_uri,
            client_id=self.text(f"{prefix}__clientId"),
        )


#: Written into the package by ``scripts/release package``: the version travels with the code,
#: so a rollback to an older package reports the older version without a config change.
VERSION_FILE = Path(__file__).resolve().parent / "version.txt"


@functools.cache
def packaged_version() -> str:
    """The version stamped into the deployed package, or "" when running from a checkout."""
    try:
        return VERSION_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


@functools.cache
def get_settings() -> Settings:
    """The process's settings, parsed from ``os.environ`` on first use (not at import)."""
    return Settings.from_env(os.environ)
