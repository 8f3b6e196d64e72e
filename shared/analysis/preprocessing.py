"""Image preprocessing: make any acceptable upload fit Image Analysis 4.0, reject the rest early.

What the service takes (documented limits): JPEG, PNG, GIF, BMP, WEBP, ICO, TIFF, MPO;
fewer than 20,971,520 bytes; each side greater than 50 and less than 16,000 pixels.

``preprocess`` sniffs the real format from the bytes (never the blob's extension), guards
against decompression bombs from the header before any pixel is decoded, applies the EXIF
orientation, and downscales/re-encodes *only* when the service limits, the orientation or
``PREPROCESS_MAX_DIMENSION`` require it. JPEGs are decoded through ``draft()`` (DCT scaling,
so a 24 MP photo is never decoded at full size when a smaller one is wanted) and large ratios
go through ``reduce()`` before the final resample. Every rejection is an
``InvalidImageError`` whose ``reason`` is one ``RejectReason`` code.

Never log image bytes or metadata values from here.

Why one module past 450 lines: validate, decode, orient, resample and encode are one pass over
one image whose stages hand each other Pillow state (the draft-decoded image, its EXIF, the
timings); format sniffing, which needs no pixels, lives in ``shared.analysis.imageformat``.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    IcoImagePlugin,
    Image,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
    features,
)
from PIL.Image import Image as PILImage
from PIL.ImageFile import ImageFile

from shared.analysis.descriptors import ImageDescriptors, camera_model_of, describe, geometry
from shared.analysis.imageformat import (
    PILLOW_FORMATS,
    SUPPORTED_KINDS,
    RejectReason,
    classify_unsupported,
    reject,
    sniff_format,
)
from shared.errors import InvalidImageError
from shared.settings import PreprocessSettings, Settings
from shared.units import ms

logger = logging.getLogger(__name__)

#: The service accepts images strictly smaller than 20 MB.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Each side must be strictly greater than this …
MIN_SIDE_EXCLUSIVE = 50
#: … and strictly smaller than this.
MAX_SIDE_EXCLUSIVE = 16_000
#: A JPEG APP1 segment cannot hold more than 64 KiB; anything bigger is not a real EXIF block.
MAX_EXIF_BYTES = 65_535
#: Textual metadata (PNG text chunks, XMP, comments) beyond this is an attack, not a photo.
MAX_METADATA_BYTES = 1024 * 1024
#: Bytes per pixel we budget for when decoding (Pillow keeps RGB as 4 bytes per pixel).
_BUDGET_BYTES_PER_PIXEL = 4
_BYTES_PER_PIXEL = {
    "1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "La": 4, "RGB": 4, "RGBA": 4, "RGBa": 4,
    "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4,
    "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
}


#: Importing a plugin registers it with ``Image.open``: exactly the formats above, no others.
_PLUGINS = (
    BmpImagePlugin,
    GifImagePlugin,
    IcoImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

_ORIENTATION_TAG = 0x0112


#: What an unset ``PREPROCESS_*`` setting means (the settings' own defaults: one source).
_DEFAULTS: Final = PreprocessSettings()


@dataclass(frozen=True, slots=True)
class PreprocessOptions:
    """What ``preprocess`` may do; the defaults are the app settings' own (one source)."""

    max_dimension: int = _DEFAULTS.max_dimension
    jpeg_quality: int = _DEFAULTS.jpeg_quality
    max_pixels: int = _DEFAULTS.max_pixels
    max_input_bytes: int = _DEFAULTS.max_input_bytes
    #: compute ``ImageDescriptors`` on the pixels already decoded (drift detection)
    descriptors: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> PreprocessOptions:
        return cls(
            max_dimension=settings.preprocess.max_dimension,
            jpeg_quality=settings.preprocess.jpeg_quality,
            max_pixels=settings.preprocess.max_pixels,
            max_input_bytes=settings.preprocess.max_input_bytes,
            descriptors=settings.drift.descriptors,
        )


@dataclass(frozen=True, slots=True)
class PreprocessRecord:
    """What was done to the image; goes verbatim into the result document."""

    detected_format: str
    original_width: int
    original_height: int
    original_bytes: int
    final_format: str
    final_width: int
    final_height: int
    final_bytes: int
    orientation: int
    reencoded: bool
    steps: tuple[str, ...]
    duration_ms: float
    #: Where ``duration_ms`` went: ``validate`` (nothing re-encoded) or ``decode``, ``resample``
    #: (mode, reduce, resample, orientation) and ``encode``; what tuning the max dimension acts on.
    stage_ms: dict[str, float]
    #: what the input looks like (docs/drift.md); ``None`` when descriptors are switched off
    descriptors: ImageDescriptors | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["stage_ms"] = dict(self.stage_ms)
        return data


class _Stages:
    """Times the named stages of one ``preprocess`` call with its injected clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = self._clock()
        try:
            yield
        finally:
            self.ms[name] = ms(self._clock() - t0)


@dataclass(frozen=True, slots=True)
class PreprocessResult:
    data: bytes
    record: PreprocessRecord


def _decode_error(exc: BaseException, stage: str) -> InvalidImageError:
    text = str(exc).lower()
    if isinstance(exc, ValueError) and "too large" in text:
        return reject(RejectReason.METADATA_TOO_LARGE, f"metadata too large ({stage})")
    if isinstance(exc, EOFError) or "truncated" in text or "premature" in text:
        return reject(RejectReason.TRUNCATED, f"image data ends early ({stage})")
    if stage == "header":
        return reject(RejectReason.CORRUPT_HEADER, "image header cannot be parsed")
    return reject(RejectReason.CORRUPT_DATA, "image data is corrupt")


def _open(data: bytes, kind: str) -> ImageFile:
    try:
        return Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS[kind]))
    except Image.DecompressionBombError as exc:
        raise reject(RejectReason.DECOMPRESSION_BOMB, "pixel count exceeds limits") from exc
    except UnidentifiedImageError as exc:
        raise reject(RejectReason.CORRUPT_HEADER, f"{kind} header cannot be parsed") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise _decode_error(exc, "header") from exc


def _check_header(im: ImageFile, options: PreprocessOptions) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise reject(RejectReason.CORRUPT_HEADER, "image declares no pixels")
    pixels = width * height
    if pixels > options.max_pixels:
        raise reject(
            RejectReason.DECOMPRESSION_BOMB,
            f"{width}x{height} = {pixels} pixels exceeds PREPROCESS_MAX_PIXELS",
        )
    per_pixel = _BYTES_PER_PIXEL.get(im.mode, 8)
    if pixels * per_pixel > options.max_pixels * _BUDGET_BYTES_PER_PIXEL:
        raise reject(
            RejectReason.DECOMPRESSION_BOMB,
            f"decoding {width}x{height} {im.mode} exceeds the memory budget",
        )
    exif = im.info.get("exif")
    if isinstance(exif, bytes | bytearray) and len(exif) > MAX_EXIF_BYTES:
        raise reject(RejectReason.METADATA_TOO_LARGE, f"EXIF block of {len(exif)} bytes")
    metadata = sum(
        len(value) for key, value in im.info.items()
        if key != "icc_profile" and isinstance(value, bytes | bytearray | str)
    )
    if metadata > MAX_METADATA_BYTES:
        raise reject(RejectReason.METADATA_TOO_LARGE, f"{metadata} bytes of metadata")
    if min(width, height) <= MIN_SIDE_EXCLUSIVE:
        raise reject(
            RejectReason.TOO_SMALL,
            f"image is {width}x{height}; both sides must be > {MIN_SIDE_EXCLUSIVE} px",
        )


def _exif(im: ImageFile) -> Image.Exif | None:
    """The EXIF block from the header only (``getexif()`` would decode a whole PNG)."""
    try:
        if isinstance(im, TiffImagePlugin.TiffImageFile):
            return im.getexif()  # the IFD tags are already parsed: no pixels involved
        raw = im.info.get("exif")
        if not isinstance(raw, bytes | bytearray) or not raw:
            return None
        exif = Image.Exif()
        exif.load(bytes(raw))
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise reject(RejectReason.CORRUPT_HEADER, "EXIF block cannot be parsed") from exc
    return exif


def _orientation(exif: Image.Exif | None) -> int:
    value = exif.get(_ORIENTATION_TAG, 1) if exif is not None else 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _target_size(width: int, height: int, max_dimension: int) -> tuple[int, int, bool]:
    limit = min(max_dimension, MAX_SIDE_EXCLUSIVE - 1)
    scale = min(1.0, limit / max(width, height))
    if scale >= 1.0:
        return width, height, False
    target_w = max(1, min(limit, round(width * scale)))
    target_h = max(1, min(limit, round(height * scale)))
    if min(target_w, target_h) <= MIN_SIDE_EXCLUSIVE:
        raise reject(
            RejectReason.EXTREME_ASPECT_RATIO,
            f"{width}x{height} cannot fit {limit} px on the long side and keep the short side"
            f" > {MIN_SIDE_EXCLUSIVE} px",
        )
    return target_w, target_h, True


def preprocess(
    data: bytes,
    options: PreprocessOptions | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> PreprocessResult:
    """Validate ``data`` and return the bytes to send plus a record of what was done.

    Raises ``InvalidImageError`` (reason: a ``RejectReason`` value) for anything the service
    cannot take and this function cannot fix.
    """
    options = options or PreprocessOptions()
    started = clock()
    stages = _Stages(clock)
    if not data:
        raise reject(RejectReason.EMPTY, "blob is empty (0 bytes)")
    if len(data) > options.max_input_bytes:
        raise reject(
            RejectReason.INPUT_TOO_LARGE,
            f"{len(data)} bytes exceeds PREPROCESS_MAX_INPUT_BYTES",
        )
    kind = sniff_format(data)
    if kind not in SUPPORTED_KINDS:
        raise classify_unsupported(kind)

    with _open(data, kind) as im:
        _check_header(im, options)
        width, height = im.size
        exif = _exif(im)
        orientation = _orientation(exif)
        camera = camera_model_of(exif) if options.descriptors else None
        target_w, target_h, resize = _target_size(width, height, options.max_dimension)
        steps: list[str] = [f"sniff:{kind}"]
        too_big = len(data) >= MAX_IMAGE_BYTES
        if not (resize or too_big or orientation != 1):
            with stages("validate"):
                decoded = _validate_decode(im, kind, data, keep_pixels=options.descriptors)
            steps.append("validate")
            descriptors = None
            if options.descriptors:
                with stages("describe"):
                    descriptors = (
                        describe(decoded, width=width, height=height, fmt=kind,
                                 camera_model=camera)
                        if decoded is not None else geometry(width, height, kind, camera))
            record = PreprocessRecord(
                detected_format=kind, original_width=width, original_height=height,
                original_bytes=len(data), final_format=kind, final_width=width,
                final_height=height, final_bytes=len(data), orientation=orientation,
                reencoded=False, steps=tuple(steps), duration_ms=ms(clock() - started),
                stage_ms=stages.ms, descriptors=descriptors,
            )
            return PreprocessResult(data, record)
        if resize:
            steps.append(f"downscale:{width}x{height}->{target_w}x{target_h}")
        if too_big:
            steps.append(f"over_size_limit:{len(data)}")
        described = (width, height, kind, camera) if options.descriptors else None
        out, fmt, final_size, descriptors = _reencode(
            im, kind=kind, target=(target_w, target_h), orientation=orientation,
            options=options, steps=steps, stages=stages, described=described,
        )
    record = PreprocessRecord(
        detected_format=kind, original_width=width, original_height=height,
        original_bytes=len(data), final_format=fmt, final_width=final_size[0],
        final_height=final_size[1], final_bytes=len(out), orientation=orientation,
        reencoded=True, steps=tuple(steps), duration_ms=ms(clock() - started),
        stage_ms=stages.ms, descriptors=descriptors,
    )
    return PreprocessResult(out, record)


def _validate_decode(
    im: ImageFile, kind: str, data: bytes, *, keep_pixels: bool = False
) -> PILImage | None:
    """Prove the pixels decode, as cheaply as the format allows.

    With ``keep_pixels`` the decoded image is returned for the descriptors: a JPEG's 1/8 DCT
    decode as is; a PNG, which ``verify()`` checks without inflating, is then decoded once.
    """
    try:
        if kind == "jpeg":
            # DCT scaling: entropy-decode everything (catches truncation) at 1/8 the pixels
            im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        elif kind == "png":
            # walks every chunk and checks its CRC without inflating pixels; verify() needs a
            # fresh file object (reading EXIF above already moved this one)
            with _open(data, kind) as fresh:
                fresh.verify()
            if keep_pixels:
                im.load()
        else:
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise _decode_error(exc, "data") from exc
    return im if keep_pixels else None


def _reencode(
    im: ImageFile,
    *,
    kind: str,
    target: tuple[int, int],
    orientation: int,
    options: PreprocessOptions,
    steps: list[str],
    stages: _Stages,
    described: tuple[int, int, str, str | None] | None = None,
) -> tuple[bytes, str, tuple[int, int], ImageDescriptors | None]:
    icc = im.info.get("icc_profile")
    with stages("decode"):
        _decode_for(im, kind=kind, target=target, steps=steps)
    with stages("resample"):
        image, alpha = _normalise_mode(im)
        ratio = min(image.width / target[0], image.height / target[1])
        factor = int(ratio // 2)
        if factor >= 2:
            # box-average by an integer factor first: cheap, and leaves the filter a ratio < 4
            image = image.reduce(factor)
            steps.append(f"reduce:{factor}")
        if image.size != target:
            image = image.resize(target, Image.Resampling.BICUBIC)
            steps.append("resample:bicubic")
        if orientation != 1:
            image = image.transpose(_TRANSPOSE[orientation])
            steps.append(f"exif_orientation:{orientation}")
    descriptors = None
    if described is not None:
        width, height, kind_, camera = described
        with stages("describe"):
            # the image about to be encoded: already decoded and downscaled
            descriptors = describe(image, width=width, height=height, fmt=kind_,
                                   camera_model=camera)
    with stages("encode"):
        out, fmt, size = _encode_within_limit(image, "png" if alpha else "jpeg", options, icc,
                                              steps)
    return out, fmt, size, descriptors


def _encode_within_limit(
    image: PILImage, fmt: str, options: PreprocessOptions, icc: object, steps: list[str]
) -> tuple[bytes, str, tuple[int, int]]:
    """Encode; shrink and retry while the bytes are over the service limit."""
    for _ in range(6):
        out = _encode(image, fmt, options.jpeg_quality, icc)
        if len(out) < MAX_IMAGE_BYTES:
            steps.append(f"encode:{fmt}" + (f":q{options.jpeg_quality}" if fmt == "jpeg" else ""))
            return out, fmt, image.size
        shrink = math.sqrt(MAX_IMAGE_BYTES * 0.85 / len(out))
        size = (max(1, int(image.width * shrink)), max(1, int(image.height * shrink)))
        if min(size) <= MIN_SIDE_EXCLUSIVE:
            break
        image = image.resize(size, Image.Resampling.LANCZOS)
        steps.append(f"shrink_for_bytes:{size[0]}x{size[1]}")
    raise reject(RejectReason.ENCODED_TOO_LARGE, "cannot encode below the service byte limit")


def _decode_for(im: ImageFile, *, kind: str, target: tuple[int, int], steps: list[str]) -> None:
    try:
        if kind == "jpeg":
            before = im.size
            # DCT scaling: decode at 1/2, 3/8, 1/4 or 1/8 of the size, staying >= target
            im.draft(im.mode if im.mode in ("RGB", "L") else None, target)
            _three_eighths(im, before, target)
            if im.size != before:
                steps.append(f"draft:{before[0]}x{before[1]}->{im.size[0]}x{im.size[1]}")
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise _decode_error(exc, "data") from exc


#: Pillow passes libjpeg a scale of 1/n. libjpeg-turbo (the library Pillow's wheels bundle)
#: rounds that up to its own M/8 IDCT sizes, so n = 3 decodes at 3/8 — the one step between
#: Pillow's 1/2 and 1/4. A 6000 px photo for a 2048 px target then decodes at 2250 px
#: instead of 3000: 44 % fewer pixels to hold and to resample.
_THREE_EIGHTHS_DENOMINATOR = 3
_HAS_TURBO_IDCT_SCALING = bool(features.check_feature("libjpeg_turbo"))


def _three_eighths(im: ImageFile, original: tuple[int, int], target: tuple[int, int]) -> None:
    """After ``draft()`` chose 1/2, decode at 3/8 instead when that still covers ``target``.

    Sets what ``JpegImageFile.draft`` itself sets (tile extent, size, decoder scale). Only with
    libjpeg-turbo: plain libjpeg would round 1/3 to 1/2, the decoded size would not match and
    the load would fail.
    """
    width, height = (-(-side * 3 // 8) for side in original)  # libjpeg: ceil(side * 3/8)
    if width < target[0] or height < target[1]:
        return
    if not three_eighths_supported():
        return  # keep draft()'s own 1/2: correct, only slower
    _set_three_eighths(im, (width, height))


def _set_three_eighths(im: ImageFile, size: tuple[int, int]) -> bool:
    """Point an undecoded, drafted-to-1/2 JPEG at the 3/8 IDCT; False when it does not apply.

    This writes what ``JpegImageFile.draft`` itself writes (tile extent, size, decoder scale):
    private Pillow state. ``three_eighths_supported`` proves on the installed Pillow, once per
    process, that doing so decodes at exactly that size, so a Pillow whose layout changed falls
    back to ``draft()`` instead of decoding at a wrong size.
    """
    if not _HAS_TURBO_IDCT_SCALING or im.decoderconfig[:1] != (2,):
        return False  # draft() sets a scale only for single-tile JPEGs
    if len(im.tile) != 1 or not hasattr(im.tile[0], "_replace"):
        return False  # a tile layout this code does not know: keep draft()'s 1/2
    im.tile = [im.tile[0]._replace(extents=(0, 0, *size))]
    im._size = size
    im.decoderconfig = (_THREE_EIGHTHS_DENOMINATOR, *im.decoderconfig[1:])
    return True


#: The self-check's image: 64x48 decodes at 3/8 to exactly 24x18; the left half is black and
#: the right half white, so a decode that scaled or cropped wrongly shows in the pixels.
_CHECK_SIZE = (64, 48)
_CHECK_THREE_EIGHTHS = (24, 18)


@functools.cache
def three_eighths_supported() -> bool:
    """Whether the 3/8 fast path decodes correctly on this process's Pillow (checked once).

    Decodes a small generated JPEG through the same steps as the pipeline and compares the
    decoded size and pixels with what libjpeg-turbo's 3/8 IDCT must produce. Any surprise
    (another size, an exception, wrong pixels) turns the fast path off for the process.
    """
    source = Image.new("L", _CHECK_SIZE, 0)
    source.paste(255, (_CHECK_SIZE[0] // 2, 0, *_CHECK_SIZE))
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=95)
    try:
        with Image.open(io.BytesIO(buffer.getvalue())) as im:
            im.draft("L", _CHECK_THREE_EIGHTHS)
            if im.size != (_CHECK_SIZE[0] // 2, _CHECK_SIZE[1] // 2):
                return False  # draft() itself behaves differently: do not build on it
            if not _set_three_eighths(im, _CHECK_THREE_EIGHTHS):
                return False
            im.load()
            decoded = im.convert("L")
    except (OSError, ValueError, AttributeError, TypeError, IndexError) as exc:
        logger.warning("3/8 JPEG decode disabled: self-check failed (%s)", type(exc).__name__)
        return False
    if decoded.size != _CHECK_THREE_EIGHTHS:
        logger.warning("3/8 JPEG decode disabled: self-check decoded %s", decoded.size)
        return False
    left = decoded.getpixel((2, _CHECK_THREE_EIGHTHS[1] // 2))
    right = decoded.getpixel((_CHECK_THREE_EIGHTHS[0] - 3, _CHECK_THREE_EIGHTHS[1] // 2))
    if not isinstance(left, int | float) or not isinstance(right, int | float):
        return False
    return left < 40 and right > 215


def _normalise_mode(im: PILImage) -> tuple[PILImage, bool]:
    """An image JPEG or PNG can store; alpha is kept (as PNG) because it may carry content."""
    alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if alpha:
        return (im if im.mode == "RGBA" else im.convert("RGBA")), True
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit samples: scale to 8 bits instead of clipping everything above 255
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L"), False
    if im.mode not in ("RGB", "L"):
        return im.convert("RGB"), False
    return im, False


def _encode(image: PILImage, fmt: str, quality: int, icc: object) -> bytes:
    buffer = io.BytesIO()
    extra: dict[str, Any] = {"icc_profile": icc} if isinstance(icc, bytes) else {}
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=6, **extra)
    else:
        image.save(buffer, "JPEG", quality=quality, **extra)
    return buffer.getvalue()


_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
