"""The official ``azure-ai-vision-imageanalysis`` samples, from its sdist, against the Vision
emulator.

Unchanged but for the image URL of the URL samples (the SDK's public sample image is served
from loopback instead; the emulator fetches loopback URLs only). Endpoint and key come from
the ``VISION_ENDPOINT``/``VISION_KEY`` variables the samples document, the Entra ID samples'
``DefaultAzureCredential()`` from the loopback managed-identity endpoint.

Features the emulator computes (read, people, smartCrops, metadata) must print what the sample
prints against the service. The rest (caption, denseCaptions, objects, tags) need the
service's models: the emulator refuses them as a region without them does, with
``NotSupportedVisualFeature``; such a sample counts as not behaving as against Azure.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support import fidelity as support
from tests.support.fidelity import Stack, record

pytestmark = [pytest.mark.integration, pytest.mark.fidelity]

SUITE = "azure-ai-vision-imageanalysis samples"
PUBLIC_IMAGE = "https://aka.ms/azsdk/image-analysis/sample.jpg"
UNSUPPORTED = "NotSupportedVisualFeature"

Check = support.Check
_prints = support.prints


#: The service's documented answer on the SDK's sample.jpg (REST spec example
#: AnalyzeFromUrl_MaximumSet, the same image): the person, the smart crops, the OCR words.
DOCUMENTED_PERSON = ({"x": 395, "y": 241, "w": 261, "h": 333}, 0.9602553248405457)
DOCUMENTED_CROPS = {0.9: {"x": 238, "y": 0, "w": 511, "h": 568},
                    1.33: {"x": 54, "y": 0, "w": 760, "h": 571}}
DOCUMENTED_WORDS = ("Sample", "text", "Hand", "writing", "123", "456")
MIN_CONFIDENCE, MIN_IOU = 0.8, 0.7
_BOX = r"(\{'x': \d+, 'y': \d+, 'w': \d+, 'h': \d+\})"


def iou(a: dict[str, int], b: dict[str, int]) -> float:
    ix = max(0, min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]))
    iy = max(0, min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]))
    inter = ix * iy
    union = a["w"] * a["h"] + b["w"] * b["h"] - inter
    return inter / union if union else 0.0


def _people(run: support.SampleRun) -> str | None:
    found = [(ast.literal_eval(box), float(conf)) for box, conf in
             re.findall(_BOX + r", Confidence ([0-9.]+)", run.stdout)]
    if not found:
        return "no person printed"
    box, confidence = max(found, key=lambda f: iou(f[0], DOCUMENTED_PERSON[0]))
    overlap = iou(box, DOCUMENTED_PERSON[0])
    measured = f"person {box} confidence {confidence:.3f}, IoU {overlap:.2f} with the documented"
    if confidence < MIN_CONFIDENCE or overlap < MIN_IOU:
        return (f"{measured} (service: {DOCUMENTED_PERSON[1]:.3f}; needs >= "
                f"{MIN_CONFIDENCE}, IoU >= {MIN_IOU})")
    return None


def _crops(run: support.SampleRun) -> str | None:
    printed = {float(r): ast.literal_eval(b) for r, b in
               re.findall(r"Aspect ratio ([0-9.]+): Smart crop " + _BOX, run.stdout)}
    short = []
    for ratio, documented in DOCUMENTED_CROPS.items():
        box = printed.get(ratio)
        overlap = iou(box, documented) if box else 0.0
        if overlap < MIN_IOU:
            short.append(f"{ratio}: {box} IoU {overlap:.2f} (needs >= {MIN_IOU})")
    return "; ".join(short) or None


def _ocr(run: support.SampleRun) -> str | None:
    words = re.findall(r"Word: '([^']*)'", run.stdout)
    missing = [w for w in DOCUMENTED_WORDS if w not in words]
    return f"words {words}: lacks {missing} as separate words" if missing else None


EXPECTED: dict[str, Check | None] = {
    "sample_ocr_image_file.py": _ocr,
    "sample_ocr_image_url.py": _ocr,
    "async_samples/sample_ocr_image_url_async.py": _ocr,
    "async_samples/sample_ocr_image_url_entra_id_auth_async.py": _ocr,
    "sample_people_image_file.py": _people,
    "sample_smart_crops_image_file.py": _crops,
    # Features that need the service's models: None = expected to be refused locally.
    "sample_analyze_all_image_file.py": None,
    "sample_caption_image_file.py": None,
    "sample_caption_image_file_entra_id_auth.py": None,
    "sample_caption_image_url.py": None,
    "async_samples/sample_caption_image_file_async.py": None,
    "sample_dense_captions_image_file.py": None,
    "sample_objects_image_file.py": None,
    "sample_tags_image_file.py": None,
}


#: Computable features still short of the documented answer (measured numbers in the report).
#: Kept failing-expected so the normal test command stays usable, and strict the other way: a
#: sample listed here that meets the documented example fails until it is taken off the list.
CALIBRATION_PENDING: set[str] = set()  # every computable sample meets the documented example


def test_every_sample_of_the_sdist_is_listed() -> None:
    found = support.sample_names("azure-ai-vision-imageanalysis")
    assert found and found == sorted(EXPECTED), "the sdist's samples changed: review EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(name: str, stack: Stack, tmp_path: Path) -> None:
    sample = support.sdist("azure-ai-vision-imageanalysis") / "samples" / name
    source = sample.read_text(encoding="utf-8")
    replacements = ([(PUBLIC_IMAGE, f"{stack.image_base}/sample.jpg")]
                    if PUBLIC_IMAGE in source else [])
    run = support.run_sample(sample, tmp_path, stack.sample_env(), replacements)
    output = run.stdout + run.stderr
    check = EXPECTED[name]
    if check is None:
        refused = UNSUPPORTED in output
        detail = ("refused locally with NotSupportedVisualFeature (needs the service's model)"
                  if refused else f"exit {run.returncode}; expected a NotSupportedVisualFeature "
                  f"refusal: {output.strip().splitlines()[-1:]}")
        record(SUITE, name, False, detail)
        assert refused, detail
        pytest.xfail("the emulator does not compute this feature")
    problems = []
    if run.returncode != 0:
        problems.append(f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}")
    found = check(run)
    if found:
        problems.append(found)
    changed = "image URL" if run.replaced else "unchanged"
    record(SUITE, name, not problems,
           "; ".join(problems) or f"ok ({changed}, {run.seconds:.1f} s)")
    if name in CALIBRATION_PENDING:
        assert problems, f"{name} now meets the documented example: drop it from " \
                         "CALIBRATION_PENDING"
        pytest.xfail("short of the service's documented answer: " + "; ".join(problems))
    assert not problems, "\n".join(problems) + "\n--- stdout\n" + run.stdout[-3000:] + (
        "\n--- stderr\n" + run.stderr[-3000:])
