"""Validate and decode an input image the way the service's limits demand.

Checks, in the service's order: byte size (> 0 and < 20 MB), real format sniffed from the bytes
(JPEG, PNG, GIF, BMP, WEBP, ICO, TIFF, MPO; the Content-Type header is never trusted), then
dimensions (> 50 and < 16,000 px) read from the header *before* any pixel is decoded. Only then is
the image decoded, reduced to a working copy whose longer side is at most ``WORK_MAX_SIDE``
(JPEGs are reduced while decoding, via Pillow's draft mode). Callers scale results back with
``scale_x``/``scale_y``. Runs in a worker thread; never on the event loop.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from devstack.vision import errors
from devstack.vision.config import MAX_DIMENSION_EXCLUSIVE, MAX_IMAGE_BYTES, MIN_DIMENSION_EXCLUSIVE

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "ICO", "TIFF", "MPO")
#: Pillow plugins to sniff with; MPO files are recognised by the JPEG plugin.
_SNIFF_WITH = tuple(f for f in SUPPORTED_FORMATS if f != "MPO")
#: rapidocr itself reduces inputs to a 2,000 px longer side, so nothing needs more pixels.
WORK_MAX_SIDE = 2000


@dataclass(frozen=True, slots=True)
class DecodedImage:
    width: int  # original size, as reported in metadata
    height: int
    pixels: npt.NDArray[np.uint8]  # RGB working copy, shape (h, w, 3)

    @property
    def scale_x(self) -> float:
        return self.width / int(self.pixels.shape[1])

    @property
    def scale_y(self) -> float:
        return self.height / int(self.pixels.shape[0])


def check_byte_size(size: int) -> None:
    if size == 0 or size >= MAX_IMAGE_BYTES:
        raise errors.image_too_large()


def dimensions_ok(width: int, height: int) -> bool:
    return all(MIN_DIMENSION_EXCLUSIVE < side < MAX_DIMENSION_EXCLUSIVE for side in (width, height))


def decode(data: bytes, *, max_decode_pixels: int) -> DecodedImage:
    check_byte_size(len(data))
    image = _open(data)
    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise errors.invalid_format()
        width, height = image.size
        if not dimensions_ok(width, height):
            raise errors.invalid_dimension()
        if image.format in ("JPEG", "MPO"):
            reduce_to = _fit(width, height, WORK_MAX_SIDE)
            image.draft("RGB", reduce_to)  # decode at 1/2, 1/4 or 1/8 scale when large
        elif width * height > max_decode_pixels:
            # Memory guard of the emulator, not a service rule (documented): a 15,000 px PNG
            # would take ~700 MB to decode.
            raise errors.invalid_request(
                "InvalidImageSize",
                f"The local Vision emulator does not decode non-JPEG images with more than "
                f"{max_decode_pixels} pixels.",
            )
        try:
            image.seek(0)  # first frame of GIF/TIFF/MPO, like a still-image analysis
            rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise errors.invalid_format() from exc
    if max(rgb.size) > WORK_MAX_SIDE:
        rgb = rgb.resize(_fit(rgb.width, rgb.height, WORK_MAX_SIDE), Image.Resampling.LANCZOS)
    return DecodedImage(width, height, np.asarray(rgb, dtype=np.uint8))


def _open(data: bytes) -> Image.Image:
    """Sniff and parse the header only; no pixel is decoded here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_SNIFF_WITH)
    except Image.DecompressionBombError:
        # Pillow's process-wide guard (left at its default: other code relies on it) refuses
        # headers above ~179 M pixels, which includes valid images up to 15,999 px square.
        # Parse the header with the format plugin directly; ``decode`` then checks dimensions
        # and the decode budget before any pixel is read.
        image = _open_header_unchecked(data)
        if image is None:
            raise errors.invalid_dimension() from None
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise errors.invalid_format() from exc


def _open_header_unchecked(data: bytes) -> Image.Image | None:
    Image.init()
    prefix = data[:16]
    for name in _SNIFF_WITH:
        factory, accept = Image.OPEN[name]
        if accept is not None and not accept(prefix):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, OSError, ValueError, IndexError, TypeError, struct.error):
            continue
    return None


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscaled(pixels: npt.NDArray[np.uint8], max_side: int) -> tuple[npt.NDArray[np.uint8], float]:
    """A copy whose longer side is at most ``max_side`` and the factor back to ``pixels``."""
    height, width = pixels.shape[:2]
    if max(width, height) <= max_side:
        return pixels, 1.0
    new_w, new_h = _fit(width, height, max_side)
    small = Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8), width / new_w
