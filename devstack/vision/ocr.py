"""The ``read`` feature: printed text recognition with rapidocr (PP-OCRv4 ONNX models).

rapidocr finds text boxes, then recognises each box: a quadrilateral, the text, and, per
character, the recogniser's confidence and its position along the box (the CTC column that
emitted it, which rapidocr reports with ``return_word_box``). Three post-processing steps bring
that closer to the service's lines and words, without inventing anything:

* **Lines.** The detector sometimes cuts one printed line into two boxes, even overlapping ones
  that both contain a glyph at the cut. Boxes on the same row (vertical overlap >= 60 % of the
  smaller height) that overlap or are separated by less than 1.5 line heights are merged, and the
  merged region is *recognised again* as one line (rapidocr without detection). If that second
  pass reads nothing, the boxes' own texts and characters are joined with a space.
* **Words.** The recogniser often omits the space between words ("INVOICE2026-1187"). The line
  is cut out of the image (perspective-rectified), binarised (Otsu; the minority class is ink)
  and projected onto its length; ink-free runs clearly wider than the line's letter gaps
  separate words (see ``word_segments`` for the rule). Each recognised character is assigned to
  the ink segment at its position (bounded by the recogniser's spaces, see ``_space_bounds``),
  and a new word starts where the segment changes or where the recogniser itself emitted a
  space. Text of a line is its words joined by single spaces.
* **Word boxes and confidences.** A word's box is its segments' extent along the line (a word
  split from its neighbour only by the recogniser's space, inside one segment, ends half way
  between the neighbouring characters), sliced out of the line quadrilateral (top and bottom
  edges interpolated separately, so slanted lines stay slanted). A word's confidence is the mean
  of its characters' recognition confidences, reported with three decimals rounded down and at
  most 0.999. When rapidocr reports no character positions
  (it did not for a line), the line is split on its spaces by character offsets and each word
  gets the line's score.

The engine is loaded once and, because each call mutates engine state, used under a lock.
An image without ink (every pixel within ``INKLESS_RANGE`` grey levels of the others) has no
edge for the detector to find: it reads as no text without running the engine, which would
otherwise upscale it (shorter side to 736 px) and search it in vain, ~0.35 s for 200 x 80 px.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]  # top-left, top-right, bottom-right, bottom-left

SAME_ROW_OVERLAP = 0.6
MAX_GAP_IN_HEIGHTS = 1.5
#: A word space is at least this many ink heights wide (printed letter gaps stay below ~0.15,
#: word spaces are ~0.25-0.5 of the line's ink height) ...
MIN_WORD_GAP = 0.2
#: ... and at least this many times the line's median gap between ink runs (mostly letter gaps).
GAP_TO_LETTER_GAP = 2.0
MAX_REPORTED_CONFIDENCE = 0.999
#: Images whose channels all span at most this many levels carry no text (see the docstring).
INKLESS_RANGE = 2


@dataclass(frozen=True, slots=True)
class Glyph:
    char: str
    position: float  # centre along the line, 0 = left edge, 1 = right edge of the quad
    confidence: float


@dataclass(frozen=True, slots=True)
class Line:
    quad: Quad
    text: str
    score: float  # the recogniser's mean character confidence for the whole line
    glyphs: tuple[Glyph, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    quad: Quad
    confidence: float


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
    for box in sorted(boxes, key=lambda b: min(x for x, _ in b.quad)):
        for group in groups:
            if _continues(group[-1].quad, box.quad):
                group.append(box)
                break
        else:
            groups.append([box])
    groups.sort(key=lambda g: (sum(_vertical_span(g[0].quad)) / 2, g[0].quad[0][0]))
    return groups


def merged_quad(group: Sequence[Line]) -> Quad:
    first, last = group[0].quad, group[-1].quad
    return first[0], last[1], last[2], first[3]


def position_on(quad: Quad, point: Point) -> float:
    """Where ``point`` projects onto the quad's top edge, 0 at its left and 1 at its right."""
    (x0, y0), (x1, y1) = quad[0], quad[1]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 <= 0:
        return 0.5
    return float(np.clip(((point[0] - x0) * dx + (point[1] - y0) * dy) / length2, 0.0, 1.0))


def _glyphs(quad: Quad, chars: Sequence[Any], boxes: Sequence[Any], confs: Sequence[Any]) -> tuple[
    Glyph, ...
]:
    """Characters with their positions, from rapidocr's per-character boxes (image pixels)."""
    if not (len(chars) == len(boxes) == len(confs)) or not chars:
        return ()
    found = []
    for char, box, conf in zip(chars, boxes, confs, strict=True):
        cx = sum(float(p[0]) for p in box) / len(box)
        cy = sum(float(p[1]) for p in box) / len(box)
        found.append(Glyph(str(char), position_on(quad, (cx, cy)), float(conf)))
    return tuple(found)


def _joined(group: Sequence[Line], quad: Quad) -> Line:
    """The group's boxes as one line, without a second recognition pass."""
    glyphs: list[Glyph] = []
    for index, line in enumerate(group):
        if index:
            glyphs.append(Glyph(" ", glyphs[-1].position if glyphs else 0.0, 1.0))
        for glyph in line.glyphs or ():
            centre = _point_at(line.quad, glyph.position)
            glyphs.append(Glyph(glyph.char, position_on(quad, centre), glyph.confidence))
    complete = all(line.glyphs for line in group)
    text = " ".join(line.text for line in group)
    return Line(quad, text, min(line.score for line in group), tuple(glyphs) if complete else ())


def _point_at(quad: Quad, position: float) -> Point:
    top, bottom = _lerp(quad[0], quad[1], position), _lerp(quad[3], quad[2], position)
    return (top[0] + bottom[0]) / 2, (top[1] + bottom[1]) / 2


def _session_holders(engine: Any) -> tuple[Any, Any, Any]:
    """rapidocr's detector, classifier and recogniser wrappers, each holding its ``session``."""
    return engine.text_det.infer, engine.text_cls.infer, engine.text_rec.session


def _tuned(engine: Any, threads: int) -> None:
    """Rebuild the engine's three ONNX sessions with spinning off and ``threads`` intra-op
    threads.

    onnxruntime's worker threads spin after each operator by default. Alone on the box that
    burns a core for nothing; beside other stacks it steals their CPU. Measured on the six
    samples (all features, 2 cores): 3.95 CPU-s in 2.11 s with spinning, 3.25 CPU-s in 1.88 s
    without. A second intra-op thread makes one call ~25 % faster on an idle box but costs
    15-27 % more CPU per call (text page: 360 CPU-ms in 216 ms with two, 298 in 298 ms with
    one); on a box running several stacks that CPU is what the others wait for. rapidocr has no
    option for either, so its sessions are rebuilt from their own models.
    """
    import onnxruntime  # with the engine: its import costs time

    for part in _session_holders(engine):
        old = part.session
        options = old.get_session_options()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        part.session = onnxruntime.InferenceSession(
            old._model_path, sess_options=options, providers=old.get_providers()
        )


class OcrEngine:
    def __init__(self, threads: int = 1) -> None:
        from rapidocr_onnxruntime import RapidOCR  # ~0.3 s: loads three ONNX models

        self._engine: Any = RapidOCR()
        _tuned(self._engine, threads)
        self._lock = threading.Lock()

    def session_settings(self) -> list[tuple[str, int]]:
        """Each ONNX session's intra-op spinning entry ("0": off) and intra-op thread count."""
        settings = [part.session.get_session_options() for part in _session_holders(self._engine)]
        return [(o.get_session_config_entry("session.intra_op.allow_spinning"),
                 o.intra_op_num_threads) for o in settings]

    def boxes(self, rgb: npt.NDArray[np.uint8]) -> list[Line]:
        """rapidocr's raw detections, in ``rgb``'s pixel space (none on an inkless image)."""
        return [] if inkless(rgb) else self.engine_boxes(rgb)

    def engine_boxes(self, rgb: npt.NDArray[np.uint8]) -> list[Line]:
        """What the engine itself detects and reads in ``rgb``, without the inkless shortcut."""
        with self._lock:
            result, _elapsed = self._engine(_bgr(rgb), return_word_box=True)
        found: list[Line] = []
        for entry in result or []:
            box, text, score = entry[0], entry[1], entry[2]
            if not str(text).strip():
                continue
            tl, tr, br, bl = (tuple(float(v) for v in point) for point in box)
            quad: Quad = ((tl[0], tl[1]), (tr[0], tr[1]), (br[0], br[1]), (bl[0], bl[1]))
            glyphs = _glyphs(quad, entry[4], entry[3], entry[5]) if len(entry) >= 6 else ()
            found.append(Line(quad, str(text), float(score), glyphs))
        return found

    def recognise(self, rgb: npt.NDArray[np.uint8], quad: Quad) -> Line | None:
        """Recognition only, treating the region of ``rgb`` around ``quad`` as one line."""
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = _crop_bounds(quad, width, height)
        with self._lock:
            results, _elapsed = self._engine.text_rec([_bgr(rgb[y0:y1, x0:x1])], True)
        if not results:
            return None
        text, score = str(results[0][0]), float(results[0][1])
        if not text.strip():
            return None
        glyphs: tuple[Glyph, ...] = ()
        info = results[0][2] if len(results[0]) > 2 else None
        if info is not None:
            columns, conf_list = float(info[0]), list(info[4])
            positions = [c for word_cols in info[2] for c in word_cols]
            if len(positions) == len(conf_list) == len(text) and columns > 0:
                # Column fractions are of the crop (the quad plus a margin): map them to the quad.
                glyphs = tuple(
                    Glyph(
                        char,
                        position_on(quad, (x0 + (col + 0.5) / columns * (x1 - x0), _mid_y(quad))),
                        float(conf),
                    )
                    for char, col, conf in zip(text, positions, conf_list, strict=True)
                )
        return Line(quad, text.strip(), score, glyphs)

    def lines(self, rgb: npt.NDArray[np.uint8]) -> list[Line]:
        """Printed lines in reading order, coordinates in ``rgb``'s pixel space."""
        lines: list[Line] = []
        for group in group_boxes(self.boxes(rgb)):
            if len(group) == 1:
                lines.append(group[0])
                continue
            quad = merged_quad(group)
            second_pass = self.recognise(rgb, quad)
            lines.append(second_pass if second_pass is not None else _joined(group, quad))
        return lines


def inkless(rgb: npt.NDArray[np.uint8]) -> bool:
    """True when no channel of ``rgb`` spans more than ``INKLESS_RANGE`` levels."""
    flat = rgb.reshape(-1, rgb.shape[-1]) if rgb.ndim == 3 else rgb.reshape(-1, 1)
    return bool(flat.size == 0 or (np.ptp(flat, axis=0) <= INKLESS_RANGE).all())


def _bgr(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _crop_bounds(quad: Quad, width: int, height: int) -> tuple[int, int, int, int]:
    """Axis-aligned crop around ``quad`` with a margin of 10 % of its height."""
    xs, ys = [x for x, _ in quad], [y for _, y in quad]
    pad = 0.1 * (max(ys) - min(ys))
    x0, x1 = max(0, int(min(xs) - pad)), min(width, int(max(xs) + pad) + 1)
    y0, y1 = max(0, int(min(ys) - pad)), min(height, int(max(ys) + pad) + 1)
    return x0, y0, x1, y1


def _mid_y(quad: Quad) -> float:
    return sum(y for _, y in quad) / 4


def _lerp(a: Point, b: Point, t: float) -> Point:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _slice(quad: Quad, start: float, end: float) -> Quad:
    tl, tr, br, bl = quad
    return _lerp(tl, tr, start), _lerp(tl, tr, end), _lerp(bl, br, end), _lerp(bl, br, start)


def word_quads(quad: Quad, text: str) -> list[tuple[str, Quad]]:
    """Split a line quadrilateral into word quadrilaterals by character offsets."""
    total = len(text)
    words: list[tuple[str, Quad]] = []
    index = 0
    for word in text.split():
        start = text.index(word, index)
        end = start + len(word)
        index = end
        words.append((word, _slice(quad, start / total, end / total)))
    return words


def _ink_runs(
    rgb: npt.NDArray[np.uint8], quad: Quad
) -> tuple[list[tuple[int, int]], float, int]:
    """Runs of inked columns of the rectified line, its ink height and its width in pixels."""
    import cv2

    tl, tr, br, bl = (np.asarray(p, dtype=np.float32) for p in quad)
    width = round(float(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))))
    height = round(float(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))))
    if width < 2 or height < 2:
        return [], 0.0, width
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(np.stack([tl, tr, br, bl]), target)
    strip = cv2.warpPerspective(rgb, warp, (width, height), flags=cv2.INTER_LINEAR)
    gray = cv2.cvtColor(strip, cv2.COLOR_RGB2GRAY)
    _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ink = binary == 0 if (binary == 0).mean() <= 0.5 else binary == 1
    rows = np.flatnonzero(ink.sum(axis=1) > 0)
    columns = np.flatnonzero(ink.sum(axis=0) > round(0.02 * height))
    if rows.size == 0 or columns.size == 0:
        return [], 0.0, width
    runs: list[tuple[int, int]] = []
    start = previous = int(columns[0])
    for column in (int(c) for c in columns[1:]):
        if column > previous + 1:
            runs.append((start, previous))
            start = column
        previous = column
    runs.append((start, previous))
    return runs, float(rows[-1] - rows[0] + 1), width


def word_segments(rgb: npt.NDArray[np.uint8], line: Line) -> list[tuple[float, float]]:
    """Ink along the line, as (start, end) positions in 0..1, split at word-sized gaps.

    A gap separates words when it is at least ``MIN_WORD_GAP`` ink heights and
    ``GAP_TO_LETTER_GAP`` times the line's median gap. Digits are set on a common advance
    (tabular figures), so a narrow digit ("1") carries extra whitespace that is no word space:
    half of its shortfall against the line's median character width is taken off its gaps.
    """
    runs, ink_height, width = _ink_runs(rgb, line.quad)
    if not runs:
        return []
    digit_run = [False] * len(runs)
    glyph_run = [False] * len(runs)
    for glyph in line.glyphs:
        if glyph.char.strip():
            x = glyph.position * width
            nearest = min(range(len(runs)), key=lambda i: _distance(x, runs[i]))
            glyph_run[nearest] = True
            digit_run[nearest] = digit_run[nearest] or glyph.char.isdigit()
    widths = [end - start + 1 for (start, end), g in zip(runs, glyph_run, strict=True) if g]
    typical_digit = float(np.median(widths)) if len(widths) >= 3 else 0.0

    def slack(index: int) -> float:
        run_width = runs[index][1] - runs[index][0] + 1
        return max(0.0, (typical_digit - run_width) / 2) if digit_run[index] else 0.0

    gaps = [
        runs[i + 1][0] - runs[i][1] - 1 - slack(i) - slack(i + 1) for i in range(len(runs) - 1)
    ]
    threshold = MIN_WORD_GAP * ink_height
    if gaps:
        threshold = max(threshold, GAP_TO_LETTER_GAP * float(np.median(gaps)))
    segments: list[tuple[float, float]] = []
    start = runs[0][0]
    for index, gap in enumerate(gaps):
        if gap >= threshold:
            segments.append((start / width, (runs[index][1] + 1) / width))
            start = runs[index + 1][0]
    segments.append((start / width, (runs[-1][1] + 1) / width))
    return segments


def _distance(x: float, run: tuple[int, int]) -> float:
    return 0.0 if run[0] <= x <= run[1] + 1 else min(abs(x - run[0]), abs(x - run[1] - 1))


def _segment_of(position: float, segments: Sequence[tuple[float, float]]) -> int:
    for index, (start, end) in enumerate(segments):
        if start <= position <= end:
            return index
    return min(
        range(len(segments)),
        key=lambda i: min(abs(position - segments[i][0]), abs(position - segments[i][1])),
    )


def _space_bounds(
    glyphs: Sequence[Glyph], segments: Sequence[tuple[float, float]]
) -> list[tuple[int, int]]:
    """Per glyph, the segments it may belong to, given the recogniser's spaces.

    A recognised space claims the nearest gap between segments (each gap at most once, left to
    right) if it lies within 1.5 character pitches: characters before it stay left of that gap,
    characters after it right of it. This keeps a character whose read position strays a few
    pixels across a gap on its own side of the space.
    """
    last = len(segments) - 1
    bounds = [(0, last)] * len(glyphs)
    if last == 0:
        return bounds
    gaps = [(segments[i][1] + segments[i + 1][0]) / 2 for i in range(last)]
    positions = [g.position for g in glyphs if g.char.strip()]
    steps = [b - a for a, b in itertools.pairwise(positions) if b > a]
    pitch = float(np.median(steps)) if steps else 1.0
    claimed = -1
    for index, glyph in enumerate(glyphs):
        if glyph.char.strip():
            continue
        free = range(claimed + 1, len(gaps))
        if not free:
            break
        gap = min(free, key=lambda i: abs(gaps[i] - glyph.position))
        if abs(gaps[gap] - glyph.position) > 1.5 * pitch:
            continue
        for before in range(index):
            low, high = bounds[before]
            bounds[before] = (low, min(high, gap))
        for after in range(index + 1, len(glyphs)):
            bounds[after] = (max(bounds[after][0], gap + 1), bounds[after][1])
        claimed = gap
    return bounds


def split_words(line: Line, segments: Sequence[tuple[float, float]]) -> list[Word]:
    """The line's words, from its glyphs and the ink segments along it (see the docstring)."""
    if not line.glyphs:
        return [Word(text, wquad, line.score) for text, wquad in word_quads(line.quad, line.text)]
    if not segments:  # no ink found: split on the recogniser's spaces only
        segments = [(0.0, 1.0)]
    bounds = _space_bounds(line.glyphs, segments)
    runs: list[tuple[list[Glyph], int, int]] = []  # glyphs, first and last segment index
    current: list[Glyph] = []
    current_segment = -1
    last_segment = 0
    for glyph, (lowest, highest) in zip(line.glyphs, bounds, strict=True):
        if not glyph.char.strip():
            if current:
                runs.append((current, current_segment, last_segment))
            current = []
            continue
        nearest = min(max(_segment_of(glyph.position, segments), lowest), highest)
        segment = max(nearest, last_segment)
        if current and segment != last_segment:
            runs.append((current, current_segment, last_segment))
            current = []
        if not current:
            current_segment = segment
        current.append(glyph)
        last_segment = segment
    if current:
        runs.append((current, current_segment, last_segment))
    words: list[Word] = []
    for index, (glyphs, first, last) in enumerate(runs):
        start = segments[first][0]
        end = segments[last][1]
        if index > 0 and runs[index - 1][2] == first:  # shares a segment with the previous word
            start = (runs[index - 1][0][-1].position + glyphs[0].position) / 2
        if index + 1 < len(runs) and runs[index + 1][1] == last:
            end = (glyphs[-1].position + runs[index + 1][0][0].position) / 2
        text = "".join(g.char for g in glyphs)
        confidence = sum(g.confidence for g in glyphs) / len(glyphs)
        words.append(Word(text, _slice(line.quad, start, end), confidence))
    return words


def reported_confidence(value: float) -> float:
    """Three decimals like the service, rounded down and below certainty.

    Recogniser probabilities saturate at 0.9999+; the service reports words below 1 (its own
    SDK tests assert ``0 < confidence < 1``), so 0.9999 is reported as 0.999, never 1.0.
    """
    return min(MAX_REPORTED_CONFIDENCE, math.floor(max(0.0, value) * 1000) / 1000)


def _polygon(quad: Quad, sx: float, sy: float) -> list[dict[str, int]]:
    return [{"x": round(x * sx), "y": round(y * sy)} for x, y in quad]


def read_result(
    rgb: npt.NDArray[np.uint8] | None,
    lines: Sequence[Line],
    *,
    scale_x: float,
    scale_y: float,
) -> dict[str, Any]:
    """The service's ``readResult``: one block holding every line (none when no text).

    ``rgb`` is the image the lines were read from (for the word gaps); ``None`` skips the gap
    analysis and splits on the recogniser's spaces only.
    """
    out_lines = []
    for line in lines:
        segments = word_segments(rgb, line) if rgb is not None else []
        words = split_words(line, segments)
        if not words:
            continue
        out_lines.append(
            {
                "text": " ".join(w.text for w in words),
                "boundingPolygon": _polygon(line.quad, scale_x, scale_y),
                "words": [
                    {
                        "text": w.text,
                        "boundingPolygon": _polygon(w.quad, scale_x, scale_y),
                        "confidence": reported_confidence(w.confidence),
                    }
                    for w in words
                ],
            }
        )
    return {"blocks": [{"lines": out_lines}] if out_lines else []}
