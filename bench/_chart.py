"""Plain SVG charts for the benchmarks: what a reader would rather look at than read.

No plotting dependency: a chart is a few rectangles, lines and labels. Two shapes:

* ``bars``: horizontal bars, each split into named segments (e.g. ours' preprocessing stages),
  with optional vertical marks (e.g. the time a target allows);
* ``lines``: time series sharing one x axis (e.g. successful calls per second), with optional
  horizontal marks (e.g. the rate limit).

Colours come from one fixed palette by segment/series order, so the same name keeps its colour
across the charts of one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")
FONT = 'font-family="sans-serif" font-size="12"'


@dataclass(frozen=True)
class Bar:
    label: str
    segments: Sequence[tuple[str, float]]  # (segment name, value), drawn left to right


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y)


@dataclass(frozen=True)
class Mark:
    label: str
    value: float


@dataclass
class _Legend:
    names: list[str] = field(default_factory=list)

    def colour(self, name: str) -> str:
        if name not in self.names:
            self.names.append(name)
        return PALETTE[self.names.index(name) % len(PALETTE)]

    def svg(self, x: float, y: float, width: float) -> tuple[list[str], float]:
        """The legend's items in rows from (x, y); returns them and the y below the last row."""
        out, cx = [], x
        for i, name in enumerate(self.names):
            item_w = 16 + _text_width(name) + 18
            if cx > x and cx + item_w > x + width:
                cx, y = x, y + 16
            out.append(f'<rect x="{cx:.0f}" y="{y - 10}" width="12" height="12" '
                       f'fill="{PALETTE[i % len(PALETTE)]}"/>')
            out.append(f'<text x="{cx + 16:.0f}" y="{y}" {FONT}>{escape(name)}</text>')
            cx += item_w
        return out, y + 8


def _text_width(text: str) -> float:
    return 6.5 * len(text)  # 12 px sans-serif, close enough to keep labels apart


def nice_step(span: float, ticks: int = 6) -> float:
    """A 1, 2 or 5 times a power of ten that cuts ``span`` into about ``ticks`` parts."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def _document(width: float, height: float, title: str, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{_attr(title)}">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        f'<text x="10" y="20" {FONT} font-weight="bold">{escape(title)}</text>',
        *body,
        "</svg>",
        "",
    ])


def bars(title: str, unit: str, rows: Sequence[Bar], marks: Sequence[Mark] = ()) -> str:
    """Horizontal bars of segment totals, scaled to the largest total or mark."""
    label_w, plot_w, row_h = 190, 560, 26
    legend = _Legend()
    for row in rows:
        for name, _ in row.segments:
            legend.colour(name)
    legend_svg, top = legend.svg(label_w, 42, plot_w)
    top += 20
    scale_max = max([sum(v for _, v in r.segments) for r in rows] + [m.value for m in marks])
    scale = plot_w / scale_max if scale_max > 0 else 0.0
    body: list[str] = list(legend_svg)
    for i, row in enumerate(rows):
        y = top + i * row_h
        body.append(f'<text x="{label_w - 6}" y="{y + 15}" {FONT} text-anchor="end">'
                    f"{escape(row.label)}</text>")
        x = float(label_w)
        for name, value in row.segments:
            w = value * scale
            body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" '
                        f'fill="{legend.colour(name)}"><title>{escape(name)}: {value:g} {unit}'
                        "</title></rect>")
            x += w
        total = sum(v for _, v in row.segments)
        body.append(f'<text x="{x + 4:.1f}" y="{y + 15}" {FONT}>{total:.0f} {unit}</text>')
    bottom = top + len(rows) * row_h
    for mark in marks:
        x = label_w + mark.value * scale
        body.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{bottom}" '
                    'stroke="black" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{x:.1f}" y="{top - 12}" {FONT} text-anchor="middle">'
                    f"{escape(mark.label)}</text>")
    return _document(label_w + plot_w + 90, bottom + 10, title, body)


def lines(
    title: str, x_label: str, y_label: str, series: Sequence[Series], marks: Sequence[Mark] = ()
) -> str:
    """Time series on shared axes from 0, with horizontal marks (e.g. a limit)."""
    left, plot_w, plot_h = 60, 640, 260
    legend = _Legend()
    for s in series:
        legend.colour(s.name)
    legend_svg, top = legend.svg(left, 42, plot_w)
    top += 10
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + [m.value for m in marks]
    x_step = nice_step(max(xs, default=1.0))
    y_step = nice_step(max(ys, default=1.0) * 1.1)
    x_max = x_step * max(1, math.ceil(max(xs, default=1.0) / x_step))
    y_max = y_step * max(1, math.ceil(max(ys, default=1.0) * 1.1 / y_step))

    def px(x: float, y: float) -> str:
        return f"{left + x / x_max * plot_w:.1f},{top + plot_h - y / y_max * plot_h:.1f}"

    body = [
        *legend_svg,
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" {FONT} text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="14" y="{top + plot_h / 2}" {FONT} text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>',
    ]
    for i in range(round(x_max / x_step) + 1):
        body.append(f'<text x="{left + i * x_step / x_max * plot_w:.1f}" y="{top + plot_h + 16}" '
                    f'{FONT} text-anchor="middle">{i * x_step:g}</text>')
    for i in range(round(y_max / y_step) + 1):
        y = top + plot_h - i * y_step / y_max * plot_h
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" {FONT} text-anchor="end">'
                    f"{i * y_step:g}</text>")
    for mark in marks:
        y = top + plot_h - mark.value / y_max * plot_h
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                    'stroke="black" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{left + plot_w - 4}" y="{y - 4:.1f}" {FONT} text-anchor="end">'
                    f"{escape(mark.label)}</text>")
    for s in series:
        points = " ".join(px(x, y) for x, y in s.points)
        body.append(f'<polyline points="{points}" fill="none" stroke="{legend.colour(s.name)}" '
                    'stroke-width="2"/>')
    return _document(left + plot_w + 30, top + plot_h + 44, title, body)


def write(path: Path, svg: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    return path
