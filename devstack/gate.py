"""The deployment verification gate: promote a new version, or roll it back.

One decision, two callers: the deploy workflow runs it against the Function App in Azure after
``azd deploy``, and ``python -m devstack rollout`` runs it against a new local host before the old
one is drained. Both feed it the same observations, answers of ``/api/health`` and
``/api/status`` polled over a watch window, and both act on its verdict.

:func:`decide` is pure (observations + policy + now → :class:`Verdict`), so the recorded status
answers in ``tests/unit/fixtures/gate/`` pin its decisions. :func:`run_gate` does the polling with
an injected clock and sleep; :func:`send_marker` writes the deployment marker (a custom event
``deployment`` carrying the version) to Application Insights' ingestion endpoint.

Rules, in order of precedence:

* any answer that is not a 200 after the new version has been seen, or a status body that is not
  a status report, rolls back (a deploy must not fail requests);
* a watched alert (the SLO burn-rate rules by default) active in any answer rolls back; one that
  cannot be evaluated (its query failed) at the end of the watch rolls back too — the gate does
  not promote blind;
* the on-demand end-to-end probe, requested once the new version answers, must report a passing
  run newer than the request; a failed run rolls back, no run by the probe deadline rolls back;
* the new version must answer before the start-up deadline (during a rolling update the old one
  may answer for a while, which is not a failure until then);
* otherwise, once the watch window has passed since the new version first answered: promote.

Standard library only: the workflow runs it on a bare runner. Never deployed (devstack/).
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "BURN_RATE_ALERTS",
    "E2E_PROBE",
    "MARKER_EVENT",
    "Decision",
    "GatePolicy",
    "Observation",
    "Verdict",
    "decide",
    "marker_envelope",
    "observe",
    "run_gate",
    "send_marker",
]

#: The multiwindow burn-rate rules of ``shared.monitoring.alerts`` (fast: 14.4x over 1 h, slow: 6x
#: over 6 h).
BURN_RATE_ALERTS = ("slo-burn-fast", "slo-burn-slow")
#: ``shared.ops.probes.E2E_PROBE``; repeated here so the gate needs nothing of the app.
E2E_PROBE = "pipeline-e2e"
#: Name of the custom event (AppEvents / customEvents) that marks a deployment.
MARKER_EVENT = "deployment"


class Decision(enum.StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Observation:
    """One poll: both endpoints' HTTP status (None = no answer) and the status body."""

    at: datetime
    health_code: int | None
    status_code: int | None
    status: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GatePolicy:
    version: str
    started_at: datetime
    watch: timedelta = timedelta(minutes=10)
    startup_deadline: timedelta = timedelta(minutes=5)
    probe_deadline: timedelta = timedelta(minutes=8)
    alerts: tuple[str, ...] = BURN_RATE_ALERTS
    probe: str | None = E2E_PROBE


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reasons: tuple[str, ...]
    live_at: datetime | None = None
    checks: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision.value, "reasons": list(self.reasons),
                "live_at": _iso(self.live_at), "checks": dict(self.checks)}


@dataclass(slots=True)
class _Seen:
    """What the observations add up to, before judging."""

    live_at: datetime | None = None
    failures: list[str] = field(default_factory=list)
    unevaluated: set[str] = field(default_factory=set)
    probe_result: Mapping[str, Any] | None = None
    versions: set[str] = field(default_factory=set)


def decide(policy: GatePolicy, observations: Sequence[Observation], *, now: datetime,
           probe_requested_at: datetime | None = None) -> Verdict:
    """The verdict on everything observed so far (see the module docstring for the rules)."""
    seen = _Seen()
    for obs in observations:
        _take(policy, seen, obs, probe_requested_at)
    checks: dict[str, Any] = {"observations": len(observations), "live": seen.live_at is not None,
                              "probe": _probe_check(seen.probe_result, policy.probe)}
    decision, reasons = _judge(policy, seen, now, probe_requested_at)
    return Verdict(decision, reasons, seen.live_at, checks)


def _take(policy: GatePolicy, seen: _Seen, obs: Observation,
          probe_requested_at: datetime | None) -> None:
    status = obs.status if obs.status_code == 200 else None
    version = _str(status, "version")
    if version:
        seen.versions.add(version)
    if seen.live_at is None and obs.health_code == 200 and version == policy.version:
        seen.live_at = obs.at
    if seen.live_at is None:
        return  # before the new version answers: the old one may still be serving
    problem = _answer_problem(obs)
    if problem or status is None:
        seen.failures.append(f"{_iso(obs.at)}: {problem}")
        return
    for rule in _rules(status):
        name = str(rule.get("name"))
        if name not in policy.alerts:
            continue
        if rule.get("active") is True:
            seen.failures.append(f"{_iso(obs.at)}: alert {name} is firing "
                                 f"(value {rule.get('value')}, threshold {rule.get('threshold')})")
        elif rule.get("error"):
            seen.unevaluated.add(name)
        else:
            seen.unevaluated.discard(name)
    if policy.probe and probe_requested_at is not None:
        run = _probe_run(status, policy.probe, since=probe_requested_at)
        if run is not None:
            seen.probe_result = run


def _judge(policy: GatePolicy, seen: _Seen, now: datetime,  # noqa: PLR0911 - one per rule
           probe_requested_at: datetime | None) -> tuple[Decision, tuple[str, ...]]:
    if seen.failures:
        return Decision.ROLLBACK, tuple(dict.fromkeys(seen.failures))
    if seen.live_at is None:
        if now - policy.started_at >= policy.startup_deadline:
            return Decision.ROLLBACK, (
                f"version {policy.version} did not answer healthy within "
                f"{policy.startup_deadline}; versions seen: {sorted(seen.versions) or 'none'}",)
        return Decision.WAIT, ("waiting for the new version to answer",)
    result = seen.probe_result
    if result is not None and result.get("last_success") is not True:
        return Decision.ROLLBACK, (
            f"end-to-end probe {policy.probe} failed: {result.get('last_message')}",)
    waiting: list[str] = []
    if policy.probe and result is None:
        if probe_requested_at is not None and now - probe_requested_at >= policy.probe_deadline:
            return Decision.ROLLBACK, (f"no run of probe {policy.probe} reported within "
                                       f"{policy.probe_deadline} of the request",)
        waiting.append(f"waiting for a run of probe {policy.probe}")
    if now - seen.live_at < policy.watch:
        waiting.append(f"watching until {_iso(seen.live_at + policy.watch)}")
    if waiting:
        return Decision.WAIT, tuple(waiting)
    if seen.unevaluated:
        return Decision.ROLLBACK, ("alerts could not be evaluated at the end of the watch: "
                                   f"{sorted(seen.unevaluated)}",)
    return Decision.PROMOTE, (f"version {policy.version} healthy for {now - seen.live_at}, "
                              "probe passed, no watched alert fired",)


def _answer_problem(obs: Observation) -> str | None:
    if obs.health_code != 200:
        return f"/api/health answered {obs.health_code or 'nothing'}" + _detail(obs.error)
    if obs.status_code != 200:
        return f"/api/status answered {obs.status_code or 'nothing'}" + _detail(obs.error)
    status = obs.status
    if not isinstance(status, Mapping) or not isinstance(status.get("alerts"), Mapping) \
            or not isinstance(status.get("probes"), Mapping) or "version" not in status:
        return "/api/status body is not a status report"
    return None


def _rules(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rules = (status.get("alerts") or {}).get("rules") or []
    return [r for r in rules if isinstance(r, Mapping)]


def _probe_run(status: Mapping[str, Any], probe: str, *,
               since: datetime) -> Mapping[str, Any] | None:
    for result in (status.get("probes") or {}).get("results") or []:
        if not isinstance(result, Mapping) or result.get("probe") != probe:
            continue
        last = _parse_time(result.get("last_time"))
        if last is not None and last >= since:
            return result
    return None


def _probe_check(result: Mapping[str, Any] | None, probe: str | None) -> Any:
    if probe is None:
        return "not required"
    if result is None:
        return None
    return {"success": result.get("last_success"), "at": result.get("last_time"),
            "message": result.get("last_message")}


def _str(status: Mapping[str, Any] | None, key: str) -> str | None:
    if not isinstance(status, Mapping):
        return None
    value = status.get(key)
    return value if isinstance(value, str) else None


def _detail(error: str | None) -> str:
    return f" ({error})" if error else ""


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- polling --------------------------------------------------------------------------------------


Fetch = Callable[[str], tuple[int | None, bytes, str | None]]


def _http_url(url: str) -> str:
    """Only http(s): urllib would also open ``file:`` and custom schemes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


def http_fetch(timeout: float = 30.0) -> Fetch:
    """GET over urllib: (status or None, body, error text)."""
    def fetch(url: str) -> tuple[int | None, bytes, str | None]:
        try:
            with urllib.request.urlopen(_http_url(url), timeout=timeout) as response:  # noqa: S310
                return int(response.status), response.read(), None
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(), None
        except (urllib.error.URLError, OSError) as exc:
            return None, b"", type(exc).__name__ + ": " + str(getattr(exc, "reason", exc))
    return fetch


def observe(base_url: str, function_key: str, fetch: Fetch, now: datetime) -> Observation:
    """One poll of ``/api/health`` and ``/api/status`` (authenticated with the function key)."""
    base = base_url.rstrip("/")
    health_code, _, health_error = fetch(f"{base}/api/health")
    status_code, body, status_error = fetch(f"{base}/api/status?code={function_key}")
    status: Mapping[str, Any] | None = None
    if status_code is not None and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            status_error = "status body is not JSON"
        else:
            status = parsed if isinstance(parsed, dict) else None
    return Observation(now, health_code, status_code, status, health_error or status_error)


def run_gate(policy: GatePolicy, poll: Callable[[datetime], Observation], *,
             request_probe: Callable[[], None] | None,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC),
             sleep: Callable[[float], None] = time.sleep, interval_s: float = 15.0,
             on_observation: Callable[[Observation, Verdict], None] | None = None) -> Verdict:
    """Poll until :func:`decide` says promote or roll back; request the probe once live."""
    observations: list[Observation] = []
    probe_requested_at: datetime | None = None
    while True:
        observations.append(poll(clock()))
        verdict = decide(policy, observations, now=clock(), probe_requested_at=probe_requested_at)
        if on_observation is not None:
            on_observation(observations[-1], verdict)
        if verdict.decision is not Decision.WAIT:
            return verdict
        if verdict.live_at is not None and probe_requested_at is None and policy.probe:
            probe_requested_at = clock()
            if request_probe is not None:
                request_probe()
        sleep(interval_s)


def admin_invoker(base_url: str, master_key: str, function: str,
                  timeout: float = 30.0) -> Callable[[], None]:
    """``POST /admin/functions/<name>``: how the Functions host runs a timer function now."""
    def invoke() -> None:
        request = urllib.request.Request(  # noqa: S310 - scheme checked by _http_url
            _http_url(f"{base_url.rstrip('/')}/admin/functions/{function}"), data=b'{"input": ""}',
            headers={"x-functions-key": master_key, "Content-Type": "application/json"},
            method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            if response.status not in (200, 202):
                raise RuntimeError(f"invoking {function} answered {response.status}")
    return invoke


# --- the deployment marker ------------------------------------------------------------------------


def marker_envelope(connection_string: str, version: str, *, kind: str, outcome: str,
                    previous: str | None, now: datetime) -> list[dict[str, Any]]:
    """The ``EventData`` envelope of one deployment marker (AppEvents, Name = deployment)."""
    ikey = _connection_part(connection_string, "InstrumentationKey")
    return [{
        "name": "Microsoft.ApplicationInsights.Event",
        "time": _iso(now),
        "iKey": ikey,
        "tags": {"ai.cloud.role": "deploy", "ai.operation.id": uuid.uuid4().hex},
        "data": {"baseType": "EventData", "baseData": {
            "ver": 2, "name": MARKER_EVENT,
            "properties": {"version": version, "kind": kind, "outcome": outcome,
                           "previous_version": previous or ""},
        }},
    }]


def send_marker(connection_string: str, envelope: list[dict[str, Any]], *,
                token: str | None = None, timeout: float = 30.0) -> int:
    """POST the envelope to ``{IngestionEndpoint}/v2.1/track``; the count accepted."""
    endpoint = _connection_part(connection_string, "IngestionEndpoint").rstrip("/")
    headers = {"Content-Type": "application/json"}
    if token:  # Entra-only ingestion (disableLocalAuth): a Monitoring Metrics Publisher token
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - scheme checked by _http_url
        _http_url(f"{endpoint}/v2.1/track"), data=json.dumps(envelope).encode(), headers=headers,
        method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        reply = json.loads(response.read() or b"{}")
    accepted = int(reply.get("itemsAccepted", 0))
    if accepted != len(envelope):
        raise RuntimeError(f"ingestion accepted {accepted} of {len(envelope)}: "
                           f"{reply.get('errors')}")
    return accepted


def _connection_part(connection_string: str, key: str) -> str:
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    if key not in parts:
        raise ValueError(f"connection string has no {key}")
    return parts[key]


# --- command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.gate",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="poll the app and decide: exit 0 promote, 1 roll back")
    verify.add_argument("--base-url", required=True)
    verify.add_argument("--version", required=True)
    verify.add_argument("--function-key-env", default="GATE_FUNCTION_KEY",
                        help="environment variable holding the function key (never an argument)")
    verify.add_argument("--master-key-env", default="GATE_MASTER_KEY",
                        help="environment variable holding the host master key (probe run)")
    verify.add_argument("--watch-minutes", type=float, default=10.0)
    verify.add_argument("--startup-minutes", type=float, default=5.0)
    verify.add_argument("--probe-minutes", type=float, default=8.0)
    verify.add_argument("--interval-seconds", type=float, default=15.0)
    verify.add_argument("--verdict-file", type=Path, help="write the verdict JSON here")
    marker = sub.add_parser("marker", help="write a deployment marker to Application Insights")
    marker.add_argument("--connection-string-env", default="APPLICATIONINSIGHTS_CONNECTION_STRING")
    marker.add_argument("--token-env", default="GATE_MONITOR_TOKEN")
    marker.add_argument("--version", required=True)
    marker.add_argument("--kind", choices=["deploy", "rollback"], default="deploy")
    marker.add_argument("--outcome", choices=["started", "promoted", "rolled_back", "failed"],
                        default="started")
    marker.add_argument("--previous", default="")
    args = parser.parse_args(argv)
    import os

    if args.command == "marker":
        envelope = marker_envelope(os.environ[args.connection_string_env], args.version,
                                   kind=args.kind, outcome=args.outcome, previous=args.previous,
                                   now=datetime.now(UTC))
        send_marker(os.environ[args.connection_string_env], envelope,
                    token=os.environ.get(args.token_env) or None)
        print(f"deployment marker sent: {args.kind} {args.version} {args.outcome}")
        return 0

    function_key = os.environ.get(args.function_key_env, "")
    master_key = os.environ.get(args.master_key_env, "")
    if not function_key or not master_key:
        print(f"{args.function_key_env} and {args.master_key_env} must be set", file=sys.stderr)
        return 2
    policy = GatePolicy(
        version=args.version, started_at=datetime.now(UTC),
        watch=timedelta(minutes=args.watch_minutes),
        startup_deadline=timedelta(minutes=args.startup_minutes),
        probe_deadline=timedelta(minutes=args.probe_minutes))
    fetch = http_fetch()

    def show(obs: Observation, verdict: Verdict) -> None:
        state = _str(obs.status, "state")
        print(f"{_iso(obs.at)} health={obs.health_code} status={obs.status_code} "
              f"version={_str(obs.status, 'version')} state={state} -> {verdict.decision.value}: "
              + "; ".join(verdict.reasons), flush=True)

    verdict = run_gate(policy, lambda now: observe(args.base_url, function_key, fetch, now),
                       request_probe=admin_invoker(args.base_url, master_key, "e2e_probe"),
                       interval_s=args.interval_seconds, on_observation=show)
    if args.verdict_file:
        args.verdict_file.write_text(json.dumps(verdict.to_json(), indent=1) + "\n")
    print(f"gate: {verdict.decision.value}: " + "; ".join(verdict.reasons))
    return 0 if verdict.decision is Decision.PROMOTE else 1


if __name__ == "__main__":
    raise SystemExit(main())
