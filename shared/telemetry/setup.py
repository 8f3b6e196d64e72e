"""Set-up and tear-down: the one place Azure Monitor is configured, flushed and shut down.

Either the Functions worker configures Azure Monitor (app setting
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``) or ``configure()`` here does — never both.
``configure()`` runs lazily on the first invocation (never at import of ``function_app``), once
per process, and only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set. ``force_flush`` and
``shutdown`` are bounded whatever the exporter does.

Must never: raise into business code, or configure the providers twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from azure.monitor.opentelemetry import configure_azure_monitor
from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk.resources import Resource
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from shared.settings import secret_values
from shared.telemetry.redaction import install_log_filter
from shared.telemetry.state import _STATE, Mode

if TYPE_CHECKING:
    from shared.settings import Settings, TelemetrySettings

logger = logging.getLogger(__name__)

# Instrumentations the distro would switch on by default. Our own spans already describe every
# Vision attempt and document write (with classification); the generic ones would count each
# call twice and put blob URLs (names) into AppDependencies.
_DISABLED_INSTRUMENTATIONS: Final = (
    "azure_sdk", "requests", "urllib", "urllib3", "httpx", "httpx2",
    "django", "fastapi", "flask", "psycopg2",
)
_LOOPBACK_ENV_DEFAULTS: Final = {
    # The SDK's own usage statistics go to a fixed internet endpoint; pointless locally.
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    # Only the App Service detector (reads env vars); the VM detector calls the metadata
    # endpoint, which does not exist on a laptop and costs a timeout.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
}
_ENV_DEFAULTS: Final = {
    # The SDK offers every measurement in a sampled span to an exemplar reservoir; the Azure
    # Monitor metric exporter never sends exemplars, so that is work on the invocation's thread
    # for nothing (the SDK's own variable: an operator can still set it).
    "OTEL_METRICS_EXEMPLAR_FILTER": "always_off",
}


def mode() -> Mode:
    return _STATE.mode


def configure(settings: Settings | None) -> Mode:
    """Set telemetry up once per process; safe to call on every invocation. Never raises.

    ``None`` (settings did not parse) leaves it unconfigured, to be tried again next time.
    """
    if _configured() or settings is None:
        return _STATE.mode
    with _STATE.lock:
        if _configured():  # another thread won the race
            return _STATE.mode
        t = settings.telemetry
        _STATE.hash_blob_names = t.hash_blob_names
        _STATE.poison_after = t.poison_after_attempts
        _STATE.secrets = secret_values(settings)
        _STATE.shutdown_timeout_s = t.shutdown_timeout_s
        try:
            if t.configured_by_worker:
                _STATE.mode = Mode.WORKER
            elif not t.connection_string:
                _STATE.mode = Mode.DISABLED
            else:
                _configure_azure_monitor(t)
                _STATE.mode = Mode.APP
                _take_over_exit(_sdk_providers())
            if _STATE.mode is not Mode.DISABLED:
                # Registered after the providers' own handlers, so it runs before them.
                atexit.register(shutdown)
            # The distro's (or the worker's) exporting handler stays where it is, on the root
            # logger; the filter on it redacts on the caller, before the record is exported.
            install_log_filter()
        except Exception as exc:  # a broken exporter must not take the function down
            logger.warning("telemetry: set-up failed (%s); continuing without export",
                           type(exc).__name__)
            _STATE.mode = Mode.DISABLED
        logger.info("telemetry: mode %s", _STATE.mode.value)
        return _STATE.mode


def _configured() -> bool:
    return _STATE.mode is not Mode.UNCONFIGURED


def azure_monitor_options(t: TelemetrySettings) -> dict[str, Any]:
    """The keyword arguments for ``configure_azure_monitor`` (pure; unit-tested)."""
    loopback = t.ingestion_is_loopback
    options: dict[str, Any] = {
        "connection_string": t.connection_string,
        # Fixed-percentage sampling (100 % by default): every request and dependency is kept,
        # which the KPI queries rely on. The distro's default rate-limited sampler drops spans.
        "sampling_ratio": t.sampling_ratio,
        "enable_live_metrics": (not loopback) if t.live_metrics is None else t.live_metrics,
        "instrumentation_options": {name: {"enabled": False}
                                    for name in _DISABLED_INSTRUMENTATIONS},
        "logger_name": "",
        # Offline storage: failed batches are kept on disk and re-sent after this lease.
        "storage_min_retry_interval": t.storage_retry_seconds,
    }
    if loopback:
        options["enable_performance_counters"] = False
    if t.storage_directory:
        options["storage_directory"] = t.storage_directory
    if t.role_name:
        options["resource"] = Resource.create({SERVICE_NAME: t.role_name})
    return options


def export_environment(t: TelemetrySettings) -> dict[str, str]:
    """The OpenTelemetry SDK variables that bound what a hard crash loses (pure; unit-tested).

    The distro builds its batch processors and metric reader without explicit intervals, so the
    SDK reads these from the environment; Settings parsed (and validated) the same names.
    """
    return {
        "OTEL_BSP_SCHEDULE_DELAY": str(t.span_export_delay_ms),
        "OTEL_BLRP_SCHEDULE_DELAY": str(t.log_export_delay_ms),
        "OTEL_METRIC_EXPORT_INTERVAL": str(t.metric_export_interval_ms),
    }


def _configure_azure_monitor(t: TelemetrySettings) -> None:
    defaults = {**_ENV_DEFAULTS, **(_LOOPBACK_ENV_DEFAULTS if t.ingestion_is_loopback else {})}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.update(export_environment(t))
    configure_azure_monitor(**azure_monitor_options(t))


def force_flush(timeout_millis: int = 10_000) -> bool:
    """Push buffered spans, logs and metrics now (tests, benchmarks, a host's graceful stop).

    Bounded by ``timeout_millis`` even when an export hangs (the SDK's batch processors ignore
    the timeout they are given); never raises. False if anything did not finish in time.
    """
    providers = _sdk_providers()
    return _bounded("flush", timeout_millis / 1000,
                    lambda deadline: _flush(providers, deadline, close=False))


def shutdown(timeout_s: float | None = None,
             *, providers: Sequence[object] | None = None) -> bool:
    """Flush everything buffered, then shut the providers down if this process configured them.

    The ``atexit`` hook of ``configure()`` (runs before the SDK's own handlers); a host may call
    it on a graceful stop. At most ``timeout_s`` (``TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS``) in
    total, whatever the exporter does; never raises; once the providers are shut down, later
    calls do nothing. In ``worker`` mode the worker owns the providers: they are flushed, not
    shut down. ``providers`` is for tests (default: the global tracer, meter and logger
    providers, which are then shut down as in ``app`` mode).
    """
    if _STATE.closed and providers is None:
        return True
    bound = _STATE.shutdown_timeout_s if timeout_s is None else timeout_s
    chosen = _sdk_providers() if providers is None else tuple(providers)
    close = providers is not None or _STATE.mode is Mode.APP
    if close and providers is None:
        _STATE.closed = True  # even if the bound passes: the exit goes on without them
    return _bounded("shutdown", bound,
                    lambda deadline: _flush(chosen, deadline, close=close))


def _sdk_providers() -> tuple[object, ...]:
    return (trace.get_tracer_provider(), metrics.get_meter_provider(), _logger_provider())


def _take_over_exit(providers: Sequence[object]) -> None:
    """Take the SDK's exit handlers over: each provider's ``shutdown`` at exit waits up to 30 s
    per processor on a hung export, which would make a stop unbounded. ``shutdown()`` does the
    same work within its bound instead."""
    for provider in providers:
        stop = getattr(provider, "shutdown", None)
        if callable(stop):
            atexit.unregister(stop)  # equal bound methods: removes what shutdown_on_exit added


def _flush(providers: Sequence[object], deadline: float, *, close: bool) -> bool:
    """Flush (and if ``close``, shut down) every provider, each with what is left of the bound."""
    ok = True
    for provider in providers:
        left_ms = max(int((deadline - time.monotonic()) * 1000), 0)
        try:
            flush = getattr(provider, "force_flush", None)
            if callable(flush):
                ok = bool(flush(left_ms)) and ok
            stop = getattr(provider, "shutdown", None)
            if close and callable(stop):
                stop()
        except Exception as exc:  # one provider failing must not keep the others' data
            logger.warning("telemetry: flush of %s failed (%s)", type(provider).__name__,
                           type(exc).__name__)
            ok = False
    return ok


def _bounded(what: str, timeout_s: float, work: Callable[[float], bool]) -> bool:
    """Run ``work(deadline)`` on a daemon thread and wait at most ``timeout_s`` for it.

    A daemon thread, so an export stuck past the bound neither blocks the caller nor keeps the
    interpreter from exiting; what it still held is lost, which is what the bound means.
    """
    deadline = time.monotonic() + max(timeout_s, 0.0)
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(work(deadline))
        except Exception as exc:  # telemetry never breaks the caller, at exit neither
            logger.warning("telemetry: %s failed (%s)", what, type(exc).__name__)
            result.append(False)

    worker = threading.Thread(target=run, name=f"visionops-telemetry-{what}", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        logger.warning("telemetry: %s did not finish within %.1fs; what was still buffered is "
                       "lost", what, timeout_s)
        return False
    return bool(result and result[0])


def _logger_provider() -> object:
    return get_logger_provider()

