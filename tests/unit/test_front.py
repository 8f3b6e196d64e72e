"""The local front door (``devstack.front``): switch, in-flight counts, unreachable backend.

Backends are ``httpx.MockTransport`` handlers (fakes, no sockets); the front itself runs in
Starlette's test client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from devstack.front import BACKEND_FILE, Front, build_app, write_backend

OLD, NEW = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


def _backends(request: httpx.Request) -> httpx.Response:
    if request.url.host == "127.0.0.1" and request.url.port == 1003:
        raise httpx.ConnectError("refused", request=request)
    body = {"served_by": request.url.port, "path": request.url.path,
            "query": dict(request.url.params), "key": request.headers.get("x-functions-key")}
    return httpx.Response(200, json=body, headers={"Cache-Control": "no-store"})


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Front, TestClient, Path]:
    write_backend(tmp_path, OLD)
    front = Front(tmp_path / BACKEND_FILE)
    client = httpx.AsyncClient(transport=httpx.MockTransport(_backends))
    return front, TestClient(build_app(front, client)), tmp_path


def test_requests_go_to_the_current_backend_and_follow_a_switch(
        setup: tuple[Front, TestClient, Path]) -> None:
    _front, client, state = setup
    first = client.get("/api/status", params={"code": "k"}, headers={"x-functions-key": "m"})
    assert first.status_code == 200
    assert first.json() == {"served_by": 1001, "path": "/api/status", "query": {"code": "k"},
                            "key": "m"}
    assert first.headers["cache-control"] == "no-store"
    write_backend(state, NEW)
    assert client.get("/api/health").json()["served_by"] == 1002
    status = client.get("/.front/status").json()
    assert status == {"backend": NEW, "inflight": {}, "served": {OLD: 1, NEW: 1}}
    assert json.loads((state / BACKEND_FILE).read_text()) == {"backend": NEW}


def test_unreachable_backend_is_a_502_with_a_cause(setup: tuple[Front, TestClient, Path]) -> None:
    front, client, state = setup
    write_backend(state, "http://127.0.0.1:1003")
    response = client.get("/api/health")
    assert response.status_code == 502
    assert response.json()["error"]["cause"] == "backend_unreachable"
    assert front.inflight["http://127.0.0.1:1003"] == 0


def test_a_request_in_flight_is_counted_against_the_backend_it_started_on(
        tmp_path: Path) -> None:
    write_backend(tmp_path, OLD)
    front = Front(tmp_path / BACKEND_FILE)
    release = asyncio.Event()
    seen: list[dict[str, int]] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        seen.append(dict(front.inflight))
        await release.wait()
        return httpx.Response(200, json={"served_by": request.url.port})

    app = build_app(front, httpx.AsyncClient(transport=httpx.MockTransport(slow)))

    async def scenario() -> tuple[int, dict[str, object]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://front") as client:
            pending = asyncio.create_task(client.get("/api/status"))
            while not seen:  # the request reached the old backend
                await asyncio.sleep(0)
            write_backend(tmp_path, NEW)  # switched while it is in flight
            during = (await client.get("/.front/status")).json()
            release.set()
            served = (await pending).json()["served_by"]
            return served, during

    served, during = asyncio.run(scenario())
    assert served == 1001  # finished where it started
    assert during["backend"] == NEW and during["inflight"] == {OLD: 1}
    assert front.status()["inflight"] == {}
