"""Computer-vision parts of the Vision emulator on in-memory images (no HTTP)."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from devstack.vision import pose as pose_module
from devstack.vision.analysis import Analyzer
from devstack.vision.config import VisionConfig
from devstack.vision.ocr import (
    INKLESS_RANGE,
    Glyph,
    Line,
    OcrEngine,
    group_boxes,
    inkless,
    merged_quad,
    read_result,
    reported_confidence,
    split_words,
    word_quads,
    word_segments,
)
from devstack.vision.params import AnalyzeParams
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
from devstack.vision.pose import (
    PoseDetector,
    PoseModelMissing,
    anchors,
    decode_detections,
    roi_transform,
)
from devstack.vision.smartcrops import (
    crop_for_ratio,
    importance_map,
    saliency_map,
    smart_crops_result,
)
from tests.support import sdk_sample

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


@functools.cache
def pose_detector() -> PoseDetector:
    return PoseDetector()


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


def test_read_result_without_glyphs_splits_on_spaces_with_the_line_score() -> None:
    quad = ((10.0, 10.0), (50.0, 10.0), (50.0, 20.0), (10.0, 20.0))
    result = read_result(None, [Line(quad, "hi there", 0.9876)], scale_x=2.0, scale_y=3.0)
    line = result["blocks"][0]["lines"][0]
    assert line["boundingPolygon"][0] == {"x": 20, "y": 30}
    assert [w["text"] for w in line["words"]] == ["hi", "there"]
    assert {w["confidence"] for w in line["words"]} == {0.987}  # 3 decimals, rounded down
    assert read_result(None, [], scale_x=1, scale_y=1) == {"blocks": []}


LINE_QUAD = ((0.0, 0.0), (100.0, 0.0), (100.0, 10.0), (0.0, 10.0))


def test_a_character_read_across_a_gap_stays_on_its_side_of_the_space() -> None:
    # "ab cd": the recogniser placed "b" a little past the gap, in the "cd" ink.
    chars = (Glyph("a", 0.1, 1.0), Glyph("b", 0.45, 1.0), Glyph(" ", 0.5, 1.0),
             Glyph("c", 0.6, 1.0), Glyph("d", 0.8, 1.0))
    words = split_words(Line(LINE_QUAD, "ab cd", 0.9, chars), [(0.05, 0.4), (0.44, 0.9)])
    assert [w.text for w in words] == ["ab", "cd"]


def test_recognition_only_pass_splits_words_like_the_full_pass(ocr: OcrEngine) -> None:
    # The second pass (merged lines) reads positions from the recogniser's columns alone.
    pixels = rgb(SAMPLES / "dock-sign.png")
    detected = ocr.boxes(pixels)
    assert len(detected) == 4
    for line in detected:
        again = ocr.recognise(pixels, line.quad)
        assert again is not None and again.glyphs
        first = read_result(pixels, [line], scale_x=1, scale_y=1)["blocks"][0]["lines"][0]
        second = read_result(pixels, [again], scale_x=1, scale_y=1)["blocks"][0]["lines"][0]
        assert [w["text"] for w in second["words"]] == [w["text"] for w in first["words"]]


def test_reported_confidence_stays_below_certainty() -> None:
    assert [reported_confidence(v) for v in (1.0, 0.99996, 0.9876, -0.1)] == [
        0.999, 0.999, 0.987, 0.0
    ]


def test_split_words_follows_ink_segments_and_scores_each_word() -> None:
    chars = (
        Glyph("a", 0.05, 0.99), Glyph("b", 0.15, 0.97),  # first ink segment
        Glyph("c", 0.65, 0.5), Glyph("d", 0.75, 0.7),    # second ink segment
    )
    words = split_words(Line(LINE_QUAD, "abcd", 0.8, chars), [(0.0, 0.2), (0.6, 0.8)])
    assert [(w.text, round(w.confidence, 2)) for w in words] == [("ab", 0.98), ("cd", 0.6)]
    assert words[0].quad[0] == (0.0, 0.0) and words[0].quad[1][0] == pytest.approx(20.0)
    assert words[1].quad[0][0] == pytest.approx(60.0) and words[1].quad[2][0] == pytest.approx(80)


def test_a_recognised_space_splits_inside_one_segment_half_way() -> None:
    chars = (Glyph("a", 0.2, 1.0), Glyph(" ", 0.4, 0.6), Glyph("b", 0.6, 0.8))
    words = split_words(Line(LINE_QUAD, "a b", 0.8, chars), [(0.1, 0.7)])
    assert [w.text for w in words] == ["a", "b"]
    assert words[0].quad[1][0] == pytest.approx(40.0) and words[1].quad[0][0] == pytest.approx(40)
    assert [w.confidence for w in words] == [1.0, 0.8]  # the space's score counts for no word


@pytest.mark.parametrize(
    ("text", "size"),
    [("INVOICE 2026-1187", 40), ("Ring bell 42 for help", 32), ("15:00 - 17:00", 28),
     ("Gate 11 closes at 9", 36)],
)
def test_printed_spaces_split_words(ocr: OcrEngine, text: str, size: int) -> None:
    font = ImageFont.load_default(size=size)
    image = Image.new("RGB", (40 + int(font.getlength(text)), size * 3), "white")
    ImageDraw.Draw(image).text((20, size), text, fill="black", font=font)
    assert [[w for w, _ in line] for line in read_words(ocr, np.asarray(image))] == [text.split()]


def test_word_segments_of_a_blank_strip_are_empty() -> None:
    blank = np.full((40, 200, 3), 255, dtype=np.uint8)
    quad = ((0.0, 0.0), (200.0, 0.0), (200.0, 40.0), (0.0, 40.0))
    assert word_segments(blank, Line(quad, "x", 0.9)) == []


def test_boxes_on_one_row_are_grouped_and_rows_kept_apart() -> None:
    def box(x0: float, x1: float, y0: float, text: str) -> Line:
        return Line(((x0, y0), (x1, y0), (x1, y0 + 40), (x0, y0 + 40)), text, 0.9)

    groups = group_boxes(
        [
            box(240, 400, 12, "3 paid"),
            box(20, 250, 10, "Invoice 2048"),
            box(20, 200, 100, "second row"),
            box(600, 700, 10, "far"),
        ]
    )
    assert [[line.text for line in g] for g in groups] == [
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
    pixels = np.asarray(image)
    lines = ocr.lines(pixels)
    assert [line.text.replace(" ", "") for line in lines] == ["Invoice2048paid"]
    quad, score = lines[0].quad, lines[0].score
    assert score > 0.8
    assert 10 <= quad[0][0] <= 40 and 30 <= quad[0][1] <= 60
    read = read_result(pixels, lines, scale_x=1, scale_y=1)["blocks"][0]["lines"][0]
    assert read["text"] == "Invoice 2048 paid"
    assert [w["text"] for w in read["words"]] == ["Invoice", "2048", "paid"]
    lefts = [w["boundingPolygon"][0]["x"] for w in read["words"]]
    assert lefts == sorted(lefts) and len(set(lefts)) == 3


def test_the_ocr_sessions_do_not_spin_and_use_one_thread(ocr: OcrEngine) -> None:
    assert ocr.session_settings() == [("0", 1), ("0", 1), ("0", 1)]


def test_ocr_on_blank_image_finds_nothing(ocr: OcrEngine) -> None:
    assert ocr.lines(np.full((200, 200, 3), 255, dtype=np.uint8)) == []


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (37, 91, 160), (111, 53, 160)])
def test_an_inkless_image_reads_as_no_text_and_the_engine_agrees(
    ocr: OcrEngine, colour: tuple[int, int, int]
) -> None:
    # a flat colour plus codec-like noise of INKLESS_RANGE levels, at the e2e test's size
    rng = np.random.default_rng(sum(colour))
    noise = rng.integers(0, INKLESS_RANGE + 1, size=(80, 200, 3))
    pixels = np.clip(np.array(colour) - noise, 0, 255).astype(np.uint8)
    assert inkless(pixels)
    assert ocr.lines(pixels) == []
    assert ocr.engine_boxes(pixels) == []  # the shortcut returns what the engine finds


def test_ink_in_one_channel_just_past_the_range_is_searched() -> None:
    image = Image.new("RGB", (200, 80), (200, 200, 200))
    ImageDraw.Draw(image).text((12, 32), "QUOKKA 00", fill=(200, 200, 200 - INKLESS_RANGE - 1))
    assert not inkless(np.asarray(image))
    assert inkless(np.asarray(Image.new("L", (200, 80), 7)))


def read_words(ocr: OcrEngine, pixels: np.ndarray) -> list[list[tuple[str, float]]]:
    result = read_result(pixels, ocr.lines(pixels), scale_x=1, scale_y=1)
    return [
        [(w["text"], w["confidence"]) for w in line["words"]]
        for block in result["blocks"]
        for line in block["lines"]
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dock-sign.png", [
            ["LOADING", "DOCK", "B"],
            ["Deliveries", "07:00", "-", "15:00"],
            ["Ring", "bell", "42", "for", "assistance"],
            ["No", "parking", "at", "any", "time"],
        ]),
        ("invoice.jpg", [["INVOICE", "2026-1187"], ["Total", "due:", "318.40", "EUR"]]),
    ],
)
def test_bundled_samples_read_as_separate_words(
    ocr: OcrEngine, name: str, expected: list[list[str]]
) -> None:
    lines = read_words(ocr, rgb(SAMPLES / name))
    assert [[text for text, _ in line] for line in lines] == expected
    confidences = [c for line in lines for _, c in line]
    assert len(confidences) == sum(len(line) for line in expected)
    assert all(0.5 < c < 1.0 for c in confidences)
    assert len(set(confidences)) > 1  # each word is scored on its own characters


def test_sdk_sample_reads_the_documented_lines_and_words(ocr: OcrEngine) -> None:
    lines = read_words(ocr, rgb(sdk_sample.sample_jpg()))
    assert [" ".join(t for t, _ in line) for line in lines] == list(sdk_sample.DOCUMENTED_LINES)
    assert [[t for t, _ in line] for line in lines][2] == ["123", "456"]
    assert all(0.95 <= c < 1.0 for line in lines for _, c in line)  # the service: ~0.99


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png"])
def test_images_without_text_have_no_blocks(ocr: OcrEngine, name: str) -> None:
    pixels = rgb(SAMPLES / name)
    assert read_result(pixels, ocr.lines(pixels), scale_x=1, scale_y=1) == {"blocks": []}


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
    people = PeopleDetector(pose=pose_detector()).detect(rgb(SAMPLES / name))
    assert sum(p.confidence >= 0.5 for p in people) == expected


def test_astronaut_person_box_covers_her_face() -> None:
    people = PeopleDetector(pose=pose_detector()).detect(rgb(SAMPLES / "astronaut.png"))
    best = max(people, key=lambda p: p.confidence)
    assert best.box.x <= 177 and best.box.x + best.box.w >= 272
    assert best.box.y <= 66 and best.box.h > 300


def test_sdk_sample_person_matches_the_documented_example() -> None:
    people = PeopleDetector(pose=pose_detector()).detect(rgb(sdk_sample.sample_jpg()))
    confident = [p for p in people if p.confidence >= 0.5]
    assert len(confident) == 1
    (person,) = confident
    box = (person.box.x, person.box.y, person.box.w, person.box.h)
    assert person.source == "pose"
    assert person.confidence >= 0.8  # documented: 0.960
    assert sdk_sample.iou(box, sdk_sample.DOCUMENTED_PERSON) >= 0.7


def test_classic_detectors_alone_miss_the_masked_sdk_sample_person() -> None:
    # Why BlazePose is there: without it the best candidate is a weak face (the masked woman).
    people = PeopleDetector(pose=None).detect(rgb(sdk_sample.sample_jpg()))
    assert people and max(p.confidence for p in people) < 0.5


def test_detection_on_downscaled_copy_maps_back() -> None:
    image = Image.open(SAMPLES / "astronaut.png").convert("RGB").resize((1536, 1536))
    people = PeopleDetector(max_side=512, pose=pose_detector()).detect(np.asarray(image))
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


def sdk_sample_crops(with_subjects: bool) -> list[tuple[int, int, int, int]]:
    pixels = rgb(sdk_sample.sample_jpg())
    height, width = pixels.shape[:2]
    subjects = [
        (*person.box, person.confidence) for person in pose_detector().detect(pixels)
    ] if with_subjects else []
    result = smart_crops_result(pixels, width, height, (0.9, 1.33), subjects)
    assert [v["aspectRatio"] for v in result["values"]] == [0.9, 1.33]
    return [tuple(v["boundingBox"][k] for k in "xywh") for v in result["values"]]  # type: ignore[misc]


def test_sdk_sample_crops_keep_the_person_like_the_documented_crop() -> None:
    crop_09, crop_133 = sdk_sample_crops(with_subjects=True)
    assert sdk_sample.iou(crop_09, sdk_sample.DOCUMENTED_CROP_0_9) >= 0.7
    assert sdk_sample.iou(crop_133, sdk_sample.DERIVED_CROP_1_33) >= 0.7
    px, _, pw, _ = sdk_sample.DOCUMENTED_PERSON
    for x, _, w, _ in (crop_09, crop_133):
        assert x <= px and x + w >= px + pw


def test_saliency_alone_misses_the_sdk_sample_subject() -> None:
    # The subject term is what moves the crop: saliency alone favours the plants on the left.
    crop_09, _ = sdk_sample_crops(with_subjects=False)
    assert sdk_sample.iou(crop_09, sdk_sample.DOCUMENTED_CROP_0_9) < 0.7


def test_subject_mass_outweighs_saliency() -> None:
    sal = np.zeros((10, 20))
    sal[:, 0] = 1.0  # all saliency on the left edge
    importance = importance_map(sal, [(150.0, 0.0, 50.0, 100.0, 0.8)], 200, 100)
    assert importance[:, 15:].sum() == pytest.approx(1.6 * sal.sum())  # 2 x 0.8 x saliency
    assert importance[:, :15].sum() == pytest.approx(sal.sum())  # saliency left untouched
    box = crop_for_ratio(importance, 200, 100, 1.0)
    assert box["x"] + box["w"] >= 200 - 1  # the crop moved to the subject


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


# --- BlazePose stages -------------------------------------------------------------------------
def test_anchor_layout_matches_the_detector_output() -> None:
    centres = anchors()
    assert centres.shape == (2254, 2)  # 28x28x2 + 14x14x2 + 7x7x6, the model's output rows
    assert centres[0] == pytest.approx((0.5 / 28, 0.5 / 28))
    assert centres[-1] == pytest.approx((6.5 / 7, 6.5 / 7))


def test_decode_merges_overlapping_candidates_by_score() -> None:
    anchor_xy = np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.1]])
    raw = np.zeros((3, 12), dtype=np.float32)
    raw[:, 2:4] = 22.4  # boxes 0.1 wide
    raw[1, 4] = 22.4  # the second candidate's hip keypoint 0.1 further right
    logits = np.array([3.0, 3.0, -5.0], dtype=np.float32)  # third below the score floor
    (found,) = decode_detections(raw, logits, anchor_xy)
    score, values = found
    assert score == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert values[4] == pytest.approx(0.55)  # score-weighted mean of 0.5 and 0.6


def test_roi_puts_the_hips_in_the_centre_and_the_body_upright() -> None:
    keypoints = np.array([[200.0, 300.0], [200.0, 200.0], [0, 0], [0, 0]])  # radius point above
    matrix = roi_transform(keypoints)
    assert matrix is not None
    hip = matrix @ np.array([200.0, 300.0, 1.0])
    top = matrix @ np.array([200.0, 200.0, 1.0])
    assert hip == pytest.approx((128, 128))
    assert top[0] == pytest.approx(128) and top[1] == pytest.approx(128 - 256 / 2.5)
    tilted = roi_transform(np.array([[200.0, 300.0], [300.0, 300.0], [0, 0], [0, 0]]))
    assert tilted is not None
    assert tilted @ np.array([300.0, 300.0, 1.0]) == pytest.approx(top)  # rotated to upright
    assert roi_transform(np.zeros((4, 2))) is None


def test_missing_model_files_are_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pose_module, "_MODEL_FILES", {"detector": Path("no/such.tflite")})
    with pytest.raises(PoseModelMissing, match=r"requirements-nodeps\.txt"):
        pose_module.model_paths()


def test_blazepose_ignores_a_cat_and_empty_scenes() -> None:
    for name in ("chelsea.png", "rocket.jpg", "dock-sign.png"):
        assert all(p.confidence < 0.5 for p in pose_detector().detect(rgb(SAMPLES / name)))


def test_crops_are_the_same_whether_people_are_requested_or_not() -> None:
    analyzer = Analyzer(VisionConfig(key="k"), ocr=None)
    try:
        data = sdk_sample.sample_jpg().read_bytes()
        alone = analyzer.analyze_sync(
            data, AnalyzeParams("2024-02-01", ("smartCrops",), aspect_ratios=(0.9,))
        )
        both = analyzer.analyze_sync(
            data, AnalyzeParams("2024-02-01", ("people", "smartCrops"), aspect_ratios=(0.9,))
        )
    finally:
        analyzer.close()
    assert both["smartCropsResult"] == alone["smartCropsResult"]
    (crop,) = alone["smartCropsResult"]["values"]
    box = tuple(crop["boundingBox"][k] for k in "xywh")
    assert sdk_sample.iou(box, sdk_sample.DOCUMENTED_CROP_0_9) >= 0.7  # type: ignore[arg-type]
