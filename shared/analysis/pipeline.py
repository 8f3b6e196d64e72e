"""The blob pipeline: HEAD → size check → read one version → preprocess → analyse → commit.

``process_blob`` takes a handle on the triggering blob (``shared.analysis.sources.SourceBlob``,
never its
bytes) and its dependencies (``PipelineDeps``), so tests drive it without any Functions type.
Contract with the host:

* returns an ``AnalysisOutcome`` when the blob reached a final state — analysed (document in
  ``results/``), rejected for good (document in ``failed/`` with the classified reason and the
  service's error codes), already done (same blob + ETag documented before) or **superseded**
  (the version this run read is no longer the blob's current one — overwritten or deleted —
  so nothing of it is written; the run for the newer version documents that one);
* raises ``RetryableError`` (throttled / transient / timeout / storage) so the host retries and,
  after its last try, poisons the blob; unexpected exceptions propagate the same way, so a bug
  never drops an image silently;
* returns a ``parked`` outcome when Vision is down (``VisionUnavailableError``) and
  ``PipelineDeps.parking`` is set: the version is recorded in the parking lot and re-driven by
  ``shared.analysis.parking.redrive`` once Vision answers, instead of spending the host's tries.

Memory: the blob's size comes from its properties before any byte is read; a blob larger than
``PREPROCESS_MAX_INPUT_BYTES`` is rejected (``input_too_large``) from that HEAD alone, and a
read never holds more than that many bytes.

``PipelineObserver`` is the telemetry seam; the default does nothing. Observers must not raise.
Nothing here prints or logs OCR text or image bytes.

A little past 450 lines because it is one thing: the ordered steps of one invocation, each a
short function, read top to bottom.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.analysis.attempts import VisionAttempt
from shared.analysis.outputs import OutputSummary, summarize
from shared.analysis.parking import ParkingLot
from shared.analysis.preprocessing import (
    PreprocessOptions,
    PreprocessRecord,
    PreprocessResult,
    preprocess,
)
from shared.analysis.results import (
    SCHEMA_VERSION,
    Commit,
    CommitResult,
    ResultRepository,
    normalize_etag,
)
from shared.analysis.sources import SourceBlob, SourceChanged, SourceVersion, too_large
from shared.analysis.vision import VisionAnalyzer, VisionResult
from shared.errors import (
    Disposition,
    ErrorClass,
    PermanentError,
    RetryableError,
    VisionOpsError,
    VisionUnavailableError,
    classify,
)
from shared.naming import printable
from shared.units import ms

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlobInput:
    """The version being processed, as plain values (what observers see).

    ``data`` is empty until the version was read; ``declared_size`` is its ``ContentLength``
    from the properties, known before any byte is read.
    """

    container: str
    name: str
    data: bytes = field(repr=False)
    etag: str | None = None
    content_type: str | None = None
    last_modified: str | None = None
    uri: str | None = None
    declared_size: int | None = None
    #: The blob's user metadata (the probe's marker, ``telemetry.PROBE_BLOB_MARKER``, lives here).
    metadata: Mapping[str, str] | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.declared_size is None else self.declared_size


class Outcome(StrEnum):
    ANALYZED = "analyzed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    #: the version read is no longer the blob's current one: nothing written, not retried
    SUPERSEDED = "superseded"
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
    #: how long the Vision call took (all attempts) and counts of what it returned
    vision_ms: float | None = None
    output: OutputSummary | None = None
    #: superseded only: the blob's ETag when this version was given up (None: deleted)
    current_etag: str | None = None


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


def process_blob(blob: SourceBlob, deps: PipelineDeps) -> AnalysisOutcome:
    """Take one blob to its final state, or raise ``RetryableError`` (see module docstring)."""
    started = deps.clock()
    run = _Run(blob, deps, started, BlobInput(blob.container, blob.name, b"", uri=blob.uri))
    try:
        return run.process()
    except Exception as exc:
        disposition = classify(exc)
        logger.warning(
            "blob %s/%s not processed (%s/%s); the host will retry it",
            blob.container, printable(blob.name), disposition.error_class, disposition.reason,
        )
        deps.observer.on_retryable_failure(run.source, exc, disposition)
        raise


@dataclass(slots=True)
class _Run:
    """One invocation; ``source`` grows from name to properties to bytes as they are read."""

    blob: SourceBlob
    deps: PipelineDeps
    started: float
    source: BlobInput

    def process(self) -> AnalysisOutcome:
        blob, deps = self.blob, self.deps
        version = blob.properties()
        if version is not None:
            self.source = _described(self.source, version)
        deps.observer.on_started(self.source)
        if version is None:
            return self._superseded(None)

        source = self.source
        existing = deps.repository.find_current(source.container, source.name, source.etag)
        if existing is not None:
            return self._duplicate(f"{existing.container}/{existing.path}")
        return self._analyse(version)

    def _analyse(self, version: SourceVersion) -> AnalysisOutcome:
        blob, deps, source = self.blob, self.deps, self.source
        document = _source_document(source, deps)
        limit = deps.preprocess_options.max_input_bytes
        if version.size > limit:
            # decided from the properties alone: not one byte of the blob is read
            return self._reject(document, too_large(version.size, limit), stage="preprocess")
        try:
            data = blob.read(version.etag, limit)
        except SourceChanged as changed:
            return self._superseded(changed.current)
        except PermanentError as exc:  # grew past the limit while read (no If-Match: no ETag)
            return self._reject(document, exc, stage="preprocess")
        self.source = source = _with_data(source, data)
        document["source"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())

        try:
            prepared = preprocess(data, deps.preprocess_options, clock=deps.clock)
        except PermanentError as exc:
            return self._reject(document, exc, stage="preprocess")
        deps.observer.on_preprocessed(source, prepared.record)
        document["preprocessing"] = prepared.record.as_dict()
        return self._analyse_prepared(document, prepared)

    def _analyse_prepared(self, document: dict[str, Any], prepared: PreprocessResult
                          ) -> AnalysisOutcome:
        source, deps = self.source, self.deps

        def on_attempt(attempt: VisionAttempt) -> None:
            deps.observer.on_vision_attempt(source, attempt)

        try:
            result = deps.analyzer.analyze(prepared.data, deps.features, on_attempt=on_attempt)
        except PermanentError as exc:
            return self._reject(document, exc, stage="analyze", record=prepared.record)
        except VisionUnavailableError as exc:
            if deps.parking is None:
                raise
            return self._park(deps.parking, exc)
        return self._accept(document, result, record=prepared.record)

    def _park(self, lot: ParkingLot, error: VisionOpsError) -> AnalysisOutcome:
        """Vision is down: record this version for ``shared.analysis.parking.redrive`` instead of
        spending the host's tries (it would poison the blob before a long outage ends)."""
        source, deps = self.source, self.deps
        path = lot.park(source.container, source.name, source.etag, reason=error.reason,
                        now=deps.now)
        logger.warning("blob %s/%s parked: Vision is unavailable (%s); it is re-driven when"
                       " Vision answers", source.container, printable(source.name),
                       error.reason)
        return self._finish(AnalysisOutcome(
            status=Outcome.PARKED, container=source.container, name=source.name,
            etag=source.etag, document=path, attempts=error.attempts,
            duration_ms=ms(deps.clock() - self.started), error_class=error.error_class,
            reason=error.reason, status_code=error.status_code,
        ))

    def _current_etag(self) -> str | None:
        current = self.blob.properties()
        return current.etag if current is not None else None

    def _accept(
        self, document: dict[str, Any], result: VisionResult, *, record: PreprocessRecord
    ) -> AnalysisOutcome:
        source, deps = self.source, self.deps
        document.update(
            outcome=Outcome.ANALYZED.value,
            model_version=result.model_version,
            attempts=result.attempts,
            timings_ms={
                "preprocess": record.duration_ms,
                "vision": result.duration_ms,
                "rate_limiter_wait": result.limiter_wait_ms,
                "total": ms(deps.clock() - self.started),
            },
            processed_at=deps.now().isoformat(),
            analysis=dict(result.payload),
            error=None,
        )
        details: dict[str, Any] = {
            "attempts": result.attempts, "model_version": result.model_version,
            "preprocessing": record,
        }
        commit, settled = self._commit(deps.repository.commit_result, document, details)
        if settled is not None:
            return settled
        return self._finish(AnalysisOutcome(
            status=Outcome.ANALYZED, container=source.container, name=source.name,
            etag=source.etag, document=commit.path, **details,
            duration_ms=ms(deps.clock() - self.started),
            vision_ms=result.duration_ms, output=summarize(result.payload),
        ))

    def _reject(
        self,
        document: dict[str, Any],
        error: VisionOpsError,
        *,
        stage: str,
        record: PreprocessRecord | None = None,
    ) -> AnalysisOutcome:
        source, deps = self.source, self.deps
        document.update(
            outcome=Outcome.REJECTED.value,
            model_version=None,
            attempts=error.attempts,
            timings_ms={
                "preprocess": record.duration_ms if record else None,
                "total": ms(deps.clock() - self.started),
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
        details: dict[str, Any] = {
            "attempts": error.attempts, "preprocessing": record,
            "error_class": error.error_class, "reason": error.reason, "stage": stage,
            "status_code": error.status_code, "service_error_code": error.error_code,
            "service_inner_code": error.inner_code,
        }
        commit, settled = self._commit(deps.repository.commit_failure, document, details)
        if settled is not None:
            return settled
        logger.warning(
            "blob %s/%s rejected at %s: %s/%s (service code %s/%s)",
            source.container, printable(source.name), stage, error.error_class, error.reason,
            error.error_code, error.inner_code,
        )
        return self._finish(AnalysisOutcome(
            status=Outcome.REJECTED, container=source.container, name=source.name,
            etag=source.etag, document=commit.path, **details,
            duration_ms=ms(deps.clock() - self.started),
        ))

    def _commit(
        self, write: Callable[..., CommitResult], document: dict[str, Any],
        details: dict[str, Any],
    ) -> tuple[CommitResult, AnalysisOutcome | None]:
        """Write ``document`` for this version (results or failed); the outcome instead when the
        commit wrote nothing (superseded, or documented already)."""
        source, deps = self.source, self.deps
        written_at = deps.clock()
        commit = write(source.container, source.name, source.etag, document,
                       current_etag=self._current_etag)
        if commit.status is not Commit.WRITTEN:
            return commit, self._settled(commit, **details)
        deps.observer.on_document_written(source, commit.path, ms(deps.clock() - written_at))
        return commit, None

    def _settled(self, commit: CommitResult, **details: Any) -> AnalysisOutcome:
        """A commit that wrote nothing: superseded, or the version was documented already."""
        if commit.status is Commit.SUPERSEDED:
            # keep what was spent (attempts, preprocessing) but not the outcome it would have had
            kept = {k: details[k] for k in ("attempts", "model_version", "preprocessing")
                    if k in details}
            return self._superseded(commit.current_etag, **kept)
        return self._duplicate(commit.path)

    def _duplicate(self, document: str) -> AnalysisOutcome:
        source = self.source
        logger.info("blob %s/%s already documented; skipped", source.container,
                    printable(source.name))
        return self._finish(AnalysisOutcome(
            status=Outcome.DUPLICATE, container=source.container, name=source.name,
            etag=source.etag, document=document,
            duration_ms=ms(self.deps.clock() - self.started),
        ))

    def _superseded(self, current: str | None, **details: Any) -> AnalysisOutcome:
        source = self.source
        reason = "deleted" if current is None else "newer_version"
        logger.info(
            "blob %s/%s version %s superseded (%s, current %s); its document is not written",
            source.container, printable(source.name), source.etag, reason, current,
        )
        return self._finish(AnalysisOutcome(
            status=Outcome.SUPERSEDED, container=source.container, name=source.name,
            etag=source.etag, document=None, reason=reason, current_etag=current,
            duration_ms=ms(self.deps.clock() - self.started), **details,
        ))

    def _finish(self, outcome: AnalysisOutcome) -> AnalysisOutcome:
        self.deps.observer.on_outcome(self.source, outcome)
        return outcome


def _described(source: BlobInput, version: SourceVersion) -> BlobInput:
    return BlobInput(
        container=source.container, name=source.name, data=b"", etag=version.etag,
        content_type=version.content_type, last_modified=version.last_modified,
        uri=source.uri, declared_size=version.size, metadata=dict(version.metadata),
    )


def _with_data(source: BlobInput, data: bytes) -> BlobInput:
    return BlobInput(
        container=source.container, name=source.name, data=data, etag=source.etag,
        content_type=source.content_type, last_modified=source.last_modified,
        uri=source.uri, metadata=source.metadata,
    )


def _source_document(source: BlobInput, deps: PipelineDeps) -> dict[str, Any]:
    # sha256 is filled in once the bytes were read; a blob rejected on its size keeps None
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {
            "container": source.container,
            "name": source.name,
            "etag": normalize_etag(source.etag),
            "size": source.size,
            "content_type": source.content_type,
            "last_modified": source.last_modified,
            "sha256": None,
        },
        "features": list(deps.features),
        "preprocessing": None,
    }


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
