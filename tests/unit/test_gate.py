"""The deployment gate's decisions (``devstack.gate``) on recorded ``/api/status`` answers.

The fixtures in ``fixtures/gate/`` are real answers of the local stack's ``/api/status``:

* ``status-fresh-stack.json`` — a stack just started: no telemetry yet (degraded), no probe run;
* ``status-healthy-probe-passed.json`` — after an on-demand ``e2e_probe`` run that passed;
* ``status-probe-failed.json`` — the Vision emulator answering 400 to everything: the e2e probe
  fails (client errors do not burn the SLO, so no burn-rate alert);
* ``status-burn-rate-firing.json`` — the emulator answering 500: error rate 0.7, both SLO
  burn-rate rules active.

Time is injected everywhere: observations carry their own timestamps, ``run_gate`` gets a fake
clock and a sleep that advances it.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack import gate
from devstack.gate import Decision, GatePolicy, Observation
from tests.support.clocks import WallClock

FIXTURES = Path(__file__).parent / "fixtures" / "gate"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def at(status: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(status["checked_at"].replace("Z", "+00:00"))


def last_probe_time(status: dict[str, Any], probe: str = gate.E2E_PROBE) -> datetime:
    (result,) = [r for r in status["probes"]["results"] if r["probe"] == probe]
    return datetime.fromisoformat(result["last_time"].replace("Z", "+00:00"))


def ok(when: datetime, status: dict[str, Any]) -> Observation:
    return Observation(when, 200, 200, status)


def policy(start: datetime, version: str = "dev", **kw: Any) -> GatePolicy:
    return GatePolicy(version=version, started_at=start, watch=timedelta(minutes=10),
                      startup_deadline=timedelta(minutes=5), probe_deadline=timedelta(minutes=8),
                      **kw)


def test_fixtures_are_what_their_names_say() -> None:
    fresh, healthy = load("status-fresh-stack"), load("status-healthy-probe-passed")
    failed, burning = load("status-probe-failed"), load("status-burn-rate-firing")
    assert fresh["state"] == "degraded" and fresh["probes"]["results"] == []
    assert healthy["state"] == "healthy"
    active = {r["name"] for r in burning["alerts"]["rules"] if r["active"]}
    assert set(gate.BURN_RATE_ALERTS) <= active
    assert not {r["name"] for r in failed["alerts"]["rules"] if r["active"]} & set(
        gate.BURN_RATE_ALERTS)


def test_healthy_with_a_passing_probe_is_promoted_after_the_watch() -> None:
    healthy = load("status-healthy-probe-passed")
    requested = last_probe_time(healthy) - timedelta(seconds=5)
    start = requested - timedelta(seconds=30)
    polls = [ok(start + timedelta(minutes=m), healthy) for m in range(11)]
    verdict = gate.decide(policy(start), polls, now=polls[-1].at, probe_requested_at=requested)
    assert verdict.decision is Decision.PROMOTE, verdict.reasons
    assert verdict.live_at == start
    assert verdict.checks["probe"]["success"] is True


def test_healthy_but_still_inside_the_watch_waits() -> None:
    healthy = load("status-healthy-probe-passed")
    requested = last_probe_time(healthy) - timedelta(seconds=5)
    polls = [ok(requested, healthy), ok(requested + timedelta(minutes=3), healthy)]
    verdict = gate.decide(policy(requested), polls, now=polls[-1].at, probe_requested_at=requested)
    assert verdict.decision is Decision.WAIT
    assert any("watching until" in r for r in verdict.reasons)


def test_burn_rate_alert_rolls_back() -> None:
    healthy, burning = load("status-healthy-probe-passed"), load("status-burn-rate-firing")
    start = at(healthy)
    # The probe was requested after every probe run in the fixtures: only the alert decides.
    requested = at(burning)
    polls = [ok(start, healthy), ok(start + timedelta(minutes=2), burning)]
    verdict = gate.decide(policy(start), polls, now=polls[-1].at, probe_requested_at=requested)
    assert verdict.decision is Decision.ROLLBACK
    assert [r.split(": ", 1)[1].split(" (")[0] for r in verdict.reasons] == [
        "alert slo-burn-fast is firing", "alert slo-burn-slow is firing"]


def test_non_watched_alerts_do_not_roll_back() -> None:
    # The same answer, watching only a rule that is not active in it: no rollback for the rest.
    burning = load("status-burn-rate-firing")
    start = at(burning)
    verdict = gate.decide(policy(start, alerts=("latency-p95",), probe=None),
                          [ok(start, burning)], now=start + timedelta(minutes=11))
    assert verdict.decision is Decision.PROMOTE, verdict.reasons


def test_probe_failure_rolls_back() -> None:
    failed = load("status-probe-failed")
    requested = last_probe_time(failed) - timedelta(seconds=3)
    polls = [ok(requested, failed)]
    verdict = gate.decide(policy(requested), polls, now=requested, probe_requested_at=requested)
    assert verdict.decision is Decision.ROLLBACK
    assert "end-to-end probe pipeline-e2e failed" in verdict.reasons[0]
    assert "service_400" in verdict.reasons[0]


def test_a_probe_run_older_than_the_request_does_not_count() -> None:
    healthy = load("status-healthy-probe-passed")
    requested = last_probe_time(healthy) + timedelta(seconds=1)
    polls = [ok(requested, healthy)]
    verdict = gate.decide(policy(requested), polls, now=requested + timedelta(minutes=7),
                          probe_requested_at=requested)
    # The recorded run predates the request: it is not this version's probe; keep waiting…
    assert verdict.decision is Decision.WAIT
    assert verdict.checks["probe"] is None
    assert f"waiting for a run of probe {gate.E2E_PROBE}" in verdict.reasons
    # …until the probe deadline, then roll back.
    late = gate.decide(policy(requested), polls, now=requested + timedelta(minutes=8),
                       probe_requested_at=requested)
    assert late.decision is Decision.ROLLBACK
    assert "no run of probe" in late.reasons[0]


def test_fresh_stack_without_any_probe_run_waits_then_rolls_back() -> None:
    fresh = load("status-fresh-stack")
    start = at(fresh)
    polls = [ok(start, fresh)]
    assert gate.decide(policy(start), polls, now=start,
                       probe_requested_at=start).decision is Decision.WAIT
    verdict = gate.decide(policy(start), polls, now=start + timedelta(minutes=9),
                          probe_requested_at=start)
    assert verdict.decision is Decision.ROLLBACK


def test_old_version_answering_is_waited_for_until_the_startup_deadline() -> None:
    healthy = load("status-healthy-probe-passed")  # version "dev"
    start = at(healthy)
    polls = [ok(start + timedelta(minutes=m), healthy) for m in range(3)]
    waiting = gate.decide(policy(start, version="v2"), polls, now=polls[-1].at)
    assert waiting.decision is Decision.WAIT and waiting.live_at is None
    verdict = gate.decide(policy(start, version="v2"), polls, now=start + timedelta(minutes=5))
    assert verdict.decision is Decision.ROLLBACK
    assert "versions seen: ['dev']" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("health", "status_code", "body", "expected"),
    [
        (503, 200, "healthy", "/api/health answered 503"),
        (None, None, None, "/api/health answered nothing (ConnectionRefusedError: refused)"),
        (200, 503, "healthy", "/api/status answered 503"),
        (200, 200, {"state": "healthy"}, "/api/status body is not a status report"),
    ],
)
def test_a_failed_answer_after_going_live_rolls_back(
        health: int | None, status_code: int | None, body: Any, expected: str) -> None:
    healthy = load("status-healthy-probe-passed")
    start = at(healthy)
    status = healthy if body == "healthy" else body
    error = "ConnectionRefusedError: refused" if health is None else None
    bad = Observation(start + timedelta(minutes=1), health, status_code, status, error)
    verdict = gate.decide(policy(start, probe=None), [ok(start, healthy), bad],
                          now=start + timedelta(minutes=11))
    assert verdict.decision is Decision.ROLLBACK
    assert verdict.reasons[0].endswith(expected)


def test_a_failed_answer_before_going_live_is_not_a_failure() -> None:
    # The new host is still starting (or the old one is answering): nothing to judge yet.
    healthy = load("status-healthy-probe-passed")
    start = at(healthy)
    polls = [Observation(start, None, None, None, "refused"),
             ok(start + timedelta(seconds=20), healthy)]
    verdict = gate.decide(policy(start, probe=None), polls, now=start + timedelta(minutes=11))
    assert verdict.decision is Decision.PROMOTE
    assert verdict.live_at == start + timedelta(seconds=20)


def test_alerts_that_cannot_be_evaluated_block_promotion() -> None:
    # Derived from the recorded healthy answer: the burn-rate query failed.
    healthy = load("status-healthy-probe-passed")
    broken = copy.deepcopy(healthy)
    for rule in broken["alerts"]["rules"]:
        if rule["name"] == "slo-burn-fast":
            rule["error"] = "query failed: 429"
    start = at(healthy)
    verdict = gate.decide(policy(start, probe=None), [ok(start, broken)],
                          now=start + timedelta(minutes=11))
    assert verdict.decision is Decision.ROLLBACK
    assert "could not be evaluated" in verdict.reasons[0]
    # A later answer that evaluates it clears the doubt.
    recovered = gate.decide(policy(start, probe=None),
                            [ok(start, broken), ok(start + timedelta(minutes=1), healthy)],
                            now=start + timedelta(minutes=11))
    assert recovered.decision is Decision.PROMOTE


def test_run_gate_requests_the_probe_once_and_promotes() -> None:
    fresh, healthy = load("status-fresh-stack"), load("status-healthy-probe-passed")
    # Start so that the recorded probe run lands after the request the gate makes.
    clock = WallClock(last_probe_time(healthy) - timedelta(seconds=60))
    requests: list[datetime] = []

    def poll(now: datetime) -> Observation:
        # Before the probe was requested the app answers like a fresh stack, then like after it.
        return ok(now, healthy if requests and now >= requests[0] + timedelta(seconds=45)
                  else fresh)

    verdict = gate.run_gate(policy(clock.now), poll, request_probe=lambda: requests.append(
        clock.now), clock=clock, sleep=clock.sleep, interval_s=30)
    assert verdict.decision is Decision.PROMOTE, verdict.reasons
    assert len(requests) == 1
    assert clock.now - verdict.live_at >= timedelta(minutes=10)  # type: ignore[operator]
    assert len(clock.sleeps) == 20


def test_run_gate_stops_at_the_first_rollback() -> None:
    healthy, burning = load("status-healthy-probe-passed"), load("status-burn-rate-firing")
    clock = WallClock(at(burning))
    answers = iter([healthy, healthy, burning])
    verdict = gate.run_gate(policy(clock.now, probe=None), lambda now: ok(now, next(answers)),
                            request_probe=None, clock=clock, sleep=clock.sleep, interval_s=15)
    assert verdict.decision is Decision.ROLLBACK
    assert clock.sleeps == [15, 15]


def test_observe_parses_answers_and_reports_transport_errors() -> None:
    healthy = load("status-healthy-probe-passed")
    calls: list[str] = []

    def fetch(url: str) -> tuple[int | None, bytes, str | None]:
        calls.append(url)
        if url.endswith("/api/health"):
            return 200, b'{"status":"ok"}', None
        return 200, json.dumps(healthy).encode(), None

    obs = gate.observe("http://127.0.0.1:1/", "k1", fetch, at(healthy))
    assert calls == ["http://127.0.0.1:1/api/health", "http://127.0.0.1:1/api/status?code=k1"]
    assert obs.status == healthy and obs.error is None
    refused = gate.observe("http://127.0.0.1:1", "k", lambda _u: (None, b"", "refused"),
                           at(healthy))
    assert (refused.health_code, refused.status_code, refused.error) == (None, None, "refused")
    garbage = gate.observe("http://127.0.0.1:1", "k", lambda _u: (200, b"<html>", None),
                           at(healthy))
    assert garbage.status is None and garbage.error == "status body is not JSON"


def test_marker_envelope_is_an_event_carrying_the_version() -> None:
    conn = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://x/"
    (env,) = gate.marker_envelope(conn, "abc123", kind="rollback", outcome="promoted",
                                  previous="v0", now=datetime.fromisoformat(
                                      "2026-12-01T10:00:00+00:00"))
    assert env["name"] == "Microsoft.ApplicationInsights.Event"
    assert env["iKey"] == "00000000-0000-0000-0000-000000000000"
    assert env["time"] == "2026-12-01T10:00:00Z"
    base = env["data"]["baseData"]
    assert env["data"]["baseType"] == "EventData" and base["name"] == gate.MARKER_EVENT
    assert base["properties"] == {"version": "abc123", "kind": "rollback", "outcome": "promoted",
                                  "previous_version": "v0"}
    with pytest.raises(ValueError, match="IngestionEndpoint"):
        gate.send_marker("InstrumentationKey=x", [env])
