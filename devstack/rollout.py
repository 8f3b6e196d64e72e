"""``python -m devstack rollout``: the local rehearsal of a rolling deploy, gate and rollback.

The twin of the deploy workflow's Azure path, on a stack started with ``up --front``:

1. a new host starts beside the running one, on a private port, with the running host's
   environment (read from ``/proc/<pid>/environ``: same settings, same host id, so blob receipts
   and leases are shared and no blob is processed twice) and ``APP_VERSION`` = the new version;
   its code is ``--script-root`` (default: the checkout as it is now);
2. the deployment marker ``started`` goes to Application Insights (the Monitor emulator);
3. the gate (``devstack.gate``, the same decision the workflow uses) polls the *new* host's
   ``/api/health`` and ``/api/status`` directly, asks it to run ``e2e_probe`` now, and watches the
   burn-rate alerts for ``--watch-seconds``;
4. promote: the front switches to the new host (requests already in flight finish on the old
   one), the rollout waits until the old host has no request in flight through the front, then
   SIGTERMs it — the host stops taking blobs and timers, finishes in-flight invocations, exits —
   and records the new host as the stack's host; marker ``promoted``;
5. roll back (the gate said so, or the new host exited): the front never moved; the new host is
   stopped the same graceful way, the old one keeps serving; marker ``rolled_back``; exit 1.

Like Flex Consumption's rolling update, both versions take blob work while they overlap; unlike
it, HTTP traffic moves only once the gate passed (the front is the local stand-in for the
platform's front end). Local-only tooling: never deployed.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devstack import gate, procs, stack
from devstack.front import STATUS_PATH, write_backend

__all__ = ["RolloutError", "RolloutResult", "host_environment_of", "rollout"]

log = logging.getLogger(__name__)

HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"


class RolloutError(RuntimeError):
    """The stack cannot be rolled (not running, started without ``--front``)."""


@dataclass(frozen=True, slots=True)
class RolloutResult:
    version: str
    promoted: bool
    verdict: gate.Verdict
    old_pid: int
    new_pid: int
    #: the stopped host's own log says it finished every in-flight invocation, then stopped
    stopped_cleanly: bool
    #: invocations the stopped host was running when it got SIGTERM (it finished them)
    in_flight_at_stop: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "promoted": self.promoted,
                "verdict": self.verdict.to_json(), "old_pid": self.old_pid,
                "new_pid": self.new_pid, "stopped_cleanly": self.stopped_cleanly,
                "in_flight_at_stop": self.in_flight_at_stop}


def host_environment_of(pid: int) -> dict[str, str]:
    """The environment a running process was started with (Linux ``/proc``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _get_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def rollout(state_dir: Path, version: str, *, script_root: Path | None = None,
            watch_s: float = 20.0, startup_s: float = 60.0, probe_s: float = 90.0,
            interval_s: float = 2.0, drain_timeout_s: float = 60.0,
            report: Callable[[str], None] = print) -> RolloutResult:
    """Replace the stack's host with ``version`` if it passes the gate; see the module doc."""
    state = stack.load_state(state_dir)
    if state is None or "host" not in state.processes:
        raise RolloutError("no stack with a host is running (python -m devstack up --front)")
    if "front" not in state.processes:
        raise RolloutError("the stack was started without --front: clients talk to the host's "
                           "own port, so replacing it would cut them off")
    old = dict(state.processes["host"])
    old_pid = int(old["pid"])
    keys = stack.read_host_keys(state_dir)
    base = f"http://{procs.LOOPBACK}"
    old_url = f"{base}:{state.host_port}"
    front_url = f"{base}:{state.ports['functions']}"
    env = _new_host_environment(old_pid, old_url, keys["master_key"], version)
    root = (script_root or Path(old["argv"][old["argv"].index("--script-root") + 1])).resolve()
    new_port = procs.free_port()
    new_url = f"{base}:{new_port}"
    name = f"host-{new_port}"
    connection = env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    previous = str(_get_json(f"{front_url}/api/status?code={keys['function_key']}")
                   .get("version", ""))
    _marker(connection, version, "started", previous, report)

    report(f"rollout: starting {version} from {root} on {new_url} beside pid {old_pid}")
    try:
        stack.start_process(state, state_dir, name, stack.host_argv(root, new_port, state_dir),
                            env=env, ready=lambda: procs.http_ok(f"{new_url}/"),
                            timeout=startup_s, report=report)
        started = True
    except procs.StartupError as exc:
        report(f"rollout: {version} did not start: {str(exc).splitlines()[0]}")
        started = False
    new_pid = int(state.processes.get(name, {}).get("pid", 0))
    if not started:
        verdict = gate.Verdict(gate.Decision.ROLLBACK, (f"host for {version} did not start",))
    else:
        verdict = _gate(version, new_url, new_pid, keys, watch_s=watch_s, startup_s=startup_s,
                        probe_s=probe_s, interval_s=interval_s, report=report)
    report(f"gate: {verdict.decision.value}: " + "; ".join(verdict.reasons))

    if verdict.decision is gate.Decision.PROMOTE:
        write_backend(state_dir, new_url)
        _wait_front_drained(front_url, new_url, old_url, drain_timeout_s)
        in_flight = _active_invocations(old_url, keys["master_key"])
        clean = _stop(old_pid, Path(old["log"]), drain_timeout_s)
        record = state.processes.pop(name)
        state.processes["host"] = record  # same position in start order: `down` stops it
        state.ports["host"] = new_port
        stack.save_state(state_dir, state)
        _marker(connection, version, "promoted", previous, report)
        report(f"rollout: {version} is live on {new_url}; old host {old_pid} stopped "
               + (f"after finishing its {in_flight} in-flight invocations" if clean
                  else "WITHOUT a clean drain"))
        return RolloutResult(version, True, verdict, old_pid, new_pid, clean, in_flight)

    in_flight = _active_invocations(new_url, keys["master_key"]) if started else 0
    clean = new_pid > 0 and _stop(new_pid, state_dir / "logs" / f"{name}.log", drain_timeout_s)
    state.processes.pop(name, None)
    stack.save_state(state_dir, state)
    _marker(connection, version, "rolled_back", previous, report)
    report(f"rollout: {version} rejected; {previous or 'the old version'} keeps serving "
           f"on pid {old_pid}")
    return RolloutResult(version, False, verdict, old_pid, new_pid, clean, in_flight)


def _new_host_environment(old_pid: int, old_url: str, master_key: str,
                          version: str) -> dict[str, str]:
    """The running host's environment, its host id pinned (shared receipts and leases: a blob is
    processed once whichever host picks it up), and the new version."""
    old_status = _get_json(f"{old_url}/admin/host/status", {"x-functions-key": master_key})
    env = host_environment_of(old_pid)
    env[HOST_ID_SETTING] = str(old_status["id"])
    env["APP_VERSION"] = version
    return env


def _gate(version: str, url: str, pid: int, keys: Mapping[str, str], *, watch_s: float,
          startup_s: float, probe_s: float, interval_s: float,
          report: Callable[[str], None]) -> gate.Verdict:
    """The workflow's gate, run against the new host's own address (not through the front)."""
    policy = gate.GatePolicy(version=version, started_at=datetime.now(UTC),
                             watch=timedelta(seconds=watch_s),
                             startup_deadline=timedelta(seconds=startup_s),
                             probe_deadline=timedelta(seconds=probe_s))
    fetch = gate.http_fetch(timeout=30)

    def show(obs: gate.Observation, verdict: gate.Verdict) -> None:
        report(f"gate: health={obs.health_code} status={obs.status_code} "
               f"version={(obs.status or {}).get('version')} -> {verdict.decision.value}")

    def poll(now: datetime) -> gate.Observation:
        if not procs.pid_alive(pid):
            return gate.Observation(now, None, None, None, "the new host exited")
        return gate.observe(url, keys["function_key"], fetch, now)

    return gate.run_gate(policy, poll,
                         request_probe=gate.admin_invoker(url, keys["master_key"], "e2e_probe"),
                         interval_s=interval_s, on_observation=show)


def _active_invocations(url: str, master_key: str) -> int:
    try:
        status = _get_json(f"{url}/admin/host/status", {"x-functions-key": master_key})
    except OSError:
        return 0  # the host is already gone: nothing of it can be in flight
    return int(status.get("local", {}).get("activeInvocations", 0))


def _wait_front_drained(front_url: str, new_url: str, old_url: str, timeout: float) -> None:
    def drained() -> bool:
        status = _get_json(f"{front_url}{STATUS_PATH}")
        return bool(status["backend"] == new_url and not status["inflight"].get(old_url))
    procs.wait_until(drained, timeout=timeout, interval=0.05, what="front drain of the old host")


#: What devstack.host logs when a graceful stop ends, and when its deadline cut invocations off.
_STOPPED = "Host stopped"
_CUT_OFF = "Shutdown deadline passed"


def _stop(pid: int, log_path: Path, timeout: float) -> bool:
    """SIGTERM the host (it stops taking work and finishes in-flight invocations) and read its
    own log, written after that signal, for whether it finished them all."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    procs.stop(pid, timeout=timeout)
    with log_path.open("rb") as log_file:
        log_file.seek(offset)
        tail = log_file.read().decode(errors="replace")
    return _STOPPED in tail and _CUT_OFF not in tail


def _marker(connection: str, version: str, outcome: str, previous: str,
            report: Callable[[str], None]) -> None:
    envelope = gate.marker_envelope(connection, version, kind="deploy", outcome=outcome,
                                    previous=previous, now=datetime.now(UTC))
    gate.send_marker(connection, envelope)
    report(f"marker: deployment {version} {outcome}")


