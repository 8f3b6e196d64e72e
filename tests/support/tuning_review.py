"""The tuning review's unit-test pieces: the four named queries' rows of one day, a runner
over them, the status container's tuning documents in memory and a ``ReviewContext`` over both."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from shared.monitoring.logsquery import QueryResult
from shared.ops.tuning.policy import Overlay, Review
from shared.ops.tuning.review import OverlayConflictError, ReviewContext
from shared.settings import Settings

BASE = {"VISION_ENDPOINT": "http://127.0.0.1:9",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
NOW = datetime(2030, 1, 2, 3, 15, tzinfo=UTC)

# what the four named queries return on a day whose failures hang to the 30 s timeout
ROWS: dict[str, list[dict[str, Any]]] = {
    "tuning_attempts": [
        {"Attempt": 1, "Calls": 440, "Successes": 400, "Throttled": 0, "Timeouts": 40},
        {"Attempt": 2, "Calls": 40, "Successes": 40, "Throttled": 0, "Timeouts": 0}],
    "tuning_vision_latency": [
        {"Measure": "success_ms", "Count": 440, "P50": 700.0, "P95": 1400.0, "P99": 1800.0,
         "Max": 1990.0},
        {"Measure": "timeout_ms", "Count": 40, "P50": 30000.0, "P95": 30000.0, "P99": 30000.0,
         "Max": 30000.0},
        {"Measure": "retry_after_s", "Count": 0, "P50": None, "P95": None, "P99": None,
         "Max": None},
        {"Measure": "limiter_wait_ms", "Count": 480, "P50": 1.0, "P95": 5.0, "P99": 9.0,
         "Max": 20.0},
        {"Measure": "rethrottled", "Count": 0, "P50": None, "P95": None, "P99": None, "Max": None},
        {"Measure": "pipeline_ms", "Count": 440, "P50": 900.0, "P95": 2000.0, "P99": 2400.0,
         "Max": 31000.0},
        {"Measure": "busiest_minute", "Count": 600, "P50": None, "P95": None, "P99": None,
         "Max": 12.0}],
    "tuning_size_buckets": [
        {"Low": 1536, "High": 2048, "Images": 440, "VisionP50Ms": 700.0, "PreprocessP50Ms": 90.0,
         "OcrWordsAvg": 12.0, "WordConfidenceAvg": 0.95, "PeopleAvg": 0.5}],
    "tuning_kpi": [
        {"Scope": "requests", "Images": 480, "Analysed": 440, "P95Ms": None, "Calls": 0},
        {"Scope": "latency", "Images": 0, "Analysed": 0, "P95Ms": 2100.0, "Calls": 0},
        {"Scope": "calls", "Images": 0, "Analysed": 0, "P95Ms": None, "Calls": 480}],
}


class RowsRunner:
    """``run`` answers each named query from ``rows``; records (name, timespan) of every call."""

    def __init__(self, rows: Mapping[str, list[dict[str, Any]]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, Any]] = []

    def run(self, name: str, timespan: Any = None, **_: Any) -> QueryResult:
        self.calls.append((name, timespan))
        rows = self.rows[name]
        return QueryResult(name=name, columns=tuple(rows[0]) if rows else (), rows=list(rows))


class FakeStore:
    """The status container's tuning documents in memory, with ETags like Blob Storage."""

    def __init__(self) -> None:
        self.overlay: Overlay | None = None
        self.etag = 0
        self.reviews: list[tuple[Review, str]] = []
        self.conflicts = 0  # writes to refuse with 412 before accepting one

    def read_overlay(self) -> tuple[Overlay, str | None]:
        return (self.overlay or Overlay()), (str(self.etag) if self.overlay else None)

    def write_overlay(self, overlay: Overlay, etag: str | None) -> str:
        current = str(self.etag) if self.overlay else None
        if self.conflicts or etag != current:
            self.conflicts = max(0, self.conflicts - 1)
            self.etag += 1  # someone else wrote meanwhile
            self.overlay = self.overlay or Overlay()
            raise OverlayConflictError("changed", reason="overlay_conflict")
        self.overlay, self.etag = overlay, self.etag + 1
        return str(self.etag)

    def write_review(self, result: Review, text: str) -> None:
        self.reviews.append((result, text))

    def latest_review(self) -> dict[str, Any] | None:
        return self.reviews[-1][0].as_dict() if self.reviews else None


def context(store: FakeStore, events: list[tuple[str, Mapping[str, object]]], *,
            mode: str = "apply", held: bool = False) -> ReviewContext:
    @contextmanager
    def hold(_: str) -> Iterator[bool]:
        yield not held

    return ReviewContext(
        settings=Settings.from_env({**BASE, "TUNING_MODE": mode}),
        runner=RowsRunner(ROWS),  # type: ignore[arg-type]
        store=store, host_concurrency=8,
        event=lambda name, props: events.append((name, props)), hold=hold, now=lambda: NOW)
