"""Model versions of the Vision emulator, switchable at run time to rehearse a model update.

The service answers ``modelVersion`` and may move ``latest`` to a new model behind the same API;
results change without any error. Here each version is a calibration of what the detectors
computed: a temperature ``T`` on the logit of every word and person confidence
(``sigmoid(logit(c) / T)``), and an OCR floor below which words are not reported. ``T = 1`` and no
floor leave the computed confidences as they are (the GA model); the rehearsal version is less
sure of everything, as a recalibrated model can be. ``PUT /admin/model`` moves ``latest``.

The rehearsal version is this emulator's own; it names no real service model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devstack.vision.config import MODEL_VERSION

REHEARSAL_VERSION = "2026-11-01-preview"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    temperature: float = 1.0
    ocr_min_confidence: float = 0.0

    def calibrate(self, confidence: float) -> float:
        if self.temperature == 1.0:
            return confidence
        c = min(max(confidence, 1e-6), 1 - 1e-6)
        logit = math.log(c / (1 - c)) / self.temperature
        return 1 / (1 + math.exp(-logit))

    def apply(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as this model reports it (calibrated confidences, ``modelVersion``)."""
        result["modelVersion"] = self.version
        for block in result.get("readResult", {}).get("blocks", []):
            for line in block.get("lines", []):
                words = []
                for word in line.get("words", []):
                    word["confidence"] = round(self.calibrate(word["confidence"]), 3)
                    if word["confidence"] >= self.ocr_min_confidence:
                        words.append(word)
                line["words"] = words
        for person in result.get("peopleResult", {}).get("values", []):
            person["confidence"] = round(self.calibrate(person["confidence"]), 4)
        return result


CATALOG: Mapping[str, ModelVersion] = {
    MODEL_VERSION: ModelVersion(MODEL_VERSION),
    REHEARSAL_VERSION: ModelVersion(REHEARSAL_VERSION, temperature=2.0, ocr_min_confidence=0.3),
}


class ModelSelector:
    """Which version ``latest`` means right now; thread-safe (requests run in a pool)."""

    def __init__(self, latest: str = MODEL_VERSION) -> None:
        self._lock = threading.Lock()
        self._latest = CATALOG[latest]

    @property
    def latest(self) -> ModelVersion:
        with self._lock:
            return self._latest

    def resolve(self, requested: str) -> ModelVersion:
        """The model for a request's ``model-version`` (``params`` already checked it)."""
        return self.latest if requested == "latest" else CATALOG[requested]

    def set_latest(self, version: str) -> ModelVersion:
        model = CATALOG[version]
        with self._lock:
            self._latest = model
        return model

    def snapshot(self) -> dict[str, Any]:
        return {"latest": self.latest.version, "versions": sorted(CATALOG)}


def is_known(version: str) -> bool:
    return version in CATALOG


__all__ = ["CATALOG", "REHEARSAL_VERSION", "ModelSelector", "ModelVersion", "is_known"]
