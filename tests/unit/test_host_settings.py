"""App settings, %SETTING% resolution and host.json of the local host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.host.host import read_env_file
from devstack.host.loader import import_app_module, index_functions
from devstack.host.settings import (
    HostConfigError,
    HostJson,
    apply_settings,
    load_local_settings,
    resolve_binding,
    resolve_expressions,
)
from devstack.host.storage import DEVELOPMENT_STORAGE, connection_string

APP_ROOT = Path(__file__).resolve().parents[1] / "host_app"


def test_expressions_resolve_from_app_settings() -> None:
    settings = {"IMAGES": "images", "SCHEDULE": "0 */5 * * * *"}
    assert resolve_expressions("%IMAGES%/{name}", settings, function="f", field="path") == \
        "images/{name}"
    binding = resolve_binding(
        {"type": "timerTrigger", "name": "t", "schedule": "%SCHEDULE%", "runOnStartup": False},
        settings, function="f")
    assert binding == {"type": "timerTrigger", "name": "t", "schedule": "0 */5 * * * *",
                       "runOnStartup": False}


def test_unresolvable_expression_names_function_and_setting() -> None:
    with pytest.raises(HostConfigError) as caught:
        resolve_expressions("%MISSING_CONTAINER%/{name}", {}, function="analyze", field="path")
    message = str(caught.value)
    assert "'analyze'" in message
    assert "MISSING_CONTAINER" in message
    assert "'path'" in message


def test_indexing_fails_clearly_when_a_setting_is_missing() -> None:
    module = import_app_module(APP_ROOT)
    with pytest.raises(HostConfigError, match=r"function 'tick'.*TEST_SCHEDULE"):
        index_functions(module, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})


def test_environment_wins_over_local_settings() -> None:
    environ = {"PORT_OVERRIDE": "from-env"}
    effective = apply_settings({"PORT_OVERRIDE": "from-file", "ONLY_FILE": "x"}, environ)
    assert effective["PORT_OVERRIDE"] == "from-env"
    assert effective["ONLY_FILE"] == "x"
    assert environ["ONLY_FILE"] == "x"


def test_local_settings_created_from_example(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "local.settings.json.example").write_text(
        json.dumps({"IsEncrypted": False, "Values": {"A": "1", "B": None}}))
    values = load_local_settings(root)
    assert values == {"A": "1", "B": ""}
    assert (root / "local.settings.json").is_file()
    elsewhere = tmp_path / "state" / "settings.json"
    assert load_local_settings(root, elsewhere) == {"A": "1", "B": ""}
    assert elsewhere.is_file()


def test_settings_the_example_gained_are_added_keeping_the_developers_values(
    tmp_path: Path,
) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "local.settings.json").write_text(json.dumps({"Values": {"A": "mine"}}))
    (root / "local.settings.json.example").write_text(
        json.dumps({"Values": {"A": "1", "NEW_SCHEDULE": "0 */5 * * * *"}}))
    assert load_local_settings(root) == {"A": "mine", "NEW_SCHEDULE": "0 */5 * * * *"}
    on_disk = json.loads((root / "local.settings.json").read_text())["Values"]
    assert on_disk == {"A": "mine", "NEW_SCHEDULE": "0 */5 * * * *"}


def test_host_json_blob_settings_and_defaults() -> None:
    assert HostJson.from_document({}).poison_blob_threshold == 5
    assert HostJson.from_document({}).route_prefix == "api"
    legacy = HostJson.from_document({"extensions": {"queues": {"maxDequeueCount": 3}}})
    assert legacy.poison_blob_threshold == 3
    current = HostJson.from_document({"extensions": {
        "queues": {"maxDequeueCount": 3},
        "blobs": {"poisonBlobThreshold": 2, "maxDegreeOfParallelism": 4},
        "http": {"routePrefix": ""}}})
    assert current.poison_blob_threshold == 2
    assert current.blob_max_degree_of_parallelism == 4
    assert current.route_prefix == ""
    assert HostJson.load(APP_ROOT).blob_max_degree_of_parallelism == 3
    with pytest.raises(HostConfigError):
        HostJson.from_document({"extensions": {"blobs": {"maxDegreeOfParallelism": 0}}})


def test_connection_settings() -> None:
    assert connection_string("Storage", {"Storage": "UseDevelopmentStorage=true"}) == \
        DEVELOPMENT_STORAGE
    assert connection_string(None, {"AzureWebJobsStorage": "A=1"}) == "A=1"
    assert connection_string("Storage", {"AzureWebJobsStorage": "B=2"}) == "B=2"
    with pytest.raises(HostConfigError, match="identity-based"):
        connection_string("Data", {"Data__serviceUri": "https://x"}, function="f")
    with pytest.raises(HostConfigError, match="'Data' is not defined"):
        connection_string("Data", {}, function="f")


def test_env_file(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    path.write_text("# comment\nexport A=1\nB='two words'\n\nC=\"x=y\"\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "x=y"}
    path.write_text("not a pair\n")
    with pytest.raises(HostConfigError, match=":1:"):
        read_env_file(path)
