"""The tuning job with fakes: evidence parsing, ETag-guarded overlay writes, audit, the cache."""

from __future__ import annotations

import json
import typing
from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import StorageError
from shared.ops.tuning.policy import RUNTIME_TUNABLES, TUNABLES, Overlay
from shared.ops.tuning.review import (
    EVENT_CHANGED,
    EVENT_REVIEWED,
    SETTING_FIELDS,
    OverlayCache,
    OverlayConflictError,
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
from tests.support.tuning_review import BASE, ROWS, FakeStore, RowsRunner, context


def test_evidence_is_read_from_the_four_named_queries() -> None:
    runner = RowsRunner(ROWS)
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
