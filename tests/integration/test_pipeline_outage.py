"""A full Vision outage with images streaming in: nothing is poisoned, nothing needs a replay.

The emulator answers 503 to every call for ``OUTAGE_S`` seconds while an image is uploaded
every ``UPLOAD_EVERY_S``. The client's breaker opens after ``VISION_BREAKER_FAILURES`` failed
calls; from then on each instance sends one probing call per ``VISION_PROBE_INTERVAL_SECONDS``
and the pipeline parks blobs instead of raising. Once Vision answers, ``redrive_parked``
re-touches every parked blob and each ends in ``results/`` — checked against the blob's *current*
ETag (a re-drive gives it a new one), with the emulator answering 200 exactly once per image
and the poison queue, ``failed/`` and ``parked/`` empty.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from shared.analysis.results import META_SOURCE_ETAG
from shared.naming import result_path
from tests.support import images
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, FAILED, IMAGES, RESULTS, PipelineStack

pytestmark = [pytest.mark.integration]
log = logging.getLogger(__name__)

OUTAGE_S = 60
IMAGE_COUNT = 30
UPLOAD_EVERY_S = 2.5  # the uploads span the whole outage and a little after it
PROBE_INTERVAL_S = 5
BREAKER_FAILURES = 5
MAX_PARALLEL = 8  # host.json maxDegreeOfParallelism: calls in flight when the breaker opens
PARKED = "parked"
SETTINGS = {
    **BASE_SETTINGS,
    "VISION_FEATURES": "smartCrops",
    "VISION_BREAKER_FAILURES": str(BREAKER_FAILURES),
    "VISION_PROBE_INTERVAL_SECONDS": str(PROBE_INTERVAL_S),
    "PARKED_CONTAINER": PARKED,
    "REDRIVE_SCHEDULE": "*/5 * * * * *",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    state_dir = tmp_path_factory.mktemp("pipeline-outage")
    with PipelineStack(state_dir, SETTINGS) as pipeline:
        yield pipeline


def _analysed_current(stack: PipelineStack, names: list[str]) -> dict[str, bool]:
    """name → a result document describes the blob's current version."""
    results = stack.container(RESULTS)
    done: dict[str, bool] = {}
    for name in names:
        etag = stack.upload_etag(name)
        try:
            metadata = results.get_blob_client(result_path(name)).get_blob_properties().metadata
        except Exception:  # not written yet
            done[name] = False
            continue
        done[name] = (metadata or {}).get(META_SOURCE_ETAG) == etag
    return done


def test_a_minute_long_outage_parks_and_redrives_every_image(stack: PipelineStack) -> None:
    stack.set_faults({"outages": [{"start_in_s": 0, "duration_s": OUTAGE_S, "mode": "503"}]})
    outage_started = time.monotonic()
    names = [f"outage/{index:03d}.jpg" for index in range(IMAGE_COUNT)]
    for index, name in enumerate(names):
        stack.upload(name, images.tiny_jpeg(1000 + index))
        due = (index + 1) * UPLOAD_EVERY_S
        wait_for(lambda due=due: time.monotonic() - outage_started >= due,
                 timeout=UPLOAD_EVERY_S * 2 + 5, interval=0.2, what="the next upload slot")
    wait_for(lambda: time.monotonic() - outage_started >= OUTAGE_S, timeout=OUTAGE_S + 5,
             interval=0.5, what="the end of the outage")
    during = stack.vision_stats()
    outage_calls = int(during["faults"].get("outage", 0))

    wait_for(lambda: all(_analysed_current(stack, names).values()), timeout=240, interval=2,
             what="every image analysed after the outage")
    stack.wait_host_idle()
    stats = stack.wait_vision_quiet(settle=3)

    poison = stack.poison_messages()
    failed = list(stack.container(FAILED).list_blob_names())
    parked = list(stack.container(PARKED).list_blob_names())
    retouched = sum(1 for name in names
                    if "replayed_at" in (stack.container(IMAGES).get_blob_client(name)
                                         .get_blob_properties().metadata or {}))
    ok = int(stats["by_status"].get("200", 0))
    # before the breaker opens: its threshold plus what was already in flight; then one probe
    # per interval (and the redrive's own probe blob rides on the same probe slot)
    bound = BREAKER_FAILURES + MAX_PARALLEL + OUTAGE_S // PROBE_INTERVAL_S + 1
    log.info("outage %ss: %d images, %d Vision calls during the outage (bound %d), %d re-driven,"
             " %d analysed (200), poison %d, failed %d, parked %d", OUTAGE_S, IMAGE_COUNT,
             outage_calls, bound, retouched, ok, len(poison), len(failed), len(parked))
    print(f"\n  outage {OUTAGE_S} s, {IMAGE_COUNT} images: {outage_calls} Vision calls during it"
          f" (bound {bound}, {outage_calls / OUTAGE_S:.2f}/s), {retouched} re-driven, {ok} x 200")
    assert poison == []
    assert failed == []
    assert parked == []
    assert retouched > 0, "no image was parked: the outage did not reach the pipeline"
    assert 0 < outage_calls <= bound
    assert ok == IMAGE_COUNT  # each image analysed exactly once
