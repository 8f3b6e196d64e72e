"""Test helpers live in ``tests/support``: no test module imports another test module, so a
helper has one home and a test file can be moved or split without breaking its neighbours."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Packages whose modules are tests (collected by pytest), never helpers.
TEST_PACKAGES = ("tests.unit", "tests.integration", "tests.fidelity", "tests.e2e")


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another_test_module() -> None:
    files = sorted([*REPO.joinpath("tests").rglob("*.py"), *REPO.joinpath("bench").rglob("*.py")])
    assert len(files) > 50, "the scan found the test and bench files"
    offending = [
        f"{path.relative_to(REPO)}: {name}"
        for path in files for name in imported_modules(path)
        if name.startswith(TEST_PACKAGES)
        and name.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert offending == []
