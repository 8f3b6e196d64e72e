"""The telemetry API the app calls: request spans, events, availability results, instruments.

What goes where (Log Analytics table in brackets; see docs/telemetry.md):

* ``invocation()`` — one SERVER span per function invocation [AppRequests]: name = function
  name, ``faas.*`` semconv attributes, ``pipeline.outcome`` and the error class/reason.
* ``record_finished_span`` — a CLIENT span for work already done [AppDependencies] (the
  pipeline observer's Vision attempts and document writes).
* ``instruments()``, ``quota_gauges()``, ``watch_vision_rate`` — every instrument [AppMetrics].
* ``track_event`` [AppEvents] and ``track_availability`` [AppAvailabilityResults] — log records
  carrying ``microsoft.custom_event.name`` / ``microsoft.availability.*``.

Safe before ``configure()``: the API's proxy tracer and meter bind to the real providers once
they are set. Must never: raise into business code (``never_raises``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry._logs import SeverityNumber, get_logger
from opentelemetry.metrics import Observation
from opentelemetry.semconv._incubating.attributes.faas_attributes import (
    FAAS_DOCUMENT_COLLECTION,
    FAAS_DOCUMENT_NAME,
    FAAS_DOCUMENT_OPERATION,
    FAAS_INVOCATION_ID,
    FAAS_TRIGGER,
    FaasDocumentOperationValues,
)
from opentelemetry.semconv._incubating.attributes.user_agent_attributes import (
    USER_AGENT_SYNTHETIC_TYPE,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import classify
from shared.telemetry.names import (
    ATTR_ERROR_CLASS,
    ATTR_REASON,
    AVAILABILITY_DURATION,
    AVAILABILITY_ID,
    AVAILABILITY_MESSAGE,
    AVAILABILITY_NAME,
    AVAILABILITY_RUN_LOCATION,
    AVAILABILITY_SUCCESS,
    CUSTOM_EVENT_NAME,
    INSTRUMENTATION_NAME,
    METRIC_ANALYSIS_DURATION,
    METRIC_IMAGE_BYTES_IN,
    METRIC_IMAGE_BYTES_OUT,
    METRIC_LIMITER_WAIT,
    METRIC_OUTCOMES,
    METRIC_PREPROCESS_DURATION,
    METRIC_PREPROCESS_STAGE_DURATION,
    METRIC_QUOTA_FORECAST_RATIO,
    METRIC_QUOTA_USED_RATIO,
    METRIC_VISION_ATTEMPT_DURATION,
    METRIC_VISION_BREAKER_REFUSED,
    METRIC_VISION_BUDGET_EXHAUSTED,
    METRIC_VISION_FLEET_LIMIT,
    METRIC_VISION_FLEET_MEMBERS,
    METRIC_VISION_RATE,
    METRIC_VISION_RETRIES,
    METRIC_VISION_THROTTLES,
    OUTCOME_COMPLETED,
    OUTCOME_FAILED,
    SYNTHETIC_TYPE_TEST,
    Trigger,
)
from shared.telemetry.state import (
    _CURRENT,
    _STATE,
    Invocation,
    blob_label,
    clean_attributes,
    never_raises,
    synthetic_attributes,
)

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter

    # the API exports the synchronous gauge only under its provisional name
    from opentelemetry.metrics import _Gauge as Gauge
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)


def _ai_duration(ms: float) -> str:
    """Application Insights duration text ``d.hh:mm:ss.ffffff``."""
    micros = max(0, round(ms * 1000))
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}.{hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}"


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


@dataclass(frozen=True, slots=True)
class QuotaGauges:
    """The quota check's gauges: share of the monthly quota used, and the month-end forecast."""

    used_ratio: Gauge
    forecast_ratio: Gauge


@functools.cache
def quota_gauges() -> QuotaGauges:
    """Created once, on the quota check's first run (never at import)."""
    m = get_meter()
    return QuotaGauges(
        used_ratio=m.create_gauge(METRIC_QUOTA_USED_RATIO, unit="1",
                                  description="Share of the monthly Vision quota used"),
        forecast_ratio=m.create_gauge(METRIC_QUOTA_FORECAST_RATIO, unit="1",
                                      description="Month-end forecast / monthly quota"),
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
    observed = []
    for sources in list(_FLEET_SOURCES):
        try:
            observed.append(Observation(float(sources[which]())))
        except Exception:  # telemetry never breaks the app
            logger.debug("vision fleet source failed", exc_info=True)
    return observed


def _observe_rates(options: CallbackOptions) -> Iterable[Observation]:
    observed = []
    for source in list(_RATE_SOURCES):
        try:
            observed.append(Observation(float(source())))
        except Exception:  # telemetry never breaks the app
            logger.debug("vision rate source failed", exc_info=True)
    return observed



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



@never_raises
def track_event(
    name: str, properties: Mapping[str, object] | None = None, *, synthetic: bool | None = None
) -> None:
    """A custom event (AppEvents) named ``name`` with low-cardinality ``properties``.

    Correlated with the current span; synthetic if asked or if the current invocation is.
    """
    attributes = {**clean_attributes(properties), **synthetic_attributes(synthetic),
                  CUSTOM_EVENT_NAME: name}
    _event_logger().emit(
        context=otel_context.get_current(), severity_number=SeverityNumber.INFO,
        severity_text="INFO", body=name, attributes=attributes)


@never_raises
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
        **clean_attributes(properties),
        **synthetic_attributes(synthetic),
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
                                   attributes=clean_attributes(attributes))
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end)

