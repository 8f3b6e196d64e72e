"""docs/status.schema.json and a validator for the JSON Schema subset it uses.

Kept dependency-free on purpose: the schema uses type, enum, const, required, properties,
additionalProperties, items, minimum, maximum, pattern and local ``$ref`` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())


_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def validate(instance: Any, schema: Mapping[str, Any], path: str = "$") -> None:
    """Assert ``instance`` matches ``schema``; the message names the failing path."""
    if "$ref" in schema:
        validate(instance, SCHEMA["$defs"][schema["$ref"].removeprefix("#/$defs/")], path)
        return
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        assert any(_TYPES[t](instance) for t in allowed), f"{path}: {instance!r} is not {types}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{path}: {instance!r} not in {schema['enum']}"
    if "const" in schema:
        assert instance == schema["const"], f"{path}: {instance!r} != {schema['const']!r}"
    _bounds(instance, schema, path)
    if isinstance(instance, dict):
        _object(instance, schema, path)
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            validate(item, schema["items"], f"{path}[{i}]")


def _bounds(instance: Any, schema: Mapping[str, Any], path: str) -> None:
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        if "minimum" in schema:
            assert instance >= schema["minimum"], f"{path}: {instance} < minimum"
        if "maximum" in schema:
            assert instance <= schema["maximum"], f"{path}: {instance} > maximum"
    if isinstance(instance, str) and "pattern" in schema:
        assert re.search(schema["pattern"], instance), f"{path}: {instance!r} !~ pattern"


def _object(instance: dict[str, Any], schema: Mapping[str, Any], path: str) -> None:
    for key in schema.get("required", []):
        assert key in instance, f"{path}: missing {key}"
    props = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        extra = set(instance) - set(props)
        assert not extra, f"{path}: unexpected {sorted(extra)}"
    for key, sub in props.items():
        if key in instance:
            validate(instance[key], sub, f"{path}.{key}")
