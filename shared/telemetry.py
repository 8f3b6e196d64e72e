"""The single owner of telemetry: OpenTelemetry + Azure Monitor set-up, names and instruments.

Either the Functions worker configures Azure Monitor (app setting
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``) or ``configure()`` here does — never both.
``configure()`` runs lazily on the first invocation (never at import of ``function_app``), once
per process, and only when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set. Everything else in
the app uses the small API below; nothing else imports an exporter.

What goes where (Log Analytics table in brackets; see docs/telemetry.md):

* ``invocation()`` — one SERVER span per function invocation [AppRequests]: name = function
  name, ``faas.*`` semconv attributes, ``pipeline.outcome`` and the error class/reason.
* ``TelemetryObserver`` — the pipeline's ``PipelineObserver``: one CLIENT span per Vision attempt
  and per document write [AppDependencies], the instruments [AppMetrics] and one custom event per
  terminal outcome [AppEvents].
* ``track_event`` [AppEvents] and ``track_availability`` [AppAvailabilityResults] — log records
  carrying ``microsoft.custom_event.name`` / ``microsoft.availability.*``.
* plain ``logging`` anywhere → [AppTraces] (with exception info → [AppExceptions]), correlated
  with the current span. When we configure, callers only enqueue the record (``LogQueue``); a
  listener thread does the OpenTelemetry translation.

Synthetic traffic (probes) carries the semconv ``user_agent.synthetic.type = test``; the exporter
turns it into the ``SyntheticSource`` column, which every KPI query in ``queries/`` excludes. A
blob is synthetic only when it carries the probe's marker metadata (``PROBE_BLOB_MARKER``), never
because of its name: a user's upload anywhere, the probe's folder included, counts in the KPIs.

Must never: raise into business code (failures are logged and swallowed here), put OCR text,
image bytes, keys or connection strings into any attribute, event or log, or put a blob name
into telemetry when ``TELEMETRY_HASH_BLOB_NAMES`` asks for its hash instead.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import hashlib
import logging
import logging.handlers
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry._logs import SeverityNumber, get_logger
from opentelemetry.semconv._incubating.attributes.faas_attributes import (
    FAAS_DOCUMENT_COLLECTION,
    FAAS_DOCUMENT_NAME,
    FAAS_DOCUMENT_OPERATION,
    FAAS_INVOCATION_ID,
    FAAS_TRIGGER,
    FaasDocumentOperationValues,
)
from opentelemetry.semconv._incubating.attributes.peer_attributes import PEER_SERVICE
from opentelemetry.semconv._incubating.attributes.user_agent_attributes import (
    USER_AGENT_SYNTHETIC_TYPE,
)
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import classify
from shared.naming import printable
from shared.settings import secret_values

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
    from opentelemetry.trace import Span, Tracer

    from shared.errors import Disposition
    from shared.pipeline import AnalysisOutcome, BlobInput
    from shared.preprocessing import PreprocessRecord
    from shared.settings import Settings, TelemetrySettings
    from shared.vision import VisionAttempt

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

INSTRUMENTATION_NAME: Final = "visionops"

# --------------------------------------------------------------------------- names
# Span, event and metric names are low-cardinality constants; attribute names come from the
# OpenTelemetry semantic conventions where one exists (imported above), else these namespaces.

ATTR_OUTCOME: Final = "pipeline.outcome"
ATTR_ERROR_CLASS: Final = "pipeline.error_class"
ATTR_REASON: Final = "pipeline.reason"
ATTR_STAGE: Final = "pipeline.stage"
ATTR_STATUS_CODE: Final = "pipeline.status_code"
ATTR_SERVICE_CODE: Final = "pipeline.service_code"
ATTR_ATTEMPTS: Final = "pipeline.attempts"
ATTR_BYTES_IN: Final = "pipeline.image.bytes_in"
ATTR_BYTES_OUT: Final = "pipeline.image.bytes_out"
ATTR_FORMAT: Final = "pipeline.image.format"
ATTR_REENCODED: Final = "pipeline.image.reencoded"
ATTR_PREPROCESS_STAGE: Final = "preprocess.stage"
ATTR_DOCUMENT_CONTAINER: Final = "pipeline.document.container"
ATTR_HOST_ATTEMPTS: Final = "pipeline.host_attempts"
#: what the tuning review compares across image sizes (numbers only, never content)
ATTR_FINAL_MAX_SIDE: Final = "pipeline.image.final_max_side"
ATTR_PREPROCESS_MS: Final = "pipeline.preprocess_ms"
ATTR_VISION_MS: Final = "pipeline.vision_ms"
ATTR_OUTPUT_OCR_LINES: Final = "vision.output.ocr_lines"
ATTR_OUTPUT_OCR_WORDS: Final = "vision.output.ocr_words"
ATTR_OUTPUT_WORD_CONFIDENCE: Final = "vision.output.word_confidence_mean"
ATTR_OUTPUT_PEOPLE: Final = "vision.output.people"
#: the source version (ETag) an invocation read; with several versions of one name in flight it
#: tells which one each request analysed, and which one superseded it
ATTR_SOURCE_ETAG: Final = "pipeline.source.etag"
ATTR_CURRENT_ETAG: Final = "pipeline.source.current_etag"
ATTR_OUTPUT_WORD_CONFIDENCE_MIN: Final = "vision.output.word_confidence_min"
ATTR_OUTPUT_PEOPLE_CONFIDENCE: Final = "vision.output.people_confidence_max"
ATTR_OUTPUT_CROP_SHARE: Final = "vision.output.smart_crop_area_share"
ATTR_MODEL_VERSION: Final = "vision.model_version"
#: what the input looks like (shared/descriptors.py): the drift queries compare these
IMAGE_DESCRIPTOR_ATTRIBUTES: Final = {
    "brightness": "pipeline.image.brightness",
    "contrast": "pipeline.image.contrast",
    "sharpness": "pipeline.image.sharpness",
    "saturation": "pipeline.image.saturation",
    "aspect_ratio": "pipeline.image.aspect_ratio",
    "megapixels": "pipeline.image.megapixels",
    "format": "pipeline.image.source_format",
    "camera_model": "pipeline.image.camera_model",
}

ATTR_VISION_ATTEMPT: Final = "vision.attempt"
ATTR_VISION_FEATURES: Final = "vision.features"
ATTR_VISION_THROTTLED: Final = "vision.throttled"
ATTR_VISION_WILL_RETRY: Final = "vision.will_retry"
ATTR_VISION_ERROR_CLASS: Final = "vision.error_class"
ATTR_VISION_REASON: Final = "vision.reason"
ATTR_VISION_ERROR_CODE: Final = "vision.error_code"
ATTR_VISION_INNER_CODE: Final = "vision.inner_code"
ATTR_VISION_RETRY_AFTER_S: Final = "vision.retry_after_s"
ATTR_VISION_BACKOFF_S: Final = "vision.backoff_s"
ATTR_VISION_LIMITER_WAIT_MS: Final = "vision.limiter_wait_ms"
ATTR_VISION_RATE: Final = "vision.rate_per_second"
ATTR_VISION_IMAGE_BYTES: Final = "vision.image_bytes"

# For the probes and quota issues: reserve the namespaces here, in one place.
ATTR_PROBE_NAME: Final = "probe.name"
ATTR_PROBE_STEP: Final = "probe.step"
ATTR_QUOTA_TIER: Final = "quota.tier"
ATTR_QUOTA_USED: Final = "quota.used"
ATTR_QUOTA_LIMIT: Final = "quota.limit"

#: Semconv value marking synthetic traffic; the exporter maps it to ``SyntheticSource``.
SYNTHETIC_TYPE_TEST: Final = "test"
#: Blob metadata the end-to-end probe sets on every blob it uploads (value: the probe's name).
#: Letters only: metadata names must be identifiers, and some proxies drop headers with ``_``.
PROBE_BLOB_MARKER: Final = "visionopsprobe"

# Exporter contract (azure-monitor-opentelemetry-exporter): log-record attributes that turn a
# log record into an AppEvents / AppAvailabilityResults row instead of an AppTraces row.
CUSTOM_EVENT_NAME: Final = "microsoft.custom_event.name"
AVAILABILITY_ID: Final = "microsoft.availability.id"
AVAILABILITY_NAME: Final = "microsoft.availability.name"
AVAILABILITY_DURATION: Final = "microsoft.availability.duration"
AVAILABILITY_SUCCESS: Final = "microsoft.availability.success"
AVAILABILITY_RUN_LOCATION: Final = "microsoft.availability.runLocation"
AVAILABILITY_MESSAGE: Final = "microsoft.availability.message"

EVENT_ANALYZED: Final = "ImageAnalyzed"
EVENT_REJECTED: Final = "ImageRejected"
EVENT_POISONED: Final = "ImagePoisoned"

SPAN_VISION_ANALYZE: Final = "POST /computervision/imageanalysis:analyze"
SPAN_DOCUMENT_WRITE: Final = "Blob upload"
VISION_ANALYZE_PATH: Final = "/computervision/imageanalysis:analyze"
STORAGE_NAMESPACE: Final = "Microsoft.Storage"
AZ_NAMESPACE: Final = "az.namespace"  # the Azure SDK's convention; the exporter reads it

METRIC_ANALYSIS_DURATION: Final = "pipeline.analysis.duration"
METRIC_PREPROCESS_DURATION: Final = "pipeline.preprocess.duration"
METRIC_PREPROCESS_STAGE_DURATION: Final = "pipeline.preprocess.stage.duration"
METRIC_IMAGE_BYTES_IN: Final = "pipeline.image.bytes_in"
METRIC_IMAGE_BYTES_OUT: Final = "pipeline.image.bytes_out"
METRIC_OUTCOMES: Final = "pipeline.outcomes"
METRIC_VISION_ATTEMPT_DURATION: Final = "vision.attempt.duration"
METRIC_VISION_RETRIES: Final = "vision.retries"
METRIC_VISION_THROTTLES: Final = "vision.throttles"
METRIC_LIMITER_WAIT: Final = "vision.rate_limiter.wait"
METRIC_VISION_RATE: Final = "vision.rate.effective"
METRIC_VISION_FLEET_MEMBERS: Final = "vision.fleet.members"
METRIC_VISION_FLEET_LIMIT: Final = "vision.fleet.limit"
METRIC_VISION_BUDGET_EXHAUSTED: Final = "vision.retry_budget.exhausted"
METRIC_VISION_BREAKER_REFUSED: Final = "vision.breaker.refused"

#: ``pipeline.outcome`` of an invocation that raised (the host retries it, then poisons).
OUTCOME_FAILED: Final = "failed"
#: ``pipeline.outcome`` of an invocation that ended without the pipeline naming an outcome.
OUTCOME_COMPLETED: Final = "completed"

# Instrumentations the distro would switch on by default. Our own spans already describe every
# Vision attempt and document write (with classification); the generic ones would count each
# call twice and put blob URLs (names) into AppDependencies.
_DISABLED_INSTRUMENTATIONS: Final = (
    "azure_sdk", "requests", "urllib", "urllib3", "httpx", "httpx2",
    "django", "fastapi", "flask", "psycopg2",
)
# Loggers whose records never become telemetry: the exporter's and SDK's own (a failing export
# would otherwise log about itself into the next export), and azure-core's per-request log
# (request URLs carry blob names).
_EXCLUDED_LOGGERS: Final = (
    "azure.monitor.opentelemetry",
    "opentelemetry",
    "azure.core.pipeline.policies.http_logging_policy",
)
_LOOPBACK_ENV_DEFAULTS: Final = {
    # The SDK's own usage statistics go to a fixed internet endpoint; pointless locally.
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    # Only the App Service detector (reads env vars); the VM detector calls the metadata
    # endpoint, which does not exist on a laptop and costs a timeout.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
}


class Trigger(StrEnum):
    """``faas.trigger`` values (semantic conventions)."""

    DATASOURCE = "datasource"  # blob trigger
    HTTP = "http"
    TIMER = "timer"
    PUBSUB = "pubsub"
    OTHER = "other"


class Mode(StrEnum):
    """Who owns the OpenTelemetry providers in this process."""

    UNCONFIGURED = "unconfigured"
    APP = "app"  # configure_azure_monitor() called here
    WORKER = "worker"  # the Functions worker did it
    DISABLED = "disabled"  # no connection string: API calls are no-ops


# --------------------------------------------------------------------------- safety


def _safe(func: Callable[P, R]) -> Callable[P, R | None]:
    """Telemetry never breaks the app: log (type only — messages may echo values) and go on."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # the one place a broad catch is the design
            logger.warning("telemetry: %s failed (%s); ignored", func.__qualname__,
                           type(exc).__name__)
            return None

    return wrapper


def blob_label(container: str, name: str, *, hash_names: bool) -> str:
    """What telemetry may say about a blob: its name, or ``sha256:<16 hex>`` when hashing."""
    if not hash_names:
        return name
    digest = hashlib.sha256(f"{container}/{name}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest[:16]}"


def _clean(properties: Mapping[str, object] | None) -> dict[str, str | bool | int | float]:
    out: dict[str, str | bool | int | float] = {}
    for key, value in (properties or {}).items():
        if value is None:
            continue
        out[str(key)] = value if isinstance(value, str | bool | int | float) else str(value)
    return out


def _ai_duration(ms: float) -> str:
    """Application Insights duration text ``d.hh:mm:ss.ffffff``."""
    micros = max(0, round(ms * 1000))
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}.{hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}"


# --------------------------------------------------------------------------- set-up


@dataclass(slots=True)
class _State:
    mode: Mode = Mode.UNCONFIGURED
    hash_blob_names: bool = False
    poison_after: int = 5
    secrets: tuple[str, ...] = ()
    shutdown_timeout_s: float = 5.0
    closed: bool = False  # the providers were shut down (at exit): nothing more to flush
    log_queue: LogQueue | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()


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
                # Our own handler: callers only enqueue; the worker's set-up is left as it is.
                _STATE.log_queue = LogQueue.install(logging.getLogger())
                _take_over_exit(_sdk_providers())
            if _STATE.mode is not Mode.DISABLED:
                # Registered after the providers' own handlers, so it runs before them.
                atexit.register(shutdown)
            _install_log_filter()
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
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

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
    if t.ingestion_is_loopback:
        for key, value in _LOOPBACK_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    os.environ.update(export_environment(t))
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(**azure_monitor_options(t))


class TelemetryLogFilter(logging.Filter):
    """On the exporting handler: drops the SDK's own records, redacts secrets and blob names.

    Mutates the record in place (later handlers see the redacted text too, which is intended:
    in Azure the console output also reaches Application Insights).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_EXCLUDED_LOGGERS):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: let logging report it as usual
            return True
        redacted = _redact(message)
        if redacted is not message:
            record.msg, record.args = redacted, None
        return True


def _redact(message: str) -> str:
    out = message
    for secret in _STATE.secrets:
        if secret in out:
            out = out.replace(secret, "***")
    current = _CURRENT.get()
    if current is not None and current.blob_name:
        name = current.blob_name
        escaped = printable(name)
        if _STATE.hash_blob_names:
            # callers log the escaped form; the longer first, as it may contain the other
            for form in sorted({name, escaped}, key=len, reverse=True):
                if form in out:
                    out = out.replace(form, current.blob_label)
        elif escaped is not name and name in out:
            # A caller that logged the invocation's name verbatim: never a forged line here.
            out = out.replace(name, escaped)
    return out


def _install_log_filter() -> None:
    """Attach ``TelemetryLogFilter`` to every OpenTelemetry logging handler on the root logger."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoggingHandler) and not any(
            isinstance(f, TelemetryLogFilter) for f in handler.filters
        ):
            handler.addFilter(TelemetryLogFilter())


# --------------------------------------------------------------------------- log queue

#: Private record attribute carrying the caller's OpenTelemetry context across the queue.
_CONTEXT_ATTR: Final = "_visionops_otel_context"
#: Records waiting for the listener thread; beyond this they are dropped (and counted), like
#: the SDK's own batch queues do, so a logging storm cannot grow memory without bound.
LOG_QUEUE_MAX: Final = 10_000
#: The listener hands records on in batches: once this many wait, or this long after the first.
#: A burst of logging then finishes before the listener competes with it for the GIL (the SDK's
#: batch processors work the same way; their defaults are 512 records / 5 s).
LOG_QUEUE_BATCH: Final = 512
LOG_QUEUE_DELAY_S: Final = 0.1


class _Drained:
    """Queue marker: the listener sets ``done`` once every record before it was handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _EnqueueHandler(logging.handlers.QueueHandler):
    """Caller side: what ``TelemetryLogFilter`` does (redaction needs the caller's invocation),
    stamp the OpenTelemetry context, enqueue. No more.

    The OpenTelemetry ``LoggingHandler`` translates each record into an SDK log record (attribute
    copy, context lookup, processor hand-off); behind this handler that work runs on the
    listener thread instead of the invocation's.
    """

    def __init__(self, q: queue.SimpleQueue[Any], maxsize: int, wake: threading.Event) -> None:
        super().__init__(q)
        self._q = q  # typed: the base class only knows put_nowait
        self._wake = wake
        self.maxsize = maxsize
        self.dropped = 0
        self.on_flush: Callable[[], object] | None = None

    def flush(self) -> None:
        """``Handler.flush``: hand what is queued to the exporters (a host flushing every
        handler on shutdown, ``logging.shutdown``)."""
        if self.on_flush is not None:
            self.on_flush()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock (the queue is thread-safe) and the filter inlined: this runs on every
        # record of every invocation.
        if record.name.startswith(_EXCLUDED_LOGGERS):
            return False
        if self.filters and not self.filter(record):
            return False
        try:
            self.enqueue(self.prepare(record))
        except Exception:  # what Handler.emit does: logging reports it, the caller goes on
            self.handleError(record)
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        message = record.getMessage()  # a bad %-format raises: reported like any handler's
        redacted = _redact(message)
        if redacted is not message:  # later handlers see the redacted text too (as the filter)
            record.msg, record.args = redacted, None
        # A shallow copy for the queue (other handlers keep the original): the message frozen
        # now, since the arguments may change before the listener runs; exc_info kept as objects
        # (the queue is in-process, nothing is pickled), so it still becomes AppExceptions.
        out = logging.LogRecord.__new__(logging.LogRecord)
        out.__dict__.update(record.__dict__)
        out.msg = out.message = redacted
        out.args = None
        # The whole (immutable) context: trace id, span id, flags and anything else in it.
        out.__dict__[_CONTEXT_ATTR] = otel_context.get_current()
        return out

    def enqueue(self, record: logging.LogRecord) -> None:
        waiting = self._q.qsize()
        if waiting >= self.maxsize:
            self.dropped += 1
            if self.dropped == 1:  # once; a nested record is dropped too, so no recursion
                logger.warning("telemetry: log queue full (%d); records dropped", self.maxsize)
            return
        self._q.put_nowait(record)
        if waiting >= LOG_QUEUE_BATCH and not self._wake.is_set():
            self._wake.set()


class _ExportListener(logging.handlers.QueueListener):
    """Listener thread: re-attach the caller's context, then let the exporting handlers emit."""

    def __init__(self, q: queue.SimpleQueue[Any], handlers: Sequence[logging.Handler],
                 wake: threading.Event) -> None:
        super().__init__(q, *handlers, respect_handler_level=True)
        self._q = q
        self._wake = wake
        self._batch_left = 0

    def dequeue(self, block: bool) -> Any:
        if self._batch_left > 0:  # the rest of a batch: already there, no waiting
            self._batch_left -= 1
            return self._q.get(block)
        first = self._q.get(block)
        if isinstance(first, logging.LogRecord):  # not a drain marker or the stop sentinel
            self._wake.wait(LOG_QUEUE_DELAY_S)
            self._wake.clear()
        self._batch_left = self._q.qsize()
        return first

    def handle(self, record: Any) -> None:
        if isinstance(record, _Drained):
            record.done.set()
            return
        context = record.__dict__.pop(_CONTEXT_ATTR, None)
        token = otel_context.attach(context) if context is not None else None
        try:
            super().handle(record)
        finally:
            if token is not None:
                otel_context.detach(token)


class LogQueue:
    """Puts exporting logging handlers behind a ``QueueHandler`` + ``QueueListener``.

    Callers pay what the seed's ``AzureLogHandler`` paid, plus redaction: a copy and an enqueue.
    Records keep their span correlation (the context is stamped on the caller, re-attached on
    the listener), the redaction and exclusions of ``TelemetryLogFilter`` (applied on the
    caller's side) and ``exc_info``. ``drain()`` (also the handler's ``flush()``) waits for
    everything queued so far; at exit ``shutdown()`` stops the queue before the providers.
    """

    def __init__(self, handlers: Sequence[logging.Handler], *, maxsize: int = LOG_QUEUE_MAX
                 ) -> None:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()
        self.handler = _EnqueueHandler(q, maxsize, self._wake)
        self.handler.on_flush = self.drain
        self.listener = _ExportListener(q, handlers, self._wake)
        self._lock = threading.Lock()
        self._running = False

    @classmethod
    def install(cls, root: logging.Logger) -> LogQueue | None:
        """Move the OpenTelemetry logging handlers of ``root`` behind a queue; start it."""
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        exporting = [h for h in root.handlers if isinstance(h, LoggingHandler)]
        if not exporting:
            return None
        log_queue = cls(exporting)
        log_queue.start()
        for handler in exporting:
            root.removeHandler(handler)
        root.addHandler(log_queue.handler)
        return log_queue

    @property
    def dropped(self) -> int:
        return self.handler.dropped

    def start(self) -> None:
        with self._lock:
            if not self._running:
                self.listener.start()
                self._running = True

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record enqueued before this call was handed to the exporters."""
        with self._lock:
            if not self._running:
                return True
            marker = _Drained()
            self.listener.queue.put_nowait(marker)
            self._wake.set()
        return marker.done.wait(timeout_s)

    def stop(self) -> None:
        """Hand every queued record on, then end the listener thread (idempotent).

        Never blocks for long: the exporting handler only appends to the SDK's batch queue.
        """
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._wake.set()  # no batching delay for what is left
            self.listener.stop()


def force_flush(timeout_millis: int = 10_000) -> bool:
    """Push buffered spans, logs and metrics now (tests, benchmarks, a host's graceful stop).

    Drains the log queue first, so records logged before the call are in the flushed batch.
    Bounded by ``timeout_millis`` even when an export hangs (the SDK's batch processors ignore
    the timeout they are given); never raises. False if anything did not finish in time.
    """
    log_queue = _STATE.log_queue
    providers = _sdk_providers()
    return _bounded("flush", timeout_millis / 1000,
                    lambda deadline: _flush(providers, log_queue, deadline, close=False))


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
    log_queue = _STATE.log_queue
    chosen = _sdk_providers() if providers is None else tuple(providers)
    close = providers is not None or _STATE.mode is Mode.APP
    if close and providers is None:
        _STATE.closed = True  # even if the bound passes: the exit goes on without them
    return _bounded("shutdown", bound,
                    lambda deadline: _flush(chosen, log_queue, deadline, close=close))


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


def _flush(providers: Sequence[object], log_queue: LogQueue | None, deadline: float,
           *, close: bool) -> bool:
    """Log queue first (its records go to the logger provider), then every provider."""
    ok = True
    if log_queue is not None:
        if close:
            log_queue.stop()
        else:
            ok = log_queue.drain(max(deadline - time.monotonic(), 0.0))
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
    from opentelemetry._logs import get_logger_provider

    return get_logger_provider()


# --------------------------------------------------------------------------- API


@functools.cache
def get_tracer(name: str = INSTRUMENTATION_NAME) -> Tracer:
    """Cached: the SDK builds a new tracer per call. Safe before ``configure()``: the API's proxy
    tracer binds to the real provider once one is set."""
    return trace.get_tracer(name)


@functools.cache
def get_meter(name: str = INSTRUMENTATION_NAME) -> Meter:
    return metrics.get_meter(name)


@functools.cache
def _event_logger() -> Logger:
    return get_logger(INSTRUMENTATION_NAME)


@dataclass(frozen=True, slots=True)
class Instruments:
    analysis_duration: Histogram
    preprocess_duration: Histogram
    preprocess_stage_duration: Histogram
    image_bytes_in: Histogram
    image_bytes_out: Histogram
    outcomes: Counter
    vision_attempt_duration: Histogram
    vision_retries: Counter
    vision_throttles: Counter
    limiter_wait: Histogram
    vision_budget_exhausted: Counter
    vision_breaker_refused: Counter


@functools.cache
def instruments() -> Instruments:
    """The app's instruments (created once; the API's proxy meter binds them to the real one)."""
    m = get_meter()
    return Instruments(
        analysis_duration=m.create_histogram(
            METRIC_ANALYSIS_DURATION, unit="ms",
            description="Time from trigger to final document, per invocation"),
        preprocess_duration=m.create_histogram(
            METRIC_PREPROCESS_DURATION, unit="ms", description="Preprocessing time per image"),
        preprocess_stage_duration=m.create_histogram(
            METRIC_PREPROCESS_STAGE_DURATION, unit="ms",
            description="Preprocessing time per image and stage (decode, resample, encode)"),
        image_bytes_in=m.create_histogram(
            METRIC_IMAGE_BYTES_IN, unit="By", description="Size of the uploaded image"),
        image_bytes_out=m.create_histogram(
            METRIC_IMAGE_BYTES_OUT, unit="By", description="Size of the image sent to Vision"),
        outcomes=m.create_counter(
            METRIC_OUTCOMES, unit="{invocation}", description="Invocations by outcome and class"),
        vision_attempt_duration=m.create_histogram(
            METRIC_VISION_ATTEMPT_DURATION, unit="ms", description="One HTTP attempt to Vision"),
        vision_retries=m.create_counter(
            METRIC_VISION_RETRIES, unit="{attempt}", description="Vision attempts after the first"),
        vision_throttles=m.create_counter(
            METRIC_VISION_THROTTLES, unit="{attempt}", description="Vision attempts answered 429"),
        limiter_wait=m.create_histogram(
            METRIC_LIMITER_WAIT, unit="ms", description="Wait for a client-side rate-limit token"),
        vision_budget_exhausted=m.create_counter(
            METRIC_VISION_BUDGET_EXHAUSTED, unit="{call}",
            description="Vision calls not retried because the retry budget was spent"),
        vision_breaker_refused=m.create_counter(
            METRIC_VISION_BREAKER_REFUSED, unit="{call}",
            description="Vision calls not sent because the breaker was open"),
    )


#: What reports this process's current Vision sending rate (calls/s); set by the composition
#: root once the client exists. A gauge, observed at each export.
_RATE_SOURCES: list[Callable[[], float]] = []
_RATE_GAUGE_LOCK = threading.Lock()


def watch_vision_rate(source: Callable[[], float]) -> None:
    """Export ``source()`` as the gauge ``vision.rate.effective`` (calls per second)."""
    with _RATE_GAUGE_LOCK:
        first = not _RATE_SOURCES
        _RATE_SOURCES.append(source)
        if first:
            get_meter().create_observable_gauge(
                METRIC_VISION_RATE, callbacks=[_observe_rates], unit="{call}/s",
                description="The Vision client's current sending rate (adaptive, per instance)")


_FLEET_SOURCES: list[tuple[Callable[[], float], Callable[[], float]]] = []


def watch_vision_fleet(members: Callable[[], float], limit: Callable[[], float]) -> None:
    """Export the fleet's membership as ``vision.fleet.members`` (instances sharing the limit,
    as this one sees them) and its learned limit as ``vision.fleet.limit`` (calls/s)."""
    with _RATE_GAUGE_LOCK:
        first = not _FLEET_SOURCES
        _FLEET_SOURCES.append((members, limit))
        if first:
            meter = get_meter()
            meter.create_observable_gauge(
                METRIC_VISION_FLEET_MEMBERS, unit="{instance}",
                callbacks=[lambda options: _observe_fleet(0)],
                description="Instances sharing the Vision limit, from storage heartbeats")
            meter.create_observable_gauge(
                METRIC_VISION_FLEET_LIMIT, unit="{call}/s",
                callbacks=[lambda options: _observe_fleet(1)],
                description="The Vision limit the fleet has learned (all instances together)")


def _observe_fleet(which: int) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    observed = []
    for sources in list(_FLEET_SOURCES):
        try:
            observed.append(Observation(float(sources[which]())))
        except Exception:  # telemetry never breaks the app
            logger.debug("vision fleet source failed", exc_info=True)
    return observed


def _observe_rates(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    observed = []
    for source in list(_RATE_SOURCES):
        try:
            observed.append(Observation(float(source())))
        except Exception:  # telemetry never breaks the app
            logger.debug("vision rate source failed", exc_info=True)
    return observed


@dataclass(slots=True)
class Invocation:
    """The request span of one invocation and what the pipeline learnt about it."""

    span: Span
    synthetic: bool = False
    blob_container: str | None = None
    blob_name: str | None = None
    outcome: str | None = None

    @property
    def blob_label(self) -> str:
        return blob_label(self.blob_container or "", self.blob_name or "",
                          hash_names=_STATE.hash_blob_names)

    @_safe
    def set_outcome(self, outcome: str, **attributes: object) -> None:
        """Record the invocation's outcome (``pipeline.outcome``) and low-cardinality details."""
        self.outcome = outcome
        self.span.set_attributes({ATTR_OUTCOME: outcome, **_clean(attributes)})

    @_safe
    def set_attributes(self, attributes: Mapping[str, object]) -> None:
        self.span.set_attributes(_clean(attributes))

    @_safe
    def mark_synthetic(self) -> None:
        """Synthetic after all (the blob's marker is known once its properties are read): the
        request span and everything recorded in it from now on carry the synthetic marker."""
        self.synthetic = True
        self.span.set_attribute(USER_AGENT_SYNTHETIC_TYPE, SYNTHETIC_TYPE_TEST)


_CURRENT: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "visionops_invocation", default=None
)


def current_invocation() -> Invocation | None:
    return _CURRENT.get()


def is_synthetic_blob(metadata: Mapping[str, str] | None) -> bool:
    """Whether a blob's metadata carries the probe's marker (names are case-insensitive)."""
    return any(key.lower() == PROBE_BLOB_MARKER and bool(value)
               for key, value in (metadata or {}).items())


@contextlib.contextmanager
def invocation(
    function_name: str,
    *,
    trigger: Trigger,
    invocation_id: str | None = None,
    trace_parent: str | None = None,
    trace_state: str | None = None,
    blob: tuple[str, str] | None = None,
    synthetic: bool = False,
) -> Iterator[Invocation]:
    """The request span around one invocation (AppRequests); exceptions pass through unchanged.

    ``trace_parent`` is the host's W3C ``traceparent`` (``context.trace_context``), so in Azure
    our request nests under the host's. An exception sets the span's status to error,
    ``pipeline.outcome=failed`` with its class, and is recorded (AppExceptions).
    """
    container, name = blob if blob is not None else (None, None)
    inv, token, scope = _start_invocation(
        function_name, trigger=trigger, invocation_id=invocation_id, trace_parent=trace_parent,
        trace_state=trace_state, container=container, name=name, synthetic=synthetic)
    try:
        yield inv
    except BaseException as exc:
        _end_invocation(inv, token, scope, exc)
        raise
    _end_invocation(inv, token, scope, None)


_Scope = contextvars.Token[otel_context.Context] | None


def _start_invocation(
    function_name: str, *, trigger: Trigger, invocation_id: str | None, trace_parent: str | None,
    trace_state: str | None, container: str | None, name: str | None, synthetic: bool,
) -> tuple[Invocation, contextvars.Token[Invocation | None], _Scope]:
    scope: _Scope = None
    span: Span = trace.INVALID_SPAN
    try:
        parent = None
        if trace_parent:
            carrier = {"traceparent": trace_parent}
            if trace_state:
                carrier["tracestate"] = trace_state
            parent = TraceContextTextMapPropagator().extract(carrier)
        attributes: dict[str, str | bool | int | float] = {FAAS_TRIGGER: trigger.value}
        if invocation_id:
            attributes[FAAS_INVOCATION_ID] = invocation_id
        if container is not None and name is not None:
            attributes[FAAS_DOCUMENT_COLLECTION] = container
            attributes[FAAS_DOCUMENT_NAME] = blob_label(
                container, name, hash_names=_STATE.hash_blob_names)
            attributes[FAAS_DOCUMENT_OPERATION] = FaasDocumentOperationValues.INSERT.value
        if synthetic:
            attributes[USER_AGENT_SYNTHETIC_TYPE] = SYNTHETIC_TYPE_TEST
        span = get_tracer().start_span(function_name, context=parent, kind=SpanKind.SERVER,
                                       attributes=attributes)
        # What ``trace.use_span`` does, without its generator and exit stack on every call.
        scope = otel_context.attach(trace.set_span_in_context(span))
    except Exception as exc:
        logger.warning("telemetry: request span not started (%s)", type(exc).__name__)
    inv = Invocation(span=span, synthetic=synthetic, blob_container=container, blob_name=name)
    return inv, _CURRENT.set(inv), scope


def _end_invocation(
    inv: Invocation, token: contextvars.Token[Invocation | None], scope: _Scope,
    error: BaseException | None,
) -> None:
    try:
        if error is not None:
            disposition = classify(error)
            if inv.outcome is None:
                inv.set_outcome(OUTCOME_FAILED, **{
                    ATTR_ERROR_CLASS: disposition.error_class.value,
                    ATTR_REASON: disposition.reason})
            inv.span.record_exception(error)
            inv.span.set_status(Status(StatusCode.ERROR, disposition.error_class.value))
        elif inv.outcome is None:
            inv.set_outcome(OUTCOME_COMPLETED)
        inv.span.end()
    except Exception as exc:
        logger.warning("telemetry: request span not ended cleanly (%s)", type(exc).__name__)
    finally:
        _CURRENT.reset(token)
        if scope is not None:
            otel_context.detach(scope)


def _synthetic_attributes(synthetic: bool | None) -> dict[str, str]:
    if synthetic is None:
        current = _CURRENT.get()
        synthetic = current is not None and current.synthetic
    return {USER_AGENT_SYNTHETIC_TYPE: SYNTHETIC_TYPE_TEST} if synthetic else {}


@_safe
def track_event(
    name: str, properties: Mapping[str, object] | None = None, *, synthetic: bool | None = None
) -> None:
    """A custom event (AppEvents) named ``name`` with low-cardinality ``properties``.

    Correlated with the current span; synthetic if asked or if the current invocation is.
    """
    attributes = {**_clean(properties), **_synthetic_attributes(synthetic),
                  CUSTOM_EVENT_NAME: name}
    _event_logger().emit(
        context=otel_context.get_current(), severity_number=SeverityNumber.INFO,
        severity_text="INFO", body=name, attributes=attributes)


@_safe
def track_availability(
    name: str,
    success: bool,
    duration_ms: float,
    *,
    message: str = "",
    run_location: str = "",
    availability_id: str | None = None,
    properties: Mapping[str, object] | None = None,
    synthetic: bool = True,
) -> None:
    """An availability result (AppAvailabilityResults): one probe run, pass/fail and duration.

    ``name`` is the probe (low cardinality), ``run_location`` where it ran (region/instance),
    ``message`` a short reason — never image content or secrets.
    """
    attributes: dict[str, str | bool | int | float] = {
        **_clean(properties),
        **_synthetic_attributes(synthetic),
        AVAILABILITY_ID: availability_id or uuid.uuid4().hex,
        AVAILABILITY_NAME: name,
        AVAILABILITY_DURATION: _ai_duration(duration_ms),
        AVAILABILITY_SUCCESS: bool(success),
        AVAILABILITY_MESSAGE: message or ("passed" if success else "failed"),
    }
    if run_location:
        attributes[AVAILABILITY_RUN_LOCATION] = run_location
    _event_logger().emit(
        context=otel_context.get_current(),
        severity_number=SeverityNumber.INFO if success else SeverityNumber.WARN,
        body=attributes[AVAILABILITY_MESSAGE], attributes=attributes)


def record_finished_span(
    name: str,
    *,
    kind: SpanKind,
    duration_ms: float,
    attributes: Mapping[str, object],
    error: str | None = None,
    end_ns: int | None = None,
) -> None:
    """A child span of the current one for work that already happened (its duration known)."""
    end = end_ns if end_ns is not None else time.time_ns()
    start = end - max(0, int(duration_ms * 1_000_000))
    span = get_tracer().start_span(name, kind=kind, start_time=start,
                                   attributes=_clean(attributes))
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)


# --------------------------------------------------------------------------- pipeline observer


def outcome_measures(outcome: AnalysisOutcome) -> dict[str, object]:
    """Sizes, times, output counts and input descriptors of an analysed image: the tuning
    review's and the drift queries' evidence. Numbers and bounded categories only."""
    record, output = outcome.preprocessing, outcome.output
    measures: dict[str, object] = {}
    if record is not None:
        measures[ATTR_FINAL_MAX_SIDE] = max(record.final_width, record.final_height)
        measures[ATTR_PREPROCESS_MS] = round(record.duration_ms, 3)
    if outcome.vision_ms is not None:
        measures[ATTR_VISION_MS] = round(outcome.vision_ms, 3)
    if output is not None:
        measures[ATTR_OUTPUT_OCR_LINES] = output.ocr_lines
        measures[ATTR_OUTPUT_OCR_WORDS] = output.ocr_words
        measures[ATTR_OUTPUT_WORD_CONFIDENCE] = output.word_confidence_mean
        measures[ATTR_OUTPUT_PEOPLE] = output.people
        measures[ATTR_OUTPUT_WORD_CONFIDENCE_MIN] = output.word_confidence_min
        measures[ATTR_OUTPUT_PEOPLE_CONFIDENCE] = output.people_confidence_max
        measures[ATTR_OUTPUT_CROP_SHARE] = output.smart_crop_area_share
    if outcome.model_version:
        measures[ATTR_MODEL_VERSION] = outcome.model_version
    descriptors = record.descriptors if record is not None else None
    if descriptors is not None:
        for key, value in descriptors.as_dict().items():
            measures[IMAGE_DESCRIPTOR_ATTRIBUTES[key]] = value
    return measures


class TelemetryObserver:
    """``PipelineObserver`` that turns pipeline events into spans, metrics and events.

    Runs on the invocation's thread inside ``invocation()``, so its spans are children of the
    request span. Every hook is wrapped: a telemetry failure is logged, never raised.
    """

    def __init__(self, vision_endpoint: str, *, poison_after_attempts: int = 5) -> None:
        parts = urlsplit(vision_endpoint)
        self._vision_base = vision_endpoint.rstrip("/")
        self._vision_host = parts.hostname or ""
        self._vision_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._poison_after = poison_after_attempts
        self._failures: OrderedDict[tuple[str, str, str | None], int] = OrderedDict()
        self._failures_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TelemetryObserver:
        return cls(settings.vision_endpoint,
                   poison_after_attempts=settings.telemetry.poison_after_attempts)

    @_safe
    def on_started(self, source: BlobInput) -> None:
        instruments().image_bytes_in.record(source.size)
        current = _CURRENT.get()
        if current is not None:
            if is_synthetic_blob(source.metadata):
                current.mark_synthetic()
            current.set_attributes({ATTR_BYTES_IN: source.size, ATTR_SOURCE_ETAG: source.etag})

    @_safe
    def on_preprocessed(self, source: BlobInput, record: PreprocessRecord) -> None:
        ins = instruments()
        ins.preprocess_duration.record(record.duration_ms)
        for stage, ms in record.stage_ms.items():
            ins.preprocess_stage_duration.record(ms, {ATTR_PREPROCESS_STAGE: stage})
        ins.image_bytes_out.record(record.final_bytes)
        current = _CURRENT.get()
        if current is not None:
            current.set_attributes({ATTR_BYTES_OUT: record.final_bytes,
                                    ATTR_FORMAT: record.final_format,
                                    ATTR_REENCODED: record.reencoded})

    @_safe
    def on_vision_attempt(self, source: BlobInput, attempt: VisionAttempt) -> None:
        ins = instruments()
        if attempt.reason == "circuit_open":
            # refused locally: no call went out, so no dependency span (KPIs count those)
            ins.vision_breaker_refused.add(1)
            return
        if attempt.budget_exhausted:
            ins.vision_budget_exhausted.add(1)
        throttled = attempt.status_code == 429
        attributes: dict[str, object] = {
            HTTP_REQUEST_METHOD: "POST",
            URL_FULL: f"{self._vision_base}{VISION_ANALYZE_PATH}"
                      f"?features={','.join(attempt.features)}",
            SERVER_ADDRESS: self._vision_host,
            SERVER_PORT: self._vision_port,
            HTTP_RESPONSE_STATUS_CODE: attempt.status_code,
            ATTR_VISION_ATTEMPT: attempt.attempt,
            ATTR_VISION_FEATURES: ",".join(attempt.features),
            ATTR_VISION_THROTTLED: throttled,
            ATTR_VISION_WILL_RETRY: attempt.will_retry,
            ATTR_VISION_IMAGE_BYTES: attempt.image_bytes,
            ATTR_VISION_LIMITER_WAIT_MS: attempt.limiter_wait_ms,
            ATTR_VISION_RATE: attempt.rate_per_second,
            ATTR_VISION_ERROR_CLASS: attempt.error_class.value if attempt.error_class else None,
            ATTR_VISION_REASON: attempt.reason,
            ATTR_VISION_ERROR_CODE: attempt.error_code,
            ATTR_VISION_INNER_CODE: attempt.inner_code,
            ATTR_VISION_RETRY_AFTER_S: attempt.retry_after_s,
            ATTR_VISION_BACKOFF_S: attempt.backoff_s,
            **_synthetic_attributes(None),
        }
        record_finished_span(
            SPAN_VISION_ANALYZE, kind=SpanKind.CLIENT, duration_ms=attempt.duration_ms,
            attributes=attributes,
            error=None if attempt.succeeded else (attempt.reason or "error"))
        dims = {ATTR_VISION_ERROR_CLASS: attempt.error_class.value if attempt.error_class
                else "none"}
        ins.vision_attempt_duration.record(attempt.duration_ms, dims)
        ins.limiter_wait.record(attempt.limiter_wait_ms)
        if attempt.attempt > 1:
            ins.vision_retries.add(1)
        if throttled:
            ins.vision_throttles.add(1)

    @_safe
    def on_document_written(self, source: BlobInput, document: str, duration_ms: float) -> None:
        container = document.partition("/")[0]  # never the path: it embeds the blob name
        record_finished_span(
            SPAN_DOCUMENT_WRITE, kind=SpanKind.CLIENT, duration_ms=duration_ms,
            attributes={AZ_NAMESPACE: STORAGE_NAMESPACE, PEER_SERVICE: container,
                        ATTR_DOCUMENT_CONTAINER: container, **_synthetic_attributes(None)})

    @_safe
    def on_outcome(self, source: BlobInput, outcome: AnalysisOutcome) -> None:
        self._forget(source)
        status = outcome.status.value
        details: dict[str, object] = {
            ATTR_ATTEMPTS: outcome.attempts,
            ATTR_ERROR_CLASS: outcome.error_class.value if outcome.error_class else None,
            ATTR_REASON: outcome.reason,
            ATTR_STAGE: outcome.stage,
            ATTR_STATUS_CODE: outcome.status_code,
            ATTR_SERVICE_CODE: outcome.service_inner_code or outcome.service_error_code,
            **outcome_measures(outcome),
            ATTR_CURRENT_ETAG: outcome.current_etag,
        }
        current = _CURRENT.get()
        if current is not None:
            current.set_outcome(status, **details)
        ins = instruments()
        dims = {ATTR_OUTCOME: status,
                ATTR_ERROR_CLASS: outcome.error_class.value if outcome.error_class else "none"}
        ins.outcomes.add(1, dims)
        ins.analysis_duration.record(outcome.duration_ms, {ATTR_OUTCOME: status})
        event = {"analyzed": EVENT_ANALYZED, "rejected": EVENT_REJECTED}.get(status)
        if event is not None:
            track_event(event, {ATTR_OUTCOME: status, **details, **self._blob(source)})

    @_safe
    def on_retryable_failure(
        self, source: BlobInput, error: BaseException, disposition: Disposition
    ) -> None:
        failures = self._count_failure(source)
        details = {ATTR_ERROR_CLASS: disposition.error_class.value,
                   ATTR_REASON: disposition.reason, ATTR_HOST_ATTEMPTS: failures}
        current = _CURRENT.get()
        if current is not None:
            current.set_outcome(OUTCOME_FAILED, **details)
        instruments().outcomes.add(1, {ATTR_OUTCOME: OUTCOME_FAILED,
                                       ATTR_ERROR_CLASS: disposition.error_class.value})
        if failures >= self._poison_after:
            # The host poisons the blob after this many failed tries. Counted per process: with
            # several instances the poison queue stays the source of truth.
            self._forget(source)
            track_event(EVENT_POISONED, {ATTR_OUTCOME: "poisoned", **details,
                                         **self._blob(source)})

    @staticmethod
    def _blob(source: BlobInput) -> dict[str, object]:
        return {FAAS_DOCUMENT_COLLECTION: source.container,
                FAAS_DOCUMENT_NAME: blob_label(source.container, source.name,
                                               hash_names=_STATE.hash_blob_names)}

    def _key(self, source: BlobInput) -> tuple[str, str, str | None]:
        return (source.container, source.name, source.etag)

    def _count_failure(self, source: BlobInput) -> int:
        with self._failures_lock:
            key = self._key(source)
            count = self._failures.pop(key, 0) + 1
            self._failures[key] = count
            while len(self._failures) > 10_000:  # bounded: forget the oldest
                self._failures.popitem(last=False)
            return count

    def _forget(self, source: BlobInput) -> None:
        with self._failures_lock:
            self._failures.pop(self._key(source), None)


__all__ = [
    "ATTR_ERROR_CLASS",
    "ATTR_OUTCOME",
    "ATTR_REASON",
    "EVENT_ANALYZED",
    "EVENT_POISONED",
    "EVENT_REJECTED",
    "IMAGE_DESCRIPTOR_ATTRIBUTES",
    "PROBE_BLOB_MARKER",
    "Instruments",
    "Invocation",
    "LogQueue",
    "Mode",
    "TelemetryLogFilter",
    "TelemetryObserver",
    "Trigger",
    "blob_label",
    "configure",
    "current_invocation",
    "force_flush",
    "get_meter",
    "get_tracer",
    "instruments",
    "invocation",
    "is_synthetic_blob",
    "mode",
    "outcome_measures",
    "record_finished_span",
    "shutdown",
    "track_availability",
    "track_event",
    "watch_vision_rate",
]
