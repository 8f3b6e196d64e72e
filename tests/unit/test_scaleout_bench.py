"""The scale-out bench's arithmetic: goodput share, fairness, the settled seconds a run with
changes is judged on and time to re-converge, computed from hand-made per-second series (the
bench's own numbers must not be taken on trust)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _targets  # the benchmarks' own folder, put on sys.path above
import scaleout_bench as bench


def make_run(ok: list[int], throttled: list[int], *, limit: float = 10.0,
             changes: tuple[tuple[float, float], ...] = ()) -> bench.Run:
    seconds = len(ok)
    scenario = bench.Scenario("test", (bench.Instance(0, seconds), bench.Instance(0, seconds)),
                              changes=changes)
    run = bench.Run(scenario, "ours", float(seconds), [limit] * seconds,
                    calls=[o + t for o, t in zip(ok, throttled, strict=True)],
                    throttled=list(throttled))
    # two instances: the first gets 60 % of every second's successes
    first = [s + 0.1 for s, n in enumerate(ok) for _ in range(round(0.6 * n))]
    second = [s + 0.5 for s, n in enumerate(ok) for _ in range(n - round(0.6 * n))]
    run.successes = [first, second]
    run.total_calls, run.total_429 = sum(run.calls), sum(throttled)
    return run


def test_goodput_share_fairness_and_429_share() -> None:
    run = make_run([10] * 20, [0] * 18 + [5, 5])
    assert run.goodput_share == 1.0
    assert run.share_429 == 10 / 210
    assert run.fairness == pytest.approx(4 / 6)
    assert run.calls_per_success == 210 / 200


def test_reconverge_is_the_first_window_meeting_both_targets() -> None:
    ok = [2, 4, 6, 10, 10, 10, 10, 10, 10, 10] + [5] * 5 + [10] * 15
    throttled = [8, 6, 4] + [0] * 27
    run = make_run(ok, throttled, changes=((10.0, 10.0),))
    assert run.reconverge() == [3, 5]  # from the start: s=3; after the change at 10: s=15


def test_reconverge_says_never_when_no_window_qualifies() -> None:
    run = make_run([9] * 20, [1] * 20)  # 90 % goodput, 10 % 429s throughout
    assert run.reconverge() == [None]


def test_the_pacing_floor_is_zero_for_one_instance_and_not_for_eight() -> None:
    assert bench.even_pacing_429_share(1, 0.98, seconds=50) == 0.0
    assert bench.even_pacing_429_share(8, 0.95, seconds=50) > 0.02


def test_fairness_weighs_each_instance_against_its_fair_share_while_it_ran() -> None:
    # 2 instances all along, 2 more in seconds 10-20 of 30: an equal split gives the first two
    # 5/s, 2.5/s, 5/s and the joiners 2.5/s while they run
    scenario = bench.Scenario("join", (bench.Instance(0, 30), bench.Instance(0, 30),
                                       bench.Instance(10, 20), bench.Instance(10, 20)))
    run = bench.Run(scenario, "ours", 30.0, [10.0] * 30)
    run.successes = [[0.5] * 125, [0.5] * 125, [10.5] * 25, [10.5] * 20]
    spans = [(i.start_s, i.stop_s) for i in scenario.instances]
    shares = _targets.fair_shares(run.limit, spans)
    assert [sum(s) for s in shares] == [125.0, 125.0, 25.0, 25.0]
    assert shares[2][9] == 0.0 and shares[2][10] == 2.5 and shares[0][10] == 2.5
    assert run.fairness == pytest.approx(0.8)  # 20/25 against 125/125


def test_a_run_with_changes_is_judged_on_its_settled_seconds() -> None:
    # 30 s, a change at 10: seconds 10-19 are the re-converge allowance, 0-9 and 20-29 count
    ok = [10] * 10 + [0] * 10 + [9] * 10
    throttled = [0] * 10 + [10] * 10 + [1] * 10
    run = make_run(ok, throttled, changes=((10.0, 5.0),))
    assert run.settled() == [*range(10), *range(20, 30)]
    assert run.goodput_share == pytest.approx(190 / 300)  # the whole run, shown beside it
    assert run.settled_goodput == pytest.approx(190 / 200)
    assert run.settled_429 == pytest.approx(10 / 200)
    assert bench.verdict(run)["goodput"] and not bench.verdict(run)["429"]
    steady = make_run(ok, throttled)  # no change: every second counts
    assert steady.settled() == list(range(30))
    assert steady.settled_goodput == steady.goodput_share
    assert not bench.verdict(steady)["goodput"]


def test_settled_targets_fail_when_no_second_is_settled_or_nothing_was_sent() -> None:
    # 15 s with a change at 5: no second is outside the allowance, so nothing can be judged
    short = make_run([10] * 15, [0] * 15, changes=((5.0, 10.0),))
    short.scenario = bench.Scenario("short", short.scenario.instances, changes=((5.0, 10.0),),
                                    initial_tps=5.0)
    assert short.settled() == []
    assert {k for k, ok in bench.verdict(short).items() if not ok} >= {"goodput", "429",
                                                                      "fairness"}
    silent = make_run([0] * 20, [0] * 20)  # every second settled, no call sent: 0 % 429s
    assert silent.settled_429 == 0.0 and not bench.verdict(silent)["429"]


def test_a_start_below_the_limit_is_a_change_and_seconds_from_events_are_whole() -> None:
    assert _targets.settled_seconds(30, [0.0, 13.3]) == [10, 11, 12, 24, 25, 26, 27, 28, 29]
    scenario = bench.Scenario("d", (bench.Instance(0, 30),), changes=((15.0, 10.0),),
                              initial_tps=5.0)
    run = bench.Run(scenario, "ours", 30.0, [5.0] * 15 + [10.0] * 15)
    assert run.events() == [0.0, 15.0]
    assert run.settled() == [10, 11, 12, 13, 14, 25, 26, 27, 28, 29]
