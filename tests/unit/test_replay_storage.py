"""Which storage replay talks to: never an unnamed ``UseDevelopmentStorage=true``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from devstack import replay
from devstack.replay import ReplayConfigError, is_development_storage, resolve_storage

STACK_STORAGE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;"
                 "BlobEndpoint=http://127.0.0.1:41000/devstoreaccount1;"
                 "QueueEndpoint=http://127.0.0.1:41001/devstoreaccount1")
RUNNING = {"running": True, "storage_connection_string": STACK_STORAGE,
           "blob_endpoint": "http://127.0.0.1:41000/devstoreaccount1", "state_dir": "/s/two"}


class FakeStatus:
    def __init__(self, answer: Mapping[str, Any] | None) -> None:
        self.answer = answer
        self.asked: list[str | None] = []

    def __call__(self, state_dir: str | None) -> Mapping[str, Any] | None:
        self.asked.append(state_dir)
        return self.answer


@pytest.mark.parametrize(("value", "development"), [
    ("UseDevelopmentStorage=true", True),
    (" usedevelopmentstorage = TRUE ", True),
    ("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://127.0.0.1", True),
    ("UseDevelopmentStorage=false", False),
    (STACK_STORAGE, False),
    (None, False),
])
def test_development_storage_is_recognised(value: str | None, development: bool) -> None:
    assert is_development_storage(value) is development


def test_an_explicit_connection_string_without_stack_is_used_as_it_is() -> None:
    status = FakeStatus(None)
    env, note = resolve_storage({"AzureWebJobsStorage": STACK_STORAGE}, stack_dir=None,
                                status=status)
    assert env["AzureWebJobsStorage"] == STACK_STORAGE and note is None
    assert status.asked == []  # nothing to check: the string names its endpoints


@pytest.mark.parametrize("stack_dir", [None, "/s/two"])
def test_development_storage_takes_the_running_stacks_endpoints(stack_dir: str | None) -> None:
    status = FakeStatus(RUNNING)
    env, note = resolve_storage({"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
                                stack_dir=stack_dir, status=status)
    assert env["AzureWebJobsStorage"] == STACK_STORAGE
    assert note == "local stack /s/two (blob http://127.0.0.1:41000/devstoreaccount1)"
    assert status.asked == [stack_dir]


@pytest.mark.parametrize(("answer", "text"), [
    (None, "could not say which stack runs"),
    ({"running": False}, "no local stack is running"),
    ({**RUNNING, "running": False}, "no local stack is running"),  # a part of it is down
])
def test_development_storage_without_a_running_stack_is_refused(
    answer: Mapping[str, Any] | None, text: str
) -> None:
    with pytest.raises(ReplayConfigError) as info:
        resolve_storage({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, stack_dir=None,
                        status=FakeStatus(answer))
    assert text in str(info.value)
    assert "UseDevelopmentStorage=true names no stack" in str(info.value)


def test_stack_and_another_connection_string_is_refused_without_echoing_it() -> None:
    other = STACK_STORAGE.replace("41000", "10000").replace("AccountKey=k", "AccountKey=secret")
    with pytest.raises(ReplayConfigError) as info:
        resolve_storage({"AzureWebJobsStorage": other}, stack_dir="/s/two",
                        status=FakeStatus(RUNNING))
    assert "is not the storage of the stack" in str(info.value)
    assert "secret" not in str(info.value) and "AccountKey" not in str(info.value)


def test_main_exits_2_with_the_reason_and_touches_no_storage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("VISION_ENDPOINT", "http://127.0.0.1:1")
    asked: list[str | None] = []
    monkeypatch.setattr(replay, "devstack_status",
                        lambda state_dir: asked.append(state_dir) or {"running": False})
    touched: list[str] = []
    monkeypatch.setattr("shared.analysis.results.blob_service_client",
                        lambda *a, **k: touched.append("storage"))
    assert replay.main(["--dry-run"]) == replay.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("replay: ") and "no local stack is running" in err
    assert touched == [] and asked == [None]
