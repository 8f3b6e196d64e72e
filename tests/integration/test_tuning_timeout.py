"""Rehearsal of the tuning review on the local twin, scenario 2 of test_tuning_rehearsal.py (on
a stack of its own, so another worker runs the other scenarios meanwhile): real uploads, the
real host and pipeline, the Vision emulator's fault model, telemetry through the exporter into
the Monitor emulator, and the review run over HTTP exactly as in Azure.

Failures hang to a 30 s timeout while every success is quick → a lower timeout, inside the band
max(3 x the successes' p99, p99 + 2 s) and at most half the current value; applied (one step per
review) it cuts the p95 analysis time of the same stream by at least 40 % against the stream
before tuning, and the next review keeps it.

Reviews are called on demand; every wait polls with a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from shared.monitoring.logsquery import LogsQueryRunner
from tests.support.polling import wait_for
from tests.support.stack import PipelineStack
from tests.support.tuning import (
    analysed_once,
    changes,
    kpi_p95,
    query_runner,
    reset_monitor,
    review,
    start_stack,
    stream,
    tuning_state,
    wait_overlay_in_force,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineStack]:
    with start_stack(tmp_path_factory.mktemp("tuning-timeout-stack")) as s:
        yield s


@pytest.fixture(scope="module")
def runner(stack: PipelineStack) -> LogsQueryRunner:
    return query_runner(stack)


def test_2_hung_calls_lower_the_timeout_and_cut_p95(stack: PipelineStack,
                                                    runner: LogsQueryRunner) -> None:
    reset_monitor(stack)
    faults = {"seed": 11, "timeout": {"rate": 0.2, "hold_s": 35, "then": "close"}}
    stack.set_faults(faults)
    before, a0, a1 = stream(stack, runner, "hung-a", 20)
    p95_before = kpi_p95(runner, a0, a1)

    first = review(stack, "apply")
    rec = changes(first)["vision_timeout_seconds"]
    p99_s = rec["evidence"]["success_p99_ms"] / 1000
    band = max(5.0, 3 * p99_s, p99_s + 2)
    assert rec["recommended"] == pytest.approx(band, abs=0.01), rec
    assert rec["recommended"] <= 15, rec  # the successes are far below the 30 s timeout
    assert [(c["old"], c["new"]) for c in first["review"]["applied"]] == [(30.0, 15.0)]
    second = review(stack, "apply")  # the same evidence: one more bounded step
    target = max(7.5, rec["recommended"])
    [applied] = second["review"]["applied"]
    assert applied["tunable"] == "vision_timeout_seconds"
    assert applied["new"] == pytest.approx(target, abs=0.6)
    assert tuning_state(stack)["effective"]["vision_timeout_seconds"] == applied["new"]
    wait_overlay_in_force(stack)

    stack.set_faults(faults)  # the same stream again, same seed
    after, b0, b1 = stream(stack, runner, "hung-b", 20)
    p95_after = kpi_p95(runner, b0, b1)
    assert p95_after <= 0.6 * p95_before, (p95_before, p95_after)
    analysed_once(stack, before)
    analysed_once(stack, after)

    verdict = review(stack, "apply")  # judges both changes against the traffic since
    assert verdict["review"]["judged"] and verdict["review"]["reverts"] == []
    overlay = tuning_state(stack)["overlay"]
    # both changes kept (the review may apply a further step from the same evidence: pending)
    assert [c["verdict"] for c in overlay["changes"][:2]] == ["kept", "kept"]
    # every change is audited: a custom event each, and the review that made it is stored
    def changed() -> list[dict[str, Any]]:
        rows = runner.run("tuning_changes", timespan=timedelta(hours=1)).rows
        return [r for r in rows if r["Event"] == "TuningChanged"]

    wait_for(lambda: len(changed()) == len(overlay["changes"]), timeout=30,
             what="one TuningChanged event per applied change")
    assert {r["Tunable"] for r in changed()} == {"vision_timeout_seconds"}
    for change in overlay["changes"][:2]:
        path = f"tuning/reviews/{change['review_id']}.json"
        stored = json.loads(stack.container("status").download_blob(path).readall())
        assert change["new"] in [c["new"] for c in stored["applied"]]
