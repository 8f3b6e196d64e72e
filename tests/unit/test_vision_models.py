"""The Vision emulator's model versions: ``latest`` moves at run time and changes the outputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from devstack.vision import VisionConfig, create_app
from devstack.vision.clock import FakeClock
from devstack.vision.models import CATALOG, REHEARSAL_VERSION, ModelVersion
from tests.support.vision import ANALYZE, HEADERS, KEY, fast_analyzer, png

GA = "2023-10-01"


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(VisionConfig(key=KEY, tier="S1", tps=100), clock=FakeClock(),
                     analyzer_factory=fast_analyzer)
    with TestClient(app) as test_client:
        yield test_client


def words(client: TestClient, **extra: str) -> tuple[str, list[float]]:
    query = {"api-version": "2024-02-01", "features": "read", **extra}
    body = client.post(ANALYZE, params=query, content=png(), headers=HEADERS).json()
    line = body["readResult"]["blocks"][0]["lines"][0]
    return body["modelVersion"], [w["confidence"] for w in line["words"]]


def test_switching_latest_changes_version_and_confidences(client: TestClient) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    assert client.get("/admin/model", headers=admin).json() == {
        "latest": GA, "versions": sorted(CATALOG)}
    version, before = words(client)
    assert (version, before) == (GA, [0.9, 0.9])  # the fake OCR's score, uncalibrated
    answer = client.put("/admin/model", json={"latest": REHEARSAL_VERSION}, headers=admin)
    assert answer.status_code == 200 and answer.json()["latest"] == REHEARSAL_VERSION
    version, after = words(client)
    assert version == REHEARSAL_VERSION
    assert after == [0.75, 0.75]  # sigmoid(logit(0.9) / 2)
    # a pinned request still gets the model it asked for
    assert words(client, **{"model-version": GA}) == (GA, [0.9, 0.9])


def test_unknown_versions_are_refused(client: TestClient) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    bad = client.put("/admin/model", json={"latest": "2030-01-01"}, headers=admin)
    assert bad.status_code == 400
    assert client.put("/admin/model", json={"latest": GA}).status_code == 401
    query = {"api-version": "2024-02-01", "features": "read", "model-version": "2030-01-01"}
    refused = client.post(ANALYZE, params=query, content=png(), headers=HEADERS)
    assert refused.status_code == 400


def test_calibration_is_monotone_and_identity_for_the_ga_model() -> None:
    ga, rehearsal = CATALOG[GA], CATALOG[REHEARSAL_VERSION]
    values = [0.1, 0.5, 0.8, 0.96, 0.99]
    assert [ga.calibrate(v) for v in values] == values
    calibrated = [rehearsal.calibrate(v) for v in values]
    assert calibrated == sorted(calibrated)
    assert rehearsal.calibrate(0.5) == pytest.approx(0.5)
    assert all(c < v for c, v in zip(calibrated[2:], values[2:], strict=True))


def test_ocr_floor_drops_words_the_model_is_unsure_of() -> None:
    model = ModelVersion("x", temperature=1.0, ocr_min_confidence=0.5)
    result = {"readResult": {"blocks": [{"lines": [{"words": [
        {"text": "a", "confidence": 0.4}, {"text": "b", "confidence": 0.6}]}]}]}}
    out = model.apply(result)
    assert [w["text"] for w in out["readResult"]["blocks"][0]["lines"][0]["words"]] == ["b"]
    assert out["modelVersion"] == "x"
