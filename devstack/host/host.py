"""The local Functions host: load the app, then drive its blob, timer and HTTP triggers.

``Host`` is usable as a library (``await host.serve()`` / ``host.request_stop()``, or ``start()`` /
``stop()`` on a background thread) and is what ``python -m devstack.host`` runs. It imports
nothing into the app's process that the deployed app would not have, apart from the host's own
modules, and never logs a setting's value or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.host.blobs import (
    BlobPathPattern,
    BlobTriggerBinding,
    BlobTriggerListener,
    sdk_type_converter,
)
from devstack.host.flush import flush_telemetry
from devstack.host.invoker import Invoker
from devstack.host.keys import HostKeys
from devstack.host.loader import (
    BLOB_TRIGGER,
    HTTP_TRIGGER,
    SUPPORTED_TRIGGERS,
    TIMER_TRIGGER,
    FunctionSpec,
    LoadedApp,
    load_app,
)
from devstack.host.settings import (
    HostConfigError,
    HostJson,
    apply_settings,
    load_local_settings,
)
from devstack.host.storage import DEFAULT_CONNECTION, connection_string
from devstack.host.timers import (
    BlobStatusStore,
    FileStatusStore,
    StatusStore,
    TimerDriver,
    TimerFire,
    time_zone,
    timer_state,
)
from shared.naming import printable

log = logging.getLogger(__name__)

HOST_VERSION = "4.0.0-visionops-local.1"
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
ADMIN_REASON = "This function was programmatically called via the host APIs."
#: How long an idle HTTP keep-alive connection stays open: Kestrel's default, which the Functions
#: host runs on. uvicorn's own 5 s equals httpx's client-side expiry, so a client could send on a
#: connection in the instant the server closed it ("Server disconnected without sending a
#: response": 2 of 2,814 dashboard polls in one load run).
KEEP_ALIVE_TIMEOUT_S = 130


@dataclass(frozen=True, slots=True)
class HostOptions:
    script_root: Path
    state_dir: Path
    port: int = 7071
    bind: str = "127.0.0.1"
    settings_path: Path | None = None
    env_file: Path | None = None
    blob_poll_interval: float = 1.0
    shutdown_timeout: float = 30.0
    #: after the invocations: at most this long to flush the app's telemetry before exit
    telemetry_flush_timeout: float = 5.0
    triggers: frozenset[str] = field(default=SUPPORTED_TRIGGERS)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export`` and quotes), dotenv style."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = text.removeprefix("export ").strip()
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise HostConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def default_host_id(script_root: Path, settings: Mapping[str, str]) -> str:
    """The host id (receipts, timer status): the setting, else derived like a local host does.

    Valid host ids are 1-32 characters of lowercase letters, digits and single dashes.
    """
    configured = settings.get(HOST_ID_SETTING)
    if configured:
        return configured
    machine = re.sub(r"[^a-z0-9]+", "-", socket.gethostname().lower()).strip("-") or "local"
    digest = hashlib.sha256(str(script_root.resolve()).encode()).hexdigest()[:8]
    return f"{machine[:23].strip('-')}-{digest}"


class Host:
    """One function app, its triggers and its HTTP server."""

    def __init__(self, options: HostOptions, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 environ: MutableMapping[str, str] | None = None,
                 timer_store: StatusStore | None = None) -> None:
        self.options = options
        self._clock = clock
        self._sleep = sleep
        self._environ = os.environ if environ is None else environ
        self._timer_store = timer_store
        self._started_at = time.monotonic()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="host-io")
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.settings: dict[str, str] = {}
        self.host_json = HostJson()
        self.app: LoadedApp | None = None
        self.host_id = ""
        self._keys: HostKeys | None = None
        self._invoker: Invoker | None = None
        self.blob_listener: BlobTriggerListener | None = None
        self.timer_driver: TimerDriver | None = None
        self.state = "Default"
        #: invocations still running when the shutdown deadline passed (abandoned, not joined)
        self.abandoned = 0
        self._functions: tuple[FunctionSpec, ...] = ()

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Settings into the environment, app imported and indexed, triggers prepared."""
        root = self.options.script_root.resolve()
        values = load_local_settings(root, self.options.settings_path)
        if self.options.env_file is not None:
            # The env file stands in for the environment: it wins over local.settings.json, the
            # real environment wins over both.
            for key, value in read_env_file(self.options.env_file).items():
                self._environ.setdefault(key, value)
        self.settings = apply_settings(values, self._environ)
        self.host_json = HostJson.load(root)
        self.host_id = default_host_id(root, self.settings)
        self._keys = HostKeys.load_or_create(self.options.state_dir)
        self._invoker = Invoker(str(root), self.settings)
        self.app = load_app(root, self.settings)
        wanted = [s for s in self.app.functions if s.trigger_type in self.options.triggers]
        self._functions = tuple(wanted)
        self._prepare_blobs([s for s in wanted if s.trigger_type == BLOB_TRIGGER])
        self._prepare_timers([s for s in wanted if s.trigger_type == TIMER_TRIGGER])
        self.state = "Initialized"

    def _prepare_blobs(self, specs: Sequence[FunctionSpec]) -> None:
        if not specs:
            return
        bindings: list[BlobTriggerBinding] = []
        for spec in specs:
            try:
                pattern = BlobPathPattern.parse(str(spec.trigger.get("path", "")))
            except ValueError as exc:
                raise HostConfigError(f"function '{spec.name}': {exc}") from exc
            conn = connection_string(spec.trigger.get("connection"), self.settings,
                                     function=spec.name)
            if str(spec.trigger.get("source", "")).lower() == "eventgrid":
                log.info("Function '%s' uses source=EventGrid: the real host waits for Event "
                         "Grid events; the local host polls container '%s' instead",
                         spec.name, pattern.container)
            deferred = sdk_type_converter(spec)
            if deferred is not None:
                log.info("Function '%s' binds its blob as %s (SDK type): the host passes the "
                         "blob's name, never its content", spec.name, deferred[1].__name__)
            bindings.append(BlobTriggerBinding(spec, pattern, conn))
        host_conn = connection_string(DEFAULT_CONNECTION, self.settings, function="host")
        self.blob_listener = BlobTriggerListener(
            bindings, invoker=self.invoker, host_connection=host_conn, host_id=self.host_id,
            poison_threshold=self.host_json.poison_blob_threshold,
            max_parallelism=self.host_json.blob_max_degree_of_parallelism,
            poll_interval=self.options.blob_poll_interval, io=self._io)

    def _prepare_timers(self, specs: Sequence[FunctionSpec]) -> None:
        if not specs:
            return
        zone = time_zone(self.settings)
        states = [timer_state(spec, zone=zone, now=self._clock()) for spec in specs]
        store = self._timer_store
        if store is None:
            if self.settings.get(DEFAULT_CONNECTION):
                store = BlobStatusStore(connection_string(DEFAULT_CONNECTION, self.settings),
                                        self.host_id)
            else:
                store = FileStatusStore(self.options.state_dir, self.host_id)
        self.timer_driver = TimerDriver(states, store, clock=self._clock, sleep=self._sleep)

    # -- what the HTTP layer and tests see ----------------------------------------------------

    @property
    def functions(self) -> Sequence[FunctionSpec]:
        return self._functions

    @property
    def keys(self) -> HostKeys:
        if self._keys is None:
            raise RuntimeError("Host.load() has not run")
        return self._keys

    @property
    def invoker(self) -> Invoker:
        if self._invoker is None:
            raise RuntimeError("Host.load() has not run")
        return self._invoker

    def status(self) -> dict[str, Any]:
        listener = self.blob_listener
        return {
            "id": self.host_id,
            "state": self.state,
            "version": HOST_VERSION,
            "versionDetails": f"{HOST_VERSION} (local host; Python worker semantics)",
            "processUptime": int((time.monotonic() - self._started_at) * 1000),
            "functions": [s.name for s in self.functions],
            "local": {
                "blobScans": listener.scans if listener else 0,
                "blobMaxDegreeOfParallelism": self.host_json.blob_max_degree_of_parallelism,
                "poisonBlobThreshold": self.host_json.poison_blob_threshold,
                "threadPoolMaxWorkers": self.invoker.max_workers,
                "activeInvocations": self.invoker.active,
                "skippedFunctions": list(self.app.skipped) if self.app else [],
            },
        }

    async def fire_timer(self, fire: TimerFire) -> None:
        await self.invoker.invoke(fire.spec, {fire.spec.trigger_param: fire.timer_request()},
                                  reason=fire.reason)

    async def invoke_admin(self, spec: FunctionSpec, payload: str) -> None:
        """``POST /admin/functions/{name}``: run a non-HTTP function now."""
        if spec.trigger_type == TIMER_TRIGGER:
            now = self._clock()
            await self.fire_timer(TimerFire(spec=spec, scheduled=now, past_due=False,
                                            reason=ADMIN_REASON))
        elif spec.trigger_type == BLOB_TRIGGER and self.blob_listener is not None:
            outcome = await self.blob_listener.invoke_path(spec, payload)
            if outcome is None:
                log.warning("Admin invocation of '%s': blob '%s' not found", spec.name,
                            printable(payload))

    # -- running ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe from any thread or a signal handler)."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def serve(self, *, install_signal_handlers: bool = False) -> None:
        """Run triggers and the HTTP server until :meth:`request_stop` (or SIGTERM/SIGINT)."""
        import signal

        import uvicorn

        from devstack.host.http import build_app

        if self.app is None:
            self.load()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.bind, self.options.port))
        except OSError as exc:
            sock.close()
            raise HostConfigError(f"cannot listen on {self.options.bind}:{self.options.port}: "
                                  f"{exc.strerror}") from exc
        config = uvicorn.Config(
            build_app(self, route_prefix=self.host_json.route_prefix), log_level="warning",
            access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
            timeout_graceful_shutdown=max(int(self.options.shutdown_timeout), 1))
        server = _QuietServer(config)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(server.serve(sockets=[sock]), name="http")]
        if self.blob_listener is not None:
            tasks.append(asyncio.create_task(self.blob_listener.run(self._stopping), name="blobs"))
        if self.timer_driver is not None:
            tasks.append(asyncio.create_task(
                self.timer_driver.run(self.fire_timer, self._stopping), name="timers"))
        self.state = "Running"
        self._log_functions()
        self._ready.set()
        try:
            stop_wait = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    log.error("Host component '%s' failed", task.get_name(),
                              exc_info=task.exception())
        finally:
            await self._shutdown(server, tasks)

    async def _shutdown(self, server: _QuietServer, tasks: list[asyncio.Task[None]]) -> None:
        """Stop taking work, let in-flight invocations finish before the deadline, flush the
        app's telemetry (its own bound), then stop."""
        assert self._loop is not None and self._stopping is not None
        self.state = "Stopping"
        timeout = self.options.shutdown_timeout
        deadline = self._loop.time() + timeout
        log.info("Host stopping: finishing in-flight invocations (up to %ss)", timeout)
        self._stopping.set()
        server.should_exit = True
        http_tasks = [t for t in tasks if t.get_name() == "http"]
        for task in tasks:
            if task not in http_tasks:
                task.cancel()  # pollers and schedulers; their invocations are shielded
        drained = True
        if self.blob_listener is not None:
            drained = await self.blob_listener.drain(timeout)
        _, pending = await asyncio.wait(http_tasks, timeout=max(deadline - self._loop.time(), 0))
        idle = await self.invoker.wait_idle(deadline - self._loop.time())
        if not pending:
            await asyncio.gather(*tasks, return_exceptions=True)
        if pending or not drained or not idle:
            log.warning("Shutdown deadline passed with invocations still running")
        self.abandoned = self.invoker.active
        flush_timeout = self.options.telemetry_flush_timeout
        started = self._loop.time()
        if await asyncio.to_thread(flush_telemetry, flush_timeout):
            log.info("Telemetry flushed (%d ms)", (self._loop.time() - started) * 1000)
        else:
            log.warning("Telemetry not flushed within %ss; what was still buffered is lost",
                        flush_timeout)
        self.invoker.shutdown(wait=idle)
        self._io.shutdown(wait=False, cancel_futures=True)
        self.state = "Stopped"
        log.info("Host stopped")

    def _log_functions(self) -> None:
        lines = []
        prefix = f"/{self.host_json.route_prefix}" if self.host_json.route_prefix else ""
        for spec in self.functions:
            if spec.trigger_type == HTTP_TRIGGER:
                methods = ",".join(spec.trigger.get("methods") or ["GET", "POST"])
                route = spec.trigger.get("route") or spec.name
                lines.append(f"  {spec.name}: [{methods}] "
                             f"http://{self.options.bind}:{self.options.port}{prefix}/{route}")
            else:
                lines.append(f"  {spec.name}: {spec.trigger_type}")
        log.info("Host started (id %s, version %s) on http://%s:%d\nFunctions:\n%s",
                 self.host_id, HOST_VERSION, self.options.bind, self.options.port,
                 "\n".join(lines))

    # -- background-thread convenience for tests ----------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Run :meth:`serve` on a background thread; return once it is serving."""
        def runner() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as exc:  # handed to the caller of start()
                self._failure = exc
                self._ready.set()

        self._thread = threading.Thread(target=runner, name="local-functions-host", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("host did not start in time")
        if self._failure is not None:
            raise self._failure

    def stop(self, timeout: float | None = None) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.options.shutdown_timeout + 5)


class _QuietServer:
    """A uvicorn server that leaves signal handling to the host (so SIGTERM exits 0)."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        self._server = _Server(config)

    @property
    def should_exit(self) -> bool:
        return bool(self._server.should_exit)

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._server.should_exit = value

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self._server.serve(sockets=sockets)
