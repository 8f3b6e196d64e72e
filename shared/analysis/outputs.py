"""Numbers that describe what Vision returned for one image, never what it said.

``summarize`` reads an Image Analysis 4.0 response and keeps counts and confidences only: how
many text lines and words were read and how sure the service was of them, how many people were
found and how sure, how much of the image the smart crop kept. Telemetry carries these (the
tuning review compares them across image sizes); OCR text itself stays in the result document.

This module must never return or log any recognised text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutputSummary:
    ocr_lines: int = 0
    ocr_words: int = 0
    word_confidence_mean: float | None = None
    word_confidence_min: float | None = None
    people: int = 0
    people_confidence_max: float | None = None
    #: share of the image area the first smart crop keeps (0-1), when one was asked for
    smart_crop_area_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(payload: Mapping[str, Any]) -> OutputSummary:
    """Counts and confidences of one response; tolerant of any missing or odd part."""
    lines = words = 0
    confidences: list[float] = []
    for block in _values(payload.get("readResult"), "blocks"):
        for line in _list(block.get("lines") if isinstance(block, Mapping) else None):
            if not isinstance(line, Mapping):
                continue
            lines += 1
            for word in _list(line.get("words")):
                if isinstance(word, Mapping):
                    words += 1
                    confidence = _number(word.get("confidence"))
                    if confidence is not None:
                        confidences.append(confidence)
    people = [p for p in _values(payload.get("peopleResult"), "values") if isinstance(p, Mapping)]
    people_conf = [c for c in (_number(p.get("confidence")) for p in people) if c is not None]
    return OutputSummary(
        ocr_lines=lines,
        ocr_words=words,
        word_confidence_mean=round(sum(confidences) / len(confidences), 4) if confidences
        else None,
        word_confidence_min=round(min(confidences), 4) if confidences else None,
        people=len(people),
        people_confidence_max=round(max(people_conf), 4) if people_conf else None,
        smart_crop_area_share=_crop_share(payload),
    )


def _crop_share(payload: Mapping[str, Any]) -> float | None:
    crops = [c for c in _values(payload.get("smartCropsResult"), "values")
             if isinstance(c, Mapping)]
    metadata = payload.get("metadata")
    if not crops or not isinstance(metadata, Mapping):
        return None
    box = crops[0].get("boundingBox")
    width, height = _number(metadata.get("width")), _number(metadata.get("height"))
    if not isinstance(box, Mapping) or not width or not height:
        return None
    w, h = _number(box.get("w")), _number(box.get("h"))
    if w is None or h is None:
        return None
    return round(min(1.0, max(0.0, (w * h) / (width * height))), 4)


def _values(section: object, key: str) -> Sequence[Any]:
    return _list(section.get(key)) if isinstance(section, Mapping) else ()


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


__all__ = ["OutputSummary", "summarize"]
