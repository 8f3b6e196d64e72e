"""The local Azure stack: Azurite, the Vision emulator and the local Functions host.

``up`` starts what is not running, waits until every part answers and records what it started
in ``<state>/stack.json``; ``down`` stops exactly those process groups and nothing else. With
``front`` the host listens on a private port behind ``devstack.front`` on the functions port, so
``python -m devstack rollout`` can replace the host without clients changing address.
Everything binds to 127.0.0.1 and keeps its state under one git-ignored folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack import procs
from devstack.azurite import AzuriteConfig, azurite_argv, ensure_containers
from devstack.monitor.config import DEFAULT_WORKSPACE_ID

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".devstack"
STATE_FILE = "stack.json"

# Safe local defaults, the same values local.settings.json.example carries.
DEFAULT_VISION_KEY = "devstack-vision-key"
DEFAULT_PORTS = {
    "blob": 10000, "queue": 10001, "table": 10002,
    "vision": 7081, "monitor": 7082, "functions": 7071,
}
# The Monitor emulator accepts any instrumentation key; this one is all zeros so it is obviously
# not a real resource.
LOCAL_IKEY = "00000000-0000-0000-0000-000000000000"

#: ``down`` waits this long for any other process before SIGKILL.
STOP_TIMEOUT = 10.0
#: Beyond the host's own shutdown bounds: loading nothing, just the exit itself on a busy box.
HOST_STOP_MARGIN = 5.0

# What the app and the host need in storage before the first trigger fires.
CONTAINERS = ["images", "results", "failed", "azure-webjobs-hosts"]
QUEUES = ["webjobs-blobtrigger-poison"]


#: the host's own bounds on a graceful stop (in-flight invocations, then the telemetry flush)
HOST_SHUTDOWN_TIMEOUT = 30.0
HOST_TELEMETRY_FLUSH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class StackOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    script_root: Path = REPO_ROOT
    auto_ports: bool = False
    vision_key: str = DEFAULT_VISION_KEY
    vision_tier: str = "S1"
    vision_tps: int = 10
    start_host: bool = True
    front: bool = False
    timeout: float = 120.0
    #: the host's bound for in-flight invocations, then for the telemetry flush, on a stop
    host_shutdown_timeout: float = HOST_SHUTDOWN_TIMEOUT
    host_telemetry_flush_timeout: float = HOST_TELEMETRY_FLUSH_TIMEOUT

    @property
    def host_stop_timeout(self) -> float:
        """How long ``down`` waits for the host before SIGKILL: its own bounds, plus a margin."""
        return self.host_shutdown_timeout + self.host_telemetry_flush_timeout + HOST_STOP_MARGIN


@dataclass(slots=True)
class StackState:
    """What ``up`` started; the single source ``status`` and ``down`` read."""

    ports: dict[str, int]
    vision_key: str
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def host_port(self) -> int:
        """Where the host itself listens: the functions port, or a private one behind the front."""
        return self.ports.get("host", self.ports["functions"])

    @property
    def azurite(self) -> AzuriteConfig:
        return AzuriteConfig(
            location=Path(),
            blob_port=self.ports["blob"],
            queue_port=self.ports["queue"],
            table_port=self.ports["table"],
        )

    def endpoints(self, state_dir: Path) -> dict[str, Any]:
        """The values scripts and people need to talk to the stack."""
        functions_url = f"http://{procs.LOOPBACK}:{self.ports['functions']}"
        keys = read_host_keys(state_dir)
        monitor = f"http://{procs.LOOPBACK}:{self.ports['monitor']}"
        return {
            "storage_connection_string": self.azurite.connection_string,
            "blob_endpoint": self.azurite.blob_endpoint,
            "queue_endpoint": self.azurite.queue_endpoint,
            "vision_endpoint": f"http://{procs.LOOPBACK}:{self.ports['vision']}",
            "vision_key": self.vision_key,
            "ingestion_endpoint": f"{monitor}/",
            "applicationinsights_connection_string":
                f"InstrumentationKey={LOCAL_IKEY};IngestionEndpoint={monitor}/",
            "query_endpoint": f"{monitor}/v1",
            "workspace_id": DEFAULT_WORKSPACE_ID,
            "functions_url": functions_url,
            "function_key": keys.get("function_key"),
            "master_key": keys.get("master_key"),
            "state_dir": str(state_dir),
        }


def read_host_keys(state_dir: Path) -> dict[str, str]:
    path = state_dir / "host" / "keys.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    function_keys = raw.get("functionKeys") or {}
    return {
        "function_key": str(raw.get("function_key") or function_keys.get("default") or ""),
        "master_key": str(raw.get("master_key") or raw.get("masterKey") or ""),
    }


def load_state(state_dir: Path) -> StackState | None:
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return StackState(
        ports={k: int(v) for k, v in raw["ports"].items()},
        vision_key=str(raw["vision_key"]),
        processes=dict(raw.get("processes", {})),
        started_at=float(raw.get("started_at", 0.0)),
    )


def save_state(state_dir: Path, state: StackState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(state_dir / STATE_FILE)


def choose_ports(auto: bool, report: Callable[[str], None]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, default in DEFAULT_PORTS.items():
        if auto:
            ports[name] = procs.free_port()
        elif procs.port_open(default):
            ports[name] = procs.free_port()
            report(f"port {default} ({name}) is taken; using {ports[name]}")
        else:
            ports[name] = default
    return ports


def component_health(state: StackState) -> dict[str, bool]:
    """Whether each part answers right now (not merely whether its process exists)."""
    base = procs.LOOPBACK
    health = {
        "azurite": procs.port_open(state.ports["blob"]) and procs.port_open(state.ports["queue"]),
        "vision": procs.http_ok(f"http://{base}:{state.ports['vision']}/healthz"),
        "monitor": procs.http_ok(f"http://{base}:{state.ports['monitor']}/healthz"),
    }
    if "host" in state.processes:
        health["host"] = procs.http_ok(f"http://{base}:{state.host_port}/")
    if "front" in state.processes:
        health["front"] = procs.http_ok(f"http://{base}:{state.ports['functions']}/.front/status")
    return health


def up(opts: StackOptions, report: Callable[[str], None] = print) -> StackState:
    """Start every part that is not running and wait until all answer."""
    state_dir = opts.state_dir
    existing = load_state(state_dir)
    if existing is not None and all(
        procs.pid_alive(int(p["pid"])) for p in existing.processes.values()
    ):
        report("the stack is already running")
        return existing
    if existing is not None:
        report("a previous stack was left half-running; stopping what remains first")
        down(state_dir, report=lambda _msg: None)

    state = StackState(
        ports=choose_ports(opts.auto_ports, report),
        vision_key=opts.vision_key,
        started_at=time.time(),
    )
    logs = state_dir / "logs"
    python = sys.executable
    try:
        # The three emulators need nothing from each other: they start together (most of a
        # start is each process importing its libraries) and are waited for in turn.
        azurite = _spawn(state, state_dir, "azurite",
                         azurite_argv(AzuriteConfig(location=state_dir / "azurite",
                                                    blob_port=state.ports["blob"],
                                                    queue_port=state.ports["queue"],
                                                    table_port=state.ports["table"])),
                         logs, env=None,
                         ready=lambda: procs.port_open(state.ports["blob"])
                         and procs.port_open(state.ports["queue"]), report=report)
        vision_argv = [python, "-m", "devstack.vision", "--port", str(state.ports["vision"]),
                       "--key", opts.vision_key, "--tier", opts.vision_tier,
                       "--tps", str(opts.vision_tps)]
        vision = _spawn(state, state_dir, "vision", vision_argv, logs, env=None,
                        ready=lambda: procs.http_ok(
                            f"http://{procs.LOOPBACK}:{state.ports['vision']}/healthz"),
                        report=report)
        monitor_argv = [python, "-m", "devstack.monitor", "--port", str(state.ports["monitor"]),
                        "--state-dir", str(state_dir / "monitor")]
        monitor = _spawn(state, state_dir, "monitor", monitor_argv, logs, env=None,
                         ready=lambda: procs.http_ok(
                             f"http://{procs.LOOPBACK}:{state.ports['monitor']}/healthz"),
                         report=report)
        azurite(opts.timeout)
        ensure_containers(state.azurite.connection_string, CONTAINERS, QUEUES)
        vision(opts.timeout)
        monitor(opts.timeout)

        if opts.start_host:
            if opts.front:
                state.ports["host"] = procs.free_port()
            env = host_environment(state.endpoints(state_dir), dict(os.environ))
            argv = host_argv(opts.script_root, state.host_port, state_dir,
                             shutdown_timeout=opts.host_shutdown_timeout,
                             flush_timeout=opts.host_telemetry_flush_timeout)
            _spawn(state, state_dir, "host", argv, logs, env=env,
                   ready=lambda: procs.http_ok(f"http://{procs.LOOPBACK}:{state.host_port}/"),
                   report=report, stop_timeout=opts.host_stop_timeout)(opts.timeout)
            if opts.front:
                from devstack.front import write_backend

                write_backend(state_dir, f"http://{procs.LOOPBACK}:{state.host_port}")
                _spawn(state, state_dir, "front",
                       [python, "-m", "devstack.front", "--port", str(state.ports["functions"]),
                        "--state-dir", str(state_dir)], logs, env=None,
                       ready=lambda: procs.http_ok(
                           f"http://{procs.LOOPBACK}:{state.ports['functions']}/.front/status"),
                       report=report)(opts.timeout)
    except BaseException:
        report("start-up failed; stopping what was started (see the logs under "
               f"{logs})")
        down(state_dir, report=report)
        raise
    return state


def host_environment(endpoints: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """The host's environment: ``base`` with the app pointed at this stack (the environment
    wins over local.settings.json in the host)."""
    env = dict(base)
    env.update({
        "AzureWebJobsStorage": str(endpoints["storage_connection_string"]),
        "VISION_ENDPOINT": str(endpoints["vision_endpoint"]),
        "VISION_KEY": str(endpoints["vision_key"]),
        "APPLICATIONINSIGHTS_CONNECTION_STRING":
            str(endpoints["applicationinsights_connection_string"]),
        "LOGS_QUERY_ENDPOINT": str(endpoints["query_endpoint"]),
        "LOGS_WORKSPACE_ID": str(endpoints["workspace_id"]),
    })
    return env


def host_argv(script_root: Path, port: int, state_dir: Path, *,
              shutdown_timeout: float = HOST_SHUTDOWN_TIMEOUT,
              flush_timeout: float = HOST_TELEMETRY_FLUSH_TIMEOUT) -> list[str]:
    return [sys.executable, "-m", "devstack.host", "--script-root", str(script_root),
            "--port", str(port), "--state-dir", str(state_dir / "host"),
            "--shutdown-timeout", str(shutdown_timeout),
            "--telemetry-flush-timeout", str(flush_timeout)]


def start_process(state: StackState, state_dir: Path, name: str, argv: list[str], *,
                  env: dict[str, str] | None, ready: Callable[[], bool], timeout: float,
                  report: Callable[[str], None] = print) -> None:
    """Start one more recorded process (the rollout's new host) and wait until it is ready."""
    _spawn(state, state_dir, name, argv, state_dir / "logs", env=env, ready=ready,
           report=report,
           stop_timeout=StackOptions().host_stop_timeout if name.startswith("host")
           else STOP_TIMEOUT)(timeout)


def _spawn(
    state: StackState,
    state_dir: Path,
    name: str,
    argv: list[str],
    logs: Path,
    *,
    env: dict[str, str] | None,
    ready: Callable[[], bool],
    report: Callable[[str], None],
    stop_timeout: float = STOP_TIMEOUT,
) -> Callable[[float], None]:
    """Start and record one process; the returned call waits (up to its timeout) until it is
    ready, failing at once if it exits."""
    proc, record = procs.spawn(name, argv, log_path=logs / f"{name}.log", env=env,
                               cwd=REPO_ROOT)
    state.processes[name] = {"pid": record.pid, "log": record.log, "argv": list(record.argv),
                             "stop_timeout": stop_timeout}
    save_state(state_dir, state)  # recorded before waiting, so `down` can always stop it

    def ready_or_dead() -> bool:
        if proc.poll() is not None:
            raise procs.StartupError(
                f"{name} exited with code {proc.returncode}; see {record.log}\n"
                + tail(Path(record.log), 20)
            )
        return ready()

    def wait(timeout: float) -> None:
        procs.wait_until(ready_or_dead, timeout=timeout, interval=0.2, what=name)
        report(f"{name} is up (pid {record.pid})")

    return wait


def down(state_dir: Path, report: Callable[[str], None] = print) -> list[int]:
    """Stop exactly the process groups ``up`` recorded; return any pid still alive (none)."""
    state = load_state(state_dir)
    if state is None:
        report("no stack is recorded as running")
        return []
    leftovers: list[int] = []
    # Reverse start order: the host first, storage last, so nothing loses its backend mid-call
    # (the host's last telemetry flush needs the Monitor emulator, its last receipts Azurite).
    # SIGTERM, then SIGKILL after the process's own bound (the host's covers its drain+flush).
    for name, info in reversed(list(state.processes.items())):
        pid = int(info["pid"])
        if procs.stop(pid, timeout=float(info.get("stop_timeout", STOP_TIMEOUT))):
            report(f"stopped {name} (pid {pid})")
        leftovers.extend(procs.group_members(pid))
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return leftovers


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
