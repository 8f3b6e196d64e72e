"""The pipeline's unit-test fakes: a scripted analyzer, a recording observer, a test image and
``make_deps``, the ``PipelineDeps`` over them and an in-memory store (deterministic clocks)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from shared.analysis.attempts import VisionAttempt
from shared.analysis.pipeline import AnalysisOutcome, BlobInput, PipelineDeps
from shared.analysis.preprocessing import PreprocessRecord
from shared.analysis.results import ResultRepository
from shared.analysis.vision import AttemptHook, VisionResult
from shared.errors import Disposition
from tests.support.fakes import MemoryBlob, MemoryStore


class FakeAnalyzer:
    def __init__(self, script: Sequence[Mapping[str, Any] | Exception] = ()) -> None:
        self.script = list(script)
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    def analyze(
        self, image: bytes, features: Sequence[str], *, on_attempt: AttemptHook | None = None
    ) -> VisionResult:
        self.calls.append((len(image), tuple(features)))
        item = self.script.pop(0) if self.script else OK_PAYLOAD
        if on_attempt is not None:
            on_attempt(
                VisionAttempt(
                    attempt=1,
                    features=tuple(features),
                    image_bytes=len(image),
                    duration_ms=5.0,
                    limiter_wait_ms=0.0,
                    status_code=200,
                )
            )
        if isinstance(item, Exception):
            item.attempts = 2  # type: ignore[attr-defined]
            raise item
        return VisionResult(
            payload=item,
            model_version=str(item["modelVersion"]),
            features=tuple(features),
            attempts=1,
            duration_ms=5.0,
            limiter_wait_ms=0.0,
        )


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.outcomes: list[AnalysisOutcome] = []
        self.failures: list[Disposition] = []

    def on_started(self, source: BlobInput) -> None:
        self.events.append("started")

    def on_preprocessed(self, source: BlobInput, record: PreprocessRecord) -> None:
        self.events.append("preprocessed")

    def on_vision_attempt(self, source: BlobInput, attempt: VisionAttempt) -> None:
        self.events.append(f"attempt:{attempt.attempt}")

    def on_document_written(self, source: BlobInput, document: str, duration_ms: float) -> None:
        self.events.append(f"written:{document}")

    def on_outcome(self, source: BlobInput, outcome: AnalysisOutcome) -> None:
        self.events.append(f"outcome:{outcome.status}")
        self.outcomes.append(outcome)

    def on_retryable_failure(
        self, source: BlobInput, error: BaseException, disposition: Disposition
    ) -> None:
        self.events.append(f"retry:{disposition.error_class}")
        self.failures.append(disposition)


OK_PAYLOAD: dict[str, Any] = {
    "modelVersion": "2023-10-01",
    "metadata": {"width": 320, "height": 240},
    "readResult": {"blocks": [{"lines": [{"text": "SECRET OCR LINE"}]}]},
}


def jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


IMAGE = jpeg()


def blob(name: str = "cats/tom.jpg", etag: str = '"0x8D1"', data: bytes = IMAGE) -> MemoryBlob:
    return MemoryBlob(name, data, etag=etag)


def make_deps(
    store: MemoryStore | None = None,
    analyzer: FakeAnalyzer | None = None,
    observer: RecordingObserver | None = None,
) -> PipelineDeps:
    ticks = iter(float(i) / 100 for i in range(10_000))
    return PipelineDeps(
        analyzer=analyzer or FakeAnalyzer(),
        repository=ResultRepository(
            store or MemoryStore(), results_container="results", failed_container="failed"
        ),
        features=("read", "people", "smartCrops"),
        observer=observer or RecordingObserver(),
        clock=lambda: next(ticks),
        now=lambda: datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )
