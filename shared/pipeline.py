"""The blob pipeline: validate → preprocess → analyse → write exactly one document.

``process_blob`` takes plain values (``BlobInput``) and its dependencies (``PipelineDeps``), so
tests drive it without any Functions type. Contract with the host:

* returns an ``AnalysisOutcome`` when the blob reached a final state — analysed (document in
  ``results/``), rejected for good (document in ``failed/`` with the classified reason and the
  service's error codes) or already done (same blob + ETag documented before);
* raises ``RetryableError`` (throttled / transient / timeout / storage) so the host retries and,
  after its last try, poisons the blob; unexpected exceptions propagate the same way, so a bug
  never drops an image silently;
* returns a ``parked`` outcome when Vision is down (``VisionUnavailableError``) and
  ``PipelineDeps.parking`` is set: the version is recorded in the parking lot and re-driven by
  ``shared.parking.redrive`` once Vision answers, instead of spending the host's tries.

``PipelineObserver`` is the telemetry seam (issue 4 fills it in); the default does nothing.
Observers must not raise. Nothing here prints or logs OCR text or image bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.errors import (
    Disposition,
    ErrorClass,
    PermanentError,
    RetryableError,
    VisionOpsError,
    VisionUnavailableError,
    classify,
)
from shared.parking import ParkingLot
from shared.preprocessing import PreprocessOptions, PreprocessRecord, preprocess
from shared.results import SCHEMA_VERSION, ResultRepository, normalize_etag
from shared.units import ms
from shared.vision import VisionAnalyzer, VisionAttempt, VisionResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlobInput:
    """The triggering blob as plain values (built from ``func.InputStream`` by the adapter)."""

    container: str
    name: str
    data: bytes = field(repr=False)
    etag: str | None = None
    content_type: str | None = None
    last_modified: str | None = None
    uri: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


class Outcome(StrEnum):
    ANALYZED = "analyzed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class AnalysisOutcome:
    status: Outcome
    container: str
    name: str
    etag: str | None
    document: str | None
    attempts: int = 0
    duration_ms: float = 0.0
    model_version: str | None = None
    preprocessing: PreprocessRecord | None = None
    error_class: ErrorClass | None = None
    reason: str | None = None
    stage: str | None = None
    status_code: int | None = None
    service_error_code: str | None = None
    service_inner_code: str | None = None


class PipelineObserver(Protocol):
    """Hooks for telemetry. Called synchronously on the invocation's thread; must not raise."""

    def on_started(self, source: BlobInput) -> None: ...

    def on_preprocessed(self, source: BlobInput, record: PreprocessRecord) -> None: ...

    def on_vision_attempt(self, source: BlobInput, attempt: VisionAttempt) -> None: ...

    def on_document_written(self, source: BlobInput, document: str, duration_ms: float) -> None: ...

    def on_outcome(self, source: BlobInput, outcome: AnalysisOutcome) -> None: ...

    def on_retryable_failure(
        self, source: BlobInput, error: BaseException, disposition: Disposition
    ) -> None: ...


class NoOpObserver:
    """The default observer: does nothing."""

    def on_started(self, source: BlobInput) -> None:
        pass

    def on_preprocessed(self, source: BlobInput, record: PreprocessRecord) -> None:
        pass

    def on_vision_attempt(self, source: BlobInput, attempt: VisionAttempt) -> None:
        pass

    def on_document_written(self, source: BlobInput, document: str, duration_ms: float) -> None:
        pass

    def on_outcome(self, source: BlobInput, outcome: AnalysisOutcome) -> None:
        pass

    def on_retryable_failure(
        self, source: BlobInput, error: BaseException, disposition: Disposition
    ) -> None:
        pass


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PipelineDeps:
    analyzer: VisionAnalyzer
    repository: ResultRepository
    features: tuple[str, ...]
    preprocess_options: PreprocessOptions = field(default_factory=PreprocessOptions)
    observer: PipelineObserver = field(default_factory=NoOpObserver)
    clock: Callable[[], float] = time.perf_counter
    now: Callable[[], datetime] = _utc_now
    #: where blobs wait while Vision is down; ``None``: raise and let the host retry
    parking: ParkingLot | None = None


def process_blob(source: BlobInput, deps: PipelineDeps) -> AnalysisOutcome:
    """Take one blob to its final state, or raise ``RetryableError`` (see module docstring)."""
    started = deps.clock()
    deps.observer.on_started(source)
    try:
        return _process(source, deps, started)
    except Exception as exc:
        disposition = classify(exc)
        logger.warning(
            "blob %s/%s not processed (%s/%s); the host will retry it",
            source.container, source.name, disposition.error_class, disposition.reason,
        )  # fmt: skip
        deps.observer.on_retryable_failure(source, exc, disposition)
        raise


def _process(source: BlobInput, deps: PipelineDeps, started: float) -> AnalysisOutcome:
    existing = deps.repository.find_current(source.container, source.name, source.etag)
    if existing is not None:
        outcome = AnalysisOutcome(
            status=Outcome.DUPLICATE,
            container=source.container,
            name=source.name,
            etag=normalize_etag(source.etag),
            document=f"{existing.container}/{existing.path}",
            duration_ms=ms(deps.clock() - started),
        )
        logger.info("blob %s/%s already documented; skipped", source.container, source.name)
        deps.observer.on_outcome(source, outcome)
        return outcome

    document = _source_document(source, deps)
    try:
        prepared = preprocess(source.data, deps.preprocess_options, clock=deps.clock)
    except PermanentError as exc:
        return _reject(source, deps, document, exc, stage="preprocess", started=started)
    deps.observer.on_preprocessed(source, prepared.record)
    document["preprocessing"] = prepared.record.as_dict()

    def on_attempt(attempt: VisionAttempt) -> None:
        deps.observer.on_vision_attempt(source, attempt)

    try:
        result = deps.analyzer.analyze(prepared.data, deps.features, on_attempt=on_attempt)
    except PermanentError as exc:
        return _reject(
            source, deps, document, exc, stage="analyze", started=started,
            record=prepared.record,
        )  # fmt: skip
    except VisionUnavailableError as exc:
        if deps.parking is None:
            raise
        return _park(source, deps, deps.parking, exc, started=started)
    return _accept(source, deps, document, result, record=prepared.record, started=started)


def _source_document(source: BlobInput, deps: PipelineDeps) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "container": source.container,
            "name": source.name,
            "etag": normalize_etag(source.etag),
            "size": source.size,
            "content_type": source.content_type,
            "last_modified": source.last_modified,
            "sha256": hashlib.sha256(source.data).hexdigest(),
        },
        "features": list(deps.features),
        "preprocessing": None,
    }


def _accept(
    source: BlobInput,
    deps: PipelineDeps,
    document: dict[str, Any],
    result: VisionResult,
    *,
    record: PreprocessRecord,
    started: float,
) -> AnalysisOutcome:
    document.update(
        outcome=Outcome.ANALYZED.value,
        model_version=result.model_version,
        attempts=result.attempts,
        timings_ms={
            "preprocess": record.duration_ms,
            "vision": result.duration_ms,
            "rate_limiter_wait": result.limiter_wait_ms,
            "total": ms(deps.clock() - started),
        },
        processed_at=deps.now().isoformat(),
        analysis=dict(result.payload),
        error=None,
    )
    written_at = deps.clock()
    path = deps.repository.write_result(source.container, source.name, source.etag, document)
    deps.observer.on_document_written(source, path, ms(deps.clock() - written_at))
    outcome = AnalysisOutcome(
        status=Outcome.ANALYZED,
        container=source.container,
        name=source.name,
        etag=normalize_etag(source.etag),
        document=path,
        attempts=result.attempts,
        duration_ms=ms(deps.clock() - started),
        model_version=result.model_version,
        preprocessing=record,
    )
    deps.observer.on_outcome(source, outcome)
    return outcome


def _reject(
    source: BlobInput,
    deps: PipelineDeps,
    document: dict[str, Any],
    error: VisionOpsError,
    *,
    stage: str,
    started: float,
    record: PreprocessRecord | None = None,
) -> AnalysisOutcome:
    document.update(
        outcome=Outcome.REJECTED.value,
        model_version=None,
        attempts=error.attempts,
        timings_ms={
            "preprocess": record.duration_ms if record else None,
            "total": ms(deps.clock() - started),
        },
        processed_at=deps.now().isoformat(),
        analysis=None,
        error={
            "class": error.error_class.value,
            "reason": error.reason,
            "stage": stage,
            "retryable": False,
            "message": error.message,
            "status_code": error.status_code,
            "service_error_code": error.error_code,
            "service_inner_code": error.inner_code,
        },
    )
    written_at = deps.clock()
    path = deps.repository.write_failure(source.container, source.name, source.etag, document)
    deps.observer.on_document_written(source, path, ms(deps.clock() - written_at))
    logger.warning(
        "blob %s/%s rejected at %s: %s/%s (service code %s/%s)",
        source.container, source.name, stage, error.error_class, error.reason,
        error.error_code, error.inner_code,
    )  # fmt: skip
    outcome = AnalysisOutcome(
        status=Outcome.REJECTED,
        container=source.container,
        name=source.name,
        etag=normalize_etag(source.etag),
        document=path,
        attempts=error.attempts,
        duration_ms=ms(deps.clock() - started),
        preprocessing=record,
        error_class=error.error_class,
        reason=error.reason,
        stage=stage,
        status_code=error.status_code,
        service_error_code=error.error_code,
        service_inner_code=error.inner_code,
    )
    deps.observer.on_outcome(source, outcome)
    return outcome


def _park(source: BlobInput, deps: PipelineDeps, lot: ParkingLot, error: VisionOpsError, *,
          started: float) -> AnalysisOutcome:  # fmt: skip
    path = lot.park(source.container, source.name, source.etag, reason=error.reason,
                    now=deps.now)  # fmt: skip
    logger.warning("blob %s/%s parked: Vision is unavailable (%s); it is re-driven when Vision"
                   " answers", source.container, source.name, error.reason)  # fmt: skip
    outcome = AnalysisOutcome(
        status=Outcome.PARKED, container=source.container, name=source.name,
        etag=normalize_etag(source.etag), document=path, attempts=error.attempts,
        duration_ms=ms(deps.clock() - started), error_class=error.error_class,
        reason=error.reason, status_code=error.status_code,
    )  # fmt: skip
    deps.observer.on_outcome(source, outcome)
    return outcome


__all__ = [
    "AnalysisOutcome",
    "BlobInput",
    "NoOpObserver",
    "Outcome",
    "PipelineDeps",
    "PipelineObserver",
    "RetryableError",
    "process_blob",
]
