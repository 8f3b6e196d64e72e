"""Fixtures shared by every test (the storage emulator, started once per session on free ports)
and the order files run in.

``scripts/test`` runs ``--dist loadfile``: a worker takes a whole file at a time, so a module's
stack starts once. A long suite is split into files, each on its own stack, so workers can run
its parts at once. Files marked ``cost(seconds)`` (about what they take in the parallel run on a
2-core machine) run longest first, so no long file is left to start last while the others
idle; xdist must not reorder them by test count (``--no-loadscope-reorder``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import procs
from devstack.azurite import AzuriteConfig, azurite_argv

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the largest ``cost`` first; within a file, and among files without a cost
    (unit tests: seconds each), collection order. Every worker sorts the same list the same way."""
    cost: dict[Path, float] = {}
    first: dict[Path, int] = {}
    for index, item in enumerate(items):
        marker = item.get_closest_marker("cost")
        declared = float(marker.args[0]) if marker else 0.0
        cost[item.path] = max(cost.get(item.path, 0.0), declared)
        first.setdefault(item.path, index)
    items.sort(key=lambda item: (-cost[item.path], first[item.path]))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteConfig]:
    """A private Azurite (blob + queue) for the test session; stopped at the end."""
    location = tmp_path_factory.mktemp("azurite")
    cfg = AzuriteConfig(
        location=location,
        blob_port=procs.free_port(),
        queue_port=procs.free_port(),
        table_port=procs.free_port(),
    )
    _, record = procs.spawn("azurite", azurite_argv(cfg), log_path=location / "azurite.log")
    try:
        procs.wait_until(
            lambda: procs.port_open(cfg.blob_port) and procs.port_open(cfg.queue_port),
            timeout=60,
            what="Azurite",
        )
        yield cfg
    finally:
        procs.stop(record.pid)


@pytest.fixture
def repo_app() -> Any:
    """The project's ``func.FunctionApp``, loaded by path, fresh for each test.

    Host tests load other apps into this process (and put their folders on ``sys.path``), so a
    plain ``import function_app`` could find one of those instead. Fresh, because
    ``get_functions()`` remembers the names it has seen and refuses to list them twice.
    """
    path = REPO_ROOT / "function_app.py"
    spec = importlib.util.spec_from_file_location("repo_function_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app
