"""The ``smartCrops`` feature: crops that keep the visually important part of the image.

The service documents its crops as keeping the important regions "with priority given to
detected faces". Importance here has two parts, on a grid whose longer side is 96 cells:

* **Subjects**: each person found by BlazePose (see ``pose``) adds ``SUBJECT_WEIGHT x
  confidence x`` the image's whole saliency mass, spread evenly over their box, so a window
  holding a person of confidence 0.5 or more outweighs any window without one.
* **Saliency**: a spectral-residual map (Hou & Zhang, CVPR 2007): on a small grey copy, the
  log-amplitude spectrum minus its local average keeps what is *unexpected* in the image; back
  in the spatial domain (with the original phase) and blurred, it highlights salient regions.

For each requested aspect ratio r (width / height) the crop is the largest r-shaped window that
fits the image, slid along the free axis. Every position is scored exactly (prefix sums); of the
positions within 2 % (of the total importance) of the best, the one whose centre is nearest the
importance centroid wins, so a crop that can hold the subject with room to spare centres it
rather than pushing it against an edge. Without requested ratios the service picks one ratio
between 0.5 and 2.0; we take the shape of the region holding the central 80 % of importance on
each axis, clamp its ratio to 0.5..2.0 and crop as above.

``aspectRatio`` echoes the requested ratio (as the service does); for the chosen default ratio it
is the returned box's ratio. Both are rounded to two decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

SALIENCY_SIDE = 96
DEFAULT_MIN_RATIO, DEFAULT_MAX_RATIO = 0.5, 2.0
#: Positions scoring within this share of the total importance of the best one count as ties.
TIE_SHARE = 0.02
#: A subject's mass in units of the image's total saliency, per unit of confidence.
SUBJECT_WEIGHT = 2.0

#: (x, y, w, h, confidence) of a subject, in the pixel space of the analysed copy.
Subject = tuple[float, float, float, float, float]


def saliency_map(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """Saliency in [0, 1] on a copy whose longer side is ``SALIENCY_SIDE`` px."""
    import cv2

    height, width = rgb.shape[:2]
    scale = SALIENCY_SIDE / max(width, height)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(gray.astype(np.float64))
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    back = np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))
    sal = cv2.GaussianBlur(np.abs(back) ** 2, (0, 0), sigmaX=2.5)
    peak = float(sal.max())
    return np.asarray(sal / peak if peak > 0 else np.ones_like(sal), dtype=np.float64)


def importance_map(
    sal: npt.NDArray[np.float64], subjects: Sequence[Subject], width: int, height: int
) -> npt.NDArray[np.float64]:
    """Saliency plus subject mass, on the saliency grid; ``subjects`` in width x height pixels."""
    rows, cols = sal.shape
    total = float(sal.sum()) or 1.0
    importance = sal.copy()
    for x, y, w, h, confidence in subjects:
        c0, c1 = int(x * cols / width), int(np.ceil((x + w) * cols / width))
        r0, r1 = int(y * rows / height), int(np.ceil((y + h) * rows / height))
        c0, r0 = max(0, c0), max(0, r0)
        c1, r1 = min(cols, max(c1, c0 + 1)), min(rows, max(r1, r0 + 1))
        mass = SUBJECT_WEIGHT * confidence * total
        importance[r0:r1, c0:c1] += mass / ((r1 - r0) * (c1 - c0))
    return importance


def _best_offset(profile: npt.NDArray[np.float64], window: int) -> int:
    """Start of the ``window``-long run of ``profile`` to crop: near-best sum, nearest centroid."""
    if window >= len(profile):
        return 0
    sums = np.convolve(profile, np.ones(window), mode="valid")
    total = float(profile.sum())
    if total <= 0:
        return (len(profile) - window) // 2
    centroid = float(np.arange(len(profile)) @ profile) / total
    near_best = np.flatnonzero(sums >= sums.max() - TIE_SHARE * total)
    centres = near_best + (window - 1) / 2
    return int(near_best[np.argmin(np.abs(centres - centroid))])


def crop_for_ratio(
    importance: npt.NDArray[np.float64], width: int, height: int, ratio: float
) -> dict[str, int]:
    """Largest box of ``ratio`` inside width x height, placed on the most importance."""
    sh, sw = importance.shape
    if width / height > ratio:  # image wider than the crop: full height, slide horizontally
        crop_w, crop_h = max(1, min(width, round(height * ratio))), height
        cols = importance.sum(axis=0)
        window = max(1, round(crop_w * sw / width))
        x = round(_best_offset(cols, window) * width / sw)
        x = min(max(0, x), width - crop_w)
        return {"x": x, "y": 0, "w": crop_w, "h": crop_h}
    crop_w, crop_h = width, max(1, min(height, round(width / ratio)))
    rows = importance.sum(axis=1)
    window = max(1, round(crop_h * sh / height))
    y = round(_best_offset(rows, window) * height / sh)
    y = min(max(0, y), height - crop_h)
    return {"x": 0, "y": y, "w": crop_w, "h": crop_h}


def _central_span(profile: npt.NDArray[np.float64], mass: float = 0.8) -> float:
    """Length (as a fraction of the axis) holding the central ``mass`` of the profile."""
    cumulative = np.cumsum(profile) / max(float(profile.sum()), 1e-12)
    low = int(np.searchsorted(cumulative, (1 - mass) / 2))
    high = int(np.searchsorted(cumulative, 1 - (1 - mass) / 2))
    return max(1, high - low + 1) / len(profile)


def default_ratio(sal: npt.NDArray[np.float64], width: int, height: int) -> float:
    region_w = _central_span(sal.sum(axis=0)) * width
    region_h = _central_span(sal.sum(axis=1)) * height
    return float(np.clip(region_w / region_h, DEFAULT_MIN_RATIO, DEFAULT_MAX_RATIO))


def smart_crops_result(
    rgb: npt.NDArray[np.uint8],
    width: int,
    height: int,
    ratios: tuple[float, ...],
    subjects: Sequence[Subject] = (),
) -> dict[str, Any]:
    """The service's ``smartCropsResult`` in original-image coordinates.

    ``subjects`` are in ``rgb``'s pixel space (the analysed copy).
    """
    work_h, work_w = rgb.shape[:2]
    importance = importance_map(saliency_map(rgb), subjects, work_w, work_h)
    values = []
    for ratio in ratios:
        box = crop_for_ratio(importance, width, height, ratio)
        values.append({"aspectRatio": round(ratio, 2), "boundingBox": box})
    if not ratios:
        box = crop_for_ratio(importance, width, height, default_ratio(importance, width, height))
        values.append({"aspectRatio": round(box["w"] / box["h"], 2), "boundingBox": box})
    return {"values": values}
