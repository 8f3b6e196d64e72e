"""The ``smartCrops`` feature: crops that keep the visually important part of the image.

Importance is a spectral-residual saliency map (Hou & Zhang, CVPR 2007): on a small grey copy,
the log-amplitude spectrum minus its local average keeps what is *unexpected* in the image; back
in the spatial domain (with the original phase) and blurred, it highlights salient regions.

* For each requested aspect ratio r (width / height), the crop is the largest r-shaped window that
  fits the image, slid along the free axis to the position holding the most saliency (integral
  sums, so every position is evaluated exactly).
* Without requested ratios the service picks one ratio between 0.5 and 2.0; we take the shape of
  the region holding the central 80 % of saliency mass on each axis, clamp its ratio to
  0.5..2.0 and crop as above.

``aspectRatio`` in the result is the ratio of the returned box, rounded to two decimals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

SALIENCY_SIDE = 96
DEFAULT_MIN_RATIO, DEFAULT_MAX_RATIO = 0.5, 2.0


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


def _best_offset(profile: npt.NDArray[np.float64], window: int) -> int:
    """Start index of the ``window``-long run of ``profile`` with the largest sum."""
    if window >= len(profile):
        return 0
    sums = np.convolve(profile, np.ones(window), mode="valid")
    return int(np.argmax(sums))


def crop_for_ratio(
    sal: npt.NDArray[np.float64], width: int, height: int, ratio: float
) -> dict[str, int]:
    """Largest box of ``ratio`` inside width x height, placed on the most saliency."""
    sh, sw = sal.shape
    if width / height > ratio:  # image wider than the crop: full height, slide horizontally
        crop_w, crop_h = max(1, min(width, round(height * ratio))), height
        cols = sal.sum(axis=0)
        window = max(1, round(crop_w * sw / width))
        x = round(_best_offset(cols, window) * width / sw)
        x = min(max(0, x), width - crop_w)
        return {"x": x, "y": 0, "w": crop_w, "h": crop_h}
    crop_w, crop_h = width, max(1, min(height, round(width / ratio)))
    rows = sal.sum(axis=1)
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
    rgb: npt.NDArray[np.uint8], width: int, height: int, ratios: tuple[float, ...]
) -> dict[str, Any]:
    """The service's ``smartCropsResult`` in original-image coordinates."""
    sal = saliency_map(rgb)
    wanted = ratios or (default_ratio(sal, width, height),)
    values = []
    for ratio in wanted:
        box = crop_for_ratio(sal, width, height, ratio)
        values.append({"aspectRatio": round(box["w"] / box["h"], 2), "boundingBox": box})
    return {"values": values}
