"""Input validation of the Vision emulator: sizes, formats, dimensions, decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from devstack.vision.config import MAX_IMAGE_BYTES
from devstack.vision.errors import VisionError
from devstack.vision.imaging import WORK_MAX_SIDE, decode

BUDGET = 100_000_000


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "white").save(buffer, fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)  # a few bytes of pixels; decoding would need gigabytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def error_of(data: bytes) -> VisionError:
    with pytest.raises(VisionError) as caught:
        decode(data, max_decode_pixels=BUDGET)
    return caught.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "ICO"])
def test_supported_formats_decode(fmt: str) -> None:
    size = (120, 80) if fmt != "ICO" else (64, 64)
    image = decode(encoded(size, fmt), max_decode_pixels=BUDGET)
    assert (image.width, image.height) == size
    assert image.pixels.shape == (size[1], size[0], 3)


def test_format_is_sniffed_not_trusted() -> None:
    assert error_of(b"this is plain text, not an image").inner_code == "InvalidImageFormat"
    assert error_of(encoded((100, 100), "PPM")).inner_code == "InvalidImageFormat"
    truncated = encoded((300, 300), "PNG")[:60]
    assert error_of(truncated).inner_code == "InvalidImageFormat"


@pytest.mark.parametrize("size", [(40, 40), (50, 100), (100, 50), (16_000, 60)])
def test_dimensions_outside_limits(size: tuple[int, int]) -> None:
    error = error_of(encoded(size, "PNG", mode="1"))
    assert (error.status, error.code, error.inner_code) == (
        400,
        "InvalidRequest",
        "InvalidImageSize",
    )


def test_smallest_valid_dimensions() -> None:
    assert decode(encoded((51, 51), "PNG"), max_decode_pixels=BUDGET).width == 51


def test_byte_size_limits() -> None:
    empty = error_of(b"")
    assert empty.code == "InvalidRequest" and empty.inner_code is None
    assert "20971520" in error_of(b"\0" * MAX_IMAGE_BYTES).message


@pytest.mark.parametrize("side", [20_000, 100_000, 2_000_000])
def test_decompression_bombs_are_rejected_from_the_header(side: int) -> None:
    error = error_of(png_header_only(side, side))
    assert error.inner_code == "InvalidImageSize"


def test_large_non_jpeg_over_the_decode_budget_is_refused() -> None:
    with pytest.raises(VisionError) as caught:
        decode(encoded((3000, 2000), "PNG", mode="1"), max_decode_pixels=5_000_000)
    assert "local Vision emulator" in caught.value.message


def test_large_images_are_reduced_for_work_but_report_true_size() -> None:
    image = decode(encoded((4200, 2100), "JPEG"), max_decode_pixels=BUDGET)
    assert (image.width, image.height) == (4200, 2100)
    assert max(image.pixels.shape[:2]) <= WORK_MAX_SIDE
    assert image.scale_x == pytest.approx(4200 / image.pixels.shape[1])


def test_valid_dimensions_beyond_pillows_guard_reach_the_decode_budget() -> None:
    # 15,000 x 13,000 is a valid size for the service but above Pillow's bomb guard: the header
    # is still read (no pixel decoded) and the emulator's decode budget answers.
    error = error_of(png_header_only(15_000, 13_000))
    assert error.inner_code == "InvalidImageSize"
    assert "local Vision emulator" in error.message


def test_pillow_guard_is_left_untouched() -> None:
    pillow_default = 1024 * 1024 * 1024 // 4 // 3
    assert pillow_default == Image.MAX_IMAGE_PIXELS
