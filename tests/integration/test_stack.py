"""The stack CLI end to end: `up` → real SDKs against every part → `down` leaves nothing running."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.vision.imageanalysis import ImageAnalysisClient
from azure.ai.vision.imageanalysis.models import VisualFeatures
from azure.core.credentials import AzureKeyCredential
from azure.storage.blob import BlobServiceClient

from devstack import procs

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"


def _devstack(
    state_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state_dir = tmp_path_factory.mktemp("devstack")
    started = _devstack(state_dir, "up", "--auto-ports", "--json")
    try:
        assert started.returncode == 0, started.stderr
        yield state_dir, json.loads(started.stdout)
    finally:
        _devstack(state_dir, "down")


def test_status_json_names_every_endpoint(stack: tuple[Path, dict[str, Any]]) -> None:
    state_dir, _ = stack
    result = _devstack(state_dir, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["running"] is True
    assert set(status["components"]) == {"azurite", "vision", "monitor", "host"}
    for key in ("storage_connection_string", "vision_endpoint", "vision_key",
                "functions_url", "function_key", "ingestion_endpoint", "query_endpoint",
                "workspace_id"):
        assert status[key], key


def test_blob_upload_to_azurite(stack: tuple[Path, dict[str, Any]]) -> None:
    _, endpoints = stack
    service = BlobServiceClient.from_connection_string(endpoints["storage_connection_string"])
    container = service.get_container_client("scratch")
    container.create_container()
    container.upload_blob("hello.txt", b"hello")
    assert container.download_blob("hello.txt").readall() == b"hello"


def test_vision_emulator_behind_the_stack_counts_the_person(
    stack: tuple[Path, dict[str, Any]],
) -> None:
    _, endpoints = stack
    client = ImageAnalysisClient(
        endpoint=endpoints["vision_endpoint"],
        credential=AzureKeyCredential(endpoints["vision_key"]),
    )
    result = client.analyze(
        image_data=(SAMPLES / "astronaut.png").read_bytes(),
        visual_features=[VisualFeatures.PEOPLE],
    )
    assert result.metadata.width == 512
    assert result.people is not None
    assert sum(1 for p in result.people.list if p.confidence >= 0.5) == 1


def test_functions_host_answers_and_enforces_keys(stack: tuple[Path, dict[str, Any]]) -> None:
    _, endpoints = stack
    base = endpoints["functions_url"]
    assert procs.http_ok(base + "/")
    assert httpx.get(base + "/admin/host/status", timeout=10).status_code == 401
    ok = httpx.get(base + "/admin/host/status", timeout=10,
                   headers={"x-functions-key": endpoints["master_key"]})
    assert ok.status_code == 200
    assert ok.json()["state"] == "Running"


def test_down_leaves_no_process_of_ours(tmp_path: Path) -> None:
    started = _devstack(tmp_path, "up", "--auto-ports", "--json")
    assert started.returncode == 0, started.stderr
    recorded = json.loads((tmp_path / "stack.json").read_text())["processes"]
    pids = [int(p["pid"]) for p in recorded.values()]
    assert len(pids) == 4
    assert all(procs.pid_alive(pid) for pid in pids)

    stopped = _devstack(tmp_path, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(procs.pid_alive(pid) for pid in pids)
    assert not any(procs.group_members(pid) for pid in pids)
    assert not (tmp_path / "stack.json").exists()
