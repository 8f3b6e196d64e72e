"""The emulator's HTTP surface in-process: track contract, auth, workspaces, batch, admin."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.monitor import DEFAULT_WORKSPACE_ID, ConfigError, MonitorConfig, create_app
from devstack.monitor.config import DEFAULT_RESOURCE_ID

NOW = datetime(2024, 5, 31, 12, 0, tzinfo=UTC)
AUTH = {"Authorization": "Bearer local"}
QUERY = f"/v1/workspaces/{DEFAULT_WORKSPACE_ID}/query"

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, client_host: str = "127.0.0.1") -> None:
    app = create_app(MonitorConfig(state_dir=tmp_path / "state", clock=lambda: NOW))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
                await scenario(client)

    asyncio.run(main())


def trace(message: str) -> dict[str, Any]:
    return {"name": "Microsoft.ApplicationInsights.Message", "iKey": "k",
            "time": "2024-05-31T11:59:00Z", "tags": {"ai.operation.id": "op"},
            "data": {"baseType": "MessageData", "baseData": {"ver": 2, "message": message}}}


def test_track_all_partial_none(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        ok = await c.post("/v2.1/track", content=json.dumps([trace("a"), trace("b")]))
        assert ok.status_code == 200
        assert ok.json() == {"itemsReceived": 2, "itemsAccepted": 2, "errors": []}
        partial = await c.post("/v2/track", content=json.dumps([trace("c"), {"name": "x"}]))
        assert partial.status_code == 206
        assert partial.json()["errors"][0]["index"] == 1
        none = await c.post("/v2.1/track", content=json.dumps([{"bad": True}]))
        assert none.status_code == 400 and none.json()["itemsAccepted"] == 0
        garbage = await c.post("/v2.1/track", content=b"\x00not json")
        assert garbage.status_code == 400
        tables = (await c.get("/admin/tables")).json()
        assert tables["AppTraces"] == 3 and tables["RawEnvelopes"] == 6
    run(tmp_path, scenario)


def test_gzip_ndjson_and_double_slash(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        lines = "\n".join(json.dumps(trace(m)) for m in ("x", "y")) + "\n{oops\n"
        answer = await c.post("http://emu//v2.1/track", content=gzip.compress(lines.encode()),
                              headers={"Content-Encoding": "gzip"})
        assert answer.status_code == 206
        assert answer.json()["itemsAccepted"] == 2
        assert answer.json()["errors"][0]["index"] == 2
        bad_zip = await c.post("/v2.1/track", content=b"plain",
                               headers={"Content-Encoding": "gzip"})
        assert bad_zip.status_code == 400
    run(tmp_path, scenario)


def test_query_needs_a_bearer_token_and_a_known_workspace(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/v2.1/track", content=json.dumps([trace("a")]))
        body = {"query": "AppTraces | count", "timespan": "PT1H"}
        assert (await c.post(QUERY, json=body)).status_code == 401
        denied = await c.post(QUERY, json=body, headers={"Authorization": "Bearer "})
        assert denied.json()["error"]["code"] == "AuthorizationRequiredError"
        ok = await c.post(QUERY, json=body, headers=AUTH)
        assert ok.json()["tables"][0]["rows"] == [[1]]
        unversioned = await c.post(QUERY.removeprefix("/v1"), json=body, headers=AUTH)
        assert unversioned.json() == ok.json()
        via_get = await c.get(QUERY, params=body, headers=AUTH)
        assert via_get.json() == ok.json()
        missing = await c.post("/v1/workspaces/11111111-1111-1111-1111-111111111111/query",
                               json=body, headers=AUTH)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "WorkspaceNotFoundError"
        not_json = await c.post(QUERY, content=b"{", headers=AUTH)
        assert not_json.status_code == 400
    run(tmp_path, scenario)


def test_batch(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/v2.1/track", content=json.dumps([trace("a")]))
        requests = [
            {"id": "1", "workspace": DEFAULT_WORKSPACE_ID, "path": "/query", "method": "POST",
             "headers": {"Prefer": ""}, "body": {"query": "AppTraces | count",
                                                 "timespan": None}},
            {"id": "2", "workspace": DEFAULT_WORKSPACE_ID, "path": "/query", "method": "POST",
             "headers": {}, "body": {"query": "AppTraces | where", "timespan": None}},
            {"id": "3", "workspace": "nope", "path": "/query", "method": "POST",
             "headers": {}, "body": {"query": "AppTraces", "timespan": None}},
        ]
        answer = await c.post("/v1/$batch", json={"requests": requests}, headers=AUTH)
        assert answer.status_code == 200
        by_id = {r["id"]: r for r in answer.json()["responses"]}
        assert by_id["1"]["status"] == 200
        assert by_id["1"]["body"]["tables"][0]["rows"] == [[1]]
        assert by_id["2"]["status"] == 400
        assert by_id["2"]["body"]["error"]["innererror"]["code"] == "SyntaxError"
        assert by_id["3"]["status"] == 404
        assert (await c.post("/$batch", json={}, headers=AUTH)).status_code == 400
        assert (await c.post("/$batch", json={"requests": []})).status_code == 401
    run(tmp_path, scenario)


def test_live_metrics_and_health(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        for path in ("/QuickPulseService.svc/ping", "/QuickPulseService.svc/post"):
            answer = await c.post(path, params={"ikey": "k"}, content=b"[]")
            assert answer.status_code == 200 and answer.headers["x-ms-qps-subscribed"] == "false"
        health = await c.get("/healthz")
        assert health.json() == {"status": "ok", "workspaceId": DEFAULT_WORKSPACE_ID}
    run(tmp_path, scenario)


def test_admin_is_loopback_only_and_resets(tmp_path: Path) -> None:
    async def remote(c: httpx.AsyncClient) -> None:
        assert (await c.get("/admin/tables")).status_code == 403
        assert (await c.post("/admin/reset")).status_code == 403
        assert (await c.get("/admin/envelopes")).status_code == 403
    run(tmp_path, remote, client_host="192.0.2.10")

    async def local(c: httpx.AsyncClient) -> None:
        await c.post("/v2.1/track", content=json.dumps([trace("secret-free")]))
        raw = (await c.get("/admin/envelopes", params={"limit": 5})).json()
        assert raw[-1]["envelope"]["data"]["baseData"]["message"] == "secret-free"
        assert (await c.get("/admin/envelopes", params={"limit": 0})).status_code == 400
        assert (await c.post("/admin/reset")).json() == {"reset": True}
        assert set((await c.get("/admin/tables")).json().values()) == {0}
    run(tmp_path, local)


def test_config_reports_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        MonitorConfig(state_dir=tmp_path, host="0.0.0.0", workspace_id="x", retention_days=0)
    message = str(caught.value)
    assert "loopback" in message and "GUID" in message and "retention_days" in message


def test_resource_centric_queries_and_cross_workspace_lists(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        await c.post("/v2.1/track", content=json.dumps([trace("a")]))
        body = {"query": "AppTraces | count"}
        # The SDK's query_resource posts to {endpoint}/v1/{resource id}/query.
        cased = DEFAULT_RESOURCE_ID.replace("resourcegroups", "resourceGroups").replace(
            "microsoft.insights", "Microsoft.Insights")
        by_resource = await c.post(f"/v1/{cased}/query", json=body, headers=AUTH)
        assert by_resource.status_code == 200
        assert by_resource.json()["tables"][0]["rows"] == [[1]]
        other = DEFAULT_RESOURCE_ID.replace("visionops-local", "someone-else")
        unknown = await c.post(f"/v1{other}/query", json=body, headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "ResourceNotFoundError"
        twice = await c.post(QUERY, json={**body, "workspaces": [DEFAULT_WORKSPACE_ID]},
                             headers=AUTH)
        assert twice.json()["tables"][0]["rows"] == [[1]]
        foreign = await c.post(QUERY, headers=AUTH, json={
            **body, "workspaces": ["11111111-1111-1111-1111-111111111111"]})
        assert foreign.json()["error"]["code"] == "WorkspaceNotFoundError"
    run(tmp_path, scenario)


def test_unknown_routes_answer_json(tmp_path: Path) -> None:
    async def scenario(c: httpx.AsyncClient) -> None:
        for path in ("/v1/nothing/here", "/v1/workspaces/not-a-guid/query"):
            answer = await c.post(path, json={"query": "AppTraces"}, headers=AUTH)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "PathNotFoundError"
            assert answer.json()["error"]["message"] == "The requested path does not exist"
        wrong_method = await c.delete(QUERY, headers=AUTH)
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "MethodNotAllowedError"
    run(tmp_path, scenario)
