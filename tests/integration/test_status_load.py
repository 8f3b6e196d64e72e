"""``/api/status`` on the real local stack while the pipeline works: it must not slow it.

A private stack (Azurite, Vision and Monitor emulators, local host; timers off, so only the
status function queries Log Analytics), the status cache's TTL shortened to
``TTL`` seconds so a bounded run sees several refreshes. In order:

1. a first run like ``./scripts/run`` (the samples analysed) reads HEALTHY with the local
   latency baseline of ``local.settings.json.example``, and a real slowdown (every Vision call
   slower than the alert threshold) still raises ``latency-p95``;
2. an image stream's time from upload to document with 20 clients polling status (each once a
   second) stays within 1.2x of the same stream without them (phases interleaved A B A B).

Status under its own load and with a throttled or hung backend is test_status_backend_load.py,
on a stack of its own so the two can run on two workers at once.

Loopback only; every load is bounded in clients and time; every wait polls with a deadline.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.polling import wait_for
from tests.support.stack import PipelineStack
from tests.support.status_load import (
    SAMPLES,
    Load,
    get_status,
    key,
    start_stack,
    status_url,
    times_to_document,
    upload_stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.cost(125)]  # seconds: see tests/conftest.py

POLLERS = 20
#: see test_status_pollers_do_not_slow_the_pipeline
NOISE_ALLOWANCE_S = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with start_stack(tmp_path_factory.mktemp("status-load")) as s:
        yield s


def test_a_first_run_on_an_idle_stack_reads_healthy(stack: PipelineStack) -> None:
    ended = upload_stream(stack, "first", every=0.0)
    assert len(times_to_document(stack, ended)) == len(SAMPLES)
    body: dict[str, Any] = {}

    def reported() -> bool:  # telemetry arrives in export batches; the cache holds TTL s
        nonlocal body
        res = get_status(stack)
        body = res.json() if res.status_code == 200 else {}
        return body.get("windows", {}).get("15m", {}).get("invocations", 0) >= len(SAMPLES)

    wait_for(reported, timeout=120, interval=1.0, what="the samples in the status report")
    latency = body["windows"]["15m"]["latency_ms"]
    threshold = next(a["threshold"] for a in body["alerts"]["rules"] if a["name"] == "latency-p95")
    print(f"\nfirst run: {body['state']}, p95 {latency['p95']:.0f} ms (alert above"
          f" {threshold:.0f} ms)")
    assert body["state"] == "healthy", body["reasons"]
    assert body["alerts"]["active"] == []
    assert body["telemetry"]["query_errors"] == []


def test_a_real_slowdown_still_alerts_with_the_local_baseline(stack: PipelineStack) -> None:
    body = get_status(stack).json()
    threshold = next(a["threshold"] for a in body["alerts"]["rules"] if a["name"] == "latency-p95")
    # every Vision call now takes longer than the whole alert threshold
    stack.set_faults({"latency": {"p": 1.0, "distribution": "fixed", "ms": threshold + 2000}})
    try:
        ended = upload_stream(stack, "slow", every=0.0)
        assert len(times_to_document(stack, ended)) == len(SAMPLES)
    finally:
        stack.reset_faults()

    def alerted() -> bool:
        nonlocal body
        body = get_status(stack).json()
        return "latency-p95" in body.get("alerts", {}).get("active", [])

    wait_for(alerted, timeout=120, interval=1.0, what="the latency-p95 alert")
    assert body["state"] == "degraded", body["reasons"]


def test_status_pollers_do_not_slow_the_pipeline(stack: PipelineStack) -> None:
    quiet: list[float] = []
    polled: list[float] = []
    answered = 0
    for phase in range(2):
        quiet += times_to_document(stack, upload_stream(stack, f"quiet{phase}", every=2.0))
        with Load(status_url(stack), {"code": key(stack)}, POLLERS, 1.0) as load:
            polled += times_to_document(stack, upload_stream(stack, f"polled{phase}", every=2.0))
        assert set(load.codes) == {200}, load.codes
        answered += load.total
    without, with_ = statistics.median(quiet), statistics.median(polled)
    print(f"\ntime to document, median of {len(quiet)}: {without:.2f} s alone, {with_:.2f} s"
          f" with {POLLERS} status pollers ({answered} status answers)")
    assert answered >= POLLERS * 10
    # The bound is 1.2x. On a shared 2-core box, with another test's stack on the other
    # core, sub-second medians of the same code spread 0.73x-1.42x between runs: the ratio alone
    # measures the scheduler. The allowance of half a second keeps the test about what it guards
    # (status once starved the pipeline: 9.7 s -> 100 s) without failing on that noise.
    assert with_ <= 1.2 * without + NOISE_ALLOWANCE_S
