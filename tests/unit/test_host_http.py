"""HTTP surface of the local host, in process: routes, auth levels and the admin API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from devstack.host import Host, HostOptions
from devstack.host.http import build_app, compile_route
from devstack.host.keys import HostKeys

APP_ROOT = Path(__file__).resolve().parents[1] / "host_app"


@pytest.mark.parametrize(("template", "path", "params"), [
    ("items/{id}", "items/42", {"id": "42"}),
    ("items/{id}", "ITEMS/42/", {"id": "42"}),
    ("items/{id:int}", "items/abc", None),
    ("items/{id:int}", "items/-7", {"id": "-7"}),
    ("items/{id?}", "items", {"id": None}),
    ("items/{id?}", "items/9", {"id": "9"}),
    ("files/{*rest}", "files/a/b/c.txt", {"rest": "a/b/c.txt"}),
    ("status", "status/extra", None),
])
def test_route_templates(template: str, path: str, params: dict[str, str] | None) -> None:
    match = compile_route(template).match(path)
    assert (None if match is None else match.groupdict()) == params


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, Host]]:
    environ = {**os.environ, "HOST_TEST_RECORD": ""}
    host = Host(HostOptions(script_root=APP_ROOT, state_dir=tmp_path / "state",
                            settings_path=tmp_path / "local.settings.json",
                            triggers=frozenset({"httpTrigger", "timerTrigger"})),
                environ=environ)
    host.load()
    try:
        with TestClient(build_app(host, route_prefix=host.host_json.route_prefix)) as test_client:
            yield test_client, host
    finally:
        host.invoker.shutdown()


def test_keys_are_created_once(tmp_path: Path, client: tuple[TestClient, Host]) -> None:
    _, host = client
    assert host.keys.master_key
    assert host.keys.default_function_key
    assert host.keys.master_key != host.keys.default_function_key
    assert HostKeys.load_or_create(tmp_path / "state") == host.keys


def test_function_auth(client: tuple[TestClient, Host]) -> None:
    http, host = client
    response = http.get("/api/items/1")
    assert (response.status_code, response.content) == (401, b"")
    assert http.get("/api/items/1", params={"code": "nope"}).status_code == 401
    assert http.get("/api/items/1", params={"code": host.keys.default_function_key}).json() == \
        {"id": "1", "q": None, "method": "GET"}
    assert http.get("/api/items/1",
                    headers={"x-functions-key": host.keys.master_key}).status_code == 200
    assert http.get("/api/ping").text == "pong"
    assert http.get("/api/admin-only",
                    params={"code": host.keys.default_function_key}).status_code == 401
    assert http.get("/api/admin-only", params={"code": host.keys.master_key}).text == "secret"
    assert http.get("/api/missing").status_code == 404
    assert http.delete("/api/items/1",
                       params={"code": host.keys.default_function_key}).status_code == 405


def test_admin_api_needs_the_master_key(client: tuple[TestClient, Host]) -> None:
    http, host = client
    assert http.get("/").status_code == 200
    assert http.get("/admin/host/status").status_code == 401
    assert http.get("/admin/functions",
                    params={"code": host.keys.default_function_key}).status_code == 401
    listing = http.get("/admin/functions", headers={"x-functions-key": host.keys.master_key})
    entries = {entry["name"]: entry for entry in listing.json()}
    assert set(entries) == {"tick", "get_item", "admin_only", "ping"}
    assert entries["get_item"]["invoke_url_template"].endswith("/api/items/{id}")
    assert entries["tick"]["config"]["bindings"][0]["schedule"] == "%TEST_SCHEDULE%"
    assert http.post("/admin/functions/get_item", json={"input": ""},
                     params={"code": host.keys.master_key}).status_code == 400
    assert http.post("/admin/functions/tick", json={"input": ""},
                     params={"code": host.keys.master_key}).status_code == 202
