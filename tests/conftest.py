"""Fixtures shared by every test (the storage emulator, started once per session on free ports)
and how the parallel run shares its files among workers.

``scripts/test`` runs ``--dist loadfile``: a worker takes a whole file at a time, so a module's
stack starts once. A long suite is split into files, each on its own stack, so workers can run
its parts at once. Which worker runs which file is planned from what each long file costs
(``tests/support/schedule.py``); the plan and what it measured are printed at the end.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import procs
from devstack.azurite import AzuriteConfig, azurite_argv
from tests.support.schedule import CostScheduling

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the files planned by their cost; other modes as xdist has them."""
    if config.getvalue("dist") != "loadfile":
        return None
    return CostScheduling(config, log)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.pluginmanager.getplugin("dsession")
    scheduler = getattr(session, "sched", None)
    if isinstance(scheduler, CostScheduling):
        for line in scheduler.report():
            terminalreporter.write_line(line)


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
