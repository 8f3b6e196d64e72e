"""Fixtures shared by every test (the storage emulator, started once per session on free ports)
and how the tests are spread over worker processes.

Under ``--dist loadgroup`` (``scripts/test``) a worker takes one *group* at a time: by default a
whole file, so a module's stack starts once, and the whole ``tests/fidelity`` folder (its stack is
per session). A long suite is split into files, each on its own stack, so two workers can run
its parts at once. Files marked ``cost(seconds)`` (about what they take on a busy 2-core machine)
start longest first, so no long one is left to start last while the other worker idles; xdist
must not reorder them (``--no-loadscope-reorder``).
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
#: Folders whose tests share one session-scoped stack: one group, never split between workers.
ONE_GROUP_FOLDERS = ("tests/fidelity",)


def _group_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    if marker is not None:
        return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))
    path = item.path.relative_to(REPO_ROOT).as_posix()
    return next((folder for folder in ONE_GROUP_FOLDERS if path.startswith(folder + "/")), path)


@pytest.hookimpl(tryfirst=True)  # before xdist turns the group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("dist", "no") != "loadgroup":
        return
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        group = _group_of(item)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
        marker = item.get_closest_marker("cost")
        cost[group] = max(cost.get(group, 0.0), float(marker.args[0]) if marker else 0.0)
        first.setdefault(group, index)
    # Longest declared cost first; the rest (unit files: seconds each) keep collection order.
    # Every worker collects, and sorts, the same list: the order is the same on each.
    items.sort(key=lambda item: (-cost[_group_of(item)], first[_group_of(item)]))


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
