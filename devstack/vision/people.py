"""The ``people`` feature: person boxes with a confidence, from three offline detectors.

1. **BlazePose** (see ``pose``): a neural person detector plus a landmark model that confirms
   the person and segments them. Its box is the segmentation's extent and its confidence
   ``detector score x presence``, both straight from the models. It finds seated, partly hidden
   and masked people that the classic detectors below miss, but only people large enough for a
   224 px view of the whole image (roughly a tenth of the image height or more).
2. **HOG full-body detector** (Dalal-Triggs, OpenCV's default people SVM): finds upright,
   mostly-visible bodies, also small ones. Its score is the SVM decision value ("weight");
   OpenCV accepts anything above 0, which gives many false boxes on textured scenes (printed
   text, fences, foliage score up to ~1.2). We map it with a logistic calibrated so that a
   decision value of 1.3 means 50 %: ``sigmoid(3 * (w - 1.3))`` (1.0 -> 29 %, 1.5 -> 65 %,
   2.0 -> 89 %). This is a hand-set calibration, not a learned one.
3. **Haar frontal-face cascade** (Viola-Jones): finds small faces of people whose body is cut
   off. A face is turned into a *person* box with adult body proportions: 3 face-widths wide
   centred on the face, from 0.35 face-heights above the face box down to 8 face-heights below
   its top (a standing adult is ~7.5 heads tall, the cascade box is a little smaller than the
   head), clipped to the image. Its confidence combines the cascade's two signals: the number of
   overlapping raw detections supporting the face (``detectMultiScale2`` neighbour count *n*;
   true faces collect dozens, noise one to three) and the final-stage margin
   (``detectMultiScale3`` level weight *lw*): ``(1 - exp(-n / 10)) * sigmoid(lw)``.

A face whose centre lies in the upper third of a HOG body box is the same person: the two are
fused (HOG box, noisy-or of both confidences). A HOG or face candidate that overlaps a BlazePose
person (IoU >= 0.5, or a face centre inside its box) is that person and is dropped: the
landmark model has already judged it. Remaining boxes go through non-maximum suppression
(IoU 0.5). Low-confidence people are returned too, as the service does, down to a 0.1 floor.
Detection runs on a copy downscaled to ``max_side``; boxes are scaled back to the original image.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from devstack.vision.pose import PoseDetector

MIN_REPORTED_CONFIDENCE = 0.1
#: HOG decision value mapped to 50 % (text on a plain sign scores ~1.2; see the docstring).
HOG_MIDPOINT = 1.3
NMS_IOU = 0.5


@dataclass(frozen=True, slots=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0

    def scaled(self, factor: float) -> Box:
        return Box(self.x * factor, self.y * factor, self.w * factor, self.h * factor)


@dataclass(frozen=True, slots=True)
class Person:
    box: Box
    confidence: float
    source: str  # "pose", "hog", "face" or "hog+face"; for tests and docs, not returned


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def hog_confidence(weight: float) -> float:
    return sigmoid(3.0 * (weight - HOG_MIDPOINT))


def face_confidence(neighbours: int, level_weight: float) -> float:
    return (1.0 - math.exp(-neighbours / 10.0)) * sigmoid(level_weight)


def person_from_face(face: Box, image_w: int, image_h: int) -> Box:
    cx = face.x + face.w / 2
    left = max(0.0, cx - 1.5 * face.w)
    right = min(float(image_w), cx + 1.5 * face.w)
    top = max(0.0, face.y - 0.35 * face.h)
    bottom = min(float(image_h), face.y + 8.0 * face.h)
    return Box(left, top, right - left, bottom - top)


def _inside(x: float, y: float, box: Box) -> bool:
    return box.x <= x <= box.x + box.w and box.y <= y <= box.y + box.h


def fuse_and_suppress(
    hog: list[Person], faces: list[tuple[Box, Person]], pose: tuple[Person, ...] = ()
) -> list[Person]:
    """Fuse faces into HOG bodies that contain them, defer to BlazePose, then NMS.

    Highest confidence first.
    """
    hog = [h for h in hog if all(h.box.iou(p.box) < NMS_IOU for p in pose)]
    faces = [
        (face, person)
        for face, person in faces
        if not any(_inside(face.x + face.w / 2, face.y + face.h / 2, p.box) for p in pose)
        and all(person.box.iou(p.box) < NMS_IOU for p in pose)
    ]
    people: list[Person] = list(pose)
    used_faces: set[int] = set()
    for body in hog:
        b, merged = body.box, body
        for index, (face, face_person) in enumerate(faces):
            cx, cy = face.x + face.w / 2, face.y + face.h / 2
            if index not in used_faces and b.x <= cx <= b.x + b.w and b.y <= cy <= b.y + b.h / 3:
                used_faces.add(index)
                fused = 1 - (1 - body.confidence) * (1 - face_person.confidence)
                merged = Person(b, fused, "hog+face")
                break
        people.append(merged)
    people.extend(p for i, (_, p) in enumerate(faces) if i not in used_faces)
    people.sort(key=lambda p: p.confidence, reverse=True)
    kept: list[Person] = []
    for candidate in people:
        if candidate.confidence < MIN_REPORTED_CONFIDENCE:
            continue
        if all(candidate.box.iou(k.box) < NMS_IOU for k in kept):
            kept.append(candidate)
    return kept


class PeopleDetector:
    """Thread-safe: OpenCV detector objects are kept per worker thread.

    ``pose`` is the BlazePose stage; tests of the classic stages alone pass ``None``.
    """

    def __init__(self, max_side: int = 1024, *, pose: PoseDetector | None) -> None:
        self.max_side = max_side
        self.pose = pose
        self._local = threading.local()

    def _detectors(self) -> tuple[Any, Any]:
        if not hasattr(self._local, "hog"):
            import cv2

            hog = cv2.HOGDescriptor()
            svm = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32)
            hog.setSVMDetector(svm)
            cascade_dir: str = cv2.data.haarcascades  # type: ignore[attr-defined]
            cascade = cv2.CascadeClassifier(cascade_dir + "haarcascade_frontalface_default.xml")
            if cascade.empty():
                raise RuntimeError("OpenCV's frontal face cascade could not be loaded")
            self._local.hog, self._local.cascade = hog, cascade
        return self._local.hog, self._local.cascade

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Person]:
        """People in ``rgb``'s pixel space."""
        import cv2

        from devstack.vision.imaging import downscaled

        small, factor = downscaled(rgb, self.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        hog, cascade = self._detectors()
        hog_people: list[Person] = []
        if gray.shape[0] >= 128 and gray.shape[1] >= 64:
            rects, weights = hog.detectMultiScale(gray)
            for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=True):
                box = Box(float(x), float(y), float(w), float(h)).scaled(factor)
                hog_people.append(Person(box, hog_confidence(float(weight)), "hog"))
        faces: list[tuple[Box, Person]] = []
        equalized = cv2.equalizeHist(gray)
        params: dict[str, Any] = {"scaleFactor": 1.1, "minNeighbors": 1, "minSize": (24, 24)}
        rects2, neighbours = cascade.detectMultiScale2(equalized, **params)
        rects3, _levels, level_weights = cascade.detectMultiScale3(
            equalized, outputRejectLevels=True, **params
        )
        margins = {
            tuple(int(v) for v in r): float(lw)
            for r, lw in zip(rects3, np.ravel(level_weights), strict=True)
        }
        height, width = rgb.shape[:2]
        for rect, count in zip(rects2, np.ravel(neighbours), strict=True):
            key = tuple(int(v) for v in rect)
            margin = margins.get(key, _nearest_margin(key, margins))
            face = Box(*(float(v) for v in rect)).scaled(factor)
            confidence = face_confidence(int(count), margin)
            faces.append((face, Person(person_from_face(face, width, height), confidence, "face")))
        pose_people = tuple(
            Person(Box(*found.box).scaled(factor), found.confidence, "pose")
            for found in (self.pose.detect(small) if self.pose is not None else [])
        )
        return fuse_and_suppress(hog_people, faces, pose_people)


def _nearest_margin(key: tuple[int, ...], margins: dict[tuple[int, ...], float]) -> float:
    """Level weight of the most overlapping grouped rectangle (the two calls group alike)."""
    if not margins:
        return 0.0
    target = Box(*(float(v) for v in key))
    best = max(margins, key=lambda r: target.iou(Box(*(float(v) for v in r))))
    return margins[best] if target.iou(Box(*(float(v) for v in best))) > 0.5 else 0.0


def people_result(
    people: list[Person], *, scale_x: float, scale_y: float, width: int, height: int
) -> dict[str, Any]:
    values = []
    for person in people:
        b = person.box
        x, y = max(0, round(b.x * scale_x)), max(0, round(b.y * scale_y))
        w = min(width - x, round(b.w * scale_x))
        h = min(height - y, round(b.h * scale_y))
        box = {"x": x, "y": y, "w": w, "h": h}
        values.append({"boundingBox": box, "confidence": round(person.confidence, 4)})
    return {"values": values}
