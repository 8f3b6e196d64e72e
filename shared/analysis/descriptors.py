"""Cheap numbers that describe an input image, for drift detection (docs/drift.md).

``describe`` runs on pixels preprocessing has already decoded (the downscaled image it is about
to encode, or the reduced-size decode of the validation check): it never opens or decodes the
source again. It first box-reduces the image to at most ``THUMB_SIDE`` px on the long side, so the
cost is bounded whatever the input size and sharpness is measured at one comparable scale.

Descriptors (all numbers, bounded categories; never pixels, text or names):

* ``brightness`` — mean luma (ITU-R 601), 0-1;
* ``contrast`` — RMS contrast: standard deviation of luma, 0-1 (Deepchecks-vision's property);
* ``sharpness`` — log10(1 + variance of the 4-neighbour Laplacian of luma, in 0-255 units): the
  usual blur measure (a convention, not a standard); lower is blurrier;
* ``saturation`` — mean HSV saturation, 0-1 (whylogs' image profile);
* ``aspect_ratio`` — width / height of the original image;
* ``megapixels`` — original width x height / 1e6;
* ``format`` and ``camera_model`` — the sniffed format and the EXIF camera model (``Model``
  tag, trimmed to ``MAX_CATEGORY_CHARS``), or ``None``.

Must never log or return pixel data or any text read from the image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageFilter, ImageStat
from PIL.Image import Image as PILImage

#: Long side the statistics are computed at: enough pixels for stable means and a blur measure,
#: few enough that the cost stays a small share of preprocessing at any input size.
THUMB_SIDE = 256
MAX_CATEGORY_CHARS = 40
#: The Laplacian through Pillow's 8-bit filter: sum / 8 + 128 keeps its full range (±1020 / 8)
#: inside 0-255, and the variance is scaled back by 8².
_LAPLACIAN = ImageFilter.Kernel((3, 3), (0, 1, 0, 1, -4, 1, 0, 1, 0), scale=8, offset=128)
_LAPLACIAN_SCALE = 64.0
_COLOUR_MODES = frozenset({"RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass(frozen=True, slots=True)
class ImageDescriptors:
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None
    saturation: float | None = None
    aspect_ratio: float | None = None
    megapixels: float | None = None
    format: str | None = None
    camera_model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def geometry(width: int, height: int, fmt: str, camera_model: str | None) -> ImageDescriptors:
    """The descriptors that need no pixels (used when nothing was decoded)."""
    return ImageDescriptors(
        aspect_ratio=round(width / height, 4) if height else None,
        megapixels=round(width * height / 1e6, 4),
        format=fmt,
        camera_model=_category(camera_model),
    )


def describe(
    image: PILImage, *, width: int, height: int, fmt: str, camera_model: str | None = None
) -> ImageDescriptors:
    """Descriptors of decoded pixels ``image``; ``width``/``height`` are the original's."""
    base = geometry(width, height, fmt, camera_model)
    if image.mode not in ("RGB", "L"):
        # reduce() takes neither palettes nor 16-bit samples; alpha does not change the look
        image = image.convert("RGB" if image.mode in _COLOUR_MODES else "L")
    thumb = _thumbnail(image)
    luma = thumb.convert("L") if thumb.mode != "L" else thumb
    stat = ImageStat.Stat(luma)
    laplacian = _laplacian_variance(luma)
    saturation = 0.0
    if thumb.mode == "RGB":
        saturation = ImageStat.Stat(thumb.convert("HSV").getchannel("S")).mean[0] / 255
    return ImageDescriptors(
        brightness=round(stat.mean[0] / 255, 4),
        contrast=round(stat.stddev[0] / 255, 4),
        sharpness=round(math.log10(1 + laplacian), 4),
        saturation=round(saturation, 4),
        aspect_ratio=base.aspect_ratio,
        megapixels=base.megapixels,
        format=base.format,
        camera_model=base.camera_model,
    )


def _laplacian_variance(luma: PILImage) -> float:
    if min(luma.size) < 3:
        return 0.0
    # Pillow's kernel filter copies the 1-px border unfiltered: leave it out of the statistic
    inner = luma.filter(_LAPLACIAN).crop((1, 1, luma.width - 1, luma.height - 1))
    return float(ImageStat.Stat(inner).var[0]) * _LAPLACIAN_SCALE


def _thumbnail(image: PILImage) -> PILImage:
    factor = math.ceil(max(image.size) / THUMB_SIDE)
    if factor >= 2:
        # reduce() box-averages by an integer factor: the cheapest resample Pillow has
        return image.reduce(factor)
    return image


def _category(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip().strip("\x00")
    return cleaned[:MAX_CATEGORY_CHARS] or None


def camera_model_of(exif: Image.Exif | None) -> str | None:
    """The EXIF ``Model`` (0x0110) as a short category, or ``None``."""
    if exif is None:
        return None
    value = exif.get(0x0110)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return _category(value) if isinstance(value, str) else None


__all__ = ["THUMB_SIDE", "ImageDescriptors", "camera_model_of", "describe", "geometry"]
