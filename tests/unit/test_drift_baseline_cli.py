"""Pinning the drift baseline: the snapshot comes from the distribution query over the range."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.drift_baseline import PinRefused, pin, unpin
from shared.monitoring.drift import load_baseline
from shared.monitoring.logsquery import QueryResult
from shared.settings import Settings
from tests.support.fakes import Documents

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings.from_env({"VISION_ENDPOINT": "http://127.0.0.1:9",
                              "AzureWebJobsStorage": "UseDevelopmentStorage=true"})


class FakeRunner:
    def __init__(self, baseline_images: int) -> None:
        self.calls: list[tuple[str, Any, Mapping[str, Any]]] = []
        self.images = baseline_images

    def run(self, name: str, timespan: Any = None, *, params: Any = None) -> QueryResult:
        self.calls.append((name, timespan, dict(params or {})))
        rows = [{"Descriptor": "brightness", "Bin": "0.4", "Current": 0, "Baseline": self.images,
                 "CurrentShare": 0.0, "BaselineShare": 1.0},
                {"Descriptor": "format", "Bin": "png", "Current": 0, "Baseline": self.images,
                 "CurrentShare": 0.0, "BaselineShare": 1.0},
                {"Descriptor": "format", "Bin": "jpeg", "Current": 3, "Baseline": 0,
                 "CurrentShare": 1.0, "BaselineShare": 0.0}]
        return QueryResult(name=name, columns=tuple(rows[0]), rows=rows)


def test_pin_snapshots_the_range_and_status_uses_it() -> None:
    docs, runner = Documents(), FakeRunner(120)
    start, end = NOW - timedelta(days=2), NOW - timedelta(days=1)
    saved = pin(runner, docs, SETTINGS, start=start, end=end, now=NOW)
    [(name, _span, params)] = runner.calls
    assert name == "drift_distribution"
    assert (params["baselineStart"], params["baselineEnd"]) == (timedelta(days=2),
                                                                timedelta(days=1))
    assert [(r["Descriptor"], r["Bin"]) for r in saved.distribution] == [
        ("brightness", "0.4"), ("format", "png")]  # only what the baseline range held
    loaded = load_baseline(docs)
    assert loaded.kind == "pinned" and loaded.start == start and loaded.end == end
    unpin(docs)
    assert load_baseline(docs).kind == "rolling"


def test_pin_refuses_an_empty_or_backwards_range() -> None:
    docs = Documents()
    with pytest.raises(PinRefused, match="DRIFT_MIN_IMAGES=30"):
        pin(FakeRunner(5), docs, SETTINGS, start=NOW - timedelta(days=1), end=NOW, now=NOW)
    with pytest.raises(PinRefused):
        pin(FakeRunner(100), docs, SETTINGS, start=NOW, end=NOW - timedelta(days=1), now=NOW)
    assert docs.docs == {}
