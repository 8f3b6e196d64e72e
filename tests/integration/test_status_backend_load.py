"""``/api/status`` under its own load and with a broken backend, on the real local stack,
within Log Analytics' limits.

A private stack (Azurite, Vision and Monitor emulators, local host; timers off, so only the
status function queries Log Analytics), the status cache's TTL shortened to
``TTL`` seconds so a bounded run sees several refreshes. In order:

1. 50 concurrent dashboard clients (each polls ``status?history=1&window=1h`` every
   ``LOAD_INTERVAL`` s) for ``LOAD_SECONDS`` s: every answer 200, none 429, and the Monitor
   emulator counts at most one report's queries per TTL;
2. the emulator's limits lowered so the app is throttled: status still answers 200 with the last
   report, marked stale, naming ``telemetry_throttled``;
3. the emulator hung (SIGSTOP: it accepts connections, answers nothing): every status answer
   (stale or 503) comes within 2 s, and an uploaded image is still analysed.

The pipeline under status traffic is test_status_load.py, on a stack of its own.

Loopback only; every load is bounded in clients and time; every wait polls with a deadline.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.stack import PipelineStack
from tests.support.status_load import (
    REPORT_QUERIES,
    SAMPLES,
    TTL,
    Load,
    get_status,
    key,
    limiter,
    monitor,
    monitor_pid,
    start_stack,
    status_url,
    times_to_document,
    upload_stream,
)

pytestmark = [pytest.mark.integration]

#: 60 s of load: six report TTLs, every dashboard polling throughout.
LOAD_SECONDS = 60.0
LOAD_CLIENTS = 50
LOAD_INTERVAL = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with start_stack(tmp_path_factory.mktemp("status-backend-load")) as s:
        yield s


def test_fifty_dashboards_cost_one_report_per_ttl(stack: PipelineStack) -> None:
    # a fresh stack: the report the dashboards ask for (with its history) is computed before
    # the load starts; a first visitor is told it is pending, which is no part of the load
    params = {"history": "1", "window": "1h"}
    wait_for(lambda: get_status(stack, **params).status_code == 200, timeout=60, interval=1.0,
             what="a first status report with history")
    httpx.post(f"{monitor(stack)}/admin/limits/stats/reset", timeout=10).raise_for_status()
    started = time.monotonic()
    with Load(status_url(stack), {"code": key(stack), **params},
              LOAD_CLIENTS, LOAD_INTERVAL) as load:
        threading.Event().wait(LOAD_SECONDS)  # the load's bounded duration
    elapsed = time.monotonic() - started
    stats = limiter(stack)["stats"]
    allowed = (math.ceil(elapsed / TTL) + 1) * REPORT_QUERIES
    p95 = sorted(load.latencies)[int(0.95 * len(load.latencies)) - 1]
    print(f"\n{LOAD_CLIENTS} clients for {elapsed:.0f} s: {load.total} answers {dict(load.codes)},"
          f" {load.stale} stale, p95 {p95 * 1000:.0f} ms; Log Analytics queries"
          f" {stats['admitted']} (allowed {allowed}), throttled {stats['throttled']}")
    assert load.total >= LOAD_CLIENTS * 10
    assert set(load.codes) == {200}, (load.codes, load.errors)
    assert 0 < stats["admitted"] <= allowed
    assert stats["throttled"] == {}


def test_throttled_backend_serves_the_last_report_marked_stale(stack: PipelineStack) -> None:
    base = monitor(stack)
    assert get_status(stack).status_code == 200
    httpx.put(f"{base}/admin/limits", json={"rate_limit": 1, "rate_window_s": 3600},
              timeout=10).raise_for_status()
    try:
        seen: dict[str, Any] = {}
        codes: Counter[int] = Counter()

        def throttled_and_stale() -> bool:
            nonlocal seen
            res = get_status(stack)
            codes[res.status_code] += 1
            seen = res.json()
            error = seen.get("cache", {}).get("error") or {}
            return res.status_code == 200 and error.get("cause") == "telemetry_throttled"

        wait_for(throttled_and_stale, timeout=3 * TTL + 30, interval=1.0,
                 what="a stale report naming the throttling")
        assert set(codes) == {200}, codes  # never a 429 (or a 503) to the client
        assert seen["cache"]["stale"] is True and seen["cache"]["age_s"] > TTL
        assert seen["version"] == "load-1" and "windows" in seen
        throttled = limiter(stack)["stats"]["throttled"]
        print(f"\nthrottled: {sum(codes.values())} status answers {dict(codes)}, the report"
              f" {seen['cache']['age_s']:.0f} s old; the emulator refused {throttled}")
        # one refused attempt per TTL, not a storm: a handful in the wait above
        assert 1 <= sum(throttled.values()) <= 5, throttled
    finally:
        httpx.put(f"{base}/admin/limits", json={"rate_limit": 200, "rate_window_s": 30},
                  timeout=10).raise_for_status()


def test_hung_backend_answers_fast_and_analysis_continues(stack: PipelineStack) -> None:
    """Last: stops (SIGSTOP) and resumes this stack's own Monitor emulator process."""
    assert get_status(stack).status_code == 200
    pid = monitor_pid(stack)
    os.kill(pid, signal.SIGSTOP)
    try:
        answers: list[tuple[int, float]] = []
        deadline = time.monotonic() + 2 * TTL + 5  # past the TTL: the refresh hangs
        pace = threading.Event()
        while time.monotonic() < deadline:
            started = time.monotonic()
            res = get_status(stack)
            answers.append((res.status_code, time.monotonic() - started))
            pace.wait(1.0)  # one caller a second
        ended = upload_stream(stack, "hung", every=0.0)
        analysed = times_to_document(stack, ended)
    finally:
        os.kill(pid, signal.SIGCONT)
    slowest = max(t for _, t in answers)
    print(f"\nemulator hung: {len(answers)} status answers {Counter(c for c, _ in answers)},"
          f" slowest {slowest:.2f} s; {len(analysed)} images analysed meanwhile")
    assert len(answers) >= 2 * TTL
    assert {c for c, _ in answers} <= {200, 503}
    assert slowest < 2.0
    assert len(analysed) == len(SAMPLES)
