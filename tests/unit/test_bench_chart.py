"""The benchmarks' SVG charts: well-formed, and drawn to scale from the numbers given."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _chart  # the benchmarks' own folder, put on sys.path above

NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314  (our own output, not untrusted XML)


def segment_rects(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iterfind(".//svg:rect", NS) if r.find("svg:title", NS) is not None]


def test_bars_are_to_scale_and_segments_keep_their_colour() -> None:
    svg = _chart.bars(
        'Preprocessing "24 MP" <JPEG>',
        "ms",
        [
            _chart.Bar("naive", [("naive", 600.0)]),
            _chart.Bar("ours", [("decode", 150.0), ("resample", 75.0), ("encode", 15.0)]),
        ],
        [_chart.Mark("4x target", 150.0)],
    )
    root = parse(svg)  # the quotes and angle brackets in the title were escaped
    assert root.get("aria-label") == 'Preprocessing "24 MP" <JPEG>'
    rects = segment_rects(root)
    widths = {r.find("svg:title", NS).text: float(r.get("width")) for r in rects}
    assert widths["naive: 600 ms"] == pytest.approx(4 * widths["decode: 150 ms"], abs=0.2)
    assert widths["decode: 150 ms"] == pytest.approx(2 * widths["resample: 75 ms"], abs=0.2)
    # the mark sits where a 150 ms bar would end
    mark = root.find(".//svg:line", NS)
    assert mark is not None
    naive = rects[0]
    x0 = float(naive.get("x"))
    assert float(mark.get("x1")) - x0 == pytest.approx(widths["decode: 150 ms"], abs=0.2)
    assert len({r.get("fill") for r in rects}) == 4  # one colour per segment name


def test_lines_scale_to_nice_ticks_and_draw_the_limit() -> None:
    svg = _chart.lines(
        "Goodput",
        "s",
        "per second",
        [_chart.Series("ours: ok/s", [(1, 9.0), (2, 10.0)]), _chart.Series("429/s", [(1, 0)])],
        [_chart.Mark("limit", 10.0)],
    )
    root = parse(svg)
    polylines = root.findall(".//svg:polyline", NS)
    assert len(polylines) == 2
    assert len(polylines[0].get("points", "").split()) == 2
    labels = [t.text for t in root.iterfind(".//svg:text", NS)]
    assert "limit" in labels
    assert {"0", "2", "4", "6", "8", "10", "12"} <= set(labels)  # y ticks: steps of 2 up to 12


@pytest.mark.parametrize(
    ("span", "step"), [(11.0, 2.0), (60.0, 10.0), (0.9, 0.2), (600.0, 100.0), (0.0, 1.0)]
)
def test_nice_step(span: float, step: float) -> None:
    assert _chart.nice_step(span) == pytest.approx(step)


def test_a_long_legend_wraps_instead_of_overlapping() -> None:
    names = [f"a rather long series name number {i}" for i in range(4)]
    root = parse(_chart.lines("t", "x", "y", [_chart.Series(n, [(1, 1)]) for n in names]))
    legend_y = {t.get("y") for t in root.iterfind(".//svg:text", NS) if t.text in names}
    assert len(legend_y) > 1
