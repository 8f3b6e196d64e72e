"""The benchmarks' matplotlib charts: drawn to scale from the numbers given, and written."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _chart  # the benchmarks' own folder, put on sys.path above
from matplotlib.patches import Rectangle

NS = {"svg": "http://www.w3.org/2000/svg"}


def segments(fig: _chart.Chart) -> dict[str, Rectangle]:
    """Every drawn bar segment by its id, "row label: segment name"."""
    ax = fig.axes[0]
    return {p.get_gid(): p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid()}


def test_bars_are_to_scale_and_segments_keep_their_colour() -> None:
    fig = _chart.bars(
        "Preprocessing a 24 MP JPEG",
        "ms",
        [
            _chart.Bar("naive", [("naive", 600.0)]),
            _chart.Bar("ours", [("decode", 150.0), ("resample", 75.0), ("encode", 15.0)]),
            _chart.Bar("ours again", [("decode", 140.0), ("encode", 10.0)]),
        ],
        [_chart.Mark("4x target", 150.0)],
    )
    bars = segments(fig)
    assert len(bars) == 6
    assert bars["naive: naive"].get_width() == pytest.approx(600.0)
    assert bars["ours: decode"].get_width() == pytest.approx(150.0)
    # stacked: each segment starts where the previous one ended
    assert bars["ours: resample"].get_x() == pytest.approx(150.0)
    assert bars["ours: encode"].get_x() == pytest.approx(225.0)
    # one colour per segment name, the same name the same colour in every row
    assert bars["ours: decode"].get_facecolor() == bars["ours again: decode"].get_facecolor()
    assert len({bars[k].get_facecolor() for k in bars}) == 4
    # rows top to bottom in the given order
    assert bars["naive: naive"].get_y() < bars["ours: decode"].get_y()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["naive", "ours", "ours again"]
    # the mark is a vertical line at its value, labelled
    (mark,) = ax.lines
    assert list(mark.get_xdata()) == [150.0, 150.0]
    texts = {t.get_text() for t in ax.texts}
    assert {"4x target", "600 ms", "240 ms", "150 ms"} <= texts
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "naive", "decode", "resample", "encode"]


def test_lines_draw_each_series_and_the_limit() -> None:
    fig = _chart.lines(
        "Goodput",
        "s",
        "per second",
        [_chart.Series("ours: ok/s", [(1, 9.0), (2, 10.0)]), _chart.Series("429/s", [(1, 0)])],
        [_chart.Mark("limit", 10.0)],
    )
    ax = fig.axes[0]
    drawn = {str(line.get_label()): line for line in ax.lines}
    marks = [drawn.pop(label) for label in list(drawn) if label.startswith("_")]  # unlabelled
    assert sorted(drawn) == ["429/s", "ours: ok/s"]
    assert list(drawn["ours: ok/s"].get_xdata()) == [1, 2]
    assert list(drawn["ours: ok/s"].get_ydata()) == [9.0, 10.0]
    assert list(drawn["429/s"].get_ydata()) == [0]
    assert [list(line.get_ydata()) for line in marks] == [[10.0, 10.0]]
    assert "limit" in {t.get_text() for t in ax.texts}
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top > 10.0  # the limit is not drawn on the frame's edge


def test_write_saves_a_reproducible_svg(tmp_path: Path) -> None:
    def draw() -> _chart.Chart:
        return _chart.bars("Status", "ms", [_chart.Bar("p50", [("p50", 12.0)])],
                           [_chart.Mark("target", 20.0)])

    first = _chart.write(tmp_path / "a" / "chart.svg", draw())
    second = _chart.write(tmp_path / "b" / "chart.svg", draw())
    text = first.read_text(encoding="utf-8")
    root = ET.fromstring(text)  # noqa: S314  (our own output, not untrusted XML)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = [t.text for t in root.iterfind(".//svg:text", NS)]
    assert "Status" in labels and "target" in labels  # text kept as text, not outlines
    assert text == second.read_text(encoding="utf-8")  # no date, fixed ids


def test_write_picks_the_format_from_the_suffix(tmp_path: Path) -> None:
    png = _chart.write(tmp_path / "chart.png", _chart.lines("t", "x", "y", []))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
