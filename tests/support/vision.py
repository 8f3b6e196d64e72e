"""Vision helpers shared by the client and emulator tests: a canned analyze response body, and
the emulator's key, route and headers with an analyzer whose OCR is a fast stand-in."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from devstack.vision import VisionConfig
from devstack.vision.analysis import Analyzer
from devstack.vision.ocr import Line

#: A 200 body of the analyze operation (``read`` and ``people``), with an OCR line that must
#: never reach a log.
OK_BODY: dict[str, Any] = {
    "modelVersion": "2023-10-01",
    "metadata": {"width": 640, "height": 480},
    "readResult": {
        "blocks": [{"lines": [{"text": "SECRET OCR LINE", "boundingPolygon": [], "words": []}]}]
    },
    "peopleResult": {"values": []},
}

KEY = "unit-key"
ANALYZE = "/computervision/imageanalysis:analyze"
HEADERS = {"Ocp-Apim-Subscription-Key": KEY, "Content-Type": "application/octet-stream"}


class FakeOcr:
    """Stands in for rapidocr: one fixed line, so these tests stay fast."""

    def lines(self, rgb: np.ndarray) -> list[Line]:
        return [Line(((5.0, 5.0), (45.0, 5.0), (45.0, 15.0), (5.0, 15.0)), "ok go", 0.9)]


def fast_analyzer(config: VisionConfig) -> Analyzer:
    return Analyzer(config, ocr=FakeOcr())  # type: ignore[arg-type]  # duck-typed stand-in


def png(size: tuple[int, int] = (120, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()
