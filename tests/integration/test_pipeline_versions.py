"""Acceptance on the local stack: the last version wins, and size is checked before bytes.

One private stack for the module (Azurite, Vision and Monitor emulators, the local host running
the repo's ``function_app.py`` with its SDK-type ``BlobClient`` trigger):

* **versions** — for each of several seeds, one blob name gets 20 versions uploaded 1-2 s apart
  (the gaps drawn from the seed) while the Vision emulator answers after 0.1-8 s; the seeds run
  at once, as different names. Once everything settled, each name's only document must carry
  the blob's current ETag and the SHA-256 of its current bytes, every host invocation must have
  ended with an outcome (analysed, superseded or duplicate; none failed, retried or poisoned),
  and at least one run must have been superseded (otherwise the reordering this test exists for
  did not happen and it checked nothing);
* **memory** — four 200 MB blobs (a valid JPEG header, then padding, streamed to Azurite in
  8 MiB blocks and committed together so they appear at once) are all rejected as
  ``input_too_large`` after one host attempt each, with no Vision call, while the host
  process's peak resident memory (``VmHWM`` of /proc, reset just before) rises by less than
  ``RSS_RISE_BOUND`` — far below one input.

Waiting is polling with deadlines; the only sleeps pace the uploads to their schedule.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobBlock
from PIL import Image

from devstack.stack import load_state
from shared.analysis.results import META_SOURCE_ETAG
from shared.naming import result_path
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, FAILED, IMAGES, RESULTS, PipelineStack

pytestmark = [pytest.mark.integration]

SEEDS = (11, 23, 37, 41)
VERSIONS = 20
GAP_S = (1.0, 2.0)
LATENCY_MS = (100, 8000)
BIG_BLOBS, BIG_BYTES, BLOCK_BYTES = 4, 200 * 1024 * 1024, 8 * 1024 * 1024
RSS_RISE_BOUND = 48 * 1024 * 1024
SETTINGS = {
    **BASE_SETTINGS,
    # smart crops only: the emulator's CPU must not be what orders completions
    "VISION_FEATURES": "smartCrops",
    "VISION_TIMEOUT_SECONDS": "30",
    # the exporter sends each request within a fraction of a second
    "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BLRP_SCHEDULE_DELAY": "200",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    state_dir = tmp_path_factory.mktemp("pipeline-versions")
    with PipelineStack(state_dir, SETTINGS) as pipeline:
        yield pipeline
    shutil.rmtree(state_dir, ignore_errors=True)  # Azurite's copy of 800 MB of padding


def version_image(seed: int, version: int) -> bytes:
    image = Image.new("RGB", (96, 72), ((seed * 53) % 256, (version * 12) % 256, 160))
    image.putpixel((version, seed % 72), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def request_envelopes(stack: PipelineStack, names: set[str]) -> list[dict[str, Any]]:
    """The properties of every analyze_image request the Monitor emulator received for
    ``names``."""
    base = str(stack.endpoints["ingestion_endpoint"]).rstrip("/")
    reply = httpx.get(f"{base}/admin/envelopes", params={"limit": 100_000}, timeout=30)
    reply.raise_for_status()
    found: list[dict[str, Any]] = []
    for row in reply.json():
        data = (row.get("envelope") or {}).get("data") or {}
        if data.get("baseType") != "RequestData":
            continue
        properties = data.get("baseData", {}).get("properties") or {}
        if properties.get("faas.document.name") in names:
            found.append(properties)
    return found


def test_last_version_wins_under_reordered_completions(stack: PipelineStack) -> None:
    stack.set_faults({"seed": 7, "latency": {"p": 1.0, "distribution": "uniform",
                                             "min_ms": LATENCY_MS[0], "max_ms": LATENCY_MS[1]}})
    schedule: list[tuple[float, str, int]] = []
    for seed in SEEDS:
        rng, at = random.Random(seed), 0.0
        for version in range(VERSIONS):
            schedule.append((at, f"versions/seed-{seed}.jpg", version))
            at += rng.uniform(*GAP_S)
    schedule.sort()
    uploaded: dict[str, list[tuple[str, str]]] = {}  # name → [(etag, sha256)] in upload order
    started = time.monotonic()
    for at, name, version in schedule:
        # pacing the uploads to their schedule, not waiting for an outcome
        time.sleep(max(0.0, started + at - time.monotonic()))
        data = version_image(int(name.split("-")[1].split(".")[0]), version)
        uploaded.setdefault(name, []).append((stack.upload(name, data),
                                              hashlib.sha256(data).hexdigest()))
    try:
        current = {name: versions[-1][0] for name, versions in uploaded.items()}
        assert current == {name: stack.upload_etag(name) for name in uploaded}
        stack.wait_processed(current, timeout=120)

        def settled() -> bool:
            receipts = [r for (name, _), r in stack.receipts().items() if name in uploaded]
            return all(r.complete for r in receipts) and (
                stack.host_status()["local"]["activeInvocations"] == 0)

        wait_for(settled, timeout=60, what="every run of every version to end")
    finally:
        stack.reset_faults()

    receipts = {key: r for key, r in stack.receipts().items() if key[0] in uploaded}
    invocations = sum(r.attempts for r in receipts.values())
    assert all(r.attempts <= 1 for r in receipts.values()), receipts  # nothing was retried
    assert not [m for m in stack.poison_messages() if m.name in uploaded]
    requests: list[dict[str, Any]] = []

    def all_reported() -> bool:
        requests[:] = request_envelopes(stack, set(uploaded))
        return len(requests) >= invocations

    wait_for(all_reported, timeout=30, what=f"{invocations} request rows in telemetry")
    assert len(requests) == invocations

    rows, superseded = [], 0
    for name, versions in sorted(uploaded.items()):
        etags = {etag for etag, _ in versions}
        final_etag, final_sha = versions[-1]
        documents = []
        for container in (RESULTS, FAILED):
            client = stack.container(container).get_blob_client(result_path(name))
            if client.exists():
                documents.append((container, json.loads(client.download_blob().readall()),
                                  client.get_blob_properties().metadata))
        assert [c for c, _, _ in documents] == [RESULTS], (name, documents)
        _, body, metadata = documents[0]
        assert body["source"]["etag"] == final_etag, (name, body["source"], final_etag)
        assert body["source"]["sha256"] == final_sha
        assert metadata[META_SOURCE_ETAG] == final_etag
        mine = [r for r in requests if r.get("faas.document.name") == name]
        outcomes = Counter(r.get("pipeline.outcome") for r in mine)
        assert set(outcomes) <= {"analyzed", "superseded", "duplicate"}, (name, outcomes)
        read = {r.get("pipeline.source.etag") for r in mine}
        assert read <= etags, (name, read - etags)  # every run read one of this name's versions
        for r in mine:
            if r.get("pipeline.outcome") == "superseded":
                assert r.get("pipeline.source.current_etag") in etags | {None}
                assert r.get("pipeline.source.etag") != final_etag
        superseded += outcomes["superseded"]
        rows.append(f"  {name:24} versions {len(versions):2}  runs {len(mine):2}  "
                    f"analysed {outcomes['analyzed']:2}  superseded {outcomes['superseded']:2}  "
                    f"duplicate {outcomes['duplicate']:2}  never read {len(etags - read):2}")
    print("\n" + "\n".join(rows))
    assert len(rows) == len(SEEDS)
    assert superseded > 0, "no run was superseded: completions were never reordered"


def _big_blob_blocks(header: bytes, size: int) -> Iterator[bytes]:
    """A small valid JPEG, then zeros up to ``size`` bytes, one reused 8 MiB block at a time."""
    yield header
    zeros = bytes(BLOCK_BYTES)
    left = size - len(header)
    while left > 0:
        take = min(BLOCK_BYTES, left)
        yield zeros if take == BLOCK_BYTES else zeros[:take]
        left -= take


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_four_200mb_uploads_are_rejected_without_being_read(stack: PipelineStack) -> None:
    state = load_state(stack.state_dir)
    assert state is not None
    pid = int(state.processes["host"]["pid"])
    assert "devstack.host" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    header = version_image(1, 1)
    names = [f"big/upload-{i}.jpg" for i in range(BIG_BLOBS)]
    images = stack.container(IMAGES)
    block_ids: dict[str, list[BlobBlock]] = {}
    for name in names:  # staged first, committed together below: they appear at once
        client = images.get_blob_client(name)
        for index, block in enumerate(_big_blob_blocks(header, BIG_BYTES)):
            block_id = base64.b64encode(f"{index:08d}".encode()).decode()
            client.stage_block(block_id, block)
            block_ids.setdefault(name, []).append(BlobBlock(block_id=block_id))
    stack.wait_host_idle()
    vision_before = stack.vision_calls()
    # Reset the peak (VmHWM) to the current resident size: what follows is measured alone.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    rss_before = _status_kib(pid, "VmRSS") * 1024
    uploaded: dict[str, str] = {}
    for name in names:
        result = images.get_blob_client(name).commit_block_list(block_ids[name])
        uploaded[name] = str(result["etag"]).strip('"')
    receipts = stack.wait_processed(uploaded, timeout=120)
    stack.wait_host_idle()
    peak = _status_kib(pid, "VmHWM") * 1024
    rise = peak - rss_before
    print(f"\n  host RSS before {rss_before / 2**20:.1f} MiB, peak during the 4 rejections "
          f"{peak / 2**20:.1f} MiB: rise {rise / 2**20:.1f} MiB for {BIG_BLOBS} x "
          f"{BIG_BYTES / 2**20:.0f} MiB (bound {RSS_RISE_BOUND / 2**20:.0f} MiB)")
    try:
        assert all(images.get_blob_client(n).get_blob_properties().size == BIG_BYTES
                   for n in names)
        found = stack.documents(uploaded)
        for name in names:
            assert [d.container for d in found[name]] == [FAILED], name
            doc = found[name][0]
            assert doc.error["reason"] == "input_too_large" and doc.error["retryable"] is False
            assert doc.body["source"]["size"] == BIG_BYTES
            assert doc.body["source"]["sha256"] is None  # never read
            assert receipts[name].attempts == 1, name
        assert stack.vision_calls() == vision_before
        assert not [m for m in stack.poison_messages() if m.name in uploaded]
        assert 0 <= rise < RSS_RISE_BOUND
    finally:
        for name in names:
            images.delete_blob(name)
