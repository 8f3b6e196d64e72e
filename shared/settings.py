"""App settings, parsed once into one frozen ``Settings``.

Every tunable of the pipeline is an app setting (upper-snake name). ``Settings.from_env`` reads a
mapping (``os.environ`` in the app, a plain dict in tests) and reports *all* bad or missing keys
in one ``SettingsError``. ``get_settings()`` parses ``os.environ`` once per process.

Defaults work against the local stack (Vision emulator, Azurite). The emulator computes only
``read``, ``people`` and ``smartCrops``; in Azure you may add ``caption``/``denseCaptions``
(region-dependent), ``tags`` and ``objects`` to ``VISION_FEATURES``.

This module must never log or ``repr`` a key or a connection string.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
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


@dataclass(frozen=True, slots=True)
class StorageConnection:
    """The ``AzureWebJobsStorage`` connection: a connection string or identity-based URIs.

    Identity-based (``AzureWebJobsStorage__blobServiceUri`` …) is what runs in Azure; the
    connection string (``UseDevelopmentStorage=true``) is for Azurite.
    """

    connection_string: str | None = field(default=None, repr=False)
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Telemetry and Log Analytics settings (see ``shared.telemetry`` / ``shared.logsquery``).

    ``connection_string`` and the query endpoint only ever reach the SDKs, never a log line.
    """

    connection_string: str | None = field(default=None, repr=False)
    configured_by_worker: bool = False
    sampling_ratio: float = 1.0
    live_metrics: bool | None = None
    hash_blob_names: bool = False
    role_name: str | None = None
    storage_directory: str | None = None
    storage_retry_seconds: int = 60
    synthetic_prefix: str | None = "synthetic/"
    poison_after_attempts: int = 5
    query_endpoint: str | None = None
    workspace_id: str | None = None

    @property
    def ingestion_is_loopback(self) -> bool:
        """True when the connection string points at a local ingestion endpoint (devstack)."""
        endpoint = _connection_string_field(self.connection_string, "ingestionendpoint")
        return is_loopback_url(endpoint)

    @property
    def query_is_loopback(self) -> bool:
        return is_loopback_url(self.query_endpoint)


# --------------------------------------------------------------------------- health (probes, quota)
# Settings of the synthetic probes and the quota check (shared/probes.py, shared/quota.py; see
# docs/probes-and-quota.md). The three schedules are read by the Functions host from
# ``%PROBE_SCHEDULE%`` / ``%PROBE_E2E_SCHEDULE%`` / ``%QUOTA_SCHEDULE%``; they are parsed here too
# so a bad value is reported with every other bad setting.

DEFAULT_PROBE_SCHEDULE = "0 */5 * * * *"
DEFAULT_PROBE_E2E_SCHEDULE = "30 */10 * * * *"
DEFAULT_QUOTA_SCHEDULE = "0 7 * * * *"
#: F0's monthly call volume (*unconfirmed*: configurable through QUOTA_MONTHLY_CALLS).
F0_MONTHLY_CALLS = 5_000


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Probes, quota check and where their results are kept (the ``status`` container)."""

    probe_schedule: str = DEFAULT_PROBE_SCHEDULE
    probe_e2e_schedule: str = DEFAULT_PROBE_E2E_SCHEDULE
    quota_schedule: str = DEFAULT_QUOTA_SCHEDULE
    probe_vision_key: str | None = field(default=None, repr=False)
    probe_timeout_seconds: float = 10.0
    probe_max_retries: int = 0
    probe_e2e_deadline_seconds: float = 120.0
    probe_e2e_poll_seconds: float = 2.0
    probe_run_location: str = "local"
    lock_lease_seconds: int = 60
    quota_monthly_calls: int = F0_MONTHLY_CALLS
    quota_tps_limit: float | None = None
    quota_warn_thresholds: tuple[float, ...] = (0.8, 0.95)
    status_container: str = "status"


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


# --- status, alerts and dashboards (issue 6) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitoringSettings:
    """Thresholds of the alert rules (``shared.alerts``) and the status endpoint's tunables.

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

    @property
    def latency_threshold_ms(self) -> float:
        return self.latency_baseline_p95_ms * self.latency_factor


# --- end of status, alerts and dashboards ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    vision_endpoint: str
    vision_key: str | None = field(default=None, repr=False)
    vision_features: tuple[str, ...] = ("read", "people", "smartCrops")
    vision_language: str = "en"
    vision_model_version: str | None = None
    vision_tier: VisionTier = VisionTier.S1
    vision_rate_limit_per_second: float | None = None
    vision_rate_burst: int = 1
    vision_connect_timeout_seconds: float = 5.0
    vision_timeout_seconds: float = 30.0
    vision_max_retries: int = 4
    vision_backoff_base_seconds: float = 0.5
    vision_backoff_max_seconds: float = 20.0
    vision_max_retry_after_seconds: float = 60.0
    vision_rate_mode: RateMode = RateMode.ADAPTIVE
    vision_retry_budget_ratio: float = 0.2
    vision_breaker_failures: int = 5
    vision_probe_interval_seconds: float = 5.0
    parked_container: str = "parked"
    redrive_schedule: str = DEFAULT_REDRIVE_SCHEDULE
    redrive_batch: int = 200
    preprocess_max_dimension: int = 2048
    preprocess_jpeg_quality: int = 90
    preprocess_max_pixels: int = 50_000_000
    preprocess_max_input_bytes: int = 64 * 1024 * 1024
    images_container: str = "images"
    results_container: str = "results"
    failed_container: str = "failed"
    storage: StorageConnection = field(default_factory=StorageConnection)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)  # issue 6

    @property
    def tier_limit_per_second(self) -> float:
        """The documented limit of ``VISION_TIER`` (what one account allows, all callers)."""
        if self.vision_tier is VisionTier.F0:
            return F0_CALLS_PER_SECOND
        return S1_DEFAULT_CALLS_PER_SECOND

    @property
    def rate_limit_per_second(self) -> float:
        """The client's ceiling: ``VISION_RATE_LIMIT_PER_SECOND`` if set, else the tier's limit.

        One instance never sends faster; the adaptive controller finds its share below it."""
        if self.vision_rate_limit_per_second is not None:
            return self.vision_rate_limit_per_second
        return self.tier_limit_per_second

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse app settings; raise ``SettingsError`` naming every bad or missing key."""
        p = _Parser(env)
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        endpoint = p.url("VISION_ENDPOINT", required=True)
        settings = cls(
            vision_endpoint=endpoint or "",
            vision_key=p.text("VISION_KEY"),
            vision_features=p.features("VISION_FEATURES", d["vision_features"]),
            vision_language=p.text("VISION_LANGUAGE") or d["vision_language"],
            vision_model_version=p.text("VISION_MODEL_VERSION"),
            vision_tier=p.choice("VISION_TIER", VisionTier, d["vision_tier"]),
            vision_rate_limit_per_second=p.optional_number(
                "VISION_RATE_LIMIT_PER_SECOND", float, low=0.001, high=1000.0
            ),
            vision_rate_burst=p.number("VISION_RATE_BURST", int, d["vision_rate_burst"], 1, 1000),
            vision_connect_timeout_seconds=p.number(
                "VISION_CONNECT_TIMEOUT_SECONDS",
                float,
                d["vision_connect_timeout_seconds"],
                0.1,
                300,
            ),
            vision_timeout_seconds=p.number(
                "VISION_TIMEOUT_SECONDS", float, d["vision_timeout_seconds"], 0.1, 600
            ),
            vision_max_retries=p.number("VISION_MAX_RETRIES", int, d["vision_max_retries"], 0, 20),
            vision_backoff_base_seconds=p.number(
                "VISION_BACKOFF_BASE_SECONDS", float, d["vision_backoff_base_seconds"], 0.0, 60
            ),
            vision_backoff_max_seconds=p.number(
                "VISION_BACKOFF_MAX_SECONDS", float, d["vision_backoff_max_seconds"], 0.0, 600
            ),
            vision_max_retry_after_seconds=p.number(
                "VISION_MAX_RETRY_AFTER_SECONDS",
                float,
                d["vision_max_retry_after_seconds"],
                0.0,
                600,
            ),
            vision_rate_mode=p.rate_mode("VISION_RATE_MODE", d["vision_rate_mode"]),
            vision_retry_budget_ratio=p.number(
                "VISION_RETRY_BUDGET_RATIO", float, d["vision_retry_budget_ratio"], 0.0, 1.0
            ),
            vision_breaker_failures=p.number(
                "VISION_BREAKER_FAILURES", int, d["vision_breaker_failures"], 1, 1000
            ),
            vision_probe_interval_seconds=p.number(
                "VISION_PROBE_INTERVAL_SECONDS", float, d["vision_probe_interval_seconds"],
                0.1, 3600,
            ),
            parked_container=p.container("PARKED_CONTAINER", d["parked_container"]),
            redrive_schedule=p.schedule("REDRIVE_SCHEDULE", d["redrive_schedule"]),
            redrive_batch=p.number("REDRIVE_BATCH", int, d["redrive_batch"], 1, 100_000),
            preprocess_max_dimension=p.number(
                "PREPROCESS_MAX_DIMENSION", int, d["preprocess_max_dimension"], 64, 15_999
            ),
            preprocess_jpeg_quality=p.number(
                "PREPROCESS_JPEG_QUALITY", int, d["preprocess_jpeg_quality"], 1, 95
            ),
            preprocess_max_pixels=p.number(
                "PREPROCESS_MAX_PIXELS",
                int,
                d["preprocess_max_pixels"],
                10_000,
                PILLOW_BOMB_WARNING_PIXELS,
            ),
            preprocess_max_input_bytes=p.number(
                "PREPROCESS_MAX_INPUT_BYTES",
                int,
                d["preprocess_max_input_bytes"],
                1024,
                1024 * 1024 * 1024,
            ),
            images_container=p.container("IMAGES_CONTAINER", d["images_container"]),
            results_container=p.container("RESULTS_CONTAINER", d["results_container"]),
            failed_container=p.container("FAILED_CONTAINER", d["failed_container"]),
            storage=p.storage(),
            telemetry=p.telemetry(),
            health=p.health(),
            monitoring=p.monitoring(),  # issue 6
        )
        if settings.vision_backoff_max_seconds < settings.vision_backoff_base_seconds:
            p.problems.append("VISION_BACKOFF_MAX_SECONDS must be >= VISION_BACKOFF_BASE_SECONDS")
        containers = [
            settings.images_container,
            settings.results_container,
            settings.failed_container,
            settings.parked_container,
        ]
        if len(set(containers)) != len(containers):
            p.problems.append(
                "IMAGES_CONTAINER, RESULTS_CONTAINER, FAILED_CONTAINER and PARKED_CONTAINER must"
                " all differ"
                " (results written into the trigger container would trigger the function)"
            )
        if settings.health.status_container in containers:  # health block
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

    # --- status, alerts and dashboards (issue 6) ---------------------------------------------

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
            app_version=self.text("APP_VERSION") or d.app_version,
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
        prefix = self.env.get("TELEMETRY_SYNTHETIC_PREFIX")
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
            # set but empty disables the prefix rule
            synthetic_prefix=d.synthetic_prefix if prefix is None else (prefix.strip() or None),
            poison_after_attempts=self.number(
                "TELEMETRY_POISON_AFTER_ATTEMPTS", int, d.poison_after_attempts, 1, 100
            ),
            query_endpoint=self.url("LOGS_QUERY_ENDPOINT"),
            workspace_id=self.text("LOGS_WORKSPACE_ID"),
        )


    # -- health block (probes, quota) --------------------------------------------------------

    def health(self) -> HealthSettings:
        d = HealthSettings()
        tps = self.optional_number("QUOTA_TPS_LIMIT", float, low=0.001, high=10_000.0)
        return HealthSettings(
            probe_schedule=self.schedule("PROBE_SCHEDULE", d.probe_schedule),
            probe_e2e_schedule=self.schedule("PROBE_E2E_SCHEDULE", d.probe_e2e_schedule),
            quota_schedule=self.schedule("QUOTA_SCHEDULE", d.quota_schedule),
            # unset: the pipeline's VISION_KEY (or Entra ID when that is unset too)
            probe_vision_key=self.text("PROBE_VISION_KEY") or self.text("VISION_KEY"),
            probe_timeout_seconds=self.number(
                "PROBE_TIMEOUT_SECONDS", float, d.probe_timeout_seconds, 0.5, 300),
            probe_max_retries=self.number("PROBE_MAX_RETRIES", int, d.probe_max_retries, 0, 3),
            probe_e2e_deadline_seconds=self.number(
                "PROBE_E2E_DEADLINE_SECONDS", float, d.probe_e2e_deadline_seconds, 1, 3600),
            probe_e2e_poll_seconds=self.number(
                "PROBE_E2E_POLL_SECONDS", float, d.probe_e2e_poll_seconds, 0.05, 60),
            # REGION_NAME is set by App Service / Functions in Azure
            probe_run_location=self.text("PROBE_RUN_LOCATION") or self.text("REGION_NAME")
            or d.probe_run_location,
            lock_lease_seconds=self.number(
                "HEALTH_LOCK_LEASE_SECONDS", int, d.lock_lease_seconds, 15, 60),
            quota_monthly_calls=self.number(
                "QUOTA_MONTHLY_CALLS", int, d.quota_monthly_calls, 1, 10**12),
            quota_tps_limit=tps,
            quota_warn_thresholds=self.thresholds(
                "QUOTA_WARN_THRESHOLDS", d.quota_warn_thresholds),
            status_container=self.container("STATUS_CONTAINER", d.status_container),
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


@functools.cache
def get_settings() -> Settings:
    """The process's settings, parsed from ``os.environ`` on first use (not at import)."""
    return Settings.from_env(os.environ)
