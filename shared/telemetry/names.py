"""Every name telemetry writes: attributes, spans, events, metrics and the trigger values.

Span, event and metric names are low-cardinality constants; attribute names come from the
OpenTelemetry semantic conventions where one exists (imported where used), else these
namespaces (``pipeline.*``, ``vision.*``, ``probe.*``, ``quota.*``). Queries in ``queries/`` and
the status report read these names back, so each is spelled once, here.

Must never: import anything of the app (it is the bottom of the telemetry package).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

INSTRUMENTATION_NAME: Final = "visionops"

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
#: what the input looks like (shared/analysis/descriptors.py): the drift queries compare these
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

# The health timers (probes, quota check).
ATTR_PROBE_NAME: Final = "probe.name"
ATTR_PROBE_FAILURE: Final = "probe.failure"
ATTR_QUOTA_TIER: Final = "quota.tier"
ATTR_QUOTA_FAILURE: Final = "quota.failure"
ATTR_QUOTA_REASON: Final = "quota.reason"

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
EVENT_QUOTA_CHECK_FAILED: Final = "quota.check_failed"

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
#: The quota check's gauges (``quota.*``), read back by the status report and the workbook.
METRIC_QUOTA_USED_RATIO: Final = "quota.used_ratio"
METRIC_QUOTA_FORECAST_RATIO: Final = "quota.forecast_ratio"

#: ``pipeline.outcome`` of an invocation that raised (the host retries it, then poisons).
OUTCOME_FAILED: Final = "failed"
#: ``pipeline.outcome`` of an invocation that ended without the pipeline naming an outcome.
OUTCOME_COMPLETED: Final = "completed"


class Trigger(StrEnum):
    """``faas.trigger`` values (semantic conventions)."""

    DATASOURCE = "datasource"  # blob trigger
    HTTP = "http"
    TIMER = "timer"
    OTHER = "other"

