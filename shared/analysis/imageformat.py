"""What an upload really is: its format sniffed from its leading bytes (never the blob's
extension), and the stable codes every rejection carries.

``sniff_format`` names a supported kind (``SUPPORTED_KINDS``, each opened only by its Pillow
plugins in ``PILLOW_FORMATS``) or a known unsupported one (SVG, PDF, HEIF, text, archives…);
``classify_unsupported`` turns the latter into its ``InvalidImageError``. Used by
``shared.analysis.preprocessing``; never decodes a pixel.
"""

from __future__ import annotations

import struct
from enum import StrEnum

from shared.errors import InvalidImageError

__all__ = [
    "PILLOW_FORMATS",
    "SUPPORTED_KINDS",
    "RejectReason",
    "classify_unsupported",
    "reject",
    "sniff_format",
]


class RejectReason(StrEnum):
    """Why an input cannot be analysed. Stable codes: documents and telemetry use them."""

    EMPTY = "empty"
    INPUT_TOO_LARGE = "input_too_large"
    TEXT_NOT_IMAGE = "text_not_image"
    SVG_NOT_SUPPORTED = "svg_not_supported"
    PDF_NOT_SUPPORTED = "pdf_not_supported"
    HEIF_NOT_SUPPORTED = "heif_not_supported"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNKNOWN_FORMAT = "unknown_format"
    CORRUPT_HEADER = "corrupt_header"
    CORRUPT_DATA = "corrupt_data"
    TRUNCATED = "truncated"
    TOO_SMALL = "too_small"
    EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
    DECOMPRESSION_BOMB = "decompression_bomb"
    METADATA_TOO_LARGE = "metadata_too_large"
    ENCODED_TOO_LARGE = "encoded_too_large"


#: sniffed kind → Pillow plugins allowed to open it (nothing else is ever tried).
PILLOW_FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG",),  # the JPEG opener also returns MPO (multi-picture) files
    "png": ("PNG",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "webp": ("WEBP",),
    "tiff": ("TIFF",),
    "ico": ("ICO",),
}


SUPPORTED_KINDS = frozenset(PILLOW_FORMATS)


_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
     b"msf1", b"avif", b"avis"}
)


_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"8BPS", "psd"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"\xff\x0a", "jpegxl"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jpegxl"),
    (b"\x1f\x8b", "gzip"),
)


_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff_format(data: bytes) -> str:
    """The real format of ``data`` from its leading bytes: a ``SUPPORTED_KINDS`` member,
    a known unsupported kind (``svg``, ``pdf``, ``heif``, ``text``, ``zip`` …) or ``unknown``."""
    kind = next((k for prefix, k in _PREFIXES if data.startswith(prefix)), None)
    if kind is None:
        kind = _sniff_containers(data)
    if kind is None and b"%PDF-" in data[:1024]:
        kind = "pdf"
    if kind is None:
        text = _as_text(data[:4096])
        kind = "unknown" if text is None else "svg" if "<svg" in text.lower() else "text"
    return kind


def _sniff_containers(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and len(data) >= 18:
        (dib_size,) = struct.unpack_from("<I", data, 14)
        if dib_size in _BMP_DIB_SIZES:
            return "bmp"
    if data[4:8] == b"ftyp":
        return "heif" if data[8:12] in _HEIF_BRANDS else "isobmff"
    return None


def _as_text(head: bytes) -> str | None:
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"),
                          (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom) :].decode(encoding, errors="replace")
    if b"\x00" in head:
        return None
    try:
        # a multi-byte character may be cut at the end of the sample
        text = (
            head.decode("utf-8", errors="strict")
            if len(head) < 4096
            else (head[:-4].decode("utf-8", errors="strict") + head[-4:].decode("utf-8", "ignore"))
        )
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    return text if printable / len(text) >= 0.95 else None


def reject(reason: RejectReason, message: str) -> InvalidImageError:
    return InvalidImageError(message, reason=reason.value)


def classify_unsupported(kind: str) -> InvalidImageError:
    if kind == "text":
        return reject(RejectReason.TEXT_NOT_IMAGE, "content is text, not an image")
    if kind == "svg":
        return reject(RejectReason.SVG_NOT_SUPPORTED, "SVG (vector) images are not supported")
    if kind == "pdf":
        return reject(RejectReason.PDF_NOT_SUPPORTED, "PDF documents are not supported")
    if kind == "heif":
        return reject(RejectReason.HEIF_NOT_SUPPORTED, "HEIF/HEIC/AVIF images are not supported")
    if kind == "unknown":
        return reject(RejectReason.UNKNOWN_FORMAT, "content matches no known image format")
    return reject(RejectReason.UNSUPPORTED_FORMAT, f"{kind} content is not a supported image")

