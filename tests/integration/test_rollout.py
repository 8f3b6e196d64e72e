"""``python -m devstack rollout`` under load: the local rehearsal of a rolling deploy.

One private stack started with ``--front`` (clients keep one address across the swap). While a
thread streams images into ``images/`` and two clients poll ``/api/health`` and ``/api/status``
through the front, the test rolls out:

1. ``v2`` (the checkout as it is): starts beside ``v1``, passes the gate (health, status with the
   new version, an on-demand e2e probe run, no burn-rate alert over the watch), takes the traffic;
   the old host finishes its in-flight invocations and stops;
2. a build that cannot even load (``function_app.py`` raises at import): rejected at start-up;
3. a build that starts but fails its checks (``/api/health`` answers 503): rejected by the gate
   at its start-up deadline.

Then: 0 images lost (each has a completed receipt and a result document), 0 duplicated (one
receipt per blob, one attempt, one document), 0 failed HTTP requests, the stopped host's own log
says it finished every in-flight invocation, ``v2`` keeps serving after both rejections, and the
deployment markers are in the telemetry and in the status series the dashboard draws.
Bounded: ≤ 40 images, loopback only, every wait polls with a deadline.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.images import encode, photo
from tests.support.polling import poll, wait_for
from tests.support.stack import (
    BASE_SETTINGS,
    FUNCTION_ID,
    HOSTS_CONTAINER,
    IMAGES,
    RECEIPTS_PREFIX,
    PipelineStack,
)

pytestmark = [pytest.mark.integration]

MAX_IMAGES = 40
UPLOAD_EVERY_S = 0.6
POLL_EVERY_S = 0.1

FAILING_HEALTH_APP = '''\
import azure.functions as func

app = func.FunctionApp()


@app.route(route="health", auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse('{"status": "unavailable"}', status_code=503,
                             mimetype="application/json")
'''


class Load:
    """Images streaming in and clients polling, until stopped; everything they saw, counted."""

    def __init__(self, stack: PipelineStack) -> None:
        self.stack = stack
        self.base = str(stack.endpoints["functions_url"])
        self.key = str(stack.endpoints["function_key"])
        self.stop = threading.Event()
        self.uploaded: dict[str, str] = {}
        self.codes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self._upload, daemon=True)] + [
            threading.Thread(target=self._poll, args=(path,), daemon=True)
            for path in ("/api/health", f"/api/status?code={self.key}")]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _upload(self) -> None:
        i = 0
        while not self.stop.is_set() and i < MAX_IMAGES:
            name = f"rollout/img-{i:03d}.png"
            self.uploaded[name] = self.stack.upload(name, encode(photo((200 + i, 160)), "PNG"))
            i += 1
            self.stop.wait(UPLOAD_EVERY_S)  # the stream's pace, not a wait for an outcome

    def _poll(self, path: str) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.get(path)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                self.codes[f"{path.split('?', maxsplit=1)[0]} {response.status_code}"] += 1
                if response.status_code != 200:
                    self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                elif path.startswith("/api/status"):
                    self.versions[str(response.json().get("version"))] += 1
                self.stop.wait(POLL_EVERY_S)  # a client's pace, not a wait for an outcome


def _rollout(stack: PipelineStack, *args: str) -> tuple[int, dict[str, Any], str]:
    done = stack._devstack("rollout", "--json", *args, timeout=400)
    body = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, body, done.stderr


def _receipts_per_blob(stack: PipelineStack) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name in stack.container(HOSTS_CONTAINER).list_blob_names(name_starts_with=RECEIPTS_PREFIX):
        parts = name.split("/", 5)  # blobreceipts/<hostId>/<functionId>/<etag>/<container>/<blob>
        if len(parts) == 6 and parts[2] == FUNCTION_ID and parts[4] == IMAGES:
            counts[f"{parts[5]}@{parts[3]}"] += 1
    return counts


def _markers(stack: PipelineStack) -> list[tuple[str, str]]:
    query = ("AppEvents | where Name == 'deployment' | order by TimeGenerated asc "
             "| project v = tostring(Properties.version), o = tostring(Properties.outcome)")
    response = httpx.post(
        f"{stack.endpoints['query_endpoint']}/workspaces/{stack.endpoints['workspace_id']}/query",
        json={"query": query}, headers={"Authorization": "Bearer local"}, timeout=30)
    response.raise_for_status()
    return [(str(v), str(o)) for v, o in response.json()["tables"][0]["rows"]]


def test_rollout_under_load_promotes_a_good_version_and_rejects_broken_ones(
        tmp_path: Path) -> None:
    broken_import = tmp_path / "broken-import"
    failing_health = tmp_path / "failing-health"
    repo_host_json = Path(__file__).resolve().parents[2] / "host.json"
    for root, source in ((broken_import, 'raise RuntimeError("deliberately broken build")\n'),
                         (failing_health, FAILING_HEALTH_APP)):
        root.mkdir()
        (root / "function_app.py").write_text(source)
        (root / "host.json").write_text(repo_host_json.read_text())

    # The e2e probe stays loaded (the gate runs it on demand); the other timers call Vision on
    # their own schedule and are not needed here.
    stack = PipelineStack(state_dir=tmp_path / "stack",
                          settings={**BASE_SETTINGS, "APP_VERSION": "v1"},
                          disabled=("vision_probe", "quota_check"), up_args=("--front",))
    with stack:
        # v1 is the version already running: it answers its first status call 503
        # report_pending until its first report is built, which is no part of a rollout; warm
        # it as the first visitor would. v2 gets no traffic before the gate has had a 200 from
        # its own status, so its cache is warm when it is promoted.
        status = f"{stack.endpoints['functions_url']}/api/status"
        wait_for(lambda: httpx.get(status, params={"code": stack.endpoints["function_key"]},
                                   timeout=30).status_code == 200,
                 timeout=120, interval=0.5, what="v1's first status report")
        with Load(stack) as load:
            wait_for(lambda: len(load.uploaded) >= 5 and load.versions["v1"] > 0, timeout=60,
                     interval=0.2, what="load running against v1")

            before = len(load.uploaded)
            code, good, log = _rollout(stack, "--version", "v2", "--watch-seconds", "8")
            assert code == 0, log[-3000:]
            assert len(load.uploaded) > before, "no image streamed in during the swap"
            assert good["promoted"] is True and good["verdict"]["decision"] == "promote"
            assert good["verdict"]["checks"]["probe"]["success"] is True
            assert good["stopped_cleanly"] is True, "the old host did not drain"
            print(f"v1 host had {good['in_flight_at_stop']} invocations in flight at SIGTERM")
            wait_for(lambda: load.versions["v2"] > 3, timeout=30, interval=0.2,
                     what="clients served by v2")

            code, broken, log = _rollout(stack, "--version", "v3-broken",
                                         "--script-root", str(broken_import))
            assert code == 1 and broken["promoted"] is False, log[-3000:]
            assert broken["verdict"]["reasons"] == ["host for v3-broken did not start"]

            code, unhealthy, log = _rollout(stack, "--version", "v4-unhealthy", "--script-root",
                                            str(failing_health), "--startup-seconds", "6")
            assert code == 1 and unhealthy["promoted"] is False, log[-3000:]
            assert "did not answer healthy" in unhealthy["verdict"]["reasons"][0]
            assert unhealthy["stopped_cleanly"] is True

            served_before = load.versions["v2"]
            wait_for(lambda: load.versions["v2"] > served_before + 3, timeout=30, interval=0.2,
                     what="v2 still serving after the rejections")
            load.stop.set()

        # Nothing failed, and the clients saw exactly v1 then v2.
        assert load.failures == [], load.failures[:10]
        assert set(load.versions) == {"v1", "v2"}
        assert load.codes["/api/health 200"] > 20 and load.codes["/api/status 200"] > 10

        # 0 lost, 0 duplicated: every image done once, by one host, with one result document.
        uploaded = dict(load.uploaded)
        assert 15 <= len(uploaded) <= MAX_IMAGES
        receipts = stack.wait_processed(uploaded, timeout=180)
        assert {r.attempts for r in receipts.values()} == {1}
        per_blob = _receipts_per_blob(stack)
        assert all(per_blob[f"{name}@\"{etag}\""] + per_blob[f"{name}@{etag}"] == 1
                   for name, etag in uploaded.items()), per_blob
        documents = stack.documents(uploaded)
        assert {name: [d.container for d in docs] for name, docs in documents.items()} == {
            name: ["results"] for name in uploaded}
        assert stack.poison_messages() == []
        print(f"{len(uploaded)} images, each processed once; HTTP answers {dict(load.codes)}; "
              f"versions seen {dict(load.versions)}")

        # The deployment markers reached the telemetry, in order.
        assert _markers(stack) == [
            ("v2", "started"), ("v2", "promoted"),
            ("v3-broken", "started"), ("v3-broken", "rolled_back"),
            ("v4-unhealthy", "started"), ("v4-unhealthy", "rolled_back"),
        ]
        # …and the status series the dashboard draws them from.
        # a history report is its own report: its first call may be told it is pending
        history = poll(lambda: httpx.get(
            f"{stack.endpoints['functions_url']}/api/status", timeout=60,
            params={"code": stack.endpoints["function_key"], "history": "1", "window": "15m"}),
            lambda res: res.status_code == 200, timeout=120, interval=0.5,
            what="the status history report").json()
        shown = [(m["version"], m["outcome"]) for m in history["series"]["deployments"]]
        assert ("v2", "promoted") in shown and ("v3-broken", "rolled_back") in shown, shown
