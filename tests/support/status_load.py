"""The status load tests' stack settings, load generator and probes (test_status_load.py and
test_status_backend_load.py, each on its own stack so two workers can run them at once).

Loopback only; every load is bounded in clients and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from shared.monitoring.status import WINDOWS_BY_NAME, plan, series_plan
from shared.settings import Settings
from tests.support.stack import BASE_SETTINGS, REPO_ROOT, PipelineStack

#: The status cache's TTL on these stacks: short, so a bounded run sees several refreshes.
TTL = 10
SAMPLES = sorted(p for p in (REPO_ROOT / "samples").iterdir() if p.suffix in (".png", ".jpg"))
SETTINGS = {**BASE_SETTINGS, "STATUS_CACHE_TTL_SECONDS": str(TTL), "APP_VERSION": "load-1"}
_APP = Settings.from_env({**SETTINGS, "VISION_ENDPOINT": "http://127.0.0.1:9",
                          "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
#: One report's worth, counted from the app's own plan: the core report + one window's series.
REPORT_QUERIES = len(plan(_APP)[0]) + len(series_plan(WINDOWS_BY_NAME["1h"], _APP))


def start_stack(state_dir: Path) -> PipelineStack:
    """A private stack with ``SETTINGS`` (timers off: only the status function queries)."""
    return PipelineStack(state_dir, SETTINGS)


def key(stack: PipelineStack) -> str:
    return str(stack.endpoints["function_key"])


def status_url(stack: PipelineStack) -> str:
    return f"{stack.endpoints['functions_url']}/api/status"


def monitor(stack: PipelineStack) -> str:
    return str(stack.endpoints["ingestion_endpoint"]).rstrip("/")


def monitor_pid(stack: PipelineStack) -> int:
    state = json.loads((stack.state_dir / "stack.json").read_text())
    return int(state["processes"]["monitor"]["pid"])


def limiter(stack: PipelineStack) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{monitor(stack)}/admin/limits", timeout=10).json()
    return answer


def get_status(stack: PipelineStack, **params: str) -> httpx.Response:
    return httpx.get(status_url(stack), params={"code": key(stack), **params}, timeout=30)


def upload_stream(stack: PipelineStack, tag: str, *, every: float) -> dict[str, float]:
    """Upload each sample under a new name, one every ``every`` s; name → upload end (epoch)."""
    ended: dict[str, float] = {}
    pace = threading.Event()
    for i, path in enumerate(SAMPLES):
        if i:
            pace.wait(every)  # the stream's pacing, not a wait for an outcome
        name = f"load/{tag}-{path.name}"
        stack.upload(name, path.read_bytes())
        ended[name] = time.time()
    return ended


def times_to_document(stack: PipelineStack, ended: dict[str, float]) -> list[float]:
    etags = {name: stack.upload_etag(name) for name in ended}
    stack.wait_processed(etags, timeout=300)
    docs = stack.documents(etags)
    out = []
    for name, found in docs.items():
        assert found, f"no document for {name}"
        processed = datetime.fromisoformat(found[0].body["processed_at"]).timestamp()
        out.append(processed - ended[name])
    return out


@dataclass
class Load:
    """``clients`` concurrent pollers of one URL, each every ``interval`` s, on their own loop."""

    url: str
    params: dict[str, str]
    clients: int
    interval: float
    codes: Counter[int] = field(default_factory=Counter)
    #: transport errors (code 0) by exception type, so a failure says which
    errors: Counter[str] = field(default_factory=Counter)
    stale: int = 0
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                res = await http.get(self.url, params=self.params)
            except httpx.HTTPError as exc:
                self.codes[0] += 1
                self.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
            else:
                self.codes[res.status_code] += 1
                if res.status_code == 200 and res.json()["cache"]["stale"]:
                    self.stale += 1
            self.latencies.append(time.monotonic() - started)
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):  # the poll interval of a dashboard
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        if self._stop.is_set():
            return
        limits = httpx.Limits(max_connections=self.clients)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._loop is not None and self._wake is not None:  # end the clients' waits now
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._wake.set)
        assert self._thread is not None
        self._thread.join(60)

    @property
    def total(self) -> int:
        return sum(self.codes.values())


