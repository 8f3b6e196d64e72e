"""``docs/status.schema.json`` and a validator for it (jsonschema, the schema's own draft)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
Draft202012Validator.check_schema(SCHEMA)  # a broken schema fails every test that uses it


def validate(instance: Any, definition: str | None = None) -> None:
    """Assert ``instance`` is a status report, or matches ``$defs[definition]`` (for example the
    503 body, ``"unavailable"``); the message lists every failing path."""
    schema = SCHEMA if definition is None else {
        "$ref": f"#/$defs/{definition}", "$defs": SCHEMA["$defs"]}
    assert definition is None or definition in SCHEMA["$defs"], definition
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)
