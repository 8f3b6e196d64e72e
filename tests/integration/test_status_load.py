"""``/api/status`` under load on the real local stack, within Log Analytics' limits.

One private stack (Azurite, Vision and Monitor emulators, local host; timers off, so only the
status function queries Log Analytics), the status cache's TTL shortened to
``TTL`` seconds so a bounded run sees several refreshes. In order:

1. a first run like ``./scripts/run`` (the samples analysed) reads HEALTHY with the local
   latency baseline of ``local.settings.json.example``, and a real slowdown (every Vision call
   slower than the alert threshold) still raises ``latency-p95``;
2. an image stream's time from upload to document with 20 clients polling status (each once a
   second) stays within 1.2x of the same stream without them (Vision answering in a fixed
   second, phases interleaved A B, B A, ...; the host restarted for it and back);
3. 50 concurrent dashboard clients (each polls ``status?history=1&window=1h`` every
   ``LOAD_INTERVAL`` s) for ``LOAD_SECONDS`` s: every answer 200, none 429, and the Monitor
   emulator counts at most one report's queries per TTL;
4. the emulator's limits lowered so the app is throttled: status still answers 200 with the last
   report, marked stale, naming ``telemetry_throttled``;
5. the emulator hung (SIGSTOP: it accepts connections, answers nothing): every status answer
   (stale or 503) comes within 2 s, and an uploaded image is still analysed.

Loopback only; every load is bounded in clients and time; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from pipeline_fixtures import BASE_SETTINGS, REPO_ROOT, PipelineStack, wait_for

from shared.settings import Settings
from shared.status import WINDOWS_BY_NAME, plan, series_plan

pytestmark = pytest.mark.integration

TTL = 10
#: 60 s of load: six report TTLs, every dashboard polling throughout.
LOAD_SECONDS = 60.0
LOAD_CLIENTS = 50
LOAD_INTERVAL = 0.5
POLLERS = 20
#: Vision's fixed answer time while the pipeline is timed with and without pollers: about what
#: Image Analysis takes per call (see test_status_pollers_do_not_slow_the_pipeline)
SERVICE_LATENCY_MS = 1000
#: that test's Vision features: smart crops alone, the emulator's cheapest to compute
STREAM_FEATURES = "smartCrops"
#: pairs of phases (one without pollers, one with) in that test
PHASE_PAIRS = 4
#: that test's upload pacing: i * 7/12 s falls at 0, 7, 2, 9, 4 and 11 twelfths of the host's
#: one-second blob scan for the six samples
PACE_S = 7 / 12
SAMPLES = sorted(p for p in (REPO_ROOT / "samples").iterdir() if p.suffix in (".png", ".jpg"))
SETTINGS = {**BASE_SETTINGS, "STATUS_CACHE_TTL_SECONDS": str(TTL), "APP_VERSION": "load-1"}
_APP = Settings.from_env({**SETTINGS, "VISION_ENDPOINT": "http://127.0.0.1:9",
                          "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
#: One report's worth, counted from the app's own plan: the core report + one window's series.
REPORT_QUERIES = len(plan(_APP)[0]) + len(series_plan(WINDOWS_BY_NAME["1h"], _APP))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with PipelineStack(tmp_path_factory.mktemp("status-load"), SETTINGS) as s:
        yield s


def key(stack: PipelineStack) -> str:
    return str(stack.endpoints["function_key"])


def status_url(stack: PipelineStack) -> str:
    return f"{stack.endpoints['functions_url']}/api/status"


def monitor(stack: PipelineStack) -> str:
    return str(stack.endpoints["ingestion_endpoint"]).rstrip("/")


def monitor_pid(stack: PipelineStack) -> int:
    state = json.loads((stack.state_dir / "stack.json").read_text())
    return int(state["processes"]["monitor"]["pid"])


def limiter(stack: PipelineStack) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{monitor(stack)}/admin/limits", timeout=10).json()
    return answer


def get_status(stack: PipelineStack, **params: str) -> httpx.Response:
    return httpx.get(status_url(stack), params={"code": key(stack), **params}, timeout=30)


def upload_stream(stack: PipelineStack, tag: str, *, every: float) -> dict[str, float]:
    """Upload each sample under a new name, one every ``every`` s; name → upload end (epoch)."""
    ended: dict[str, float] = {}
    pace = threading.Event()
    for i, path in enumerate(SAMPLES):
        if i:
            pace.wait(every)  # the stream's pacing, not a wait for an outcome
        name = f"load/{tag}-{path.name}"
        stack.upload(name, path.read_bytes())
        ended[name] = time.time()
    return ended


def times_to_document(stack: PipelineStack, ended: dict[str, float]) -> list[float]:
    etags = {name: stack.upload_etag(name) for name in ended}
    stack.wait_processed(etags, timeout=300)
    docs = stack.documents(etags)
    out = []
    for name, found in docs.items():
        assert found, f"no document for {name}"
        processed = datetime.fromisoformat(found[0].body["processed_at"]).timestamp()
        out.append(processed - ended[name])
    return out


@dataclass
class Load:
    """``clients`` concurrent pollers of one URL, each every ``interval`` s, on their own loop."""

    url: str
    params: dict[str, str]
    clients: int
    interval: float
    codes: Counter[int] = field(default_factory=Counter)
    stale: int = 0
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                res = await http.get(self.url, params=self.params)
            except httpx.HTTPError:
                self.codes[0] += 1
            else:
                self.codes[res.status_code] += 1
                if res.status_code == 200 and res.json()["cache"]["stale"]:
                    self.stale += 1
            self.latencies.append(time.monotonic() - started)
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):  # the poll interval of a dashboard
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        if self._stop.is_set():
            return
        limits = httpx.Limits(max_connections=self.clients)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._loop is not None and self._wake is not None:  # end the clients' waits now
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._wake.set)
        assert self._thread is not None
        self._thread.join(60)

    @property
    def total(self) -> int:
        return sum(self.codes.values())


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
    """Time to document of the same stream with and without ``POLLERS`` status pollers: the
    polled median within 1.2x of the quiet one, no allowance added.

    With the emulator's millisecond answers the medians were sub-second and the same code gave
    0.73x-1.42x between runs on a shared 2-core box: the ratio measured the scheduler. So:

    * Vision answers in ``SERVICE_LATENCY_MS`` (fixed), about what Image Analysis takes per
      call, and the host runs with ``STREAM_FEATURES`` only: the emulator computes OCR and
      people detection on this machine's two cores (1-3 s more a call when the box is busy; in
      production that work runs in the service), so with them an image's time was the
      machine's load, not what the pipeline waits on;
    * uploads ``PACE_S`` apart land at six different points of the host's one-second blob scan,
      so a phase's wait for the scan does not depend on when the phase started (paced a whole
      number of seconds apart, every upload of a phase waited the same 0-1 s);
    * ``PHASE_PAIRS`` pairs of phases on one stack, in alternating order (A B, B A, ...), after
      a warm-up of the restarted host and the report cache, so a drift of the machine's load
      hits both sides alike; the medians are pooled over phases.
    """
    def stream(tag: str, every: float = PACE_S) -> list[float]:
        return times_to_document(stack, upload_stream(stack, tag, every=every))

    stack.restart_host({"VISION_FEATURES": STREAM_FEATURES})
    stack.set_faults({"latency": {"p": 1.0, "distribution": "fixed", "ms": SERVICE_LATENCY_MS}})
    phases: list[tuple[bool, list[float]]] = []
    codes: Counter[int] = Counter()
    try:
        stream("warm", every=0.0)  # a new host's first calls (imports, connections)
        wait_for(lambda: get_status(stack).status_code == 200, timeout=60, interval=1.0,
                 what="a cached report")
        for pair in range(PHASE_PAIRS):
            for polled in (False, True) if pair % 2 == 0 else (True, False):
                tag = f"{'polled' if polled else 'quiet'}{pair}"
                if polled:
                    with Load(status_url(stack), {"code": key(stack)}, POLLERS, 1.0) as load:
                        times = stream(tag)
                    codes.update(load.codes)
                else:
                    times = stream(tag)
                phases.append((polled, times))
    finally:
        stack.reset_faults()
        stack.restart_host()
        # as the earlier tests left it: the dashboards' report cached (a new host has none)
        wait_for(lambda: get_status(stack, history="1", window="1h").status_code == 200,
                 timeout=60, interval=1.0, what="the restored host's cached report")
    quiet = [t for polled, times in phases if not polled for t in times]
    loaded = [t for polled, times in phases if polled for t in times]
    without, with_ = statistics.median(quiet), statistics.median(loaded)
    answered = sum(codes.values())
    print(f"\ntime to document (Vision {SERVICE_LATENCY_MS} ms), phase medians: "
          + ", ".join(f"{'B' if polled else 'A'} {statistics.median(times):.2f}"
                      for polled, times in phases))
    print(f"pooled medians: {without:.2f} s alone (n={len(quiet)}), {with_:.2f} s with"
          f" {POLLERS} status pollers (n={len(loaded)}; {answered} status answers):"
          f" {with_ / without:.2f}x (bound 1.2x)")
    assert SAMPLES
    assert [len(times) for _, times in phases] == [len(SAMPLES)] * (2 * PHASE_PAIRS)
    # the latency took: no image was documented sooner than Vision answers
    assert min(quiet + loaded) >= SERVICE_LATENCY_MS / 1000
    assert with_ <= 1.2 * without
    assert answered >= POLLERS * 10
    assert set(codes) == {200}, codes


def test_fifty_dashboards_cost_one_report_per_ttl(stack: PipelineStack) -> None:
    httpx.post(f"{monitor(stack)}/admin/limits/stats/reset", timeout=10).raise_for_status()
    started = time.monotonic()
    with Load(status_url(stack), {"code": key(stack), "history": "1", "window": "1h"},
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
    assert set(load.codes) == {200}, load.codes
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

