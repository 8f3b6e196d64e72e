"""``python -m devstack up|down|status|logs|rollout``: run the local Azure stack by hand or from
scripts, and rehearse a rolling deploy on it."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from devstack import procs, stack


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=stack.DEFAULT_STATE_DIR,
                        help="where the stack keeps its data, logs and pids (default: .devstack)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the stack, wait until every part answers, then exit")
    up.add_argument("--auto-ports", action="store_true",
                    help="pick free ports instead of the defaults (tests, parallel stacks)")
    up.add_argument("--vision-tier", choices=["F0", "S1"], default="S1")
    up.add_argument("--vision-tps", type=int, default=10, help="S1 calls per second")
    up.add_argument("--no-host", action="store_true", help="storage and emulators only")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each part")
    up.add_argument("--json", action="store_true", help="print the endpoints as JSON")
    up.add_argument("--front", action="store_true",
                    help="put the host behind a local front door on the functions port, so "
                         "`rollout` can replace it without clients changing address")

    run = sub.add_parser("run", help="the main job: start the stack, upload samples/, show "
                         "them being analysed, keep running until Ctrl-C")
    run.add_argument("--samples", type=Path, default=stack.REPO_ROOT / "samples")
    run.add_argument("--no-wait", action="store_true",
                     help="exit (leaving the stack running) once the samples are done")
    run.add_argument("--deadline", type=float, default=600.0,
                     help="seconds to wait for every sample's document")
    run.add_argument("--auto-ports", action="store_true",
                     help="pick free ports instead of the defaults")

    sub.add_parser("down", help="stop exactly what `up` started")

    roll = sub.add_parser("rollout", help="replace the running host with a new version if it "
                          "passes the deploy gate, else keep the old one (needs `up --front`)")
    roll.add_argument("--version", required=True, help="APP_VERSION of the new host")
    roll.add_argument("--script-root", type=Path, default=None,
                      help="the new version's app folder (default: the running host's)")
    roll.add_argument("--watch-seconds", type=float, default=20.0,
                      help="how long the gate watches the new host's alerts")
    roll.add_argument("--startup-seconds", type=float, default=60.0)
    roll.add_argument("--probe-seconds", type=float, default=90.0,
                      help="how long the gate waits for the requested e2e probe run")
    roll.add_argument("--json", action="store_true", help="print the result as JSON")

    status = sub.add_parser("status", help="endpoints and health of the running stack")
    status.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="print the last lines of a component's log")
    logs.add_argument("component", nargs="?",
                      choices=["azurite", "vision", "monitor", "host", "front"])
    logs.add_argument("-n", "--lines", type=int, default=40)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    commands: dict[str, Callable[[argparse.Namespace, Path], int]] = {
        "up": _up, "run": _run, "down": _down, "status": _status, "logs": _logs,
        "rollout": _rollout,
    }
    return commands[args.command](args, state_dir)


def _run(args: argparse.Namespace, state_dir: Path) -> int:
    from devstack.run import run

    try:
        opts = stack.StackOptions(state_dir=state_dir, auto_ports=args.auto_ports)
        return run(args.samples, opts=opts,
                   deadline_s=args.deadline,
                   wait_forever=None if args.no_wait else signal.pause)
    except procs.StartupError as exc:
        print(f"devstack run failed: {exc}", file=sys.stderr)
        return 1


def _rollout(args: argparse.Namespace, state_dir: Path) -> int:
    from devstack.rollout import RolloutError, rollout

    report = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        result = rollout(state_dir, args.version, script_root=args.script_root,
                         watch_s=args.watch_seconds, startup_s=args.startup_seconds,
                         probe_s=args.probe_seconds, report=report)
    except RolloutError as exc:
        print(f"devstack rollout: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    return 0 if result.promoted and result.stopped_cleanly else 1


def _down(_args: argparse.Namespace, state_dir: Path) -> int:
    leftovers = stack.down(state_dir)
    if leftovers:
        print(f"still running: {leftovers}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace, state_dir: Path) -> int:
    report = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    opts = stack.StackOptions(
        state_dir=state_dir,
        auto_ports=args.auto_ports,
        vision_tier=args.vision_tier,
        vision_tps=args.vision_tps,
        start_host=not args.no_host,
        front=args.front,
        timeout=args.timeout,
    )
    try:
        state = stack.up(opts, report=report)
    except (procs.StartupError, RuntimeError) as exc:
        print(f"devstack up failed: {exc}", file=sys.stderr)
        return 1
    endpoints = state.endpoints(state_dir)
    if args.json:
        print(json.dumps(endpoints, indent=2))
    else:
        _print_endpoints(endpoints)
    return 0


def _print_endpoints(endpoints: dict[str, object]) -> None:
    print("\nThe local stack is running:")
    width = max(len(k) for k in endpoints)
    for key, value in endpoints.items():
        print(f"  {key:<{width}}  {value}")
    print("\nFor a shell:")
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": endpoints["storage_connection_string"],
        "VISION_ENDPOINT": endpoints["vision_endpoint"],
        "VISION_KEY": endpoints["vision_key"],
        "APPLICATIONINSIGHTS_CONNECTION_STRING":
            endpoints["applicationinsights_connection_string"],
        "FUNCTIONS_URL": endpoints["functions_url"],
        "FUNCTION_KEY": endpoints["function_key"],
    }
    for key, value in env.items():
        print(f"  export {key}={shlex.quote(str(value))}")
    print("\nStop it with: python -m devstack down")


def _status(args: argparse.Namespace, state_dir: Path) -> int:
    as_json: bool = args.json
    state = stack.load_state(state_dir)
    if state is None:
        if as_json:
            print(json.dumps({"running": False}))
        else:
            print("the stack is not running (start it with: python -m devstack up)")
        return 1
    health = stack.component_health(state)
    payload = {
        "running": all(health.values()),
        "components": health,
        "pids": {name: info["pid"] for name, info in state.processes.items()},
        **state.endpoints(state_dir),
    }
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        for name, ok in health.items():
            print(f"  {name:<8} {'up' if ok else 'DOWN'}")
        _print_endpoints(state.endpoints(state_dir))
    return 0 if payload["running"] else 1


def _logs(args: argparse.Namespace, state_dir: Path) -> int:
    names = [args.component] if args.component else ["azurite", "vision", "monitor", "host",
                                                      "front"]
    state = stack.load_state(state_dir)
    for name in names:
        # After a rollout the host's log is the new host's own file, recorded in the state.
        recorded = state.processes.get(name, {}).get("log") if state is not None else None
        path = Path(recorded) if recorded else state_dir / "logs" / f"{name}.log"
        if not path.exists():
            continue
        print(f"==> {path} <==")
        print(stack.tail(path, args.lines))
    return 0
