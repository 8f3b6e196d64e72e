"""App settings and host.json for the local Functions host.

App settings come from ``local.settings.json`` (``Values``), exactly as ``func start`` reads them,
with one rule the stack relies on: a variable already set in the host's own environment wins over
the file, so the stack can point the app at its own ports and keys without editing the file.

``%SETTING%`` expressions in binding fields are resolved here; an unknown setting is a startup
error that names the function and the setting. This module never logs a setting's value.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SETTINGS_FILE = "local.settings.json"
SETTINGS_EXAMPLE = "local.settings.json.example"

_EXPRESSION = re.compile(r"%([^%]+)%")


class HostConfigError(RuntimeError):
    """The function app cannot be hosted as configured (the message says what to fix)."""


def load_local_settings(
    script_root: Path, settings_path: Path | None = None
) -> dict[str, str]:
    """The ``Values`` of ``local.settings.json``, creating it from the example when missing."""
    path = settings_path if settings_path is not None else script_root / SETTINGS_FILE
    if not path.is_file():
        example = script_root / SETTINGS_EXAMPLE
        if not example.is_file():
            log.warning("No %s and no %s in %s: starting with no app settings",
                        path.name, SETTINGS_EXAMPLE, script_root)
            return {}
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example, path)
        log.info("Created %s from %s (edit it to change app settings)", path, SETTINGS_EXAMPLE)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HostConfigError(f"cannot read {path}: {exc}") from exc
    values = document.get("Values", {}) if isinstance(document, dict) else {}
    if not isinstance(values, dict):
        raise HostConfigError(f"{path}: 'Values' must be an object")
    added = _add_new_example_keys(path, document, values, script_root / SETTINGS_EXAMPLE)
    if added:
        log.warning("Added %d app setting(s) that %s gained since %s was made: %s",
                    len(added), SETTINGS_EXAMPLE, path.name, ", ".join(added))
    return {str(key): "" if value is None else str(value) for key, value in values.items()}


def _add_new_example_keys(
    path: Path, document: dict[str, Any], values: dict[str, Any], example: Path
) -> list[str]:
    """Copy settings the example has and the developer's file lacks (their values are kept).

    A checkout that gains a setting (a new schedule, say) would otherwise leave an older
    local.settings.json unable to resolve ``%SETTING%``; the real Core Tools would fail the same
    way, so the file is updated visibly rather than papered over in memory.
    """
    try:
        example_values = json.loads(example.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, ValueError, AttributeError):
        return []
    missing = [key for key in example_values if key not in values]
    if not missing:
        return []
    for key in missing:
        values[key] = example_values[key]
    document["Values"] = values
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return missing


def apply_settings(
    values: Mapping[str, str], environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Put ``values`` into the environment unless already set there; return the effective map.

    The environment wins: ``func start`` behaves the same way, and the stack passes its port and
    key overrides to the host as environment variables.
    """
    env = os.environ if environ is None else environ
    overridden = []
    for key, value in values.items():
        if key in env:
            overridden.append(key)
        else:
            env[key] = value
    if overridden:
        log.info("App settings taken from the environment instead of the file: %s",
                 ", ".join(sorted(overridden)))
    return dict(env)


def resolve_expressions(
    value: str, settings: Mapping[str, str], *, function: str, field: str
) -> str:
    """Replace each ``%NAME%`` in ``value`` with the app setting ``NAME``."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise HostConfigError(
                f"function '{function}': binding field '{field}' uses %{name}%, "
                f"but the app setting '{name}' is not defined"
            )
        return settings[name]

    return _EXPRESSION.sub(substitute, value)


def resolve_binding(
    binding: Mapping[str, Any], settings: Mapping[str, str], *, function: str
) -> dict[str, Any]:
    """A copy of ``binding`` with ``%SETTING%`` resolved in every string field but ``name``."""
    resolved: dict[str, Any] = {}
    for key, value in binding.items():
        if isinstance(value, str) and key not in {"name", "type", "direction"}:
            resolved[key] = resolve_expressions(value, settings, function=function, field=key)
        else:
            resolved[key] = value
    return resolved


def parse_timespan(text: str) -> timedelta:
    """A .NET ``TimeSpan`` string (``[d.]hh:mm:ss[.fff]``) as used in host.json."""
    days = 0
    body = text.strip()
    if "." in body.split(":")[0]:
        day_text, body = body.split(".", 1)
        days = int(day_text)
    parts = body.split(":")
    if len(parts) != 3:
        raise ValueError(f"not a TimeSpan: {text!r}")
    hours, minutes = int(parts[0]), int(parts[1])
    seconds = float(parts[2])
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


@dataclass(frozen=True, slots=True)
class HostJson:
    """The parts of host.json the local host honours, with the real host's defaults.

    Blob retries: the Storage Blobs extension 5.x reads ``extensions.blobs.poisonBlobThreshold``
    (default 5) as the max dequeue count of its internal queue; before 5.0 it was
    ``extensions.queues.maxDequeueCount`` (default 5). Both are honoured, the former first.
    """

    poison_blob_threshold: int = 5
    blob_max_degree_of_parallelism: int = 8 * (os.cpu_count() or 1)
    function_timeout: timedelta | None = None
    route_prefix: str = "api"

    @classmethod
    def load(cls, script_root: Path) -> HostJson:
        path = script_root / "host.json"
        if not path.is_file():
            log.warning("No host.json in %s: using the host defaults", script_root)
            return cls()
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HostConfigError(f"cannot read {path}: {exc}") from exc
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> HostJson:
        defaults = cls()
        extensions = document.get("extensions") or {}
        queues = extensions.get("queues") or {}
        blobs = extensions.get("blobs") or {}
        http = extensions.get("http") or {}
        try:
            threshold = int(blobs.get("poisonBlobThreshold",
                                      queues.get("maxDequeueCount",
                                                 defaults.poison_blob_threshold)))
            parallelism = int(blobs.get("maxDegreeOfParallelism",
                                        defaults.blob_max_degree_of_parallelism))
            timeout = (parse_timespan(str(document["functionTimeout"]))
                       if document.get("functionTimeout") else None)
        except (TypeError, ValueError) as exc:
            raise HostConfigError(f"host.json: {exc}") from exc
        if threshold < 1 or parallelism < 1:
            raise HostConfigError(
                "host.json: poisonBlobThreshold/maxDequeueCount and maxDegreeOfParallelism "
                "must be at least 1")
        return cls(poison_blob_threshold=threshold, blob_max_degree_of_parallelism=parallelism,
                   function_timeout=timeout,
                   route_prefix=str(http.get("routePrefix", defaults.route_prefix)).strip("/"))
