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

Scenario 2 waits out real 30 s timeouts: it is test_tuning_timeout.py, on a stack of its own, so
another worker runs the others meanwhile. Each scenario resets what it relies on.

Nothing waits for real minutes: reviews are called on demand; every wait polls with a deadline.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from shared.monitoring.logsquery import LogsQueryRunner
from shared.ops.tuning.review import load_kpi
from tests.support.polling import wait_for
from tests.support.stack import PipelineStack
from tests.support.tuning import (
    REPO_ROOT,
    analysed_once,
    changes,
    query_runner,
    reset_monitor,
    review,
    start_stack,
    stream,
    tuning_state,
    wait_overlay_in_force,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with start_stack(tmp_path_factory.mktemp("tuning-stack")) as s:
        yield s


@pytest.fixture(scope="module")
def runner(stack: PipelineStack) -> LogsQueryRunner:
    return query_runner(stack)


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
    # ~3-13 s per image by its size (0.02-0.08 MB here): the sizes' difference (~4-5 s between
    # the two top buckets' p50) is larger than the emulator's OCR queue adds on a box running
    # several stacks (seen: 4-5 s for every size at 40,000 ms/MB; at 120,000 ms/MB with uploads
    # 0.5 s apart, one run's queue gave the middle size 4 s more than the top one); the sizes
    # interleaved, so a queue that grows or drains during the stream weighs on every size alike,
    # and a second apart, so it grows less
    stack.set_faults({"size_latency": {"ms_per_mb": 160000}})
    started = datetime.now(UTC)
    uploaded: dict[str, str] = {}
    images = sized("sizes", (1000, 1500, 2000), 5)
    for i, (name, data) in enumerate(images[side * 5 + n] for n in range(5) for side in range(3)):
        # a steady arrival rate: pacing the uploads, not waiting for an outcome
        time.sleep(max(0.0, started.timestamp() + i * 1.0 - time.time()))
        uploaded[name] = stack.upload(name, data)
    stack.wait_processed(uploaded, timeout=240)
    analysed_once(stack, uploaded)
    wait_for(lambda: load_kpi(runner, timedelta(hours=1)).analysed >= len(uploaded), timeout=60,
             what="telemetry of the sized stream")
    body = review(stack, "recommend")
    found = changes(body)
    # (on failure, what the review saw for that tunable: its evidence says why it kept it)
    assert "preprocess_max_dimension" in found, json.dumps([
        r for r in body["review"]["recommendations"] if r["tunable"] == "preprocess_max_dimension"])
    rec = found["preprocess_max_dimension"]
    assert (rec["current"], rec["recommended"]) == (2048.0, 1536.0), rec
    assert abs(rec["evidence"]["words_gain"]) <= 0.05
    top = rec["evidence"]["1536-2048px"]
    below = rec["evidence"]["1024-1536px"]
    assert top["images"] == below["images"] == 5
    assert top["vision_p50_ms"] > below["vision_p50_ms"]
