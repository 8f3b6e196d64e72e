"""Acceptance of the analysis pipeline on the real local stack.

One private stack for the module (Azurite, Vision emulator, local Functions host running the
repo's ``function_app.py``), driven only through storage uploads and the emulator's admin API:

* every good image (text page, person, alpha, rotated EXIF, GIF, BMP, WEBP, TIFF, 24 MP, 30 MB)
  ends with a complete result document;
* every bad input ends in ``failed/`` with its own reason, after one host attempt, without a
  Vision call and without a poison message;
* odd blob names get the safe document paths ``shared.naming.result_path`` promises, and a
  name with control characters forges no line in the host log or AppTraces;
* an overwrite (new ETag) is analysed again; a poisoned blob comes back with ``devstack.replay``;
* a host restart with its receipts gone re-triggers every blob, and the pipeline's own ETag
  check makes that cost no Vision call at all.

The tests build on each other's uploads and run in file order.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.analysis.preprocessing import MAX_IMAGE_BYTES
from shared.monitoring.logsquery import LogsQueryRunner
from shared.naming import result_path
from shared.settings import Settings
from tests.support import images
from tests.support.polling import wait_for
from tests.support.stack import (
    BASE_SETTINGS,
    FAILED,
    IMAGES,
    POISON_THRESHOLD,
    REPO_ROOT,
    RESULTS,
    Document,
    PipelineStack,
    run_replay,
)

pytestmark = pytest.mark.integration
pytestmark = [pytest.mark.integration]

SETTINGS = {
    **BASE_SETTINGS,
    "PREPROCESS_MAX_INPUT_BYTES": str(images.TEST_MAX_INPUT_BYTES),
    # small retry settings so the outage test poisons in seconds, not minutes
    "VISION_MAX_RETRIES": "2",
    "VISION_BACKOFF_BASE_SECONDS": "0.1",
    "VISION_BACKOFF_MAX_SECONDS": "1",
    "VISION_TIMEOUT_SECONDS": "60",
}
FEATURES = ["read", "people", "smartCrops"]
MODEL_VERSION = "2023-10-01"
PROCESS_TIMEOUT = 240.0
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]*")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with PipelineStack(tmp_path_factory.mktemp("pipeline-stack"), SETTINGS) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def analysed(stack: PipelineStack) -> dict[str, Document]:
    """Upload the good set once; name → its single result document."""
    before = stack.vision_calls()
    uploaded = stack.upload_all((image.name, image.make()) for image in images.GOOD)
    receipts = stack.wait_processed(uploaded, timeout=PROCESS_TIMEOUT)
    found = stack.documents(uploaded)
    for name, docs in found.items():
        assert [d.container for d in docs] == [RESULTS], (name, [d.body.get("error") for d in docs])
        assert receipts[name].attempts == 1, name
        assert docs[0].body["source"]["etag"] == uploaded[name]
    assert stack.vision_calls() - before == len(images.GOOD)  # one call each, no retry
    return {name: docs[0] for name, docs in found.items()}


def _expect_complete_result(doc: Document, name: str, data: bytes) -> dict[str, Any]:
    import hashlib

    body = doc.body
    assert doc.path == result_path(name)
    assert body["schema_version"] == 1
    assert body["outcome"] == "analyzed"
    assert body["error"] is None
    source = body["source"]
    assert source["container"] == IMAGES
    assert source["name"] == name
    assert source["etag"]
    assert source["size"] == len(data)
    assert source["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["model_version"] == MODEL_VERSION
    assert body["features"] == FEATURES
    assert body["attempts"] == 1
    timings = body["timings_ms"]
    assert set(timings) >= {"preprocess", "vision", "rate_limiter_wait", "total"}
    assert timings["total"] >= timings["vision"] > 0
    record: dict[str, Any] = body["preprocessing"]
    assert record["original_bytes"] == len(data)
    assert record["steps"][0] == f"sniff:{record['detected_format']}"
    stages = record["stage_ms"]
    reencode_stages = {"decode", "resample", "describe", "encode"}
    assert set(stages) == (reencode_stages if record["reencoded"] else {"validate", "describe"})
    descriptors = record["descriptors"]
    assert descriptors["format"] == record["detected_format"]
    assert 0 <= descriptors["brightness"] <= 1 and descriptors["sharpness"] >= 0
    assert sum(stages.values()) <= record["duration_ms"] + 0.01  # each rounded to 1 µs
    analysis = body["analysis"]
    # coordinates refer to the image that was sent
    assert analysis["metadata"] == {"width": record["final_width"],
                                    "height": record["final_height"]}
    assert {"readResult", "peopleResult", "smartCropsResult"} <= set(analysis)
    return record


@pytest.mark.parametrize("image", images.GOOD, ids=lambda image: image.name)
def test_good_image_ends_with_a_complete_result(
    analysed: dict[str, Document], image: images.GoodImage
) -> None:
    doc = analysed[image.name]
    data = image.make()
    record = _expect_complete_result(doc, image.name, data)
    assert record["detected_format"] == image.detected_format
    within_limits = len(data) < MAX_IMAGE_BYTES and max(
        record["original_width"], record["original_height"]) <= 2048
    if within_limits and record["orientation"] == 1:
        assert record["reencoded"] is False
        assert record["final_bytes"] == len(data)


def test_text_page_is_read_back(analysed: dict[str, Document]) -> None:
    analysis = analysed["good/text-page.png"].body["analysis"]
    lines = [line["text"] for block in analysis["readResult"]["blocks"] for line in block["lines"]]
    normalised = {" ".join(line.split()).lower() for line in lines}
    for expected in images.TEXT_LINES:
        assert expected.lower() in normalised, lines


def test_astronaut_is_one_person(analysed: dict[str, Document]) -> None:
    people = analysed["good/astronaut.png"].body["analysis"]["peopleResult"]["values"]
    assert sum(1 for person in people if person["confidence"] >= 0.5) == 1, people


def test_alpha_png_is_sent_as_is(analysed: dict[str, Document]) -> None:
    record = analysed["good/alpha.png"].body["preprocessing"]
    assert (record["final_format"], record["reencoded"]) == ("png", False)


def test_rotated_exif_jpeg_is_turned_upright(analysed: dict[str, Document]) -> None:
    record = analysed["good/rotated-exif.jpg"].body["preprocessing"]
    width, height = images.ROTATED_STORED_SIZE
    assert record["orientation"] == 6
    assert "exif_orientation:6" in record["steps"]
    assert record["reencoded"] is True
    assert (record["original_width"], record["original_height"]) == (width, height)
    assert (record["final_width"], record["final_height"]) == (height, width)  # swapped


def test_24mp_jpeg_is_drafted_and_downscaled(analysed: dict[str, Document]) -> None:
    record = analysed["good/camera-24mp.jpg"].body["preprocessing"]
    assert (record["original_width"], record["original_height"]) == (6000, 4000)
    assert (record["final_width"], record["final_height"]) == (2048, 1365)
    assert "downscale:6000x4000->2048x1365" in record["steps"]
    assert any(step.startswith("draft:6000x4000->") for step in record["steps"])
    assert record["reencoded"] is True


def test_30mb_image_is_reencoded_below_the_service_limit(analysed: dict[str, Document]) -> None:
    record = analysed["good/huge-30mb.bmp"].body["preprocessing"]
    assert record["original_bytes"] > 30_000_000
    assert record["final_bytes"] < MAX_IMAGE_BYTES
    assert f"over_size_limit:{record['original_bytes']}" in record["steps"]
    assert record["reencoded"] is True
    assert record["final_format"] == "jpeg"


def test_bad_inputs_fail_once_with_their_reason_and_no_vision_call(
    stack: PipelineStack, analysed: dict[str, Document]
) -> None:
    before = stack.vision_stats()
    uploaded = stack.upload_all((bad.name, bad.make()) for bad in images.BAD)
    receipts = stack.wait_processed(uploaded, timeout=PROCESS_TIMEOUT)
    found = stack.documents(uploaded)
    problems: list[str] = []
    for bad in images.BAD:
        docs = found[bad.name]
        if [d.container for d in docs] != [FAILED]:
            problems.append(f"{bad.name}: documents {[(d.container, d.path) for d in docs]}")
            continue
        doc = docs[0]
        error = doc.error
        if error.get("reason") != bad.reason:
            problems.append(f"{bad.name}: reason {error.get('reason')!r}, wanted {bad.reason!r}")
        assert doc.path == result_path(bad.name)
        assert doc.body["outcome"] == "rejected"
        assert doc.body["analysis"] is None
        assert doc.body["preprocessing"] is None
        assert doc.body["source"]["etag"] == uploaded[bad.name]
        assert error["class"] == "invalid_input"
        assert error["stage"] == "preprocess"
        assert error["retryable"] is False
        assert receipts[bad.name].attempts == 1, bad.name  # the host ran it exactly once
    assert not problems, "\n".join(problems)
    assert len({bad.reason for bad in images.BAD}) >= 15
    poisoned = {m.name for m in stack.poison_messages()}
    assert not poisoned & set(uploaded)
    after = stack.vision_stats()
    assert after["total"] == before["total"], (before["by_status"], after["by_status"])


# Names that survive a round trip through Blob Storage unchanged (a backslash is stored as "/",
# see test_backslash_is_a_slash_in_blob_storage).
ODD_NAMES = (
    "odd/Ünïcødé 写真.png",
    "odd/spaces (1) & #hash% + q?.png",
    "odd/..dot-dot-leading.png",
    "odd/.../three-dots.png",
    "odd//double-slash.png",
    "/leading-slash.png",
    "odd/~tilde.png",
    "odd/trailing-dot.",
    "/".join("abcdefghijklmnopqr") + "/deep.png",  # 19 levels
    "long/" + "n" * 300 + ".png",
    "plain/x..y_ok-name.png",
)


def test_odd_names_get_safe_result_paths(
    stack: PipelineStack, analysed: dict[str, Document]
) -> None:
    data = images.png_alpha()
    uploaded = stack.upload_all((name, data) for name in ODD_NAMES)
    stored = set(stack.image_names())
    assert set(ODD_NAMES) <= stored  # the names reached storage unchanged
    stack.wait_processed(uploaded, timeout=PROCESS_TIMEOUT)
    found = stack.documents(uploaded)
    paths = set()
    for name in ODD_NAMES:
        docs = found[name]
        assert [d.container for d in docs] == [RESULTS], name
        path = docs[0].path
        assert path == result_path(name)
        assert docs[0].body["source"]["name"] == name
        segments = path.split("/")
        assert all(SAFE_SEGMENT.fullmatch(s) for s in segments), path
        assert ".." not in segments and len(segments) <= 16 and len(path) <= 400, path
        paths.add(path)
    assert len(paths) == len(ODD_NAMES)  # no two names share a document
    assert result_path("plain/x..y_ok-name.png") == "plain/x..y_ok-name.png.json"


#: What the host writes for a finished invocation, behind a newline in a blob name.
FORGED = "Executed 'Functions.analyze_image' (Succeeded, Id=FAKE, Duration=1ms)"


def test_a_name_with_control_characters_forges_no_log_line(stack: PipelineStack) -> None:
    # A newline only: with CR and ESC in names Azurite stored the blobs but then answered 500
    # to every listing of the container. The unit tests cover the other control characters.
    good = f"odd/forged\n{FORGED}.png"
    bad = f"odd/forged-bad\n{FORGED}.png"  # rejected: the app logs its name too
    uploaded = stack.upload_all([(good, images.png_alpha()), (bad, b"not an image at all")])
    assert {good, bad} <= set(stack.image_names())  # the names reached storage unchanged
    stack.wait_processed(uploaded, timeout=PROCESS_TIMEOUT)
    found = stack.documents(uploaded)
    assert [(d.container, d.body["source"]["name"]) for d in found[good]] == [(RESULTS, good)]
    assert [(d.container, d.body["source"]["name"]) for d in found[bad]] == [(FAILED, bad)]

    # the host log: every line naming the hostile blobs carries the escaped name, none starts
    # a forged entry; the host wrote at least its "Executing" line for each, the app its warning
    lines = [line for line in stack.host_log().splitlines() if "Id=FAKE" in line]
    assert len(lines) >= 3, lines
    escaped = ("odd/forged\\nExecuted", "odd/forged-bad\\nExecuted")
    assert all(any(e in line for e in escaped) for line in lines), lines
    assert any("rejected" in line for line in lines), lines

    # AppTraces: the rows naming them, escaped
    ep = stack.endpoints
    runner = LogsQueryRunner.from_settings(Settings.from_env({
        **stack.app_environment(), "LOGS_QUERY_ENDPOINT": str(ep["query_endpoint"]),
        "LOGS_WORKSPACE_ID": str(ep["workspace_id"])}))
    messages: list[str] = []

    def traced() -> bool:
        result = runner._client.query_workspace(  # ad-hoc: the rows that mention the names
            str(ep["workspace_id"]),
            'AppTraces | where Message contains "Id=FAKE" | project Message',
            timespan=timedelta(hours=1), enforce_https=False)
        messages[:] = [str(row[0]) for row in result.tables[0].rows]
        # the app's warning about the rejected blob; the host's own lines reach AppTraces only
        # once the first invocation has configured telemetry, so they may or may not be there
        return any("rejected" in m for m in messages)

    wait_for(traced, timeout=60, interval=0.5, what="AppTraces rows naming the hostile blobs")
    assert all("\n" not in m for m in messages), messages
    assert all(any(e in m for e in escaped) for m in messages), messages


def test_replay_with_development_storage_needs_the_stack_it_means(
    stack: PipelineStack, tmp_path: Path
) -> None:
    """This stack runs on free ports, so UseDevelopmentStorage=true (the default ports) is
    not it: replay refuses unless --stack names a running stack, and then talks to that one."""
    env = {**stack.app_environment(), "AzureWebJobsStorage": "UseDevelopmentStorage=true"}

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "devstack.replay", "--failed", "--dry-run",
                               *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    refused = replay("--stack", str(tmp_path / "no-stack-here"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no local stack is running" in refused.stderr and refused.stdout == ""
    used = replay("--stack", str(stack.state_dir))
    assert used.returncode == 0, used.stderr
    assert f"using the local stack {stack.state_dir.resolve()}" in used.stderr
    assert str(stack.endpoints["blob_endpoint"]) in used.stderr
    # the stack's failed/ documents (the bad inputs above) were read: it was this stack
    assert "replay would be done: failed:" in used.stdout, used.stdout
    # replay's own output names blobs escaped too (the hostile names above are in failed/)
    assert not [line for line in used.stdout.splitlines() if line.startswith("Executed")]


def test_backslash_is_a_slash_in_blob_storage(stack: PipelineStack) -> None:
    etag = stack.upload("odd\\back\\slash.png", images.png_alpha())
    assert "odd/back/slash.png" in stack.image_names()
    stack.wait_processed({"odd/back/slash.png": etag}, timeout=PROCESS_TIMEOUT)
    docs = stack.documents({"odd/back/slash.png": etag})["odd/back/slash.png"]
    assert [d.path for d in docs] == ["odd/back/slash.png.json"]


def test_overwrite_with_a_new_etag_is_analysed_again(
    stack: PipelineStack, analysed: dict[str, Document]
) -> None:
    name = "good/alpha.png"
    old = analysed[name].body
    before = stack.vision_calls()
    new_data = images.webp()  # different bytes (and format) under the same name
    etag = stack.upload(name, new_data)
    assert etag != old["source"]["etag"]
    stack.wait_processed({name: etag}, timeout=PROCESS_TIMEOUT)
    docs = stack.documents({name: etag})[name]
    assert [d.container for d in docs] == [RESULTS]
    body = docs[0].body
    assert body["source"]["etag"] == etag
    assert body["preprocessing"]["detected_format"] == "webp"
    assert body["processed_at"] > old["processed_at"]
    assert stack.vision_calls() - before == 1


def test_poisoned_blob_is_replayed_after_the_storm(
    stack: PipelineStack, analysed: dict[str, Document]
) -> None:
    # An outage no longer poisons (the blob is parked and re-driven: test_pipeline_outage.py);
    # what still does is a failure the client gives back to the host on every try, here a 429
    # storm asking to wait longer than VISION_MAX_RETRY_AFTER_SECONDS.
    name = "replay/during-storm.png"
    stack.set_faults({"error_rates": {"429": 1.0}, "retry_after_s": 120})
    try:
        etag = stack.upload(name, images.gif())
        receipts = stack.wait_processed({name: etag}, timeout=PROCESS_TIMEOUT)
        assert receipts[name].attempts == POISON_THRESHOLD
        assert stack.documents({name: etag})[name] == []  # neither results/ nor failed/
        poison = [m for m in stack.poison_messages() if m.name == name]
        assert [(m.container, m.etag) for m in poison] == [(IMAGES, etag)]
    finally:
        stack.reset_faults()  # the storm ends

    replay = run_replay(stack, "--poison")
    assert replay.returncode == 0, replay.stderr
    assert f"poison  requeued      {IMAGES}/{name}" in replay.stdout, replay.stdout
    new_etag = stack.upload_etag(name)
    assert new_etag != etag
    stack.wait_processed({name: new_etag}, timeout=PROCESS_TIMEOUT)
    docs = stack.documents({name: new_etag})[name]
    assert [d.container for d in docs] == [RESULTS]
    assert docs[0].body["attempts"] == 1
    assert not [m for m in stack.poison_messages() if m.name == name]


def test_restart_without_receipts_costs_no_vision_call(stack: PipelineStack) -> None:
    """Runs last: restarts the stack. Every blob is re-triggered (the receipts are gone), and
    the pipeline's own blob+ETag check turns each into a no-op."""
    current = {name: stack.upload_etag(name) for name in stack.image_names()}
    documents_before = stack.documents(current)
    assert stack.delete_receipts() >= len(current)
    stack.restart()  # the emulator restarts too: its counters start at zero
    stack.wait_processed(current, timeout=PROCESS_TIMEOUT)
    stack.wait_host_idle()
    assert stack.vision_calls() == 0
    documents_after = stack.documents(current)
    for name, docs in documents_after.items():
        before = [(d.container, d.path, d.body["processed_at"]) for d in documents_before[name]]
        after = [(d.container, d.path, d.body["processed_at"]) for d in docs]
        assert after == before, name  # untouched: same place, same document
