"""Preprocessing on generated images: every good format goes through, every bad one is
rejected with its own reason code, and big images take the draft/reduce path."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops, ImageStat

from shared.analysis import preprocessing
from shared.analysis.imageformat import RejectReason, sniff_format
from shared.analysis.preprocessing import MAX_IMAGE_BYTES, PreprocessOptions, preprocess
from shared.errors import InvalidImageError
from tests.support import images
from tests.support.images import (
    bomb_png,
    corrupt_png_chunk,
    encode,
    exif_with,
    heic_like,
    huge_exif_png,
    noisy,
    pdf,
    photo,
    svg,
    text_file,
    truncated_jpeg,
    zip_archive,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def jpeg_24mp() -> bytes:
    return images.jpeg_24mp()


@pytest.fixture(scope="module")
def bmp_30mb() -> bytes:
    return images.bmp_30mb()


def run(data: bytes, **options: int) -> tuple[bytes, dict[str, object]]:
    result = preprocess(data, PreprocessOptions(**options))
    return result.data, result.record.as_dict()


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# --------------------------------------------------------------------------- good inputs

GOOD: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: encode(photo(), "JPEG", quality=90),
    "png_alpha": lambda: encode(photo(mode="RGBA"), "PNG"),
    "gif": lambda: encode(photo().convert("P"), "GIF"),
    "bmp": lambda: encode(photo(), "BMP"),
    "webp": lambda: encode(photo(), "WEBP", quality=80),
    "tiff": lambda: encode(photo(), "TIFF", compression="tiff_lzw"),
    "ico": lambda: encode(photo((128, 128)), "ICO", sizes=[(128, 128)]),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_small_supported_images_pass_through_unchanged(name: str) -> None:
    data = GOOD[name]()
    out, record = run(data)
    assert out is data  # no re-encode when nothing requires it
    assert record["reencoded"] is False
    assert record["detected_format"] == name.partition("_")[0]
    assert record["steps"] == [f"sniff:{record['detected_format']}", "validate"]
    assert record["final_bytes"] == record["original_bytes"] == len(data)


def test_rotated_exif_jpeg_is_turned_upright() -> None:
    data = encode(photo((400, 300)), "JPEG", exif=exif_with(orientation=6))
    out, record = run(data)
    assert record["orientation"] == 6
    assert "exif_orientation:6" in record["steps"]
    assert (record["final_width"], record["final_height"]) == (300, 400)
    im = opened(out)
    assert im.size == (300, 400)
    assert im.getexif().get(0x0112) is None  # orientation applied, EXIF not carried over


def test_24mp_jpeg_is_drafted_not_decoded_at_full_size(jpeg_24mp: bytes) -> None:
    out, record = run(jpeg_24mp)
    steps = record["steps"]
    assert isinstance(steps, list)
    assert "draft:6000x4000->2250x1500" in steps  # 3/8: the smallest DCT size >= 2048x1365
    assert (record["final_width"], record["final_height"]) == (2048, 1365)
    assert record["final_format"] == "jpeg"
    assert opened(out).size == (2048, 1365)


@pytest.mark.parametrize(
    ("size", "max_dimension", "decoded"),
    [
        ((2001, 1203), 700, (751, 452)),  # odd sides: libjpeg rounds ceil(side * 3/8)
        ((2000, 1000), 800, (1000, 500)),  # 3/8 would be 750 < 800: stays at 1/2
        ((2000, 1000), 400, (500, 250)),  # 1/4 already fits: 3/8 is not smaller
    ],
)
def test_jpeg_dct_scale_is_the_smallest_that_covers_the_target(
    size: tuple[int, int], max_dimension: int, decoded: tuple[int, int]
) -> None:
    data = encode(photo(size), "JPEG", quality=95)
    out, record = run(data, max_dimension=max_dimension)
    assert f"draft:{size[0]}x{size[1]}->{decoded[0]}x{decoded[1]}" in record["steps"]  # type: ignore[operator]
    # same picture as decoding everything and resampling once
    reference = opened(data).resize(opened(out).size, Image.Resampling.BICUBIC)
    diff = ImageChops.difference(opened(out).convert("RGB"), reference)
    assert max(ImageStat.Stat(diff).mean) < 4.0


@pytest.mark.parametrize(
    ("mode", "params"),
    [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True}), ("RGB", {"subsampling": 0})],
)
def test_three_eighths_decode_for_other_jpeg_kinds(mode: str, params: dict[str, object]) -> None:
    data = encode(photo((2001, 1203)).convert(mode), "JPEG", quality=95, **params)
    out, record = run(data, max_dimension=700)
    assert "draft:2001x1203->751x452" in record["steps"]  # type: ignore[operator]
    reference = opened(data).convert("RGB").resize((700, 421), Image.Resampling.BICUBIC)
    diff = ImageChops.difference(opened(out).convert("RGB"), reference)
    assert max(ImageStat.Stat(diff).mean) < 4.0


def test_large_ratio_goes_through_reduce() -> None:
    data = encode(photo((6000, 600)), "PNG")
    _, record = run(data, max_dimension=1000)
    assert "reduce:3" in record["steps"]  # type: ignore[operator]
    assert (record["final_width"], record["final_height"]) == (1000, 100)


def test_30mb_image_is_reencoded_below_the_service_limit(bmp_30mb: bytes) -> None:
    out, record = run(bmp_30mb, max_dimension=4000)  # no downscale needed: bytes alone force it
    assert len(out) < MAX_IMAGE_BYTES
    assert record["reencoded"] is True
    assert record["final_format"] == "jpeg"
    assert (record["final_width"], record["final_height"]) == (3000, 3400)
    assert any(str(s).startswith("over_size_limit:") for s in record["steps"])  # type: ignore[union-attr]


def test_30mb_image_with_default_max_dimension(bmp_30mb: bytes) -> None:
    out, record = run(bmp_30mb)
    assert len(out) < MAX_IMAGE_BYTES
    assert max(record["final_width"], record["final_height"]) == 2048  # type: ignore[type-var]


def test_alpha_survives_reencoding_as_png() -> None:
    data = encode(photo((3000, 2000), mode="RGBA"), "PNG")
    out, record = run(data)
    assert record["final_format"] == "png"
    assert opened(out).mode == "RGBA"


def test_palette_with_transparency_keeps_alpha() -> None:
    im = photo((3000, 2000)).convert("P")
    data = encode(im, "PNG", transparency=0)
    out, record = run(data)
    assert record["final_format"] == "png"
    assert opened(out).mode == "RGBA"


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    im = Image.linear_gradient("L").resize((1200, 800)).point(lambda v: v * 256, mode="I")
    data = encode(im.convert("I;16"), "PNG")
    out, _ = run(data, max_dimension=600)
    result = opened(out)
    assert result.mode == "L"
    low, high = result.getextrema()  # type: ignore[misc]
    assert high > 200 and low < 50


def test_cmyk_jpeg_downscales_to_rgb() -> None:
    data = encode(photo((3000, 2000)).convert("CMYK"), "JPEG")
    out, _ = run(data)
    assert opened(out).mode == "RGB"


def test_boundary_sizes() -> None:
    _, record = run(encode(photo((51, 51)), "PNG"))
    assert record["final_width"] == 51
    with pytest.raises(InvalidImageError) as info:
        run(encode(photo((50, 400)), "PNG"))
    assert info.value.reason == RejectReason.TOO_SMALL


class StepClock:
    """Advances a fixed step per reading: every timed stage lasts exactly one step."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 10.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_record_duration_uses_injected_clock() -> None:
    result = preprocess(GOOD["jpeg"](), clock=StepClock(0.25))
    record = result.record
    assert not record.reencoded
    assert record.stage_ms == {"validate": 250.0, "describe": 250.0}
    # start, validate start/end, describe start/end, end
    assert record.duration_ms == 1250.0


def test_record_times_each_stage_of_a_reencode() -> None:
    big = encode(photo((3000, 2000)), "JPEG")
    record = preprocess(big, PreprocessOptions(max_dimension=1024), clock=StepClock(0.5)).record
    assert record.reencoded
    assert list(record.stage_ms) == ["decode", "resample", "describe", "encode"]
    assert set(record.stage_ms.values()) == {500.0}
    assert record.as_dict()["stage_ms"] == {"decode": 500.0, "resample": 500.0,
                                            "describe": 500.0, "encode": 500.0}


def test_descriptors_switched_off_add_no_stage() -> None:
    options = PreprocessOptions(descriptors=False)
    record = preprocess(GOOD["jpeg"](), options, clock=StepClock(0.25)).record
    assert record.stage_ms == {"validate": 250.0}
    assert record.descriptors is None


# --------------------------------------------------------------------------- bad inputs


BAD: dict[str, tuple[Callable[[], bytes], RejectReason]] = {
    "zero_bytes": (lambda: b"", RejectReason.EMPTY),
    "truncated_jpeg": (truncated_jpeg, RejectReason.TRUNCATED),
    "wrong_extension_zip_as_jpg": (zip_archive, RejectReason.UNSUPPORTED_FORMAT),
    "svg": (svg, RejectReason.SVG_NOT_SUPPORTED),
    "pdf": (pdf, RejectReason.PDF_NOT_SUPPORTED),
    "text": (text_file, RejectReason.TEXT_NOT_IMAGE),
    "40x40": (lambda: encode(photo((40, 40)), "PNG"), RejectReason.TOO_SMALL),
    "20000x100": (lambda: encode(photo((20000, 100)), "PNG"), RejectReason.EXTREME_ASPECT_RATIO),
    "bomb_8000x8000": (lambda: bomb_png(8000, 8000), RejectReason.DECOMPRESSION_BOMB),
    "corrupt_png_chunk": (corrupt_png_chunk, RejectReason.CORRUPT_DATA),
    "heic_like": (heic_like, RejectReason.HEIF_NOT_SUPPORTED),
    "huge_exif": (huge_exif_png, RejectReason.METADATA_TOO_LARGE),
    "jpeg_garbage_header": (
        lambda: b"\xff\xd8\xff\xe0" + bytes(200),
        RejectReason.CORRUPT_HEADER,
    ),
    "random_bytes": (
        lambda: random.Random(7).randbytes(4096),
        RejectReason.UNKNOWN_FORMAT,
    ),
    "over_input_limit": (
        lambda: encode(noisy((1500, 1500)), "BMP"),  # 6.75 MB vs a 4 MiB limit below
        RejectReason.INPUT_TOO_LARGE,
    ),
}
EXTRA_BAD: dict[str, tuple[Callable[[], bytes], RejectReason]] = {
    "bomb_20000x20000": (lambda: bomb_png(20_000, 20_000), RejectReason.DECOMPRESSION_BOMB),
    "truncated_png": (lambda: GOOD["png_alpha"]()[:2000], RejectReason.TRUNCATED),
    "html": (lambda: b"<!doctype html><html><body>hi</body></html>", RejectReason.TEXT_NOT_IMAGE),
    "psd": (lambda: b"8BPS\x00\x01" + bytes(100), RejectReason.UNSUPPORTED_FORMAT),
    "avif": (
        lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64),
        RejectReason.HEIF_NOT_SUPPORTED,
    ),
    "mp4": (lambda: b"\x00\x00\x00\x18ftypisom" + bytes(64), RejectReason.UNSUPPORTED_FORMAT),
}


def test_at_least_fifteen_distinct_reasons() -> None:
    assert len(BAD) >= 15
    assert len({reason for _, reason in BAD.values()}) == len(BAD)


@pytest.mark.parametrize("name", sorted(BAD) + sorted(EXTRA_BAD))
def test_bad_inputs_are_rejected_with_their_reason(name: str) -> None:
    make, reason = BAD.get(name) or EXTRA_BAD[name]
    data = make()
    with pytest.raises(InvalidImageError) as info:
        preprocess(data, PreprocessOptions(max_input_bytes=4 * 1024 * 1024))
    assert info.value.reason == reason.value, info.value.message
    assert info.value.retryable is False


def test_bomb_is_rejected_from_the_header_before_decoding() -> None:
    data = bomb_png(8000, 8000)
    assert len(data) < 100_000  # 64 million pixels in a tiny file
    with pytest.raises(InvalidImageError, match="PREPROCESS_MAX_PIXELS"):
        preprocess(data)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"BMW owners manual, page 1\n" * 4, "text"),  # "BM" prefix without a DIB header
        (b"\xef\xbb\xbfhello", "text"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "svg"),
        (b"junk" * 10 + b"%PDF-1.4", "pdf"),
        (b"\x00\x01\x02\x03" * 100, "unknown"),
    ],
)
def test_sniffing_uses_content_not_names(data: bytes, kind: str) -> None:
    assert sniff_format(data) == kind


def test_png_named_jpg_is_still_a_png() -> None:
    # the blob's extension never matters: the bytes decide
    _, record = run(GOOD["png_alpha"]())
    assert record["detected_format"] == "png"


def test_three_eighths_self_check_passes_on_the_installed_pillow() -> None:
    # The fast path writes Pillow's private draft state; this is the guard that the installed
    # (locked) Pillow still decodes it at exactly 3/8. A Pillow that breaks it fails here.
    preprocessing.three_eighths_supported.cache_clear()
    assert preprocessing.three_eighths_supported() is True


def test_three_eighths_self_check_fails_when_the_decoder_disagrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a decoder scale other than the one the tile extent promises: the check must notice
    monkeypatch.setattr(preprocessing, "_THREE_EIGHTHS_DENOMINATOR", 4)
    preprocessing.three_eighths_supported.cache_clear()
    try:
        assert preprocessing.three_eighths_supported() is False
    finally:
        preprocessing.three_eighths_supported.cache_clear()


def test_without_the_fast_path_jpegs_decode_at_draft_scale(
    monkeypatch: pytest.MonkeyPatch, jpeg_24mp: bytes
) -> None:
    monkeypatch.setattr(preprocessing, "three_eighths_supported", lambda: False)
    out, record = run(jpeg_24mp)
    assert "draft:6000x4000->3000x2000" in record["steps"]  # type: ignore[operator]
    assert opened(out).size == (2048, 1365)


def test_preprocess_options_default_to_what_unset_app_settings_mean() -> None:
    from shared.settings import Settings

    env = {"VISION_ENDPOINT": "http://v", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    parsed = PreprocessOptions.from_settings(Settings.from_env(env))
    assert PreprocessOptions() == parsed
    assert PreprocessOptions().max_dimension == 2048  # the documented default, not a copy of it
