"""Real test images, generated on the fly: every good format the pipeline must analyse and every
bad input it must reject, each with the reason code it must end with.

Pure Pillow/stdlib, deterministic (fixed seeds), no I/O. The one source of generated images for
the unit tests of ``shared.analysis.preprocessing``, the pipeline integration tests and the
benchmarks.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"

#: The printed lines of ``text_page()``; OCR must read them back.
TEXT_LINES = ("VisionOps acceptance", "Invoice 4711 paid", "Dock 12 loading")

# --------------------------------------------------------------------------- building blocks


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Image.Image:
    """A smooth synthetic picture (two crossed gradients and a disc): compresses like a photo."""
    gradient = Image.linear_gradient("L").resize(size)
    im = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize(size),
                             gradient.transpose(Image.Transpose.ROTATE_180)))
    draw = ImageDraw.Draw(im)
    w, h = size
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(200, 60, 40))
    return im.convert(mode) if mode != "RGB" else im


def noisy(size: tuple[int, int]) -> Image.Image:
    """Per-pixel noise: compresses badly, so a BMP of it is big for its size."""
    return Image.merge("RGB", [Image.effect_noise(size, 60) for _ in range(3)])


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def exif_with(**tags: object) -> bytes:
    exif = Image.Exif()
    names = {"orientation": 0x0112, "description": 0x010E}
    for name, value in tags.items():
        exif[names[name]] = value
    return exif.tobytes()


# --------------------------------------------------------------------------- good inputs


def text_page() -> bytes:
    """A white page with ``TEXT_LINES`` in Pillow's bundled font (PNG)."""
    image = Image.new("RGB", (900, 420), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    for row, line in enumerate(TEXT_LINES):
        draw.text((40, 50 + 120 * row), line, fill="black", font=font)
    return encode(image, "PNG")


def astronaut() -> bytes:
    return (SAMPLES / "astronaut.png").read_bytes()


def png_alpha() -> bytes:
    im = photo((320, 240), "RGBA")
    alpha = Image.linear_gradient("L").resize(im.size)
    im.putalpha(alpha)
    return encode(im, "PNG")


#: Stored size of ``rotated_exif_jpeg``; orientation 6 means "rotate 90° clockwise to view".
ROTATED_STORED_SIZE = (360, 240)


def rotated_exif_jpeg() -> bytes:
    return encode(photo(ROTATED_STORED_SIZE), "JPEG", quality=90, exif=exif_with(orientation=6))


def gif() -> bytes:
    return encode(photo().convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def bmp() -> bytes:
    return encode(photo(), "BMP")


def webp() -> bytes:
    return encode(photo(), "WEBP", quality=80)


def tiff() -> bytes:
    return encode(photo(), "TIFF", compression="tiff_lzw")


def jpeg_24mp() -> bytes:
    """6000 x 4000 (24 MP), ~1 MB: must be drafted and downscaled, never decoded at full size."""
    return encode(photo((6000, 4000)), "JPEG", quality=85)


def bmp_30mb() -> bytes:
    """3000 x 3400 uncompressed BMP, > 30 MB: must be re-encoded below the 20 MB service limit."""
    data = encode(photo((3000, 3400)), "BMP")
    assert len(data) > 30_000_000
    return data


def png_named_jpg() -> bytes:
    """PNG bytes under a ``.jpg`` name: the format is sniffed, so this one must succeed."""
    return encode(photo(), "PNG")


def tiny_jpeg(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small distinct JPEG (the fault run uploads hundreds of these)."""
    rng = random.Random(seed)
    im = photo(size)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle((x, y, x + 12, y + 12), fill=colour)
    return encode(im, "JPEG", quality=80)


@dataclass(frozen=True, slots=True)
class GoodImage:
    name: str  # blob name; the extension is what an uploader would use
    make: Callable[[], bytes]
    detected_format: str


GOOD: tuple[GoodImage, ...] = (
    GoodImage("good/text-page.png", text_page, "png"),
    GoodImage("good/astronaut.png", astronaut, "png"),
    GoodImage("good/alpha.png", png_alpha, "png"),
    GoodImage("good/rotated-exif.jpg", rotated_exif_jpeg, "jpeg"),
    GoodImage("good/palette.gif", gif, "gif"),
    GoodImage("good/plain.bmp", bmp, "bmp"),
    GoodImage("good/lossy.webp", webp, "webp"),
    GoodImage("good/scan.tiff", tiff, "tiff"),
    GoodImage("good/camera-24mp.jpg", jpeg_24mp, "jpeg"),
    GoodImage("good/huge-30mb.bmp", bmp_30mb, "bmp"),
    GoodImage("good/png-bytes-named.jpg", png_named_jpg, "png"),
)

# --------------------------------------------------------------------------- bad inputs

#: ``over_input_limit`` is sized against this ``PREPROCESS_MAX_INPUT_BYTES`` (the test sets it).
TEST_MAX_INPUT_BYTES = 34 * 1024 * 1024


def truncated_jpeg() -> bytes:
    data = encode(photo(), "JPEG", quality=90)
    return data[: len(data) // 2]


def corrupt_png_chunk() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    at = data.index(b"IDAT") + 20
    data[at] ^= 0xFF  # the IDAT payload no longer matches its CRC
    return bytes(data)


def corrupt_png_header() -> bytes:
    """A PNG signature followed by an IHDR whose CRC is wrong."""
    ihdr = struct.pack(">IIBBBBB", 320, 240, 8, 2, 0, 0, 0)
    bad = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + bad + png_chunk(b"IEND", b"")


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real 1-bit PNG bomb: ~50 KB on disk, ``width*height`` pixels of zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    chunks.append(compressor.compress(row * (height % 1000)))
    chunks.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(chunks))
        + png_chunk(b"IEND", b"")
    )


def huge_exif_png() -> bytes:
    """A PNG whose eXIf chunk is 200 KB (a JPEG APP1 segment cannot exceed 64 KiB)."""
    return encode(photo(), "PNG", exif=exif_with(description="x" * 200_000))


def jpeg2000() -> bytes:
    return encode(photo(), "JPEG2000")


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


def heic_like() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(256)


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="800"'
        b' height="600"><rect width="800" height="600" fill="red"/></svg>\n'
    )


def pdf() -> bytes:
    return b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def text_file() -> bytes:
    return b"Quarterly report\nRevenue: 12\nCosts: 7\n" * 20


def over_input_limit() -> bytes:
    # content is irrelevant: the size check comes before anything is opened
    return bytes(TEST_MAX_INPUT_BYTES + 1)


@dataclass(frozen=True, slots=True)
class BadImage:
    name: str
    make: Callable[[], bytes]
    reason: str  # the RejectReason value the failure document must carry


BAD: tuple[BadImage, ...] = (
    BadImage("bad/zero-bytes.jpg", lambda: b"", "empty"),
    BadImage("bad/over-input-limit.bmp", over_input_limit, "input_too_large"),
    BadImage("bad/truncated.jpg", truncated_jpeg, "truncated"),
    BadImage(
        "bad/wrong-extension-text.jpg", lambda: b"hello, I am not a photo\n" * 8, "text_not_image"
    ),
    BadImage("bad/notes.txt", text_file, "text_not_image"),
    BadImage("bad/drawing.svg", svg, "svg_not_supported"),
    BadImage("bad/report.pdf", pdf, "pdf_not_supported"),
    BadImage("bad/iphone.heic", heic_like, "heif_not_supported"),
    BadImage("bad/wrong-extension-jp2.jpg", jpeg2000, "unsupported_format"),
    BadImage("bad/archive.png", zip_archive, "unsupported_format"),
    BadImage("bad/random.jpg", lambda: random.Random(7).randbytes(4096), "unknown_format"),
    BadImage("bad/corrupt-header.png", corrupt_png_header, "corrupt_header"),
    BadImage("bad/corrupt-chunk.png", corrupt_png_chunk, "corrupt_data"),
    BadImage("bad/40x40.png", lambda: encode(photo((40, 40)), "PNG"), "too_small"),
    BadImage(
        "bad/20000x100.png", lambda: encode(photo((20_000, 100)), "PNG"), "extreme_aspect_ratio"
    ),
    BadImage("bad/bomb.png", bomb_png, "decompression_bomb"),
    BadImage("bad/huge-exif.png", huge_exif_png, "metadata_too_large"),
)


def darker_blurrier(data: bytes, *, brightness: float = 0.45, blur_radius: float = 3.0) -> bytes:
    """The same picture as a worse camera or shift would take it: darker and out of focus.

    Computed from ``data`` (a real image) with Pillow; re-encoded in the same format.
    """
    from PIL import ImageEnhance, ImageFilter

    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format or "PNG"
        image = im.convert("RGB")
    image = ImageEnhance.Brightness(image).enhance(brightness)
    image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    return encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def sample_images() -> dict[str, bytes]:
    """The bundled sample images by file name (``samples/``)."""
    return {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir())
            if p.suffix in (".png", ".jpg")}
