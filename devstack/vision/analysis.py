"""Runs the requested features on one image, off the event loop, with bounded concurrency.

The OCR engine and the BlazePose models are loaded once, when the :class:`Analyzer` is built
(app startup), never per request. CPU work runs in a thread pool of ``max_concurrency``
workers; every field of the result is computed from the image (see ``ocr``, ``people``,
``pose``, ``smartcrops``), nothing is made up.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devstack.vision import imaging
from devstack.vision.config import MODEL_VERSION, VisionConfig
from devstack.vision.ocr import OcrEngine, read_result
from devstack.vision.params import AnalyzeParams
from devstack.vision.people import PeopleDetector, people_result
from devstack.vision.pose import PoseDetector
from devstack.vision.smartcrops import Subject, smart_crops_result


class Analyzer:
    def __init__(self, config: VisionConfig, *, ocr: OcrEngine | None = None) -> None:
        self._max_decode_pixels = config.max_decode_pixels
        self._detect_max_side = config.detect_max_side
        self.ocr = ocr or OcrEngine(threads=config.ocr_threads)
        self.pose = PoseDetector()
        self.people = PeopleDetector(config.detect_max_side, pose=self.pose)
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix="vision-cv"
        )

    def analyze_sync(self, data: bytes, params: AnalyzeParams) -> dict[str, Any]:
        image = imaging.decode(data, max_decode_pixels=self._max_decode_pixels)
        result: dict[str, Any] = {
            "modelVersion": MODEL_VERSION,
            "metadata": {"width": image.width, "height": image.height},
        }
        sx, sy = image.scale_x, image.scale_y
        if "read" in params.features:
            lines = self.ocr.lines(image.pixels)
            result["readResult"] = read_result(image.pixels, lines, scale_x=sx, scale_y=sy)
        subjects: list[Subject] | None = None
        if "people" in params.features:
            found = self.people.detect(image.pixels)
            result["peopleResult"] = people_result(
                found, scale_x=sx, scale_y=sy, width=image.width, height=image.height
            )
            subjects = [
                (p.box.x, p.box.y, p.box.w, p.box.h, p.confidence)
                for p in found
                if p.source == "pose"
            ]
        if "smartCrops" in params.features:
            if subjects is None:  # BlazePose alone: the crops' subjects, ~30 ms
                small, factor = imaging.downscaled(image.pixels, self._detect_max_side)
                subjects = [
                    (x * factor, y * factor, w * factor, h * factor, person.confidence)
                    for person in self.pose.detect(small)
                    for x, y, w, h in [person.box]
                ]
            result["smartCropsResult"] = smart_crops_result(
                image.pixels, image.width, image.height, params.aspect_ratios, subjects
            )
        return result

    async def analyze(self, data: bytes, params: AnalyzeParams) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.analyze_sync, data, params)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
