"""Start, watch and stop the local stack's processes.

Every process is started in its own session (process group) with its output in a log file, so
``stop`` can end exactly what was started, children included, and nothing else. Waiting is
always polling with a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


class StartupError(RuntimeError):
    """A component did not become ready before its deadline."""


#: Where ``free_port`` picks from: below the kernel's ephemeral range (Linux: 32768-60999).
_LISTEN_PORTS = (20000, 32768)
#: Ports ``free_port`` handed out, one file each, shared by every process on the machine: a port
#: claimed less than ``PORT_CLAIM_S`` ago is not handed out again, so two stacks starting at once
#: cannot both pick it between the check and their server's bind.
_PORT_CLAIMS = Path(tempfile.gettempdir()) / "devstack-port-claims"
PORT_CLAIM_S = 120.0
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now, for a server started a moment later.

    Not one the OS picks for ``bind(0)``: those come from the ephemeral range, which is also
    where every outgoing connection's source port comes from, so on a busy machine (several
    stacks and their clients) a client could take the port before the server binds it. A
    random free port below that range has no such race. Another stack starting at the same
    time could still pick the same one (it happened, with six test workers: Azurite's
    EADDRINUSE), so each port handed out is claimed first (``_claim``)."""
    low, high = _LISTEN_PORTS
    with contextlib.suppress(OSError, ValueError, IndexError):
        high = min(high, int(_EPHEMERAL_RANGE.read_text().split()[0]))
    if high - low >= 1000:
        for _ in range(100):
            port = low + secrets.randbelow(high - low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            if _claim(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _claim(port: int, now: float | None = None) -> bool:
    """Claim ``port`` for this process: False when another claimed it under ``PORT_CLAIM_S``
    ago. Creating the claim file is atomic (``O_EXCL``); an old claim is removed and retaken."""
    _PORT_CLAIMS.mkdir(parents=True, exist_ok=True)
    path = _PORT_CLAIMS / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            try:
                age = (time.time() if now is None else now) - path.stat().st_mtime
                if age < PORT_CLAIM_S:
                    return False
                path.unlink()
            except FileNotFoundError:
                pass  # released meanwhile: try to create it again
    return False


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ``predicate`` until it holds; raise :class:`StartupError` at the deadline."""
    deadline = clock() + timeout
    while True:
        if predicate():
            return
        if clock() >= deadline:
            raise StartupError(f"{what} not ready after {timeout:.0f}s")
        sleep(interval)


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """What the stack needs to find and stop a process it started (kept in the state file)."""

    name: str
    pid: int
    log: str
    argv: tuple[str, ...]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return _proc_state(pid) not in {"Z", "X"}


def _proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start ``argv`` detached in its own process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    return proc, ProcessRecord(name=name, pid=proc.pid, log=str(log_path), argv=tuple(argv))


def stop(
    pid: int,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """SIGTERM the process group led by ``pid``, SIGKILL after ``timeout``. True if it was alive."""
    if not pid_alive(pid):
        return False
    _signal_group(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid) and not _group_alive(pid), timeout=timeout,
                   interval=0.05, what=f"exit of {pid}", clock=clock, sleep=sleep)
    except StartupError:
        _signal_group(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout=5.0, interval=0.05,
                   what=f"kill of {pid}", clock=clock, sleep=sleep)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Live pids in process group ``pgid`` (used by ``down`` to prove nothing is left)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in {"Z", "X"}:
            pids.append(int(entry.name))
    return pids
