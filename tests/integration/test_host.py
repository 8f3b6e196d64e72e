"""The local Functions host as the stack runs it: ``python -m devstack.host`` against Azurite.

Each test starts its own host process (own containers, record file and state folder) on the
session's Azurite, talks to it over HTTP and storage, and waits only by polling with deadlines.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from devstack import procs
from devstack.azurite import AzuriteConfig

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_ROOT = REPO_ROOT / "tests" / "host_app"
HOST_ID = "visionops-host-test"
POISON_QUEUE = "webjobs-blobtrigger-poison"
DEADLINE = 90.0
#: httpx expires idle connections after 5 s, as uvicorn did: the keep-alive test idles past it
IDLE_PAST_CLIENT_EXPIRY_S = 6.0


@dataclass
class RunningHost:
    proc: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_key(self) -> str:
        return str(json.loads((self.state_dir / "keys.json").read_text())["masterKey"])

    @property
    def function_key(self) -> str:
        keys = json.loads((self.state_dir / "keys.json").read_text())
        return str(keys["functionKeys"]["default"])

    def status(self) -> dict[str, Any]:
        reply = httpx.get(f"{self.url}/admin/host/status",
                          headers={"x-functions-key": self.master_key}, timeout=10)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def stop(self) -> int:
        procs.stop(self.proc.pid, timeout=60)
        return self.proc.wait(timeout=30)


@dataclass
class HostEnv:
    tmp: Path
    azurite: AzuriteConfig
    container: str
    fail_container: str
    record: Path
    state_dir: Path
    overrides: dict[str, str]
    started: list[RunningHost]

    def start(self) -> RunningHost:
        port = procs.free_port()
        env = {
            **os.environ,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "AzureFunctionsWebHost__hostid": HOST_ID,
            "TEST_CONTAINER": self.container,
            "TEST_FAIL_CONTAINER": self.fail_container,
            "TEST_SCHEDULE": "0 0 0 1 1 *",
            "HOST_TEST_RECORD": str(self.record),
            **self.overrides,
        }
        log = self.tmp / f"host-{len(self.started)}.log"
        argv = [sys.executable, "-m", "devstack.host", "--script-root", str(APP_ROOT),
                "--port", str(port), "--state-dir", str(self.state_dir),
                "--settings", str(self.tmp / "local.settings.json"),
                "--blob-poll-interval", "0.25"]
        proc, _ = procs.spawn("host", argv, log_path=log, env=env, cwd=REPO_ROOT)
        host = RunningHost(proc, port, self.state_dir, log)
        self.started.append(host)
        try:
            procs.wait_until(lambda: procs.http_ok(f"{host.url}/") or proc.poll() is not None,
                             timeout=DEADLINE, what="local Functions host")
        finally:
            if proc.poll() is not None:
                pytest.fail(f"host exited with {proc.returncode}:\n{log.read_text()}")
        return host

    def records(self, fn: str | None = None) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [r for r in rows if fn is None or r["fn"] == fn]


@pytest.fixture
def host_env(tmp_path: Path, azurite: AzuriteConfig) -> Iterator[HostEnv]:
    suffix = uuid.uuid4().hex[:8]
    env = HostEnv(tmp=tmp_path, azurite=azurite, container=f"host-ok-{suffix}",
                  fail_container=f"host-bad-{suffix}", record=tmp_path / "record.jsonl",
                  state_dir=tmp_path / "state", overrides={}, started=[])
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.create_container(env.container)
    blobs.create_container(env.fail_container)
    yield env
    for host in env.started:
        if host.proc.poll() is None:
            procs.stop(host.proc.pid)


def _blobs(env: HostEnv) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(env.azurite.connection_string)


def _upload(container: Any, name: str, data: bytes, *, overwrite: bool = False) -> str:
    """Upload and return the new ETag (quoted, as the service sends it)."""
    client = container.upload_blob(name, data, overwrite=overwrite)
    return str(client.get_blob_properties().etag)


def _wait(predicate: Any, what: str) -> None:
    procs.wait_until(predicate, timeout=DEADLINE, interval=0.1, what=what)


def test_blob_processed_once_across_restart_and_again_on_new_etag(host_env: HostEnv) -> None:
    container = _blobs(host_env).get_container_client(host_env.container)
    host = host_env.start()
    first = _upload(container, "a.txt", b"first version")
    _upload(container, "sub/b.txt", b"nested")
    _wait(lambda: len(host_env.records("record_blob")) == 4, "both blobs processed")
    starts = [r for r in host_env.records("record_blob") if r["event"] == "start"]
    by_name = {r["name"]: r for r in starts}
    assert set(by_name) == {f"{host_env.container}/a.txt", f"{host_env.container}/sub/b.txt"}
    a = by_name[f"{host_env.container}/a.txt"]
    assert a["body"] == "first version"
    assert a["length"] == len(b"first version")
    assert a["etag"] == first
    assert a["uri"].endswith(f"/{host_env.container}/a.txt")

    receipt = _blobs(host_env).get_blob_client(
        "azure-webjobs-hosts",
        f"blobreceipts/{HOST_ID}/Host.Functions.record_blob/{first}/"
        f"{host_env.container}/a.txt")
    assert "Incomplete" not in receipt.get_blob_properties().metadata
    assert host.stop() == 0

    host = host_env.start()
    _wait(lambda: host.status()["local"]["blobScans"] >= 4, "scans after restart")
    assert len(host_env.records("record_blob")) == 4, "a blob was reprocessed after restart"

    second = _upload(container, "a.txt", b"second version", overwrite=True)
    assert second != first
    _wait(lambda: len(host_env.records("record_blob")) == 6, "overwritten blob processed")
    scans = host.status()["local"]["blobScans"]
    _wait(lambda: host.status()["local"]["blobScans"] >= scans + 3, "more scans")
    starts = [r for r in host_env.records("record_blob") if r["event"] == "start"]
    assert len(starts) == 3
    assert starts[-1]["etag"] == second
    assert starts[-1]["body"] == "second version"
    assert host.stop() == 0


def _poison_messages(env: HostEnv) -> list[tuple[str, dict[str, Any]]]:
    queue = QueueClient.from_connection_string(env.azurite.connection_string, POISON_QUEUE)
    try:
        peeked = queue.peek_messages(max_messages=32)
    except Exception:  # the queue does not exist until the first poison message
        return []
    found = []
    for message in peeked:
        raw = str(message.content)
        body = json.loads(base64.b64decode(raw))
        if body.get("ContainerName") == env.fail_container:
            found.append((raw, body))
    return found


def test_failing_blob_is_tried_five_times_then_poisoned_once(host_env: HostEnv) -> None:
    container = _blobs(host_env).get_container_client(host_env.fail_container)
    host = host_env.start()
    uploaded = _upload(container, "bad.txt", b"cannot be processed")
    _wait(lambda: len(_poison_messages(host_env)) >= 1, "poison message")
    assert host.stop() == 0  # graceful: whatever was in flight has finished

    attempts = host_env.records("always_fails")
    assert len(attempts) == 5
    assert {a["name"] for a in attempts} == {f"{host_env.fail_container}/bad.txt"}
    messages = _poison_messages(host_env)
    assert len(messages) == 1
    raw, body = messages[0]
    assert body == {
        "Type": "BlobTrigger",
        "FunctionId": "Host.Functions.always_fails",
        "BlobType": "BlockBlob",
        "ContainerName": host_env.fail_container,
        "BlobName": "bad.txt",
        "ETag": uploaded,
    }
    assert base64.b64decode(raw).decode() == json.dumps(body, separators=(",", ":"))
    receipt = _blobs(host_env).get_blob_client(
        "azure-webjobs-hosts",
        f"blobreceipts/{HOST_ID}/Host.Functions.always_fails/{uploaded}/"
        f"{host_env.fail_container}/bad.txt")
    metadata = receipt.get_blob_properties().metadata
    assert "Incomplete" not in metadata
    assert metadata["LocalHostDequeueCount"] == "5"


def test_http_auth_levels_and_admin_api(host_env: HostEnv) -> None:
    host = host_env.start()
    api = f"{host.url}/api"
    with httpx.Client(timeout=10) as client:
        denied = client.get(f"{api}/items/42")
        assert denied.status_code == 401
        assert denied.content == b""
        assert client.get(f"{api}/items/42", params={"code": "wrong"}).status_code == 401
        assert client.get(f"{api}/items/42",
                          headers={"x-functions-key": "wrong"}).status_code == 401

        by_query = client.get(f"{api}/items/42", params={"code": host.function_key, "q": "x"})
        assert by_query.status_code == 200
        assert by_query.json() == {"id": "42", "q": "x", "method": "GET"}
        by_header = client.get(f"{api}/items/7", headers={"x-functions-key": host.function_key})
        assert by_header.status_code == 200
        assert by_header.json()["id"] == "7"
        assert client.get(f"{api}/items/7",
                          headers={"x-functions-key": host.master_key}).status_code == 200
        assert client.post(f"{api}/items/7",
                           params={"code": host.function_key}).status_code == 405

        assert client.get(f"{api}/ping").text == "pong"
        assert client.get(f"{api}/no-such-route").status_code == 404
        assert client.get(f"{api}/admin-only",
                          params={"code": host.function_key}).status_code == 401
        assert client.get(f"{api}/admin-only", params={"code": host.master_key}).text == "secret"
        assert client.get(f"{host.url}/").status_code == 200

        status_url = f"{host.url}/admin/host/status"
        assert client.get(status_url).status_code == 401
        assert client.get(status_url,
                          headers={"x-functions-key": host.function_key}).status_code == 401
        status = client.get(status_url, headers={"x-functions-key": host.master_key}).json()
        assert status["state"] == "Running"
        assert status["id"] == HOST_ID
        assert "ignored_queue" in status["local"]["skippedFunctions"]

        listing = client.get(f"{host.url}/admin/functions", params={"code": host.master_key})
        assert listing.status_code == 200
        names = {f["name"] for f in listing.json()}
        assert names == {"tick", "get_item", "admin_only", "record_blob", "always_fails", "ping"}

        invoke = client.post(f"{host.url}/admin/functions/tick", json={"input": ""},
                             headers={"x-functions-key": host.master_key})
        assert invoke.status_code == 202
        assert client.post(f"{host.url}/admin/functions/tick", json={"input": ""},
                           headers={"x-functions-key": host.function_key}).status_code == 401
        assert client.post(f"{host.url}/admin/functions/nope", json={"input": ""},
                           headers={"x-functions-key": host.master_key}).status_code == 404
    _wait(lambda: len(host_env.records("tick")) == 1, "admin-invoked timer")
    assert host_env.records("tick")[0]["past_due"] is False
    assert host.stop() == 0


def test_blobs_run_in_parallel_within_max_degree_of_parallelism(host_env: HostEnv) -> None:
    host_env.overrides.update({"TEST_OVERLAP_TARGET": "3", "TEST_OVERLAP_WAIT": "10"})
    host = host_env.start()
    assert host.status()["local"]["blobMaxDegreeOfParallelism"] == 3
    container = _blobs(host_env).get_container_client(host_env.container)
    for index in range(7):
        _upload(container, f"img-{index}.txt", f"blob {index}".encode())
    _wait(lambda: len([r for r in host_env.records("record_blob") if r["event"] == "end"]) == 7,
          "all blobs processed")

    events: list[tuple[float, int]] = []
    for row in host_env.records("record_blob"):
        events.append((row["t"], 1 if row["event"] == "start" else -1))
    running = peak = 0
    # Ends sort before starts at the same instant, so touching intervals do not count as overlap.
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    assert 1 < peak <= 3
    starts = [r for r in host_env.records("record_blob") if r["event"] == "start"]
    assert len({r["thread"] for r in starts}) > 1
    assert host.stop() == 0


def test_an_idle_keep_alive_connection_outlives_the_client_side_expiry(
    host_env: HostEnv,
) -> None:
    """Kestrel's 130 s keep-alive, not uvicorn's 5 s (which equals httpx's own expiry, so a
    client could send on a connection in the instant the server closed it). One connection,
    two requests with an idle gap past those 5 s: the second is answered on the same socket."""
    host = host_env.start()
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    try:
        conn.request("GET", "/api/ping")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"pong")
        local = conn.sock.getsockname()
        threading.Event().wait(IDLE_PAST_CLIENT_EXPIRY_S)  # the idle gap is what is tested
        # http.client would reconnect silently after a close; it raises RemoteDisconnected instead
        conn.request("GET", "/api/ping")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"pong")
        assert conn.sock.getsockname() == local  # the same connection, not a new one
    finally:
        conn.close()
