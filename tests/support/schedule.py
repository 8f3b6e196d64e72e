"""How the parallel run shares files among its workers: a plan made from what each long file
costs, instead of xdist's hand-out by test count.

``scripts/test`` runs ``--dist loadfile``: a worker takes a whole file at a time, so a module's
stack starts once. xdist's own file scheduler hands a worker its next file as soon as two of its
tests are left, whatever they take: a worker on its last, two-minute test already holds the next
long file, while another worker idles. The run then lasts as long as its unluckiest worker.

``CostScheduling`` instead plans the files that have a cost in ``COSTS`` (seconds, as measured in
the parallel run on a busy 2-core machine) before any test runs: longest first, each to the
worker with the least planned so far (the LPT rule). A worker runs its plan in that order; when
its plan is done it takes the files without a cost (unit tests, seconds each) and, when those are
gone too, a planned file another worker has not started (the one planned last on the worker with
the most left). So estimates that are off cost balance, never a test.

At the end of the run ``report()`` prints each worker's planned and measured seconds, and the
files whose measured time strays from their cost, so ``COSTS`` can be kept true.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from xdist.scheduler import LoadFileScheduling

# Seconds a file takes in the parallel run (6 workers, busy 2-core machine), measured by the
# report at the end of that run. Files not named here cost seconds and fill the gaps at the end.
COSTS: Mapping[str, float] = {
    "tests/integration/test_tuning_timeout.py": 155,
    "tests/integration/test_status_backend_load.py": 120,
    "tests/integration/test_pipeline_outage.py": 90,
    "tests/integration/test_status_load.py": 85,
    "tests/integration/test_tuning_rehearsal.py": 85,
    "tests/integration/test_pipeline_faults.py": 80,
    "tests/integration/test_telemetry_e2e.py": 75,
    "tests/integration/test_rollout.py": 65,
    "tests/integration/test_pipeline_versions.py": 60,
    "tests/integration/test_pipeline_stack.py": 55,
    "tests/fidelity/test_monitor_samples.py": 30,
    "tests/integration/test_host.py": 30,
    "tests/integration/test_probes_stack.py": 30,
    "tests/unit/test_vision_cv.py": 30,
    "tests/integration/test_drift_stack.py": 20,
    "tests/integration/test_stack.py": 20,
    "tests/e2e/test_dashboard.py": 15,
    "tests/integration/test_main_job.py": 15,
    "tests/unit/test_status_queries.py": 15,
}

# The report names a file whose measured time is off its cost by more than this share, and a
# file without a cost that took longer than UNCOSTED_REPORT_S.
OFF_SHARE = 0.35
UNCOSTED_REPORT_S = 10.0


def plan(costs: Mapping[str, float], workers: int) -> list[list[str]]:
    """The LPT plan: the files longest first, each to the worker with the least planned so far
    (ties to the lower worker); each worker's list in the order it runs them."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    bins: list[list[str]] = [[] for _ in range(workers)]
    loads = [(0.0, index) for index in range(workers)]
    for scope in sorted(costs, key=lambda name: (-costs[name], name)):
        load, index = heapq.heappop(loads)
        bins[index].append(scope)
        heapq.heappush(loads, (load + costs[scope], index))
    return bins


class CostScheduling(LoadFileScheduling):
    """xdist's file scheduler with the choice of the next file made by ``plan``."""

    def __init__(self, config: Any, log: Any = None, *, costs: Mapping[str, float] = COSTS) -> None:
        super().__init__(config, log)
        self._costs = dict(costs)
        self._planned: dict[Any, list[str]] | None = None
        self._ran: dict[str, float] = defaultdict(float)
        self._ran_by: dict[str, Any] = {}

    # xdist calls this whenever a worker should get one more file (and the queue is not empty).
    def _assign_work_unit(self, node: Any) -> None:
        scope = self._next_scope(node)
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        self._ran_by[scope] = node
        collection = self.registered_collections[node]
        node.send_runtest_some(
            [collection.index(nodeid) for nodeid, done in work_unit.items() if not done]
        )

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        scope = self._split_scope(self.registered_collections[node][item_index])
        self._ran[scope] += duration
        super().mark_test_complete(node, item_index, duration)

    def _plan(self) -> dict[Any, list[str]]:
        """Each worker's planned files, made the first time xdist asks for work."""
        if self._planned is None:
            present = {s: self._costs[s] for s in self.workqueue if s in self._costs}
            self._planned = dict(zip(self.nodes, plan(present, len(self.nodes)), strict=True))
        return self._planned

    def _next_scope(self, node: Any) -> str:
        planned = self._plan()
        for scope in planned.get(node, []):
            if scope in self.workqueue:
                return scope
        for scope in self.workqueue:
            if scope not in self._costs:
                return scope
        # Nothing of its own and no filler left: the file planned last on the worker with the
        # most planned seconds not started yet; else any file left (one put back by a worker
        # that crashed, say).
        waiting = [[s for s in scopes if s in self.workqueue] for scopes in planned.values()]
        donor = max(waiting, key=lambda scopes: sum(self._costs[s] for s in scopes), default=[])
        return donor[-1] if donor else next(iter(self.workqueue))

    def report(self) -> list[str]:
        """What the plan expected of each worker and what it measured, then the files to
        re-measure in ``COSTS``. Empty when the run had no plan (one worker, or no file)."""
        if not self._planned or not self._ran:
            return []
        by_node: dict[Any, list[str]] = defaultdict(list)
        for scope, node in self._ran_by.items():
            by_node[node].append(scope)
        lines = [f"cost schedule: {len(self._planned)} workers, {len(self._ran_by)} files"]
        for node, planned in self._planned.items():
            ran = by_node.get(node, [])
            lines.append(
                f"  {_name(node)}: planned {sum(self._costs[s] for s in planned):.0f} s "
                f"({len(planned)} files), ran {sum(self._ran[s] for s in ran):.1f} s "
                f"({len(ran)} files, {sum(1 for s in ran if s in self._costs)} with a cost)"
            )
        off = [
            f"  {scope}: cost {self._costs[scope]:.0f} s, ran {self._ran[scope]:.1f} s"
            for scope in sorted(self._ran)
            if scope in self._costs
            and abs(self._ran[scope] - self._costs[scope]) > OFF_SHARE * self._costs[scope]
        ]
        off += [
            f"  {scope}: no cost, ran {self._ran[scope]:.1f} s"
            for scope in sorted(self._ran)
            if scope not in self._costs and self._ran[scope] > UNCOSTED_REPORT_S
        ]
        if off:
            lines.append("files to re-measure in tests/support/schedule.py COSTS:")
            lines += off
        return lines


def _name(node: Any) -> str:
    gateway = getattr(node, "gateway", None)
    return str(getattr(gateway, "id", node))
