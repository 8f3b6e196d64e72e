"""The ``read`` feature: printed text recognition with rapidocr (PP-OCRv4 ONNX models).

rapidocr finds text boxes, then recognises each box: a quadrilateral, the text and one
recognition score per box. Two honest post-processing steps bring that closer to the service's
lines and words, without inventing anything:

* **Lines.** The detector sometimes cuts one printed line into two boxes, even overlapping ones
  that both contain a glyph at the cut. Boxes on the same row (vertical overlap >= 60 % of the
  smaller height) that overlap or are separated by less than 1.5 line heights are merged, and the
  merged region is *recognised again* as one line (rapidocr without detection). If that second
  pass reads nothing, the boxes' own texts are joined with a space.
* **Words.** The service returns words; rapidocr does not. A line's text is split on whitespace and
  each word gets the slice of the line quadrilateral proportional to its character offsets (top
  and bottom edges interpolated separately, so slanted lines stay slanted). A word's confidence
  is its line's recognition score, since rapidocr does not score words separately.

The engine is loaded once and, because each call mutates engine state, used under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]  # top-left, top-right, bottom-right, bottom-left
Line = tuple[Quad, str, float]  # quadrilateral, text, recognition score

SAME_ROW_OVERLAP = 0.6
MAX_GAP_IN_HEIGHTS = 1.5


def _vertical_span(quad: Quad) -> tuple[float, float]:
    ys = [y for _, y in quad]
    return min(ys), max(ys)


def _continues(previous: Quad, candidate: Quad) -> bool:
    """True when ``candidate`` (further right) carries on the same printed line."""
    top_a, bottom_a = _vertical_span(previous)
    top_b, bottom_b = _vertical_span(candidate)
    height = min(bottom_a - top_a, bottom_b - top_b)
    overlap = min(bottom_a, bottom_b) - max(top_a, top_b)
    if height <= 0 or overlap < SAME_ROW_OVERLAP * height:
        return False
    gap = min(candidate[0][0], candidate[3][0]) - max(previous[1][0], previous[2][0])
    return gap <= MAX_GAP_IN_HEIGHTS * max(bottom_a - top_a, bottom_b - top_b)


def group_boxes(boxes: Sequence[Line]) -> list[list[Line]]:
    """Boxes grouped into printed lines, each group left to right, groups in reading order."""
    groups: list[list[Line]] = []
    for box in sorted(boxes, key=lambda b: min(x for x, _ in b[0])):
        for group in groups:
            if _continues(group[-1][0], box[0]):
                group.append(box)
                break
        else:
            groups.append([box])
    groups.sort(key=lambda g: (sum(_vertical_span(g[0][0])) / 2, g[0][0][0][0]))
    return groups


def merged_quad(group: Sequence[Line]) -> Quad:
    first, last = group[0][0], group[-1][0]
    return first[0], last[1], last[2], first[3]


class OcrEngine:
    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR  # ~0.3 s: loads three ONNX models

        self._engine: Any = RapidOCR()
        self._lock = threading.Lock()

    def boxes(self, rgb: npt.NDArray[np.uint8]) -> list[Line]:
        """rapidocr's raw detections, in ``rgb``'s pixel space."""
        with self._lock:
            result, _elapsed = self._engine(_bgr(rgb))
        found: list[Line] = []
        for box, text, score in result or []:
            if not str(text).strip():
                continue
            tl, tr, br, bl = (tuple(float(v) for v in point) for point in box)
            quad: Quad = ((tl[0], tl[1]), (tr[0], tr[1]), (br[0], br[1]), (bl[0], bl[1]))
            found.append((quad, str(text), float(score)))
        return found

    def recognise(self, rgb: npt.NDArray[np.uint8]) -> tuple[str, float] | None:
        """Recognition only, treating the whole image as one line."""
        with self._lock:
            result, _elapsed = self._engine(_bgr(rgb), use_det=False, use_cls=False)
        if not result:
            return None
        text, score = result[0][0], result[0][1]
        return (str(text).strip(), float(score)) if str(text).strip() else None

    def lines(self, rgb: npt.NDArray[np.uint8]) -> list[Line]:
        """Printed lines in reading order, coordinates in ``rgb``'s pixel space."""
        lines: list[Line] = []
        for group in group_boxes(self.boxes(rgb)):
            if len(group) == 1:
                lines.append(group[0])
                continue
            quad = merged_quad(group)
            second_pass = self.recognise(_crop(rgb, quad))
            if second_pass is None:
                text = " ".join(t for _, t, _ in group)
                score = min(s for _, _, s in group)
            else:
                text, score = second_pass
            lines.append((quad, text, score))
        return lines


def _bgr(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _crop(rgb: npt.NDArray[np.uint8], quad: Quad) -> npt.NDArray[np.uint8]:
    """Axis-aligned crop around ``quad`` with a margin of 10 % of its height."""
    xs, ys = [x for x, _ in quad], [y for _, y in quad]
    pad = 0.1 * (max(ys) - min(ys))
    height, width = rgb.shape[:2]
    x0, x1 = max(0, int(min(xs) - pad)), min(width, int(max(xs) + pad) + 1)
    y0, y1 = max(0, int(min(ys) - pad)), min(height, int(max(ys) + pad) + 1)
    return rgb[y0:y1, x0:x1]


def _lerp(a: Point, b: Point, t: float) -> Point:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def word_quads(quad: Quad, text: str) -> list[tuple[str, Quad]]:
    """Split a line quadrilateral into word quadrilaterals by character offsets."""
    tl, tr, br, bl = quad
    total = len(text)
    words: list[tuple[str, Quad]] = []
    index = 0
    for word in text.split():
        start = text.index(word, index)
        end = start + len(word)
        index = end
        a, b = start / total, end / total
        top_a, top_b = _lerp(tl, tr, a), _lerp(tl, tr, b)
        words.append((word, (top_a, top_b, _lerp(bl, br, b), _lerp(bl, br, a))))
    return words


def _polygon(quad: Quad, sx: float, sy: float) -> list[dict[str, int]]:
    return [{"x": round(x * sx), "y": round(y * sy)} for x, y in quad]


def read_result(lines: Sequence[Line], *, scale_x: float, scale_y: float) -> dict[str, Any]:
    """The service's ``readResult``: one block holding every line (none when no text)."""
    out_lines = [
        {
            "text": text,
            "boundingPolygon": _polygon(quad, scale_x, scale_y),
            "words": [
                {
                    "text": word,
                    "boundingPolygon": _polygon(wquad, scale_x, scale_y),
                    "confidence": round(score, 3),
                }
                for word, wquad in word_quads(quad, text)
            ],
        }
        for quad, text, score in lines
    ]
    return {"blocks": [{"lines": out_lines}] if out_lines else []}
