"""The README's main job (`python -m devstack run`, what ./scripts/run execs) end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from devstack.run import UPLOAD_PREFIX, sample_files
from shared.naming import result_path

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _devstack(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(state_dir), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )


def test_samples_flow_into_results_with_progress_and_urls(tmp_path: Path) -> None:
    try:
        ran = _devstack(tmp_path, "run", "--auto-ports", "--no-wait", "--deadline", "400")
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        out = ran.stdout
        samples = sample_files(REPO_ROOT / "samples")
        assert f"uploaded {len(samples)} images" in out
        assert f"{len(samples)}/{len(samples)}" in out  # the progress bar reached the end
        for label in ("dashboard: http://", "status:    http://", "health:    http://"):
            assert label in out

        status = json.loads(_devstack(tmp_path, "status", "--json").stdout)
        service = BlobServiceClient.from_connection_string(status["storage_connection_string"])
        docs = {}
        for path in samples:
            blob = service.get_blob_client("results", result_path(UPLOAD_PREFIX + path.name))
            docs[path.name] = json.loads(blob.download_blob().readall())
        assert {name: d["outcome"] for name, d in docs.items()} == {
            p.name: "analyzed" for p in samples}
        people = docs["astronaut.png"]["analysis"]["peopleResult"]["values"]
        assert sum(1 for p in people if p["confidence"] >= 0.5) == 1
        lines = [line["text"] for block in docs["invoice.jpg"]["analysis"]["readResult"]["blocks"]
                 for line in block["lines"]]
        assert any("1187" in line for line in lines), lines
    finally:
        _devstack(tmp_path, "down")
