"""Rehearsals of the tuning review on the local twin: real uploads, the real host and pipeline,
the Vision emulator's fault model, telemetry through the exporter into the Monitor emulator, and
the review run over HTTP exactly as in Azure.

Each scenario has a known right answer:

1. a healthy, stable stream → no change;
2. failures hang to a 30 s timeout while every success is quick → a lower timeout, inside the
   band max(3 x the successes' p99, p99 + 2 s) and at most half the current value; applied (one
   step per review) it cuts the p95 analysis time of the same stream by at least 40 % against
   the stream before tuning, and the next review keeps it;
3. the same images fail on every attempt (sticky faults) while others need at most a second
   try → fewer retries (recommended 1-2, applied one step: 4 → 3);
4. an applied change followed by a worse p95 → reverted by the next review;
5. the same printed text uploaded at 1000, 1500 and 2000 px, the service slower on the larger
   images (the emulator's size latency) while OCR reads the same words → a lower
   ``PREPROCESS_MAX_DIMENSION`` (1536, the next bucket's top).

Nothing waits for real minutes: reviews are called on demand; every wait polls with a deadline.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from shared.logsquery import LogsQueryRunner
from shared.settings import Settings
from shared.status import CLIENT_OPTIONS
from shared.tuning_jobs import load_kpi
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, REPO_ROOT, PipelineStack

pytestmark = pytest.mark.integration

SETTINGS = {
    **BASE_SETTINGS,
    "VISION_FEATURES": "people",  # quick on the emulator: the scenarios are about calls
    "VISION_TIMEOUT_SECONDS": "30",
    "VISION_MAX_RETRIES": "4",
    "VISION_BACKOFF_BASE_SECONDS": "0.2",
    "VISION_BACKOFF_MAX_SECONDS": "1",
    "TUNING_MODE": "recommend",
    "TUNING_MIN_SAMPLES": "12",
    "TUNING_OVERLAY_TTL_SECONDS": "1",
    "TUNING_WINDOW_HOURS": "1",
    # The client's own safety nets stay out of the way, so each scenario exercises the setting
    # it is about: the breaker (5 failures in a row happen by chance at these fault rates) and
    # the retry budget (it would cap the very retries scenario 3 is meant to show as useless).
    "VISION_BREAKER_FAILURES": "1000",
    "VISION_RETRY_BUDGET_RATIO": "1.0",
}
SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    # the account allows more than the client's ceiling (10/s): a healthy stream sees no 429
    with PipelineStack(tmp_path_factory.mktemp("tuning-stack"), SETTINGS, vision_tps=20) as s:
        yield s


@pytest.fixture(scope="module")
def runner(stack: PipelineStack) -> LogsQueryRunner:
    settings = Settings.from_env({**SETTINGS, "VISION_ENDPOINT": "http://127.0.0.1:9",
                                  "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                                  "LOGS_QUERY_ENDPOINT": str(stack.endpoints["query_endpoint"]),
                                  "LOGS_WORKSPACE_ID": str(stack.endpoints["workspace_id"])})
    return LogsQueryRunner.from_settings(settings, client_options=CLIENT_OPTIONS)


def images(tag: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEGs (256 px) from the bundled samples, each with its own mark, so
    the sticky fault (keyed on the bytes) picks images, not copies of one image."""
    out = []
    for i in range(count):
        with Image.open(REPO_ROOT / "samples" / SAMPLES[i % len(SAMPLES)]) as source:
            im = source.convert("RGB")
        im.thumbnail((256, 256))
        ImageDraw.Draw(im).rectangle((4, 4, 12 + i % 17, 12 + i // 17), fill=(i * 37 % 256, 0, 0))
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=90)
        out.append((f"tuning/{tag}-{i:03d}.jpg", buffer.getvalue()))
    return out


def reset_monitor(stack: PipelineStack) -> None:
    base = str(stack.endpoints["ingestion_endpoint"]).rstrip("/")
    httpx.post(f"{base}/admin/reset", timeout=30).raise_for_status()


def stream(stack: PipelineStack, runner: LogsQueryRunner, tag: str, count: int, *,
           timeout: float = 240, per_second: float | None = None,
           ) -> tuple[dict[str, str], datetime, datetime]:
    """Upload ``count`` images (all at once, or ``per_second`` as a steady arrival rate), wait
    until the host finished each and their telemetry arrived."""
    started = datetime.now(UTC)
    uploaded: dict[str, str] = {}
    for i, (name, data) in enumerate(images(tag, count)):
        if per_second is not None:  # pacing the arrivals, not waiting for an outcome
            time.sleep(max(0.0, started.timestamp() + i / per_second - time.time()))
        uploaded[name] = stack.upload(name, data)
    stack.wait_processed(uploaded, timeout=timeout)
    stack.wait_host_idle()
    ended = datetime.now(UTC) + timedelta(seconds=1)
    span = (started - timedelta(seconds=1), ended + timedelta(minutes=1))

    def arrived() -> bool:  # one request row per host attempt; at least one per image
        return load_kpi(runner, span).images >= count

    wait_for(arrived, timeout=60, what=f"telemetry of stream {tag}")
    return uploaded, started, ended


def kpi_p95(runner: LogsQueryRunner, started: datetime, ended: datetime) -> float:
    p95 = load_kpi(runner, (started - timedelta(seconds=1), ended + timedelta(minutes=1))).p95_ms
    assert p95 is not None
    return p95


def analysed_once(stack: PipelineStack, uploaded: dict[str, str]) -> None:
    docs = stack.documents(uploaded)
    assert {name: [d.container for d in found] for name, found in docs.items()} == {
        name: ["results"] for name in uploaded}


def review(stack: PipelineStack, mode: str) -> dict[str, Any]:
    response = httpx.post(f"{stack.endpoints['functions_url']}/api/tuning/review",
                          params={"mode": mode, "code": str(stack.endpoints["function_key"])},
                          timeout=120)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def changes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["tunable"]: r for r in body["review"]["recommendations"] if r["change"]}


def tuning_state(stack: PipelineStack) -> dict[str, Any]:
    response = httpx.get(f"{stack.endpoints['functions_url']}/api/tuning",
                         params={"code": str(stack.endpoints["function_key"])}, timeout=30)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def wait_overlay_in_force(stack: PipelineStack, seconds: float = 2.5) -> None:
    """The host reads the overlay once per TUNING_OVERLAY_TTL_SECONDS (1 s here)."""
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    wait_for(lambda: datetime.now(UTC) >= deadline, timeout=seconds + 5, interval=0.2,
             what="one overlay TTL")


def test_1_a_healthy_stream_changes_nothing(stack: PipelineStack,
                                            runner: LogsQueryRunner) -> None:
    reset_monitor(stack)
    stack.reset_faults()
    uploaded, _, _ = stream(stack, runner, "healthy", 16, per_second=4)
    analysed_once(stack, uploaded)
    body = review(stack, "recommend")
    assert body["review"]["kpi"]["analysed"] >= 16
    assert changes(body) == {}
    assert len(body["review"]["recommendations"]) == 8
    # stored as JSON and as a report, and visible through the API
    assert tuning_state(stack)["last_review"]["id"] == body["review"]["id"]
    report = stack.container("status").download_blob("tuning/latest.md").readall().decode()
    assert body["review"]["id"] in report


def test_2_hung_calls_lower_the_timeout_and_cut_p95(stack: PipelineStack,
                                                    runner: LogsQueryRunner) -> None:
    reset_monitor(stack)
    faults = {"seed": 11, "timeout": {"rate": 0.2, "hold_s": 35, "then": "close"}}
    stack.set_faults(faults)
    before, a0, a1 = stream(stack, runner, "hung-a", 20)
    p95_before = kpi_p95(runner, a0, a1)

    first = review(stack, "apply")
    rec = changes(first)["vision_timeout_seconds"]
    p99_s = rec["evidence"]["success_p99_ms"] / 1000
    band = max(5.0, 3 * p99_s, p99_s + 2)
    assert rec["recommended"] == pytest.approx(band, abs=0.01), rec
    assert rec["recommended"] <= 15, rec  # the successes are far below the 30 s timeout
    assert [(c["old"], c["new"]) for c in first["review"]["applied"]] == [(30.0, 15.0)]
    second = review(stack, "apply")  # the same evidence: one more bounded step
    target = max(7.5, rec["recommended"])
    [applied] = second["review"]["applied"]
    assert applied["tunable"] == "vision_timeout_seconds"
    assert applied["new"] == pytest.approx(target, abs=0.6)
    assert tuning_state(stack)["effective"]["vision_timeout_seconds"] == applied["new"]
    wait_overlay_in_force(stack)

    stack.set_faults(faults)  # the same stream again, same seed
    after, b0, b1 = stream(stack, runner, "hung-b", 20)
    p95_after = kpi_p95(runner, b0, b1)
    assert p95_after <= 0.6 * p95_before, (p95_before, p95_after)
    analysed_once(stack, before)
    analysed_once(stack, after)

    verdict = review(stack, "apply")  # judges both changes against the traffic since
    assert verdict["review"]["judged"] and verdict["review"]["reverts"] == []
    overlay = tuning_state(stack)["overlay"]
    # both changes kept (the review may apply a further step from the same evidence: pending)
    assert [c["verdict"] for c in overlay["changes"][:2]] == ["kept", "kept"]
    # every change is audited: a custom event each, and the review that made it is stored
    def changed() -> list[dict[str, Any]]:
        rows = runner.run("tuning_changes", timespan=timedelta(hours=1)).rows
        return [r for r in rows if r["Event"] == "TuningChanged"]

    wait_for(lambda: len(changed()) == len(overlay["changes"]), timeout=30,
             what="one TuningChanged event per applied change")
    assert {r["Tunable"] for r in changed()} == {"vision_timeout_seconds"}
    for change in overlay["changes"][:2]:
        path = f"tuning/reviews/{change['review_id']}.json"
        stored = json.loads(stack.container("status").download_blob(path).readall())
        assert change["new"] in [c["new"] for c in stored["applied"]]


def test_3_sticky_failures_cut_retries_and_a_worse_p95_reverts(
    stack: PipelineStack, runner: LogsQueryRunner
) -> None:
    reset_monitor(stack)
    stack.set_faults({"seed": 5, "sticky": {"rate": 0.2, "status": 500},
                      "error_rates": {"500": 0.15}})
    uploaded, _, _ = stream(stack, runner, "sticky", 20, timeout=360)
    body = review(stack, "apply")
    rec = changes(body)["vision_max_retries"]
    assert 1 <= rec["recommended"] <= 2, rec
    assert [(c["tunable"], c["old"], c["new"]) for c in body["review"]["applied"]
            if c["tunable"] == "vision_max_retries"] == [("vision_max_retries", 4.0, 3.0)]
    wait_overlay_in_force(stack)
    analysed = [name for name, docs in stack.documents(uploaded).items()
                if [d.container for d in docs] == ["results"]]
    assert len(analysed) >= 10  # the rest were poisoned by their sticky failure, as expected

    # the world gets slower after the change: the next review must take it back
    stack.set_faults({"seed": 6, "latency": {"distribution": "fixed", "ms": 3500, "p": 1.0}})
    slow, _, _ = stream(stack, runner, "slow", 16)
    analysed_once(stack, slow)
    verdict = review(stack, "apply")
    reverted = {r["tunable"]: r for r in verdict["review"]["reverts"]}
    assert reverted["vision_max_retries"]["reverted_to"] == 4.0
    assert "p95" in reverted["vision_max_retries"]["reason"]
    state = tuning_state(stack)
    assert state["effective"].get("vision_max_retries") == 4.0
    assert "reverted" in [c["verdict"] for c in state["overlay"]["changes"]]


def sized(tag: str, sides: tuple[int, ...], per_side: int) -> list[tuple[str, bytes]]:
    """The bundled text samples at each longer side in ``sides``, ``per_side`` of each, every
    one a distinct file (a 2 px mark in a corner, far from the text)."""
    out = []
    for side in sides:
        for i in range(per_side):
            with Image.open(REPO_ROOT / "samples" / ("dock-sign.png", "invoice.jpg")[i % 2]) as s:
                im = s.convert("RGB")
            scale = side / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)),
                           Image.Resampling.BICUBIC)
            im.putpixel((i, 0), (255 - i, 255, 255))
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=90)
            out.append((f"tuning/{tag}-{side}-{i}.jpg", buffer.getvalue()))
    return out


def test_4_larger_images_that_read_no_better_lower_the_max_dimension(
    stack: PipelineStack, runner: LogsQueryRunner
) -> None:
    stack.restart_host({"VISION_FEATURES": "read"})
    reset_monitor(stack)
    stack.set_faults({"size_latency": {"ms_per_mb": 4000}})
    started = datetime.now(UTC)
    uploaded: dict[str, str] = {}
    for i, (name, data) in enumerate(sized("sizes", (1000, 1500, 2000), 5)):
        # a steady arrival rate: pacing the uploads, not waiting for an outcome
        time.sleep(max(0.0, started.timestamp() + i * 0.5 - time.time()))
        uploaded[name] = stack.upload(name, data)
    stack.wait_processed(uploaded, timeout=240)
    analysed_once(stack, uploaded)
    wait_for(lambda: load_kpi(runner, timedelta(hours=1)).analysed >= len(uploaded), timeout=60,
             what="telemetry of the sized stream")
    body = review(stack, "recommend")
    rec = changes(body)["preprocess_max_dimension"]
    assert (rec["current"], rec["recommended"]) == (2048.0, 1536.0), rec
    assert abs(rec["evidence"]["words_gain"]) <= 0.05
    top = rec["evidence"]["1536-2048px"]
    below = rec["evidence"]["1024-1536px"]
    assert top["images"] == below["images"] == 5
    assert top["vision_p50_ms"] > below["vision_p50_ms"]
