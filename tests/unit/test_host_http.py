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


MALFORMED_KEYS = [
    pytest.param("é", id="non-ascii"),
    pytest.param("\udcff", id="lone-surrogate"),
    pytest.param("", id="empty"),
    pytest.param("k" * 100_000, id="very-long"),
    pytest.param("a\nb\r\x00\x1b[31m", id="control-chars"),
]


@pytest.mark.parametrize("presented", MALFORMED_KEYS)
def test_malformed_keys_match_nothing(tmp_path: Path, presented: str) -> None:
    keys = HostKeys.load_or_create(tmp_path)
    assert keys.is_master(presented) is False
    assert keys.authorizes("function", presented) is False
    assert keys.authorizes("admin", presented) is False
    assert keys.authorizes("anonymous", presented) is True


def test_non_ascii_master_and_function_keys_compare_as_bytes() -> None:
    keys = HostKeys(master_key="clé-maître", function_keys={"default": "ключ"})
    assert keys.is_master("clé-maître")
    assert not keys.is_master("cle-maitre")
    assert keys.authorizes("function", "ключ")
    assert not keys.authorizes("function", "ключ!")
    assert not keys.authorizes("admin", "ключ")


@pytest.mark.parametrize("raw_query", [
    "code=%C3%A9",            # é, the reported 500
    "code=%FF%FE",            # not UTF-8 at all
    "code=",                  # empty
    "code=" + "k" * 8000,     # very long
    "code=a%0Ab%0D%00%1B",    # control characters
])
def test_malformed_keys_are_401_on_every_route(client: tuple[TestClient, Host],
                                                raw_query: str) -> None:
    http, _ = client
    for path in ("/api/items/1", "/api/admin-only", "/admin/host/status", "/admin/functions"):
        response = http.get(f"{path}?{raw_query}")
        assert response.status_code == 401, (path, raw_query, response.status_code)


def test_non_ascii_header_key_is_401(client: tuple[TestClient, Host]) -> None:
    http, _ = client
    # Header bytes outside ASCII reach the app decoded as latin-1: still a key, still no match.
    response = http.get("/api/items/1", headers={"x-functions-key": "é".encode()})
    assert response.status_code == 401
