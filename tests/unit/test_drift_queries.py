"""The drift queries on duckdb-kql over the Monitor emulator's schema: PSI/JS per descriptor,
output-confidence shift and the model-version change, each on a stable and a moved stream."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.monitor.store import Store
from shared import telemetry as t
from shared.monitoring.logsquery import load_queries
from tests.support.telemetry_gen import Telemetry

QUERIES = load_queries()
DESC = t.IMAGE_DESCRIPTOR_ATTRIBUTES


def image(tel: Telemetry, at: datetime, i: int, *, dark: bool = False,
          version: str = "2023-10-01", confidence: float = 0.95) -> None:
    spread = (i % 5) * 0.02  # five kinds of picture, like a stream of a few cameras
    props = {
        DESC["brightness"]: str((0.2 if dark else 0.5) + spread),
        DESC["contrast"]: str(0.2 + spread / 2),
        DESC["sharpness"]: str((2.2 if dark else 3.4) + spread),
        DESC["saturation"]: str(0.3 + spread),
        DESC["aspect_ratio"]: str(1.5 if i % 2 else 1.0),
        DESC["megapixels"]: str(0.25 if i % 2 else 2.0),
        DESC["format"]: "png" if i % 3 else "jpeg",
        t.ATTR_OUTPUT_WORD_CONFIDENCE: str(confidence - spread / 4),
        t.ATTR_OUTPUT_PEOPLE_CONFIDENCE: str(confidence - spread),
        t.ATTR_MODEL_VERSION: version,
    }
    tel.request(f"op{tel.seq}", "analyzed", 500.0, at=at, **props)


def stream(moved: dict[str, Any] | None, *, count: int = 40) -> Store:
    # "now" when the rows are made, not when the module was imported: a worker may import it
    # minutes before it runs these tests, and the queries count back from the real clock
    now = datetime.now(UTC)
    tel = Telemetry(now)
    for i in range(count):  # baseline: an hour, ending an hour ago
        image(tel, now - timedelta(hours=2) + timedelta(minutes=i * 1.5), i)
    for i in range(count):  # current window: the last 10 minutes
        image(tel, now - timedelta(minutes=10) + timedelta(seconds=i * 15), i, **(moved or {}))
    store = Store(None, retention=timedelta(days=30), clock=lambda: datetime.now(UTC))
    store.ingest(tel.items)
    return store


def not_a_number(value: object) -> bool:
    """No value: null in Log Analytics, NaN from the local engine's avg over nulls."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def run(store: Store, name: str, **params: Any) -> list[dict[str, Any]]:
    result = store.query(QUERIES[name].render(params), (None, None))
    names = [c for c, _ in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


@pytest.fixture(scope="module")
def stable() -> Iterator[Store]:
    store = stream(None)
    yield store
    store.close()


@pytest.fixture(scope="module")
def darker() -> Iterator[Store]:
    store = stream({"dark": True})
    yield store
    store.close()


@pytest.fixture(scope="module")
def new_model() -> Iterator[Store]:
    store = stream({"version": "2026-11-01-preview", "confidence": 0.8})
    yield store
    store.close()


def test_a_stable_stream_has_no_input_drift(stable: Store) -> None:
    rows = {r["Descriptor"]: r for r in run(stable, "drift_input")}
    assert set(rows) == {"brightness", "contrast", "sharpness", "saturation", "aspect_ratio",
                         "megapixels", "format", "camera_model"}
    for name, row in rows.items():
        assert (row["CurrentImages"], row["BaselineImages"]) == (40, 40), name
        assert row["Psi"] == pytest.approx(0.0, abs=1e-9), name
        assert row["JsDivergence"] == pytest.approx(0.0, abs=1e-9), name
    assert rows["brightness"]["CurrentMean"] == pytest.approx(0.54)
    assert not_a_number(rows["format"]["CurrentMean"])  # categories have no mean


def test_darker_and_blurrier_moves_exactly_those_descriptors(darker: Store) -> None:
    rows = {r["Descriptor"]: r for r in run(darker, "drift_input")}
    moved = {name for name, row in rows.items() if row["Psi"] >= 0.25}
    assert moved == {"brightness", "sharpness"}
    assert rows["brightness"]["CurrentMean"] < rows["brightness"]["BaselineMean"]
    assert 0 < rows["brightness"]["JsDivergence"] <= 0.6931472
    assert rows["format"]["Psi"] == pytest.approx(0.0, abs=1e-9)


def test_too_few_images_gives_no_verdict(darker: Store) -> None:
    assert run(darker, "drift_input", minImages=41) == []


def test_baseline_window_is_a_parameter(darker: Store) -> None:
    # a baseline that ends before any data: nothing to compare with
    assert run(darker, "drift_input", baselineStart=timedelta(days=9),
               baselineEnd=timedelta(days=8)) == []


def test_output_confidence_shift_and_model_mix(stable: Store, new_model: Store) -> None:
    calm = {r["Descriptor"]: r for r in run(stable, "drift_output")}
    assert calm["word_confidence_mean"]["Shift"] == pytest.approx(0.0, abs=1e-9)
    assert calm["model_version"]["Psi"] == pytest.approx(0.0, abs=1e-9)
    moved = {r["Descriptor"]: r for r in run(new_model, "drift_output")}
    assert moved["word_confidence_mean"]["Shift"] == pytest.approx(-0.15, abs=1e-6)
    assert moved["people_confidence_max"]["Shift"] == pytest.approx(-0.15, abs=1e-6)
    assert moved["model_version"]["Psi"] > 1
    assert not_a_number(moved["model_version"]["Shift"])


def test_model_version_changed(stable: Store, new_model: Store) -> None:
    assert run(stable, "drift_model_version") == []
    [row] = run(new_model, "drift_model_version")
    assert (row["Version"], row["Previous"], row["CurrentImages"]) == (
        "2026-11-01-preview", "2023-10-01", 40)


def test_distribution_shares_per_bin(darker: Store) -> None:
    rows = run(darker, "drift_distribution")
    brightness = [r for r in rows if r["Descriptor"] == "brightness"]
    assert sum(r["CurrentShare"] for r in brightness) == pytest.approx(1.0)
    assert sum(r["BaselineShare"] for r in brightness) == pytest.approx(1.0)
    assert sum(r["Current"] for r in brightness) == 40
    # darker: the current images sit in the low bins the baseline never used
    low = {r["Bin"] for r in brightness if r["CurrentShare"] > 0}
    assert all(float(b) < 0.4 for b in low)
    assert all(r["BaselineShare"] == 0 for r in brightness if r["Bin"] in low)


def test_series_scores_each_time_bin_against_the_baseline(darker: Store) -> None:
    rows = run(darker, "drift_series", binSize=timedelta(minutes=30), minImages=10,
               baselineStart=timedelta(hours=3), baselineEnd=timedelta(minutes=30))
    brightness = {r["bin_start"]: r["Psi"] for r in rows if r["Descriptor"] == "brightness"}
    assert len(brightness) >= 2
    ordered = [brightness[k] for k in sorted(brightness)]
    assert ordered[0] < 0.25 < ordered[-1]  # the old bins match the baseline, the last does not


def test_every_drift_query_bins_the_descriptors_the_same_way() -> None:
    def block(name: str, start: str, end: str) -> str:
        text = QUERIES[name].text
        return text[text.index(start):text.index(end)]

    numeric = {block(n, "let numeric = union", "let categorical")
               for n in ("drift_input", "drift_distribution", "drift_series")}
    assert len(numeric) == 1
