"""Image descriptors on the pixels preprocessing already decoded: what each one responds to."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.analysis.descriptors import THUMB_SIDE, describe, geometry
from shared.analysis.preprocessing import PreprocessOptions, preprocess
from tests.support.images import darker_blurrier, encode, photo, sample_images

SAMPLES = sample_images()


def record_of(data: bytes) -> dict[str, object]:
    descriptors = preprocess(data).record.descriptors
    assert descriptors is not None
    return descriptors.as_dict()


def test_every_sample_gets_every_pixel_descriptor() -> None:
    assert len(SAMPLES) >= 6
    for name, data in SAMPLES.items():
        d = record_of(data)
        for key in ("brightness", "contrast", "sharpness", "saturation", "aspect_ratio",
                    "megapixels"):
            assert isinstance(d[key], float), (name, key)
        assert 0 < d["brightness"] < 1 and 0 < d["contrast"] < 0.5, name  # type: ignore[operator]
        assert d["format"] in ("png", "jpeg"), name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_darker_and_blurrier_moves_brightness_and_sharpness_down(name: str) -> None:
    before, after = record_of(SAMPLES[name]), record_of(darker_blurrier(SAMPLES[name]))
    assert after["brightness"] < 0.6 * before["brightness"]  # type: ignore[operator]
    assert after["sharpness"] < before["sharpness"] - 0.3  # type: ignore[operator]
    assert after["aspect_ratio"] == before["aspect_ratio"]
    assert after["megapixels"] == before["megapixels"]


def test_greyscale_has_no_saturation_and_colour_has_some() -> None:
    colour = describe(photo(), width=320, height=240, fmt="png")
    grey = describe(photo().convert("L"), width=320, height=240, fmt="png")
    assert grey.saturation == 0.0
    assert colour.saturation is not None and colour.saturation > 0.2


def test_flat_image_has_zero_contrast_and_sharpness() -> None:
    d = describe(Image.new("RGB", (400, 300), (128, 128, 128)), width=400, height=300,
                 fmt="png")
    assert d.contrast == 0.0 and d.sharpness == 0.0
    assert d.brightness == pytest.approx(128 / 255, abs=1e-3)


def test_large_images_are_measured_on_a_bounded_thumbnail() -> None:
    big = photo((3000, 2000))
    d = describe(big, width=3000, height=2000, fmt="jpeg")
    small = describe(big.reduce(12), width=3000, height=2000, fmt="jpeg")
    assert max(big.reduce(12).size) <= THUMB_SIDE
    assert d == small  # same thumbnail scale, same numbers


def test_reencoded_and_passthrough_paths_both_describe() -> None:
    data = encode(photo((3000, 2000)), "JPEG", quality=90)
    reencoded = preprocess(data, PreprocessOptions(max_dimension=1024)).record
    passthrough = preprocess(data, PreprocessOptions(max_dimension=4096)).record
    assert reencoded.reencoded and not passthrough.reencoded
    assert reencoded.descriptors is not None and passthrough.descriptors is not None
    assert reencoded.descriptors.megapixels == passthrough.descriptors.megapixels == 6.0
    assert reencoded.descriptors.brightness == pytest.approx(
        passthrough.descriptors.brightness, abs=0.02)


def test_exif_camera_model_is_a_trimmed_category() -> None:
    exif = Image.Exif()
    exif[0x0110] = "  Canon EOS R5\x00" + "x" * 80
    data = encode(photo(), "JPEG", exif=exif.tobytes())
    d = preprocess(data).record.descriptors
    assert d is not None and d.camera_model is not None
    assert d.camera_model.startswith("Canon EOS R5") and len(d.camera_model) <= 40
    assert record_of(encode(photo(), "JPEG"))["camera_model"] is None


def test_geometry_needs_no_pixels() -> None:
    g = geometry(600, 400, "png", None)
    assert (g.aspect_ratio, g.megapixels, g.brightness) == (1.5, 0.24, None)


def test_descriptors_go_into_the_result_document() -> None:
    data = SAMPLES["rocket.jpg"]
    doc = preprocess(data).record.as_dict()
    assert set(doc["descriptors"]) >= {"brightness", "sharpness", "format"}
    with Image.open(io.BytesIO(data)) as im:
        assert doc["descriptors"]["aspect_ratio"] == round(im.width / im.height, 4)
