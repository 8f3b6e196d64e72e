"""Drift detection on real images: stable stream quiet, darker+blurrier stream and a model switch
detected — through the real preprocessing, the real Vision client against the Vision emulator,
the request attributes ``shared.telemetry`` records, the Monitor emulator's KQL and the status
evaluation of the alert rules.

Real images: the bundled ``samples/``; the moved stream is computed from them with Pillow here
(``tests.support.images.darker_blurrier``). Each distinct image is analysed once per scenario (the
emulator runs real OCR and detectors, about a second per image); a stream repeats those outcomes.

Simulated time, as in ``test_detection``: for "k minutes after onset" the Monitor emulator is
emptied and refilled with request rows laid out relative to the real now (the emulator's
``ago()`` reads the wall clock) and the rules are evaluated as the status endpoint does. The rows
carry exactly the properties ``shared.analysis.observer.outcome_measures`` puts on an analysed
image's
request span. Re-baselining: ``devstack.drift_baseline.pin`` runs against the same emulator and
the status evaluation reads the pinned document back. No test waits for real minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import procs
from devstack.drift_baseline import pin
from devstack.vision.config import MODEL_VERSION
from devstack.vision.models import REHEARSAL_VERSION
from shared.analysis.observer import outcome_measures
from shared.analysis.pipeline import AnalysisOutcome, Outcome, PipelineDeps, process_blob
from shared.analysis.preprocessing import PreprocessOptions
from shared.analysis.results import ResultRepository
from shared.analysis.vision import build_vision_client
from shared.monitoring.drift import Baseline, load_baseline
from shared.monitoring.logsquery import LogsQueryRunner
from shared.monitoring.status import CLIENT_OPTIONS, build_status
from shared.settings import Settings
from tests.support.fakes import Documents, MemoryBlob, MemoryStore
from tests.support.images import darker_blurrier, sample_images
from tests.support.telemetry_gen import MonitorEmulator, request, running_monitor

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "drift-key"
PER_MINUTE = 6  # images per minute: 90 in a 15-minute window, enough for every minimum
BASELINE = timedelta(hours=2)  # of history before the current window (the rule looks back 7 d)
DRIFT_RULES = {"input-drift", "output-confidence-drop", "model-version-changed"}


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = Path(tmp_path_factory.mktemp("drift-vision"))
    port = procs.free_port()
    argv = [sys.executable, "-m", "devstack.vision", "--port", str(port), "--key", KEY,
            "--tier", "S1", "--tps", "50"]
    _, record = procs.spawn("vision", argv, log_path=state / "vision.log", cwd=REPO_ROOT)
    endpoint = f"http://{procs.LOOPBACK}:{port}"
    try:
        procs.wait_until(lambda: procs.http_ok(f"{endpoint}/healthz"), timeout=90,
                         what="Vision emulator")
        yield endpoint
    finally:
        procs.stop(record.pid)


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEmulator]:
    yield from running_monitor(Path(tmp_path_factory.mktemp("drift-monitor")))


@pytest.fixture(scope="module")
def settings(vision: str, monitor: MonitorEmulator) -> Settings:
    return Settings.from_env({
        "VISION_ENDPOINT": vision, "VISION_KEY": KEY, "VISION_TIER": "S1",
        "VISION_FEATURES": "read,people,smartCrops", "VISION_RATE_LIMIT_PER_SECOND": "20",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "LOGS_QUERY_ENDPOINT": monitor.query_endpoint, "LOGS_WORKSPACE_ID": monitor.workspace_id,
    })


def set_model(vision: str, version: str) -> None:
    answer = httpx.put(f"{vision}/admin/model", json={"latest": version},
                       headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=10)
    answer.raise_for_status()
    assert answer.json()["latest"] == version


def analyse(settings: Settings, images: dict[str, bytes]) -> list[AnalysisOutcome]:
    """Each image through the real pipeline (preprocessing + Vision client), documents in memory."""
    deps = PipelineDeps(
        analyzer=build_vision_client(settings.vision),
        repository=ResultRepository(MemoryStore(), results_container="results",
                                    failed_container="failed"),
        features=settings.vision.features,
        preprocess_options=PreprocessOptions.from_settings(settings),
    )
    outcomes = [process_blob(MemoryBlob(name, data, etag=f"0x{i}"), deps)
                for i, (name, data) in enumerate(sorted(images.items()))]
    assert [o.status for o in outcomes] == [Outcome.ANALYZED] * len(images)
    return outcomes


@pytest.fixture(scope="module")
def outcomes(vision: str, settings: Settings) -> dict[str, list[AnalysisOutcome]]:
    samples = sample_images()
    assert len(samples) >= 6
    set_model(vision, MODEL_VERSION)
    normal = analyse(settings, samples)
    moved = analyse(settings, {name: darker_blurrier(data) for name, data in samples.items()})
    set_model(vision, REHEARSAL_VERSION)
    try:
        new_model = analyse(settings, samples)
    finally:
        set_model(vision, MODEL_VERSION)
    return {"normal": normal, "moved": moved, "new_model": new_model}


def brightness_of(outcome: AnalysisOutcome) -> float:
    record = outcome.preprocessing
    assert record is not None and record.descriptors is not None
    assert record.descriptors.brightness is not None
    return record.descriptors.brightness


def rows(stream: Sequence[AnalysisOutcome], start: datetime, end: datetime,
         offset: int = 0) -> list[dict[str, Any]]:
    """Request rows of ``stream`` cycled at ``PER_MINUTE`` between ``start`` and ``end``."""
    out, step = [], timedelta(minutes=1) / PER_MINUTE
    t, i = start, offset
    while t < end:
        outcome = stream[i % len(stream)]
        props = {k: str(v) for k, v in outcome_measures(outcome).items() if v is not None}
        env = request(t, duration_ms=outcome.duration_ms, outcome="analyzed")
        env["data"]["baseData"]["properties"].update(props)
        out.append(env)
        t, i = t + step, i + 1
    return out


def evaluate(monitor: MonitorEmulator, settings: Settings, before: Sequence[AnalysisOutcome],
             after: Sequence[AnalysisOutcome], minutes: int, *,
             baseline: Baseline | None = None) -> dict[str, Any]:
    """Alert states ``minutes`` simulated minutes after the stream changed to ``after``."""
    monitor.reset()
    now = datetime.now(UTC)
    onset = now - timedelta(minutes=minutes)
    envelopes = rows(before, now - timedelta(minutes=15) - BASELINE, onset)
    envelopes += rows(after, onset, now, offset=len(envelopes))
    assert monitor.post(envelopes) == len(envelopes)
    runner = LogsQueryRunner.from_settings(settings, client_options=CLIENT_OPTIONS)
    report = build_status(settings, runner, now=now, quota_loader=lambda _s: None,
                          baseline_loader=lambda _s: baseline or Baseline())
    states = {a.rule.name: a for a in report.alerts if a.rule.name in DRIFT_RULES}
    assert set(states) == DRIFT_RULES
    errors = [a.error for a in states.values() if a.error]
    assert not errors, errors
    return states


def test_a_stable_stream_of_the_samples_raises_no_drift_alert(
    monitor: MonitorEmulator, settings: Settings, outcomes: dict[str, list[AnalysisOutcome]]
) -> None:
    states = evaluate(monitor, settings, outcomes["normal"], outcomes["normal"], 15)
    assert {name for name, s in states.items() if s.active} == set()
    # evaluated on data, not silent for lack of it
    assert states["input-drift"].rows == 8 and states["input-drift"].value is not None
    assert states["input-drift"].value < 0.05
    assert states["output-confidence-drop"].value is not None


def test_darker_blurrier_stream_raises_input_drift_within_15_minutes_naming_them(
    monitor: MonitorEmulator, settings: Settings, outcomes: dict[str, list[AnalysisOutcome]]
) -> None:
    for minute in range(1, 16):
        states = evaluate(monitor, settings, outcomes["normal"], outcomes["moved"], minute)
        if states["input-drift"].active:
            break
    else:
        pytest.fail("input-drift not active within 15 simulated minutes")
    print(f"input-drift after {minute} simulated min: {states['input-drift'].summary}")
    first = {label.split()[0] for label in states["input-drift"].breaching}
    assert first and first <= {"brightness", "sharpness", "contrast", "saturation"}
    # a whole window later every descriptor the change moved is named, and only those
    states = evaluate(monitor, settings, outcomes["normal"], outcomes["moved"], 15)
    print(f"input-drift after 15 simulated min: {states['input-drift'].summary}")
    drifted = {label.split()[0] for label in states["input-drift"].breaching}
    assert {"brightness", "sharpness"} <= drifted
    assert not drifted & {"aspect_ratio", "megapixels", "format", "camera_model"}
    assert not states["model-version-changed"].active


def test_model_switch_raises_version_changed_and_reports_the_confidence_shift(
    monitor: MonitorEmulator, settings: Settings, outcomes: dict[str, list[AnalysisOutcome]]
) -> None:
    assert {o.model_version for o in outcomes["new_model"]} == {REHEARSAL_VERSION}
    states = evaluate(monitor, settings, outcomes["normal"], outcomes["new_model"], 1)
    changed = states["model-version-changed"]
    assert changed.active and changed.breaching == (f"{REHEARSAL_VERSION} Changed 1",)
    states = evaluate(monitor, settings, outcomes["normal"], outcomes["new_model"], 15)
    drop = states["output-confidence-drop"]
    print(f"after the switch: {drop.summary}")
    assert drop.active and drop.value is not None and drop.value <= -0.05
    assert any(label.startswith("word_confidence") for label in drop.breaching)
    assert not states["input-drift"].active  # the images did not change


def test_pinning_the_new_normal_quiets_the_input_drift_alert(
    monitor: MonitorEmulator, settings: Settings, outcomes: dict[str, list[AnalysisOutcome]]
) -> None:
    # the moved stream began an hour ago: the rolling baseline is still mostly the old normal
    states = evaluate(monitor, settings, outcomes["normal"], outcomes["moved"], 60)
    assert states["input-drift"].active
    now = datetime.now(UTC)
    documents = Documents()
    runner = LogsQueryRunner.from_settings(settings, client_options=CLIENT_OPTIONS)
    pinned = pin(runner, documents, settings, start=now - timedelta(minutes=55),
                 end=now - timedelta(minutes=16), now=now)
    brightness = [r for r in pinned.distribution if r["Descriptor"] == "brightness"]
    assert sum(r["Images"] for r in brightness) >= settings.drift.min_images
    # the snapshot holds the dark stream's brightness bins, and only those
    dark = {int(brightness_of(o) * 10) / 10 for o in outcomes["moved"]}
    assert {round(float(r["Bin"]), 1) for r in brightness} == dark
    # the same data (the emulator was not refilled), evaluated against the pinned range
    report = build_status(settings, runner, now=now, quota_loader=lambda _s: None,
                          baseline_loader=lambda _s: load_baseline(documents))
    [drift] = [a for a in report.alerts if a.rule.name == "input-drift"]
    assert report.drift is not None and report.drift["baseline"]["kind"] == "pinned"
    assert drift.error is None and drift.value is not None
    assert not drift.active, drift.summary
