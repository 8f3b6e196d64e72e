"""The drift baseline: rolling by default, pinned from its document, never overlapping now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.monitoring.drift import Baseline, load_baseline, save_baseline
from shared.settings import DriftSettings
from tests.support.fakes import Documents

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = DriftSettings()


def test_rolling_is_the_default_and_ends_where_the_current_window_starts() -> None:
    baseline = load_baseline(Documents())
    assert baseline.kind == "rolling"
    params = baseline.query_params(SETTINGS, NOW)
    assert params == {"currentWindow": timedelta(minutes=15),
                      "baselineStart": timedelta(days=7, minutes=15),
                      "baselineEnd": timedelta(minutes=15), "minImages": 30}
    described = baseline.describe(SETTINGS, NOW)
    assert (described["from"], described["to"]) == ("2026-11-24T11:45:00Z", "2026-12-01T11:45:00Z")


def test_pinned_round_trips_through_its_document() -> None:
    docs = Documents()
    pinned = Baseline.pinned(NOW - timedelta(days=3), NOW - timedelta(days=1), pinned_at=NOW,
                             distribution=({"Descriptor": "brightness", "Bin": "0.5",
                                            "Share": 1.0},))
    save_baseline(docs, pinned)
    loaded = load_baseline(docs)
    assert loaded == pinned
    assert loaded.query_params(SETTINGS, NOW)["baselineStart"] == timedelta(days=3)
    assert loaded.describe(SETTINGS, NOW)["kind"] == "pinned"


def test_a_pinned_range_reaching_into_now_is_cut_at_the_current_window() -> None:
    pinned = Baseline.pinned(NOW - timedelta(hours=2), NOW, pinned_at=NOW)
    start, end = pinned.lookback(SETTINGS, NOW)
    assert (start, end) == (timedelta(hours=2), timedelta(minutes=15))


@pytest.mark.parametrize("doc", [
    {"kind": "pinned"},
    {"kind": "pinned", "start": "yesterday", "end": "2026-12-01T00:00:00Z"},
    {"kind": "pinned", "start": "2026-12-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
    {"kind": "pinned", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z",
     "distribution": "all"},
])
def test_a_broken_document_falls_back_to_rolling(doc: dict[str, Any]) -> None:
    assert load_baseline(Documents(doc)).kind == "rolling"
