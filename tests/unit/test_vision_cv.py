"""Computer-vision parts of the Vision emulator on in-memory images (no HTTP)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from devstack.vision.ocr import OcrEngine, group_boxes, merged_quad, read_result, word_quads
from devstack.vision.people import (
    HOG_MIDPOINT,
    Box,
    PeopleDetector,
    Person,
    face_confidence,
    fuse_and_suppress,
    hog_confidence,
    person_from_face,
)
from devstack.vision.smartcrops import crop_for_ratio, saliency_map, smart_crops_result

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


# --- read -------------------------------------------------------------------------------------
def test_word_quads_split_line_by_character_offsets() -> None:
    quad = ((0.0, 0.0), (100.0, 0.0), (100.0, 10.0), (0.0, 10.0))
    words = word_quads(quad, "ab cd  efghi")  # 12 characters
    assert [w for w, _ in words] == ["ab", "cd", "efghi"]
    _, first = words[0]
    assert first[0] == (0.0, 0.0) and first[1][0] == pytest.approx(100 * 2 / 12)
    _, last = words[2]
    assert last[0][0] == pytest.approx(100 * 7 / 12) and last[1][0] == pytest.approx(100.0)
    assert last[2] == (100.0, 10.0)


def test_word_quads_follow_a_slanted_line() -> None:
    quad = ((0.0, 0.0), (100.0, 20.0), (100.0, 30.0), (0.0, 10.0))
    (_, left), (_, right) = word_quads(quad, "aaaa bbbb")
    assert left[1][1] == pytest.approx(20 * 4 / 9)
    assert right[3][1] == pytest.approx(10 + 20 * 5 / 9)


def test_read_result_scales_back_and_keeps_scores() -> None:
    quad = ((10.0, 10.0), (50.0, 10.0), (50.0, 20.0), (10.0, 20.0))
    result = read_result([(quad, "hi there", 0.9876)], scale_x=2.0, scale_y=3.0)
    line = result["blocks"][0]["lines"][0]
    assert line["boundingPolygon"][0] == {"x": 20, "y": 30}
    assert [w["text"] for w in line["words"]] == ["hi", "there"]
    assert {w["confidence"] for w in line["words"]} == {0.988}
    assert read_result([], scale_x=1, scale_y=1) == {"blocks": []}


def test_boxes_on_one_row_are_grouped_and_rows_kept_apart() -> None:
    def box(x0: float, x1: float, y0: float, text: str) -> tuple:
        return (((x0, y0), (x1, y0), (x1, y0 + 40), (x0, y0 + 40)), text, 0.9)

    groups = group_boxes(
        [
            box(240, 400, 12, "3 paid"),
            box(20, 250, 10, "Invoice 2048"),
            box(20, 200, 100, "second row"),
            box(600, 700, 10, "far"),
        ]
    )
    assert [[text for _, text, _ in g] for g in groups] == [
        ["Invoice 2048", "3 paid"],
        ["far"],
        ["second row"],
    ]
    assert merged_quad(groups[0])[0] == (20, 10) and merged_quad(groups[0])[1] == (400, 12)


@pytest.fixture(scope="module")
def ocr() -> OcrEngine:
    return OcrEngine()


def test_ocr_reads_printed_text(ocr: OcrEngine) -> None:
    image = Image.new("RGB", (700, 140), "white")
    ImageDraw.Draw(image).text(
        (20, 40), "Invoice 2048 paid", fill="black", font=ImageFont.load_default(size=48)
    )
    lines = ocr.lines(np.asarray(image))
    assert [text for _, text, _ in lines] == ["Invoice 2048 paid"]
    quad, _, score = lines[0]
    assert score > 0.8
    assert 10 <= quad[0][0] <= 40 and 30 <= quad[0][1] <= 60


def test_ocr_on_blank_image_finds_nothing(ocr: OcrEngine) -> None:
    assert ocr.lines(np.full((200, 200, 3), 255, dtype=np.uint8)) == []


# --- people -----------------------------------------------------------------------------------
def test_confidence_mappings_are_monotonic_and_calibrated() -> None:
    assert hog_confidence(HOG_MIDPOINT) == pytest.approx(0.5)
    assert hog_confidence(1.2) < 0.5 < hog_confidence(1.5)
    assert face_confidence(1, 0.0) < face_confidence(5, 0.0) < face_confidence(40, 0.0)
    assert face_confidence(40, 7.0) > 0.95


def test_person_from_face_uses_body_proportions_and_clips() -> None:
    body = person_from_face(Box(100, 50, 20, 20), 1000, 1000)
    assert body.w == pytest.approx(60) and body.x == pytest.approx(80)
    assert body.y == pytest.approx(43) and body.y + body.h == pytest.approx(210)
    clipped = person_from_face(Box(0, 0, 40, 40), 100, 100)
    assert clipped.x == 0 and clipped.x + clipped.w <= 100 and clipped.y + clipped.h <= 100


def test_face_in_upper_third_of_a_body_is_fused() -> None:
    body = Person(Box(100, 100, 60, 150), 0.4, "hog")
    face_box = Box(118, 110, 20, 20)
    face = Person(person_from_face(face_box, 500, 500), 0.6, "face")
    people = fuse_and_suppress([body], [(face_box, face)])
    assert len(people) == 1
    assert people[0].source == "hog+face"
    assert people[0].confidence == pytest.approx(1 - 0.6 * 0.4)


def test_nms_and_confidence_floor() -> None:
    strong = Person(Box(0, 0, 100, 200), 0.9, "hog")
    duplicate = Person(Box(5, 5, 100, 200), 0.6, "hog")
    separate = Person(Box(300, 0, 100, 200), 0.3, "hog")
    noise = Person(Box(600, 0, 100, 200), 0.05, "hog")
    kept = fuse_and_suppress([duplicate, separate, strong, noise], [])
    assert [p.confidence for p in kept] == [0.9, 0.3]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("astronaut.png", 1), ("rocket.jpg", 0), ("chelsea.png", 0), ("coffee.png", 0),
     ("dock-sign.png", 0), ("invoice.jpg", 0)],
)
def test_people_with_confidence_over_half(name: str, expected: int) -> None:
    people = PeopleDetector().detect(rgb(SAMPLES / name))
    assert sum(p.confidence >= 0.5 for p in people) == expected


def test_astronaut_person_box_covers_her_face() -> None:
    people = PeopleDetector().detect(rgb(SAMPLES / "astronaut.png"))
    best = max(people, key=lambda p: p.confidence)
    assert best.box.x <= 177 and best.box.x + best.box.w >= 272
    assert best.box.y <= 66 and best.box.h > 300


def test_detection_on_downscaled_copy_maps_back() -> None:
    image = Image.open(SAMPLES / "astronaut.png").convert("RGB").resize((1536, 1536))
    people = PeopleDetector(max_side=512).detect(np.asarray(image))
    best = max(people, key=lambda p: p.confidence)
    assert best.confidence >= 0.5
    assert best.box.x <= 177 * 3 and best.box.x + best.box.w >= 272 * 3


# --- smart crops ------------------------------------------------------------------------------
def salient_square_on_the_right() -> np.ndarray:
    image = Image.new("RGB", (800, 400), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((620, 150, 720, 250), fill=(250, 20, 20))
    draw.ellipse((650, 180, 690, 220), fill=(10, 10, 240))
    return np.asarray(image)


def test_crop_for_ratio_follows_saliency() -> None:
    pixels = salient_square_on_the_right()
    sal = saliency_map(pixels)
    box = crop_for_ratio(sal, 800, 400, 0.75)
    assert (box["w"], box["h"]) == (300, 400)
    assert box["x"] <= 620 and box["x"] + box["w"] >= 720


def test_smart_crops_result_shapes() -> None:
    pixels = salient_square_on_the_right()
    result = smart_crops_result(pixels, 800, 400, (1.0, 1.8))
    boxes = [v["boundingBox"] for v in result["values"]]
    assert [v["aspectRatio"] for v in result["values"]] == [1.0, 1.8]
    for box in boxes:
        assert box["x"] >= 0 and box["x"] + box["w"] <= 800
        assert box["y"] >= 0 and box["y"] + box["h"] <= 400
    default = smart_crops_result(pixels, 800, 400, ())["values"]
    assert len(default) == 1 and 0.5 <= default[0]["aspectRatio"] <= 2.0


def test_tall_image_slides_vertically() -> None:
    image = Image.new("RGB", (300, 900), (200, 200, 200))
    ImageDraw.Draw(image).rectangle((100, 700, 200, 800), fill=(0, 0, 0))
    sal = saliency_map(np.asarray(image))
    box = crop_for_ratio(sal, 300, 900, 1.0)
    assert box["w"] == 300 and box["h"] == 300 and box["y"] <= 700 and box["y"] + 300 >= 800


def test_png_roundtrip_helper_is_valid() -> None:
    buffer = io.BytesIO()
    Image.fromarray(salient_square_on_the_right()).save(buffer, "PNG")
    assert buffer.getvalue().startswith(b"\x89PNG")
