"""A private local stack for pipeline acceptance tests, and the probes those tests read.

``PipelineStack`` starts ``python -m devstack up --auto-ports --json`` with app settings passed
in the environment of that subprocess (the host lets the environment win over
``local.settings.json``), and reads back what the host and the pipeline left behind:

* documents in ``results/`` and ``failed/`` (found with ``shared.naming.result_path``, matched on
  the ``source_etag`` metadata, so a stale document never passes for a new one);
* the host's blob receipts in ``azure-webjobs-hosts`` (completion and attempt count);
* messages on the ``webjobs-blobtrigger-poison`` queue;
* the Vision emulator's ``/admin/stats`` and fault schedule;
* the host's ``Executing``/``Executed`` log lines (``HostLog``), and the host itself stopped
  gracefully, killed, or started again with other settings (``restart_host``).

Every wait polls with a deadline; nothing sleeps to wait.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from devstack import procs, stack
from shared.analysis.results import META_SOURCE_ETAG, normalize_etag
from shared.naming import result_path
from tests.support.polling import WaitTimeout, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES, RESULTS, FAILED = "images", "results", "failed"
HOSTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
RECEIPTS_PREFIX = "blobreceipts/"
FUNCTION_ID = "Host.Functions.analyze_image"
ATTEMPTS_KEY = "LocalHostDequeueCount"
INCOMPLETE_KEY = "Incomplete"
POISON_THRESHOLD = 5  # host.json extensions.blobs.poisonBlobThreshold

#: App settings every pipeline stack pins, so a developer's local.settings.json cannot change
#: what the tests assert.
BASE_SETTINGS: dict[str, str] = {
    "IMAGES_CONTAINER": IMAGES,
    "RESULTS_CONTAINER": RESULTS,
    "FAILED_CONTAINER": FAILED,
    "VISION_FEATURES": "read,people,smartCrops",
    "VISION_LANGUAGE": "en",
    "VISION_MODEL_VERSION": "",
    "VISION_TIER": "S1",
    "VISION_RATE_LIMIT_PER_SECOND": "10",
    "VISION_RATE_BURST": "1",
    "VISION_CONNECT_TIMEOUT_SECONDS": "5",
    "VISION_TIMEOUT_SECONDS": "60",
    "VISION_MAX_RETRIES": "4",
    "VISION_BACKOFF_BASE_SECONDS": "0.2",
    "VISION_BACKOFF_MAX_SECONDS": "2",
    "VISION_MAX_RETRY_AFTER_SECONDS": "60",
    "PREPROCESS_MAX_DIMENSION": "2048",
    "PREPROCESS_JPEG_QUALITY": "90",
    "PREPROCESS_MAX_PIXELS": "50000000",
    "PREPROCESS_MAX_INPUT_BYTES": str(64 * 1024 * 1024),
}


#: Timers that call Vision (or storage) on their own schedule would add calls these tests count
#: exactly; the stacks here run the blob trigger (and HTTP functions) only.
DISABLED_FUNCTIONS = ("vision_probe", "e2e_probe", "quota_check")


def example_settings() -> dict[str, str]:
    """The ``Values`` of ``local.settings.json.example``: the host reads a developer's own
    ``local.settings.json``, which may predate settings the app now needs; the environment wins
    over that file, so passing these keeps every test stack on the documented defaults."""
    document = json.loads((REPO_ROOT / "local.settings.json.example").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in document.get("Values", {}).items()}


class StackError(RuntimeError):
    """The stack did not start, or it answered something unexpected."""


@dataclass(frozen=True, slots=True)
class Receipt:
    etag: str  # normalised (unquoted)
    attempts: int
    complete: bool


@dataclass(frozen=True, slots=True)
class Document:
    container: str  # results | failed
    path: str
    body: dict[str, Any]

    @property
    def error(self) -> dict[str, Any]:
        error = self.body.get("error")
        return error if isinstance(error, dict) else {}


@dataclass(frozen=True, slots=True)
class PoisonMessage:
    container: str
    name: str
    etag: str | None
    function_id: str | None


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
_EXECUTING = re.compile(r"^Executing '[^']+' \(Reason='New blob detected\([^)]*\): "
                        r"(?P<path>.*)', Id=(?P<id>[0-9a-f-]+)\)$")
_EXECUTED = re.compile(r"^Executed '[^']+' \((?P<status>\w+), Id=(?P<id>[0-9a-f-]+),")


@dataclass(frozen=True, slots=True)
class Execution:
    """One blob-triggered invocation as the host logged it (wall-clock times, epoch seconds)."""

    invocation_id: str
    path: str  # container/name
    started_at: float
    ended_at: float | None  # None: no "Executed" line (still running, or the host died)
    status: str | None


def host_executions(text: str) -> dict[str, Execution]:
    """invocation id -> its execution, from the host's log lines (format of devstack.host)."""
    started: dict[str, tuple[str, float]] = {}
    ended: dict[str, tuple[float, str]] = {}
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if (begin := _EXECUTING.match(message)) is not None:
            started[begin["id"]] = (begin["path"], at)
        elif (end := _EXECUTED.match(message)) is not None:
            ended[end["id"]] = (at, end["status"])
    return {
        inv: Execution(inv, path, at, *(ended.get(inv) or (None, None)))
        for inv, (path, at) in started.items()
    }


@dataclass(slots=True)
class PipelineStack:
    """One private stack (Azurite, Vision and Monitor emulators, local Functions host)."""

    state_dir: Path
    settings: Mapping[str, str]
    vision_tps: int = 10
    #: timers switched off in this stack (the probe tests want theirs on: pass ``()``)
    disabled: tuple[str, ...] = DISABLED_FUNCTIONS
    endpoints: dict[str, Any] = field(default_factory=dict)
    #: extra ``devstack up`` arguments (the rollout test wants ``--front``)
    up_args: tuple[str, ...] = ()
    _service: BlobServiceClient | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def _devstack(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        disabled = {f"AzureWebJobs.{name}.Disabled": "true" for name in self.disabled}
        env = {**os.environ, **example_settings(), **disabled, **self.settings}
        return subprocess.run(
            [sys.executable, "-m", "devstack", "--state-dir", str(self.state_dir), *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    def up(self) -> None:
        started = self._devstack("up", "--auto-ports", "--json", "--vision-tps",
                                 str(self.vision_tps), *self.up_args)
        if started.returncode != 0:
            self.down()
            raise StackError(f"devstack up failed:\n{started.stderr[-4000:]}")
        self.endpoints = json.loads(started.stdout)
        self._service = None

    def down(self) -> None:
        self._devstack("down")

    def __enter__(self) -> PipelineStack:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def restart(self) -> None:
        """Stop and start every part; storage data (blobs, receipts, queues) survives."""
        self.down()
        self.up()

    def host_log(self, since: int = 0) -> str:
        """The host's log (appended across restarts) from byte ``since`` (``host_log_size``)."""
        try:
            with (self.state_dir / "logs" / "host.log").open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def host_log_size(self) -> int:
        try:
            return (self.state_dir / "logs" / "host.log").stat().st_size
        except OSError:
            return 0

    # -- the host process ----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state_dir / "stack.json").read_text())
        return state

    def host_pid(self) -> int:
        return int(self._state()["processes"]["host"]["pid"])

    def stop_host(self) -> float:
        """What ``devstack down`` does to the host (SIGTERM, SIGKILL after its bound); the
        seconds it took."""
        info = self._state()["processes"]["host"]
        started = time.monotonic()
        procs.stop(int(info["pid"]), timeout=float(info.get("stop_timeout", 10.0)))
        return time.monotonic() - started

    def kill_host(self) -> float:
        """``kill -9`` of the host's process group; the wall-clock time of the kill."""
        pid = self.host_pid()
        killed_at = time.time()
        os.killpg(pid, signal.SIGKILL)
        procs.wait_until(lambda: not procs.pid_alive(pid), timeout=10, interval=0.05,
                         what=f"exit of {pid}")
        return killed_at

    def start_host(self, overrides: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the host again (after a stop or a kill) with the argv ``up`` recorded and the
        environment ``up`` gave it, plus ``overrides``; recorded so ``down`` stops it."""
        state = self._state()
        info = state["processes"]["host"]
        disabled = {f"AzureWebJobs.{name}.Disabled": "true" for name in self.disabled}
        base = {**os.environ, **example_settings(), **disabled, **self.settings,
                **(overrides or {})}
        proc, record = procs.spawn("host", info["argv"], log_path=Path(info["log"]),
                                   env=stack.host_environment(self.endpoints, base),
                                   cwd=REPO_ROOT)
        state["processes"]["host"] = {**info, "pid": record.pid}
        (self.state_dir / "stack.json").write_text(json.dumps(state, indent=2))
        url = f"{self.endpoints['functions_url']}/"
        procs.wait_until(lambda: proc.poll() is not None or procs.http_ok(url), timeout=120,
                         interval=0.2, what="host")
        if proc.poll() is not None:
            raise StackError(f"host exited with {proc.returncode}\n{self.host_log()[-3000:]}")
        return proc

    def restart_host(self, overrides: Mapping[str, str] | None = None
                     ) -> subprocess.Popen[bytes]:
        self.stop_host()
        return self.start_host(overrides)

    # -- storage -------------------------------------------------------------------------------

    @property
    def connection_string(self) -> str:
        return str(self.endpoints["storage_connection_string"])

    @property
    def service(self) -> BlobServiceClient:
        if self._service is None:
            self._service = BlobServiceClient.from_connection_string(self.connection_string)
        return self._service

    def container(self, name: str) -> ContainerClient:
        return self.service.get_container_client(name)

    def upload(self, name: str, data: bytes) -> str:
        """Upload (overwrite) ``images/<name>``; return its new ETag, unquoted."""
        props = self.container(IMAGES).get_blob_client(name).upload_blob(data, overwrite=True)
        return normalize_etag(str(props["etag"])) or ""

    def upload_all(self, items: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        return {name: self.upload(name, data) for name, data in items}

    def upload_etag(self, name: str) -> str:
        """The current ETag of ``images/<name>``, unquoted."""
        props = self.container(IMAGES).get_blob_client(name).get_blob_properties()
        return normalize_etag(str(props.etag)) or ""

    def image_names(self) -> list[str]:
        return list(self.container(IMAGES).list_blob_names())

    def app_environment(self) -> dict[str, str]:
        """What an operator tool (``devstack.replay``) needs to reach this stack's storage."""
        return {
            **os.environ,
            **self.settings,
            "AzureWebJobsStorage": self.connection_string,
            "VISION_ENDPOINT": str(self.endpoints["vision_endpoint"]),
            "VISION_KEY": str(self.endpoints["vision_key"]),
        }

    # -- what the host and the pipeline left behind --------------------------------------------

    def receipts(self) -> dict[tuple[str, str], Receipt]:
        """(blob name, ETag) → the analyze_image receipt of the images container."""
        found: dict[tuple[str, str], Receipt] = {}
        blobs = self.container(HOSTS_CONTAINER).list_blobs(
            name_starts_with=RECEIPTS_PREFIX, include=["metadata"]
        )
        for blob in blobs:
            # blobreceipts/<hostId>/<functionId>/"<etag>"/<container>/<blob name>
            parts = blob.name.split("/", 5)
            if len(parts) < 6 or parts[2] != FUNCTION_ID or parts[4] != IMAGES:
                continue
            etag = normalize_etag(parts[3]) or ""
            metadata = blob.metadata or {}
            found[(parts[5], etag)] = Receipt(
                etag=etag,
                attempts=int(metadata.get(ATTEMPTS_KEY, "0") or 0),
                complete=metadata.get(INCOMPLETE_KEY, "").lower() != "true",
            )
        return found

    def delete_receipts(self) -> int:
        hosts = self.container(HOSTS_CONTAINER)
        names = list(hosts.list_blob_names(name_starts_with=RECEIPTS_PREFIX))
        for name in names:
            hosts.delete_blob(name)
        return len(names)

    def wait_processed(self, uploaded: Mapping[str, str], *, timeout: float) -> dict[str, Receipt]:
        """Wait until the host completed every (name → ETag) blob: analysed, rejected or
        poisoned. A completed receipt is written after the function returned, so by then the
        document (if any) exists."""
        done: dict[str, Receipt] = {}

        def all_done() -> bool:
            receipts = self.receipts()
            for name, etag in uploaded.items():
                receipt = receipts.get((name, etag))
                if receipt is not None and receipt.complete:
                    done[name] = receipt
            return len(done) == len(uploaded)

        try:
            wait_for(all_done, timeout=timeout, interval=0.5, what="blob receipts")
        except WaitTimeout as exc:
            missing = sorted(set(uploaded) - set(done))
            raise StackError(f"{exc}; not done: {missing[:20]}\n{self.host_log()[-3000:]}") from exc
        return done

    def documents(self, uploaded: Mapping[str, str]) -> dict[str, list[Document]]:
        """name → every document (results and failed) that describes exactly that ETag."""
        by_path: dict[str, list[tuple[str, str]]] = {}
        for name in uploaded:
            by_path.setdefault(result_path(name), []).append((name, uploaded[name]))
        found: dict[str, list[Document]] = {name: [] for name in uploaded}
        for container in (RESULTS, FAILED):
            client = self.container(container)
            for blob in client.list_blobs(include=["metadata"]):
                for name, etag in by_path.get(blob.name, []):
                    if (blob.metadata or {}).get(META_SOURCE_ETAG) != etag:
                        continue
                    body = json.loads(client.download_blob(blob.name).readall())
                    found[name].append(Document(container, blob.name, body))
        return found

    def poison_messages(self) -> list[PoisonMessage]:
        """Every message on the poison queue, peeked (they stay for ``devstack.replay``)."""
        queue = QueueClient.from_connection_string(self.connection_string, POISON_QUEUE)
        count = queue.get_queue_properties().approximate_message_count or 0
        raw = [m.content for m in queue.peek_messages(max_messages=32)]
        if count > len(raw):
            raise StackError(f"{count} poison messages: more than one peek page")
        messages: list[PoisonMessage] = []
        for content in raw:
            body = json.loads(base64.b64decode(content).decode("utf-8"))
            messages.append(PoisonMessage(
                container=body["ContainerName"], name=body["BlobName"],
                etag=normalize_etag(body.get("ETag")), function_id=body.get("FunctionId"),
            ))
        return messages

    # -- host ----------------------------------------------------------------------------------

    def host_status(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.endpoints['functions_url']}/admin/host/status",
            headers={"x-functions-key": str(self.endpoints["master_key"])}, timeout=10,
        )
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status

    def wait_host_idle(self, *, timeout: float = 60) -> None:
        wait_for(lambda: self.host_status()["local"]["activeInvocations"] == 0,
                 timeout=timeout, what="the host to finish its invocations")

    # -- Vision emulator admin -----------------------------------------------------------------

    def vision(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = httpx.request(
            method, f"{self.endpoints['vision_endpoint']}{path}", json=body,
            headers={"Ocp-Apim-Subscription-Key": str(self.endpoints["vision_key"])}, timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def vision_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.vision("GET", "/admin/stats")
        return stats

    def vision_calls(self) -> int:
        return int(self.vision_stats()["total"])

    def set_faults(self, schedule: Mapping[str, Any]) -> None:
        self.vision("PUT", "/admin/faults", schedule)

    def reset_faults(self) -> None:
        self.vision("POST", "/admin/faults/reset")

    def wait_vision_quiet(self, *, settle: float, timeout: float = 60) -> dict[str, Any]:
        """Stats once no call has been counted for ``settle`` seconds (held requests are
        counted when their hold ends)."""
        last: dict[str, Any] = {"total": -1}
        changed_at = time.monotonic()

        def quiet() -> bool:
            nonlocal last, changed_at
            stats = self.vision_stats()
            if stats["total"] != last["total"]:
                last, changed_at = stats, time.monotonic()
            return time.monotonic() - changed_at >= settle

        wait_for(quiet, timeout=timeout, interval=0.25, what="the Vision emulator to go quiet")
        return last


def run_replay(stack: PipelineStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m devstack.replay`` against the stack, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "devstack.replay", *args],
        cwd=REPO_ROOT, env=stack.app_environment(), capture_output=True, text=True,
        timeout=120, check=False,
    )
