"""The pipeline's telemetry: ``TelemetryObserver`` turns pipeline events into spans, metrics
and events through the ``shared.telemetry`` API.

It lives beside the pipeline (it knows ``AnalysisOutcome``, ``BlobInput``, ``PreprocessRecord``,
``VisionAttempt``) so that telemetry itself knows nothing of the analysis. One CLIENT span per
Vision attempt and per document write [AppDependencies], the instruments [AppMetrics] and one
custom event per terminal outcome [AppEvents]; ``outcome_measures`` (on the request span only)
is the evidence the tuning review and the drift queries read back from AppRequests.

Must never: raise into the pipeline (every hook is ``never_raises``), or put OCR text, image
bytes or (when hashing) a blob name into telemetry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry.semconv._incubating.attributes.faas_attributes import (
    FAAS_DOCUMENT_COLLECTION,
    FAAS_DOCUMENT_NAME,
)
from opentelemetry.semconv._incubating.attributes.peer_attributes import PEER_SERVICE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.telemetry import never_raises
from shared.telemetry.names import (
    ATTR_ATTEMPTS,
    ATTR_BYTES_IN,
    ATTR_BYTES_OUT,
    ATTR_CURRENT_ETAG,
    ATTR_DOCUMENT_CONTAINER,
    ATTR_ERROR_CLASS,
    ATTR_FINAL_MAX_SIDE,
    ATTR_FORMAT,
    ATTR_HOST_ATTEMPTS,
    ATTR_MODEL_VERSION,
    ATTR_OUTCOME,
    ATTR_OUTPUT_CROP_SHARE,
    ATTR_OUTPUT_OCR_LINES,
    ATTR_OUTPUT_OCR_WORDS,
    ATTR_OUTPUT_PEOPLE,
    ATTR_OUTPUT_PEOPLE_CONFIDENCE,
    ATTR_OUTPUT_WORD_CONFIDENCE,
    ATTR_OUTPUT_WORD_CONFIDENCE_MIN,
    ATTR_PREPROCESS_MS,
    ATTR_PREPROCESS_STAGE,
    ATTR_REASON,
    ATTR_REENCODED,
    ATTR_SERVICE_CODE,
    ATTR_SOURCE_ETAG,
    ATTR_STAGE,
    ATTR_STATUS_CODE,
    ATTR_VISION_ATTEMPT,
    ATTR_VISION_BACKOFF_S,
    ATTR_VISION_ERROR_CLASS,
    ATTR_VISION_ERROR_CODE,
    ATTR_VISION_FEATURES,
    ATTR_VISION_IMAGE_BYTES,
    ATTR_VISION_INNER_CODE,
    ATTR_VISION_LIMITER_WAIT_MS,
    ATTR_VISION_MS,
    ATTR_VISION_RATE,
    ATTR_VISION_REASON,
    ATTR_VISION_RETRY_AFTER_S,
    ATTR_VISION_THROTTLED,
    ATTR_VISION_WILL_RETRY,
    AZ_NAMESPACE,
    EVENT_ANALYZED,
    EVENT_POISONED,
    EVENT_REJECTED,
    IMAGE_DESCRIPTOR_ATTRIBUTES,
    OUTCOME_FAILED,
    SPAN_DOCUMENT_WRITE,
    SPAN_VISION_ANALYZE,
    STORAGE_NAMESPACE,
    VISION_ANALYZE_PATH,
)

if TYPE_CHECKING:
    from shared.analysis.attempts import VisionAttempt
    from shared.analysis.pipeline import AnalysisOutcome, BlobInput
    from shared.analysis.preprocessing import PreprocessRecord
    from shared.errors import Disposition
    from shared.settings import Settings


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
        return cls(settings.vision.endpoint,
                   poison_after_attempts=settings.telemetry.poison_after_attempts)

    @never_raises
    def on_started(self, source: BlobInput) -> None:
        telemetry.instruments().image_bytes_in.record(source.size)
        current = telemetry.current_invocation()
        if current is not None:
            if telemetry.is_synthetic_blob(source.metadata):
                current.mark_synthetic()
            current.set_attributes({ATTR_BYTES_IN: source.size, ATTR_SOURCE_ETAG: source.etag})

    @never_raises
    def on_preprocessed(self, source: BlobInput, record: PreprocessRecord) -> None:
        ins = telemetry.instruments()
        ins.preprocess_duration.record(record.duration_ms)
        for stage, ms in record.stage_ms.items():
            ins.preprocess_stage_duration.record(ms, {ATTR_PREPROCESS_STAGE: stage})
        ins.image_bytes_out.record(record.final_bytes)
        current = telemetry.current_invocation()
        if current is not None:
            current.set_attributes({ATTR_BYTES_OUT: record.final_bytes,
                                    ATTR_FORMAT: record.final_format,
                                    ATTR_REENCODED: record.reencoded})

    @never_raises
    def on_vision_attempt(self, source: BlobInput, attempt: VisionAttempt) -> None:
        self.record_vision_attempt(attempt)

    @never_raises
    def record_vision_attempt(self, attempt: VisionAttempt) -> None:
        """One Vision attempt, whoever made it (the pipeline, or the Vision probe, whose calls
        use quota too): a dependency span and the attempt instruments."""
        ins = telemetry.instruments()
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
            **telemetry.synthetic_attributes(None),
        }
        telemetry.record_finished_span(
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

    @never_raises
    def on_document_written(self, source: BlobInput, document: str, duration_ms: float) -> None:
        container = document.partition("/")[0]  # never the path: it embeds the blob name
        telemetry.record_finished_span(
            SPAN_DOCUMENT_WRITE, kind=SpanKind.CLIENT, duration_ms=duration_ms,
            attributes={AZ_NAMESPACE: STORAGE_NAMESPACE, PEER_SERVICE: container,
                        ATTR_DOCUMENT_CONTAINER: container, **telemetry.synthetic_attributes(None)})

    @never_raises
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
            ATTR_CURRENT_ETAG: outcome.current_etag,
        }
        current = telemetry.current_invocation()
        if current is not None:
            # The measures go on the request row only: the drift and tuning queries read them
            # from AppRequests; on the event too they would double its envelope for no reader.
            current.set_outcome(status, **details, **outcome_measures(outcome))
        ins = telemetry.instruments()
        dims = {ATTR_OUTCOME: status,
                ATTR_ERROR_CLASS: outcome.error_class.value if outcome.error_class else "none"}
        ins.outcomes.add(1, dims)
        ins.analysis_duration.record(outcome.duration_ms, {ATTR_OUTCOME: status})
        event = {"analyzed": EVENT_ANALYZED, "rejected": EVENT_REJECTED}.get(status)
        if event is not None:
            telemetry.track_event(event, {ATTR_OUTCOME: status, **details, **self._blob(source)})

    @never_raises
    def on_retryable_failure(
        self, source: BlobInput, error: BaseException, disposition: Disposition
    ) -> None:
        failures = self._count_failure(source)
        details = {ATTR_ERROR_CLASS: disposition.error_class.value,
                   ATTR_REASON: disposition.reason, ATTR_HOST_ATTEMPTS: failures}
        current = telemetry.current_invocation()
        if current is not None:
            current.set_outcome(OUTCOME_FAILED, **details)
        telemetry.instruments().outcomes.add(1, {ATTR_OUTCOME: OUTCOME_FAILED,
                                       ATTR_ERROR_CLASS: disposition.error_class.value})
        if failures >= self._poison_after:
            # The host poisons the blob after this many failed tries. Counted per process: with
            # several instances the poison queue stays the source of truth.
            self._forget(source)
            telemetry.track_event(EVENT_POISONED, {ATTR_OUTCOME: "poisoned", **details,
                                         **self._blob(source)})

    @staticmethod
    def _blob(source: BlobInput) -> dict[str, object]:
        return {FAAS_DOCUMENT_COLLECTION: source.container,
                FAAS_DOCUMENT_NAME: telemetry.blob_label(source.container, source.name)}

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



__all__ = ["TelemetryObserver", "outcome_measures"]
