"""Person detection with BlazePose (MediaPipe's pose detector and pose landmark model), offline.

The two TensorFlow Lite models ship inside the ``mediapipe`` wheel (``modules/pose_detection`` and
``modules/pose_landmark``, Apache-2.0); LiteRT (``ai-edge-litert``) runs them. ``mediapipe``
itself is never imported (its Python deps would clash with this environment): only its model
files are read, located with ``importlib.util.find_spec`` which does not import the package.

Two stages, as in MediaPipe's pose pipeline:

1. **Detector** (224 x 224, SSD, 2,254 anchors): each anchor scores "a person's head and torso
   are here" and regresses four keypoints: hip centre, a point fixing the full-body radius,
   shoulder centre and an upper-body radius point. Scores are sigmoids of the model's logits;
   overlapping candidates are merged by score-weighted averaging (MediaPipe's weighted NMS).
2. **Landmark model** (256 x 256) on a square region of interest centred on the hip centre,
   rotated so the body points up, 2.5 body radii wide. It answers a *presence* probability (is
   there really a person in this region?) and a person segmentation mask.

A person's box is the extent of the mask's largest connected region, mapped back to the image;
its confidence is ``detector score x presence`` (both stages must agree; neither is rescaled).
The detector is trained for people whose upper body is visible: crowds of small, distant people
are beyond it, which is why ``people`` keeps the HOG and face detectors beside it.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
#: Candidates below this detector score are not examined further.
MIN_DETECTOR_SCORE = 0.3
#: MediaPipe's suppression overlap for the pose detector.
NMS_IOU = 0.3
#: Most people examined per image (the landmark stage costs ~10 ms each).
MAX_CANDIDATES = 5
#: MediaPipe's region-of-interest scale around the body circle.
ROI_SCALE = 1.25

_MODEL_FILES = {
    "detector": Path("modules/pose_detection/pose_detection.tflite"),
    "landmarks": Path("modules/pose_landmark/pose_landmark_full.tflite"),
}


class PoseModelMissing(RuntimeError):
    """The model files are not installed (``requirements-nodeps.txt`` lists their package)."""


@dataclass(frozen=True, slots=True)
class PoseCandidate:
    score: float  # detector score
    keypoints: npt.NDArray[np.float64]  # (4, 2) in image pixels


@dataclass(frozen=True, slots=True)
class PosePerson:
    box: tuple[float, float, float, float]  # x, y, w, h in image pixels
    confidence: float
    detector_score: float
    presence: float


def model_paths() -> dict[str, Path]:
    spec = importlib.util.find_spec("mediapipe")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        paths = {name: Path(location) / rel for name, rel in _MODEL_FILES.items()}
        if all(path.is_file() for path in paths.values()):
            return paths
    raise PoseModelMissing(
        "BlazePose model files not found: install them with "
        "`pip install --no-deps -r requirements-nodeps.txt` (package mediapipe)"
    )


def anchors() -> npt.NDArray[np.float64]:
    """Anchor centres (x, y) in [0, 1] of MediaPipe's pose detector (fixed-size anchors)."""
    strides = (8, 16, 32, 32, 32)
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        per_cell = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            per_cell += 2  # one anchor per aspect ratio (1.0) plus the interpolated scale
            last += 1
        cells = math.ceil(DETECTOR_SIZE / strides[layer])
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell)
        layer = last
    return np.asarray(centres, dtype=np.float64)


def _sigmoid(values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    clipped = np.clip(np.asarray(values, dtype=np.float64), -100.0, 100.0)
    return np.asarray(1.0 / (1.0 + np.exp(-clipped)), dtype=np.float64)


def _box_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of box ``a`` (cx, cy, w, h) with each row of ``b``."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2
    bx1, by1 = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    return np.asarray(np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0))


def decode_detections(
    raw: npt.NDArray[np.float32],
    logits: npt.NDArray[np.float32],
    anchor_xy: npt.NDArray[np.float64],
) -> list[tuple[float, npt.NDArray[np.float64]]]:
    """(score, 12 values: box cx, cy, w, h then 4 keypoints) in [0, 1] of the detector input."""
    scores = _sigmoid(logits.reshape(-1))
    values = raw.reshape(len(scores), -1).astype(np.float64) / DETECTOR_SIZE
    values[:, 0:2] += anchor_xy
    values[:, 4::2] += anchor_xy[:, :1]
    values[:, 5::2] += anchor_xy[:, 1:]
    order = [int(i) for i in np.argsort(-scores) if scores[i] >= MIN_DETECTOR_SCORE]
    merged: list[tuple[float, npt.NDArray[np.float64]]] = []
    remaining = np.asarray(order, dtype=np.int64)
    while remaining.size and len(merged) < MAX_CANDIDATES:
        best = int(remaining[0])
        overlap = _box_iou(values[best], values[remaining]) > NMS_IOU
        cluster = remaining[overlap]
        weights = scores[cluster]
        merged.append((float(scores[best]), weights @ values[cluster] / weights.sum()))
        remaining = remaining[~overlap]
    return merged


class PoseDetector:
    """Thread-safe: each worker thread keeps its own interpreters (they hold tensor state)."""

    def __init__(self) -> None:
        self._paths = model_paths()
        self._anchors = anchors()
        self._local = threading.local()
        self._interpreters()  # fail at start-up, not on the first request, if LiteRT is broken

    def _interpreters(self) -> tuple[Any, Any]:
        if not hasattr(self._local, "detector"):
            from ai_edge_litert.interpreter import Interpreter

            built = []
            for name in ("detector", "landmarks"):
                interpreter = Interpreter(model_path=str(self._paths[name]), num_threads=1)
                interpreter.allocate_tensors()
                built.append(interpreter)
            self._local.detector, self._local.landmarks = built
        return self._local.detector, self._local.landmarks

    def candidates(self, rgb: npt.NDArray[np.uint8]) -> list[PoseCandidate]:
        import cv2

        detector, _ = self._interpreters()
        height, width = rgb.shape[:2]
        scale = DETECTOR_SIZE / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (DETECTOR_SIZE - new_w) // 2, (DETECTOR_SIZE - new_h) // 2
        tensor = np.full((DETECTOR_SIZE, DETECTOR_SIZE, 3), -1.0, dtype=np.float32)  # black
        small = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
        tensor[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = small / 127.5 - 1.0
        outputs = _run(detector, tensor)
        raw, logits = (outputs[0], outputs[1]) if outputs[0].shape[-1] == 12 else outputs[::-1]
        found = []
        for score, values in decode_detections(raw, logits, self._anchors):
            points = values[4:].reshape(4, 2) * DETECTOR_SIZE - (pad_x, pad_y)
            found.append(PoseCandidate(score, points / scale))
        return found

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[PosePerson]:
        """People in ``rgb``'s pixel space, each examined by the landmark model."""
        people = []
        for candidate in self.candidates(rgb):
            person = self._examine(rgb, candidate)
            if person is not None:
                people.append(person)
        return people

    def _examine(self, rgb: npt.NDArray[np.uint8], candidate: PoseCandidate) -> PosePerson | None:
        import cv2

        _, landmarks = self._interpreters()
        height, width = rgb.shape[:2]
        to_roi = roi_transform(candidate.keypoints)
        if to_roi is None:
            return None
        roi = cv2.warpAffine(
            rgb, to_roi, (LANDMARK_SIZE, LANDMARK_SIZE), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        outputs = {tuple(o.shape): o for o in _run(landmarks, roi.astype(np.float32) / 255.0)}
        presence = float(np.ravel(outputs[(1, 1)])[0])
        mask_logits = outputs[(1, LANDMARK_SIZE, LANDMARK_SIZE, 1)][0, :, :, 0]
        mask = cv2.warpAffine(
            _sigmoid(mask_logits).astype(np.float32), cv2.invertAffineTransform(to_roi),
            (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        )
        box = _largest_region(mask > 0.5)
        if box is None:
            return None
        return PosePerson(box, candidate.score * presence, candidate.score, presence)


def roi_transform(keypoints: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
    """Affine map from the image to the landmark model's upright 256 x 256 body square."""
    (hip_x, hip_y), (top_x, top_y) = keypoints[0], keypoints[1]
    radius = math.hypot(top_x - hip_x, top_y - hip_y)
    if radius < 1.0:
        return None
    side = 2.0 * radius * ROI_SCALE
    # Angle that turns the hip->radius-point vector to "straight up" in the crop (MediaPipe's
    # target angle of 90 degrees); image y grows downwards, hence the sign of the y term.
    rotation = math.pi / 2 - math.atan2(-(top_y - hip_y), top_x - hip_x)
    cos, sin = math.cos(rotation), math.sin(rotation)
    factor = LANDMARK_SIZE / side
    matrix = np.array([[cos * factor, sin * factor, 0.0], [-sin * factor, cos * factor, 0.0]])
    matrix[:, 2] = np.array([LANDMARK_SIZE / 2] * 2) - matrix[:, :2] @ np.array([hip_x, hip_y])
    return matrix


def _largest_region(mask: npt.NDArray[np.bool_]) -> tuple[float, float, float, float] | None:
    import cv2

    count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if count <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (float(v) for v in stats[best, :4])
    return x, y, w, h


def _run(interpreter: Any, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None])
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
