"""The deployed set is locked: requirements.txt pins exactly what requirements.in resolves to,
and the venv the tests run in has exactly those versions (so what is tested is what deploys)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _lines(name: str) -> list[str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in _lines("requirements.txt"):
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_every_deployed_requirement_is_pinned_within_its_range() -> None:
    pins = _lock()
    wanted = [Requirement(line) for line in _lines("requirements.in")]
    assert len(wanted) >= 5  # the design card's packages at least
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in requirements.in but not locked: run scripts/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside {req.specifier}: run scripts/lock")


def test_the_tests_run_on_the_locked_versions() -> None:
    pins = _lock()
    assert len(pins) >= 20  # the closure, not just the top level
    installed = {name: importlib.metadata.version(name) for name in pins}
    assert {n: v for n, v in installed.items() if v != pins[n]} == {}
