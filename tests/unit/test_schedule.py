"""The parallel run's file plan (tests/support/schedule.py), driven by a simulated run: fake
workers that take the indices the scheduler sends them and report each test done after its
simulated seconds, the same calls xdist's controller makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.support.schedule import COSTS, CostScheduling, plan

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(eq=False)
class FakeWorker:
    """What the scheduler sees of a worker: it is sent indices and may be told to shut down."""

    name: str
    queue: list[int] = field(default_factory=list)
    clock: float = 0.0
    shutting_down: bool = False

    @property
    def gateway(self) -> SimpleNamespace:
        return SimpleNamespace(id=self.name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _config(workers: int) -> Any:
    values = {"tx": [f"{workers}*popen"], "dist": "loadfile"}
    option = SimpleNamespace(loadscopereorder=True)
    return SimpleNamespace(getvalue=values.__getitem__, option=option)


def _simulate(
    scheduler: Any, workers: int, files: dict[str, list[float]]
) -> tuple[float, dict[str, str]]:
    """Run ``files`` (name -> seconds of each test) on ``workers`` fake workers; return when the
    last one finished and which worker ran each file."""
    collection = [f"{name}::test_{i}" for name, tests in files.items() for i in range(len(tests))]
    seconds = [s for tests in files.values() for s in tests]
    nodes = [FakeWorker(f"gw{i}") for i in range(workers)]
    for node in nodes:
        scheduler.add_node(node)
    for node in nodes:
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    ran_by: dict[str, str] = {}
    done = 0
    while done < len(collection):
        busy = [node for node in nodes if node.queue]
        assert busy, f"{len(collection) - done} tests were never sent to a worker"
        node = min(busy, key=lambda n: (n.clock, n.name))
        index = node.queue.pop(0)
        node.clock += seconds[index]
        ran_by.setdefault(collection[index].split("::")[0], node.name)
        scheduler.mark_test_complete(node, index, seconds[index])
        done += 1
    return max(node.clock for node in nodes), ran_by


# Two long files with a long last test, then shorter ones: xdist hands a worker its next file
# when two tests are left, so a worker on the long last test already holds the next file.
FILES: dict[str, list[float]] = {
    "tests/integration/test_long.py": [5, 120],
    "tests/integration/test_longer.py": [5, 5, 130],
    "tests/integration/test_mid.py": [30, 30, 20],
    "tests/integration/test_mid2.py": [40, 30],
    "tests/integration/test_short.py": [20, 20],
    "tests/integration/test_short2.py": [30],
    **{f"tests/unit/test_u{i}.py": [1.0, 1.0, 1.0] for i in range(8)},
}
MEASURED = {name: sum(tests) for name, tests in FILES.items() if "integration" in name}


def test_the_plan_is_longest_first_each_to_the_least_loaded_worker() -> None:
    assert plan({"a": 5, "b": 4, "c": 3, "d": 3, "e": 3}, 2) == [["a", "d"], ["b", "c", "e"]]
    assert plan({}, 3) == [[], [], []]
    with pytest.raises(ValueError, match="at least 1"):
        plan({"a": 1}, 0)


def test_planned_files_finish_sooner_than_xdists_hand_out_and_near_the_bound() -> None:
    workers = 3
    ours, ran_by = _simulate(CostScheduling(_config(workers), costs=MEASURED), workers, FILES)
    theirs, _ = _simulate(LoadFileScheduling(_config(workers)), workers, FILES)
    total = sum(sum(tests) for tests in FILES.values())
    bound = max(total / workers, *MEASURED.values())
    assert len(ran_by) == len(FILES)  # every file ran, on one worker
    assert ours < theirs, (ours, theirs)
    assert ours <= bound * 4 / 3, (ours, bound)  # LPT's guarantee, with the filler on top
    # The two long files on different workers, each started first.
    assert ran_by["tests/integration/test_long.py"] != ran_by["tests/integration/test_longer.py"]


def test_a_worker_done_with_its_plan_takes_the_files_without_a_cost() -> None:
    # Costs that are badly off: the plan thinks test_mid is long, so its worker finishes early
    # and must take over work the plan gave others.
    wrong = {**MEASURED, "tests/integration/test_mid.py": 400}
    workers = 3
    _, ran_by = _simulate(CostScheduling(_config(workers), costs=wrong), workers, FILES)
    mids = ran_by["tests/integration/test_mid.py"]
    took = [name for name, worker in ran_by.items() if worker == mids]
    assert len(took) > 1, took  # it did not idle after its one planned file
    assert len(ran_by) == len(FILES)


def test_with_no_filler_left_a_worker_takes_the_last_unstarted_file_of_the_busiest_plan() -> None:
    files = {"tests/a.py": [10.0], "tests/b.py": [10.0] * 6, "tests/c.py": [5.0] * 5,
             **{f"tests/{n}.py": [10.0, 10.0] for n in "defg"}}
    # badly off: a is thought long, so its worker is planned nothing else and idles from 10 s
    wrong = {"tests/a.py": 400.0, "tests/b.py": 60.0, "tests/c.py": 25.0,
             **{f"tests/{n}.py": 20.0 for n in "defg"}}
    assert plan(wrong, 3) == [["tests/a.py"], ["tests/b.py", "tests/f.py"],
                              ["tests/c.py", "tests/d.py", "tests/e.py", "tests/g.py"]]
    finished, ran_by = _simulate(CostScheduling(_config(3), costs=wrong), 3, files)
    gw0 = [name for name, worker in ran_by.items() if worker == "gw0"]  # in the order run
    assert gw0[:2] == ["tests/a.py", "tests/g.py"]  # g: the last unstarted file of gw2's plan
    assert len(ran_by) == len(files)
    assert finished <= 70, finished  # gw2 running its whole plan would end at 85 s


def test_the_report_names_each_worker_and_the_files_that_strayed_from_their_cost() -> None:
    wrong = {**MEASURED, "tests/integration/test_short.py": 5}
    scheduler = CostScheduling(_config(2), costs=wrong)
    _simulate(scheduler, 2, FILES)
    lines = scheduler.report()
    assert lines[0] == f"cost schedule: 2 workers, {len(FILES)} files"
    assert sum(line.startswith("  gw") for line in lines) == 2
    assert "  tests/integration/test_short.py: cost 5 s, ran 40.0 s" in lines
    assert not any("test_long.py" in line for line in lines[3:])  # measured as costed
    assert CostScheduling(_config(2)).report() == []  # no run, no report


def test_every_cost_names_a_test_file_of_the_suite() -> None:
    assert len(COSTS) >= 10
    missing = [name for name in COSTS if not (REPO_ROOT / name).is_file()]
    assert missing == []
    assert all(Path(name).name.startswith("test_") and cost > 0 for name, cost in COSTS.items())
