"""Synthetic telemetry shaped like the app's, and a private Monitor emulator to post it to.

Envelopes carry what ``shared.telemetry`` makes the exporter send (request span per invocation
named after the function with ``pipeline.*`` properties, one dependency per Vision attempt with
``vision.attempt``, availability results, quota gauges), with timestamps the caller chooses —
the "injected clock" of the detection and status tests: simulated time is laid out relative to
the real now, because the emulator's KQL ``ago()`` reads the wall clock.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from devstack import procs
from devstack.monitor.config import DEFAULT_WORKSPACE_ID
from devstack.monitor.envelopes import Context, map_envelope
from devstack.monitor.store import Received
from shared.telemetry import SPAN_VISION_ANALYZE, api, names

FUNCTION = "analyze_image"
IKEY = "00000000-0000-0000-0000-000000000000"
ROLE = "visionops-test"


def _time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration(ms: float) -> str:
    micros = max(0, round(ms * 1000))
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"0.{hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}"


def _envelope(kind: str, base_type: str, t: datetime, op: str, base: dict[str, Any], *,
              synthetic: bool = False) -> dict[str, Any]:
    tags = {"ai.operation.id": op, "ai.cloud.role": ROLE, "ai.cloud.roleInstance": "test-0"}
    if synthetic:
        tags["ai.operation.syntheticSource"] = "SDKTelemetry"
    return {"name": f"Microsoft.ApplicationInsights.{kind}", "time": _time(t), "iKey": IKEY,
            "tags": tags, "data": {"baseType": base_type, "baseData": {"ver": 2, **base}}}


def request(t: datetime, *, duration_ms: float, outcome: str, success: bool = True,
            error_class: str = "", reason: str = "", op: str | None = None,
            synthetic: bool = False) -> dict[str, Any]:
    """One invocation's request row; ``t`` is when it ended."""
    props = {"faas.trigger": "datasource", "pipeline.outcome": outcome}
    if error_class:
        props["pipeline.error_class"] = error_class
    if reason:
        props["pipeline.reason"] = reason
    return _envelope("Request", "RequestData", t, op or uuid.uuid4().hex, {
        "id": uuid.uuid4().hex[:16], "name": FUNCTION, "duration": _duration(duration_ms),
        "responseCode": "0", "success": success, "properties": props}, synthetic=synthetic)


def vision_call(t: datetime, *, status: int, duration_ms: float, attempt: int = 1,
                op: str | None = None, synthetic: bool = False) -> dict[str, Any]:
    props = {"vision.attempt": str(attempt), "vision.throttled": str(status == 429).lower(),
             "http.response.status_code": str(status)}
    return _envelope("RemoteDependency", "RemoteDependencyData", t, op or uuid.uuid4().hex, {
        "id": uuid.uuid4().hex[:16], "name": SPAN_VISION_ANALYZE, "resultCode": str(status),
        "duration": _duration(duration_ms), "success": status < 400, "type": "HTTP",
        "target": "vision.local", "properties": props}, synthetic=synthetic)


def availability(t: datetime, *, probe: str, success: bool, duration_ms: float = 900.0,
                 message: str = "") -> dict[str, Any]:
    return _envelope("Availability", "AvailabilityData", t, uuid.uuid4().hex, {
        "id": uuid.uuid4().hex, "name": probe, "duration": _duration(duration_ms),
        "success": success, "runLocation": "local",
        "message": message or ("passed" if success else "failed: server_error")}, synthetic=True)


def gauge(t: datetime, name: str, value: float) -> dict[str, Any]:
    return _envelope("Metric", "MetricData", t, uuid.uuid4().hex,
                     {"metrics": [{"name": name, "value": value, "count": 1}]})


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Traffic:
    """Steady user traffic with realistic noise, and an optional incident from ``onset``."""

    per_minute: int = 6
    base_ms: float = 700.0
    seed: int = 20240601
    probe_every: timedelta = timedelta(minutes=5)

    def envelopes(self, start: datetime, end: datetime, *, incident: str | None = None,
                  onset: datetime | None = None) -> list[dict[str, Any]]:
        """Telemetry from ``start`` to ``end``; ``incident`` is outage|latency|throttle."""
        rng = random.Random(self.seed)
        out: list[dict[str, Any]] = []
        step = timedelta(seconds=60 / self.per_minute)
        t = start
        i = 0
        while t < end:
            during = incident is not None and onset is not None and t >= onset
            out += self._invocation(t, rng, incident if during else None, i)
            t += step
            i += 1
        t = start
        while t < end:
            during = incident is not None and onset is not None and t >= onset
            ok = not (during and incident == "outage")
            for probe in ("vision", "end_to_end"):
                out.append(availability(t, probe=probe, success=ok,
                                        duration_ms=900 + rng.random() * 300))
            t += self.probe_every
        t = start
        while t < end:
            out.append(gauge(t, "quota.used_ratio", 0.21))
            out.append(gauge(t, "quota.forecast_ratio", 0.42))
            t += timedelta(hours=1)
        return out

    def _invocation(self, t: datetime, rng: random.Random, incident: str | None,
                    i: int) -> list[dict[str, Any]]:
        op = uuid.uuid4().hex
        vision_ms = self.base_ms * (0.7 + 0.5 * rng.random())
        if incident == "outage":
            calls = [vision_call(t, status=503, duration_ms=50, attempt=a, op=op)
                     for a in (1, 2, 3)]
            return [*calls, request(t, duration_ms=400, outcome="failed", success=False,
                                    error_class="transient", reason="server_error", op=op)]
        if incident == "throttle":
            calls = [vision_call(t, status=429, duration_ms=20, attempt=a, op=op)
                     for a in (1, 2, 3, 4)]
            calls.append(vision_call(t, status=200, duration_ms=vision_ms, attempt=5, op=op))
            return [*calls, request(t, duration_ms=vision_ms + 1500, outcome="analyzed", op=op)]
        if incident == "latency":
            vision_ms *= 3
        # healthy noise: one transient failure in 250, one 429 (then success) in 100
        if incident is None and i % 250 == 249:
            return [vision_call(t, status=500, duration_ms=80, op=op),
                    request(t, duration_ms=300, outcome="failed", success=False,
                            error_class="transient", reason="server_error", op=op)]
        calls = []
        attempt = 1
        if incident is None and i % 100 == 37:
            calls.append(vision_call(t, status=429, duration_ms=15, op=op))
            attempt = 2
        calls.append(vision_call(t, status=200, duration_ms=vision_ms, attempt=attempt, op=op))
        return [*calls, request(t, duration_ms=vision_ms + 120, outcome="analyzed", op=op)]


# --------------------------------------------------------------------------- the emulator


@dataclass(slots=True)
class MonitorEmulator:
    """A private Monitor emulator process (``python -m devstack.monitor``) on a free port."""

    base: str
    pid: int = 0

    @property
    def query_endpoint(self) -> str:
        return f"{self.base}/v1"

    @property
    def workspace_id(self) -> str:
        return DEFAULT_WORKSPACE_ID

    def reset(self) -> None:
        httpx.post(f"{self.base}/admin/reset", timeout=30).raise_for_status()

    def post(self, envelopes: Sequence[dict[str, Any]], chunk: int = 2000) -> int:
        accepted = 0
        with httpx.Client(timeout=60) as client:
            for i in range(0, len(envelopes), chunk):
                body = gzip.compress(json.dumps(list(envelopes[i:i + chunk])).encode())
                res = client.post(f"{self.base}/v2.1/track", content=body,
                                  headers={"Content-Encoding": "gzip",
                                           "Content-Type": "application/json"})
                answer = res.json()
                assert res.status_code == 200, answer
                accepted += int(answer["itemsAccepted"])
        return accepted


def start_monitor(state_dir: Path) -> MonitorEmulator:
    import sys

    port = procs.free_port()
    argv = [sys.executable, "-m", "devstack.monitor", "--port", str(port),
            "--state-dir", str(state_dir), "--log-level", "warning"]
    _, record = procs.spawn("monitor", argv, log_path=state_dir / "monitor.log",
                            cwd=Path(__file__).resolve().parents[2])
    emulator = MonitorEmulator(base=f"http://{procs.LOOPBACK}:{port}", pid=record.pid)
    try:
        procs.wait_until(lambda: procs.http_ok(f"{emulator.base}/healthz"), timeout=60,
                         what="Monitor emulator")
    except BaseException:
        procs.stop(record.pid)
        raise
    return emulator


def running_monitor(state_dir: Path) -> Iterator[MonitorEmulator]:
    """For a fixture: start, yield, stop exactly that process."""
    emulator = start_monitor(state_dir)
    try:
        yield emulator
    finally:
        procs.stop(emulator.pid)


# --------------------------------------------------------------- envelopes straight into a Store

#: The emulator's workspace context for rows mapped in-process.
CONTEXT = Context(workspace_id="00000000-0000-4000-8000-0000000010ca", resource_id="/rid")


def _ai_duration(ms: float) -> str:
    return api._ai_duration(ms)  # the exporter's own formatting


class Telemetry:
    """Builds envelopes the way the exporter shapes what shared.telemetry records, mapped into
    the Monitor emulator's rows (``items``) for a ``Store`` to ingest, without HTTP.

    ``now`` is when events and availability results happen, and requests and dependencies
    unless given ``at``.
    """

    def __init__(self, now: datetime, ctx: Context = CONTEXT) -> None:
        self.now, self.ctx = now, ctx
        self.items: list[Received] = []
        self.seq = 0

    def _add(self, kind: str, base_type: str, data: dict[str, Any], op: str, parent: str | None,
             *, synthetic: bool, at: datetime) -> None:
        tags = {"ai.operation.id": op, "ai.cloud.role": "visionops"}
        if parent:
            tags["ai.operation.parentId"] = parent
        if synthetic:
            tags["ai.operation.syntheticSource"] = "True"
        env = {"name": f"Microsoft.ApplicationInsights.{kind}", "iKey": "k", "time": at.isoformat(),
               "tags": tags, "data": {"baseType": base_type, "baseData": {"ver": 2, **data}}}
        self.items.append(Received(json.dumps(env), map_envelope(env, self.ctx)))

    def request(self, op: str, outcome: str, ms: float, *, success: bool = True,
                synthetic: bool = False, at: datetime | None = None, **props: str) -> str:
        self.seq += 1
        rid = f"r{self.seq:015d}"
        self._add("Request", "RequestData", {
            "id": rid, "name": "analyze_image", "duration": _ai_duration(ms), "responseCode": "0",
            "success": success,
            "properties": {names.ATTR_OUTCOME: outcome, "faas.trigger": "datasource", **props},
        }, op, None, synthetic=synthetic, at=at or self.now)
        return rid

    def vision(self, op: str, parent: str, code: int, ms: float, attempt: int = 1, *,
               synthetic: bool = False, at: datetime | None = None, **props: str) -> None:
        self.seq += 1
        self._add("RemoteDependency", "RemoteDependencyData", {
            "id": f"d{self.seq:015d}", "name": names.SPAN_VISION_ANALYZE,
            "duration": _ai_duration(ms),
            "resultCode": str(code), "success": code == 200, "type": "HTTP",
            "target": "127.0.0.1:7081",
            "properties": {names.ATTR_VISION_ATTEMPT: str(attempt), **props},
        }, op, parent, synthetic=synthetic, at=at or self.now)

    def event(self, op: str, parent: str, name: str, *, synthetic: bool = False,
              **props: str) -> None:
        self._add("Event", "EventData", {"name": name, "properties": props}, op, parent,
                  synthetic=synthetic, at=self.now)

    def availability(self, name: str, ok: bool, ms: float, location: str) -> None:
        self._add("Availability", "AvailabilityData", {
            "id": f"a{len(self.items)}", "name": name, "duration": _ai_duration(ms), "success": ok,
            "runLocation": location, "message": "passed" if ok else "failed",
        }, "avail", None, synthetic=True, at=self.now)
