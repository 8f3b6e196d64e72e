"""local.settings.json.example lists every app setting the app reads, and the example parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# Set by the platform, never by us (the run location falls back to it).
PLATFORM_SET = {"REGION_NAME"}


def _example() -> dict[str, str]:
    return dict(json.loads((REPO_ROOT / "local.settings.json.example").read_text())["Values"])


def test_every_setting_the_app_reads_is_in_the_example() -> None:
    source = (REPO_ROOT / "shared" / "settings.py").read_text()
    read = set(re.findall(r'"([A-Z][A-Z0-9_]{3,})"', source)) - PLATFORM_SET
    missing = sorted(read - set(_example()))
    assert not missing, f"add to local.settings.json.example (and docs): {missing}"


def test_the_example_is_a_valid_configuration() -> None:
    settings = Settings.from_env(_example())
    assert settings.vision.endpoint == "http://127.0.0.1:7081"
