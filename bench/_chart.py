"""The benchmarks' charts, drawn with matplotlib (a bench-only dependency, requirements-dev.txt).

Two shapes, each returned as a matplotlib ``Figure`` that ``write`` saves (SVG for ``.svg``,
PNG for ``.png``, from the file name):

* ``bars``: horizontal bars, each split into named segments (e.g. ours' preprocessing stages),
  with optional vertical marks (e.g. the time a target allows);
* ``lines``: time series sharing one x axis (e.g. successful calls per second), with optional
  horizontal marks (e.g. the rate limit).

Colours come from one fixed palette by segment/series order, so the same name keeps its colour
across the charts of one run. Saved SVGs carry no date and a fixed id salt, so the same numbers
give the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure  # not pyplot: no global figure state, no GUI backend

#: Paul Tol's "muted" scheme: ten colours told apart also by colour-blind readers.
PALETTE = ("#332288", "#88ccee", "#44aa99", "#117733", "#999933", "#ddcc77", "#cc6677",
           "#882255", "#aa4499", "#dddddd")
_SVG_SALT = "visionops-bench"

Chart = Figure


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


class _Colours:
    """One palette colour per name, in the order names are first seen."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> str:
        if name not in self.names:
            self.names.append(name)
        return PALETTE[self.names.index(name) % len(PALETTE)]


def bars(title: str, unit: str, rows: Sequence[Bar], marks: Sequence[Mark] = ()) -> Figure:
    """Horizontal stacked bars, the first row on top, each labelled with its total."""
    colour = _Colours()
    fig = Figure(figsize=(9.0, 1.6 + 0.42 * len(rows)), layout="constrained")
    ax = fig.subplots()
    labelled: set[str] = set()
    for y, row in enumerate(rows):
        left = 0.0
        for name, value in row.segments:
            ax.barh(y, value, left=left, height=0.7, color=colour(name),
                    label=None if name in labelled else name, gid=f"{row.label}: {name}")
            labelled.add(name)
            left += value
        total = f"{left:.0f}" if left >= 100 else f"{left:.3g}"
        ax.annotate(f"{total} {unit}", (left, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=9)
    for i, mark in enumerate(marks):  # labels stacked, so marks close together stay legible
        ax.axvline(mark.value, color="black", linestyle="--", linewidth=1)
        ax.annotate(mark.label, (mark.value, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 3 + 11 * i), textcoords="offset points", ha="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [row.label for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.margins(x=0.12)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold", pad=6 + 11 * len(marks))
    if len(colour.names) > 1:
        widest = max(len(name) for name in colour.names) + 6
        fig.legend(loc="outside lower center",
                   ncols=max(1, min(len(colour.names), 5, 110 // widest)), fontsize=9,
                   frameon=False)
    return fig


def lines(
    title: str, x_label: str, y_label: str, series: Sequence[Series], marks: Sequence[Mark] = ()
) -> Figure:
    """Time series on shared axes from 0, with horizontal marks (e.g. a limit)."""
    colour = _Colours()
    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    ax = fig.subplots()
    for s in series:
        xs = [x for x, _ in s.points]
        ys = [y for _, y in s.points]
        ax.plot(xs, ys, color=colour(s.name), linewidth=1.8, label=s.name)
    for mark in marks:
        ax.axhline(mark.value, color="black", linestyle="--", linewidth=1)
        ax.annotate(mark.label, (1.0, mark.value), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=9)
    top = max([y for s in series for _, y in s.points] + [m.value for m in marks], default=0.0)
    ax.set_xlim(left=0)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)  # room above the highest line or mark
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if series:  # as many columns as fit the width (~110 characters of labels at 9 pt)
        widest = max(len(s.name) for s in series) + 6
        fig.legend(loc="outside lower center", ncols=max(1, min(len(series), 110 // widest)),
                   fontsize=9, frameon=False)
    return fig


def write(path: Path, figure: Figure) -> Path:
    """Save ``figure`` to ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": _SVG_SALT, "svg.fonttype": "none"}):
        figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    return path
