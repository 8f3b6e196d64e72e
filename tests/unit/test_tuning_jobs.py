"""The tuning job with fakes: evidence parsing, ETag-guarded overlay writes, audit, the cache."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.errors import StorageError
from shared.monitoring.logsquery import QueryResult
from shared.ops.tuning.policy import RUNTIME_TUNABLES, TUNABLES, Overlay, Review
from shared.ops.tuning.review import (
    EVENT_CHANGED,
    EVENT_REVIEWED,
    SETTING_FIELDS,
    OverlayCache,
    OverlayConflictError,
    ReviewContext,
    apply_overlay,
    current_values,
    host_blob_concurrency,
    load_evidence,
    review_now,
    run_review,
    set_pin,
    tuning_state,
)
from shared.settings import Settings, VisionSettings

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


class FakeRunner:
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
        runner=FakeRunner(ROWS),  # type: ignore[arg-type]
        store=store, host_concurrency=8,
        event=lambda name, props: events.append((name, props)), hold=hold, now=lambda: NOW)


def test_evidence_is_read_from_the_four_named_queries() -> None:
    runner = FakeRunner(ROWS)
    ev = load_evidence(runner, timedelta(hours=24))  # type: ignore[arg-type]
    assert {name for name, _ in runner.calls} == set(ROWS)
    assert len(runner.calls) == 4
    assert ev.success_ms.p99 == 1800.0 and ev.timeout_ms.count == 40
    assert ev.kpi.images == 480 and ev.kpi.p95_ms == 2100.0 and ev.calls == 480
    assert ev.throughput_per_s == pytest.approx(0.2)


def test_apply_mode_writes_one_bounded_step_with_its_audit() -> None:
    store, events = FakeStore(), []
    result = run_review(context(store, events))
    assert result is not None
    assert store.overlay is not None and store.overlay.values == {"vision_timeout_seconds": 15.0}
    [(stored, text)] = store.reviews
    assert stored is result and "APPLIED vision_timeout_seconds 30 -> 15" in text
    names = [name for name, _ in events]
    assert names == [EVENT_REVIEWED, EVENT_CHANGED]
    assert events[1][1]["tuning.new"] == 15.0


def test_recommend_mode_never_writes_the_overlay() -> None:
    store, events = FakeStore(), []
    result = run_review(context(store, events, mode="recommend"))
    assert result is not None and result.changes() and store.overlay is None
    assert [name for name, _ in events] == [EVENT_REVIEWED]


def test_off_mode_does_nothing() -> None:
    store, events = FakeStore(), []
    assert run_review(context(store, events, mode="off")) is None
    assert store.reviews == [] and events == []


def test_an_overlay_conflict_reviews_again_from_a_fresh_read() -> None:
    store, events = FakeStore(), []
    store.conflicts = 1
    run_review(context(store, events))
    assert store.overlay is not None and store.overlay.values == {"vision_timeout_seconds": 15.0}
    store2 = FakeStore()
    store2.conflicts = 5
    with pytest.raises(OverlayConflictError):
        run_review(context(store2, []))


def test_http_entry_points_classify_their_answers() -> None:
    store, events = FakeStore(), []
    assert review_now(context(store, events), "sometimes")[0] == 400
    assert review_now(context(store, events, held=True), None)[0] == 409
    status, body = review_now(context(store, events), "recommend")
    assert status == 200 and body["review"]["mode"] == "recommend"
    assert set_pin(context(store, events), "vision_max_retries", 2)[0] == 200
    assert set_pin(context(store, events), "vision_max_retries", 99)[0] == 400
    state = tuning_state(context(store, events))
    assert state["effective"] == {"vision_max_retries": 2.0}
    assert state["last_review"]["id"] == body["review"]["id"]


def test_the_overlay_merges_into_settings_typed_and_consistent() -> None:
    settings = Settings.from_env(BASE)
    merged = apply_overlay(settings, Overlay(version=2, values={"vision_max_retries": 2.0,
                                                                "vision_backoff_base_seconds": 4.0},
                                             pins={"vision_backoff_max_seconds": 1.0}))
    assert merged.vision.max_retries == 2 and isinstance(merged.vision.max_retries, int)
    assert merged.vision.backoff_base_seconds == 4.0
    assert merged.vision.backoff_max_seconds == 4.0  # never below the base
    assert apply_overlay(settings, Overlay()) is settings


def test_every_runtime_tunable_names_an_existing_settings_field_of_its_type() -> None:
    settings = Settings.from_env(BASE)
    assert set(SETTING_FIELDS) == set(RUNTIME_TUNABLES) and len(SETTING_FIELDS) == 7
    for name, (group, attr) in SETTING_FIELDS.items():
        hints = typing.get_type_hints(type(getattr(settings, group)))
        kind = int if TUNABLES[name].integer else float
        assert hints[attr] in (kind, kind | None), (name, group, attr, hints[attr])


def test_an_overlay_document_stored_with_the_flat_keys_still_applies() -> None:
    # tuning/overlay.json as the app has always written it: keys are the tunables' names
    stored = json.loads("""{"version": 7, "values": {"vision_timeout_seconds": 15.0,
        "vision_max_retries": 2.0, "vision_backoff_base_seconds": 1.0,
        "vision_backoff_max_seconds": 10.0, "preprocess_max_dimension": 1536.0,
        "preprocess_jpeg_quality": 80.0}, "pins": {"vision_rate_limit_per_second": 6.0},
        "changes": []}""")
    overlay = Overlay.from_dict(stored)
    settings = Settings.from_env(BASE)
    merged = apply_overlay(settings, overlay)
    assert (merged.vision.timeout_seconds, merged.vision.max_retries,
            merged.vision.backoff_base_seconds, merged.vision.backoff_max_seconds) == (
        15.0, 2, 1.0, 10.0)
    assert (merged.preprocess.max_dimension, merged.preprocess.jpeg_quality) == (1536, 80)
    assert merged.vision.rate_limit_override == 6.0 and merged.vision.rate_limit_per_second == 6
    assert isinstance(merged.preprocess.max_dimension, int)
    # the values in force read back under the same keys, one per runtime tunable
    current = current_values(merged, host_concurrency=8)
    assert {k: v for k, v in current.items() if k in SETTING_FIELDS} == overlay.effective()
    assert current["host_blob_concurrency"] == 8.0
    # the probe's own client never takes the pipeline's tunables
    assert merged.probes.vision == settings.probes.vision
    assert isinstance(merged.probes.vision, VisionSettings)


def test_overlay_cache_reads_once_per_ttl_and_keeps_the_last_good_one() -> None:
    now = [0.0]
    reads: list[int] = []
    results: list[Overlay | Exception] = [Overlay(version=1),
                                          StorageError("down", reason="storage_read"),
                                          Overlay(version=3)]

    def read() -> Overlay:
        reads.append(1)
        item = results.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    cache = OverlayCache(read, ttl_s=60, clock=lambda: now[0])
    assert cache.get().version == 1
    now[0] = 59.0
    assert cache.get().version == 1 and len(reads) == 1
    now[0] = 61.0
    assert cache.get().version == 1 and len(reads) == 2  # storage down: last good kept
    now[0] = 122.0
    assert cache.get().version == 3 and len(reads) == 3


def test_host_concurrency_is_read_from_host_json(tmp_path: Path) -> None:
    assert host_blob_concurrency() == 8  # the repository's host.json
    bad = tmp_path / "host.json"
    bad.write_text("{not json", encoding="utf-8")
    assert host_blob_concurrency(bad) is None
