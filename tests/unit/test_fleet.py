"""The fleet: membership from heartbeats, one learned limit, slots on one grid, probes, and the
fallback when storage fails. Injected clocks and an in-memory store; no sleeps."""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.analysis.fleet import (
    SETTLE_MARGIN_S,
    STALE_INTERVALS,
    BlobHeartbeatStore,
    Fleet,
    FleetRunner,
    Heartbeat,
    Slot,
)
from shared.analysis.ratecontrol import FlowControl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fleet_sim  # the benchmarks' own folder, put on sys.path above

START = 1_000_000.0


class Clock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(count: int, clock: Clock, store: fleet_sim.MemoryStore, *, prefix: str = "m",
         **options: Any) -> list[FleetRunner]:
    runners = [FleetRunner(Fleet(10.0, clock=clock, instance=f"{prefix}{i}", **options), store)
               for i in range(count)]
    for runner in runners:
        runner.beat_once()
    return runners


def settle(runners: list[FleetRunner], clock: Clock) -> None:
    clock.t += runners[0].fleet.interval_s + SETTLE_MARGIN_S
    for runner in runners:
        runner.beat_once()


def force_cut(fleet: Fleet, clock: Clock) -> None:
    assert fleet.on_throttled(fleet.reserve()) is False  # the first 429: this member thins
    clock.t += 2.1  # past the hold
    assert fleet.on_throttled(fleet.reserve()) is True  # throttled even at half: cut


def test_members_are_counted_from_fresh_heartbeats_and_expire() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(3, clock, store)
    settle(runners, clock)
    assert [r.fleet.members() for r in runners] == [3, 3, 3]
    runners[2].stop()  # a graceful stop deletes its heartbeat
    clock.t += 1
    runners[0].beat_once()
    assert runners[0].fleet.members() == 2
    # m1 crashes: no delete, its heartbeat only goes stale
    clock.t += STALE_INTERVALS * 2.0 + 0.1
    runners[0].beat_once()
    assert runners[0].fleet.members() == 1
    assert len(store.beats) == 2  # the crashed one is still there, just not counted


def test_a_graceful_leave_hands_its_slots_over_at_one_instant() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(3, clock, store)
    settle(runners, clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the leaver waits; meanwhile the others list it
        slept.append(seconds)
        runners[0].beat_once()
        clock.t += 1.0
        runners[1].beat_once()
        assert [r.fleet.members() for r in runners[:2]] == [3, 3]  # not yet: still counted
        clock.t += seconds - 1.0

    runners[2].leave(sleep=sleep)
    assert slept == [pytest.approx(2.0 + SETTLE_MARGIN_S)]
    # at the announced instant both drop it, each without another listing
    assert [r.fleet.members() for r in runners[:2]] == [2, 2]
    assert sorted(store.beats) == ["m0", "m1"]  # and its heartbeat is gone
    slots = sorted(r.fleet.reserve().at for r in runners[:2] for _ in range(2))
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(slots)}
    assert gaps == {round(1 / 9.7, 6)}  # the two share the whole grid at once


def test_a_lone_member_leaves_at_once_and_a_second_stop_does_nothing() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    (runner,) = make(1, clock, store)
    settle([runner], clock)
    slept: list[float] = []
    runner.leave(sleep=slept.append)
    assert slept == [] and store.beats == {}
    runner.leave(sleep=slept.append)  # the exit hook after a graceful stop
    assert slept == [] and store.beats == {}


def test_slots_of_the_members_interleave_on_one_evenly_spaced_grid() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(4, clock, store)
    settle(runners, clock)
    slots = sorted(r.fleet.reserve().at for r in runners for _ in range(5))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 20
    assert min(gaps) == pytest.approx(max(gaps)) == pytest.approx(1 / 9.7)  # 10/s less 3 %
    assert runners[0].fleet.rate() == pytest.approx(9.7 / 4)


def test_a_newcomer_waits_until_every_member_counts_it_at_the_same_instant() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    old = make(2, clock, store)
    settle(old, clock)
    new = make(1, clock, store, prefix="new")[0]
    joined = clock.t
    for runner in old:
        runner.beat_once()
    assert [r.fleet.members() for r in old] == [2, 2]  # listed, not counted yet
    slot = new.fleet.reserve()
    assert slot.at >= joined + new.fleet.interval_s + SETTLE_MARGIN_S
    clock.t = joined + new.fleet.interval_s + SETTLE_MARGIN_S
    assert [r.fleet.members() for r in (*old, new)] == [3, 3, 3]


def test_before_its_first_listing_a_member_waits_instead_of_pacing_alone() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    fleet = Fleet(10.0, clock=clock, instance="new")
    flow = FlowControl(ceiling=10.0, fleet=fleet, clock=clock, sleep=lambda s: None)
    assert fleet.fresh()  # pending: its first heartbeat is on the way
    assert fleet.reserve().at >= START + fleet.interval_s + SETTLE_MARGIN_S
    assert flow.rate() == pytest.approx(9.7)
    store.failing = True
    assert FleetRunner(fleet, store).beat_once() is False
    assert not fleet.fresh()  # storage down from the start: the local controller paces


def test_a_cut_is_decided_once_and_adopted_by_members_that_were_throttled() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    a, b, c = make(3, clock, store)
    settle([a, b, c], clock)
    clock.t += 2
    force_cut(a.fleet, clock)
    assert a.fleet.limit == 5.0
    assert a.fleet.on_throttled(a.fleet.reserve()) is False  # within the hold: one reaction
    b.fleet.on_throttled(Slot(clock.t - 5))  # b met throttling too (a call of the old grid)
    a.beat_once()
    clock.t += 0.5
    b.beat_once()
    c.beat_once()
    assert b.fleet.limit == 5.0  # adopted the newest decision
    assert c.fleet.limit == 10.0  # never throttled: a lone 429 elsewhere does not slow it


def test_a_raised_limit_is_adopted_by_everyone() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    a, b = make(2, clock, store, probe_base_s=2.0)
    settle([a, b], clock)
    clock.t += 2
    a.fleet.on_throttled(a.fleet.reserve())
    b.fleet.on_throttled(b.fleet.reserve())
    clock.t += 2.1
    a.fleet.on_throttled(a.fleet.reserve())
    b.fleet.on_throttled(b.fleet.reserve())  # the same instant: the id settles who decided
    for runner in (a, b, a):
        runner.beat_once()
    assert a.fleet.limit == b.fleet.limit == 5.0
    clock.t += 2.0
    probes = [(r, s) for r in (a, b) for s in [r.fleet.reserve()] if s.probe]
    assert len(probes) == 1  # the member that made the newest decision probes it
    prober, probe = probes[0]
    other = b if prober is a else a
    assert prober.fleet.on_admitted(probe) is False  # one admitted probe: confirm first
    assert prober.fleet.limit == 5.0
    clock.t += 0.5
    confirm = prober.fleet.reserve()
    assert confirm.probe
    assert prober.fleet.on_admitted(confirm) is True
    assert prober.fleet.limit == 10.0
    prober.beat_once()
    other.beat_once()
    assert other.fleet.limit == 10.0


def test_probes_only_below_the_ceiling_and_back_off_when_they_fail() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    (runner,) = make(1, clock, store, probe_base_s=2.0, probe_max_s=8.0)
    settle([runner], clock)
    fleet = runner.fleet
    clock.t += 10
    assert not any(fleet.reserve().probe for _ in range(50))  # at the ceiling: never
    force_cut(fleet, clock)
    assert fleet.limit == 5.0
    intervals = []
    last = clock.t
    for _ in range(4):
        while True:
            clock.t += 0.05
            slot = fleet.reserve()
            if slot.probe:
                break
        intervals.append(round(clock.t - last))
        last = clock.t
        fleet.on_throttled(slot)  # the limit did not rise: one 429, no cut
        assert fleet.limit == 5.0
    assert intervals == [2, 2, 4, 8]


def test_a_probe_goes_half_way_between_two_slots_of_the_fleet() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    (runner,) = make(1, clock, store, probe_base_s=2.0)
    settle([runner], clock)
    clock.t += 2
    force_cut(runner.fleet, clock)
    clock.t += 2.01
    slot = runner.fleet.reserve()
    assert slot.probe
    rate = 5.0 * 0.97
    assert (slot.at * rate) % 1 == pytest.approx(0.5, abs=1e-6)


def test_a_lone_429_thins_one_member_and_most_members_thinning_cut_the_limit() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(4, clock, store)
    settle(runners, clock)
    clock.t += 2
    a = runners[0].fleet
    a.on_throttled(a.reserve())
    assert a.rate() == pytest.approx(9.7 / 8) and a.limit == 10.0
    own = [round(a.reserve().at * 9.7) for _ in range(6)]
    assert all(n % 4 == 0 for n in own)  # still its own slots of the same grid...
    assert all(b - x == 8 for x, b in itertools.pairwise(own))  # ...every other one
    for runner in runners:
        runner.beat_once()
    assert [r.fleet.limit for r in runners] == [10.0] * 4  # one of four thinning: no cut
    clock.t += 4  # the thinning ends
    assert a.rate() == pytest.approx(9.7 / 4)
    for fleet in (runners[1].fleet, runners[2].fleet):
        fleet.on_throttled(fleet.reserve())
    for runner in (runners[1], runners[2], runners[1]):  # each lists the other's thinning
        runner.beat_once()
    assert [r.fleet.limit for r in runners] == [10.0, 5.0, 5.0, 10.0]  # two of four: cut


def test_malformed_heartbeats_are_ignored() -> None:
    good = Heartbeat("x", 1.0, 2.0, 10.0, 0.0, 0.0, leaving_at=9.5).to_fields()
    assert Heartbeat.from_fields(good) == Heartbeat("x", 1.0, 2.0, 10.0, 0.0, 0.0,
                                                    leaving_at=9.5)
    bad = [{}, {**good, "limit": "-1"}, {**good, "beat_at": "nan"}, {**good, "limit": "ten"}]
    assert [Heartbeat.from_fields(fields) for fields in bad] == [None] * 4


def test_storage_failure_falls_back_to_the_local_controller_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    (runner,) = make(1, clock, store)
    settle([runner], clock)
    flow = FlowControl(ceiling=10.0, fleet=runner.fleet, clock=clock, sleep=lambda s: None)
    assert flow.rate() == pytest.approx(9.7)  # the fleet's share
    store.failing = True
    with caplog.at_level(logging.WARNING, logger="shared.analysis.fleet"):
        for _ in range(5):
            clock.t += 2
            assert runner.beat_once() is False
    assert runner.fleet.failures == 5
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert not runner.fleet.fresh()
    assert flow.rate() == pytest.approx(9.8)  # the local controller (2 % headroom)
    flow.acquire()
    flow.on_throttled(clock.t, 1.0)
    assert flow.controller is not None and flow.controller.throttles == 1  # local, not fleet
    store.failing = False
    clock.t += 2
    assert runner.beat_once() is True
    assert runner.fleet.fresh()


def test_flow_control_sends_in_fleet_slots_and_feeds_the_fleet() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(2, clock, store)
    settle(runners, clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds

    flow = FlowControl(ceiling=10.0, fleet=runners[0].fleet, clock=clock, sleep=sleep)
    sent = []
    for _ in range(3):
        flow.acquire()
        sent.append(clock.t)
        flow.on_answered()
    assert [round(b - a, 6) for a, b in itertools.pairwise(sent)] == [
        round(2 / 9.7, 6)] * 2  # every second slot of the grid
    clock.t += 2
    flow.acquire()
    flow.on_throttled(clock.t, 1.0)
    assert runners[0].fleet.limit == 10.0  # one 429: this member thins, the limit stays
    assert flow.rate() == pytest.approx(9.7 / 4)
    assert flow.controller is not None and flow.controller.throttles == 0


def test_a_slot_of_an_old_grid_is_re_reserved_after_the_sleep() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(2, clock, store)
    settle(runners, clock)
    fleet = runners[0].fleet

    def sleep(seconds: float) -> None:
        clock.t += seconds
        if fleet.rate() == pytest.approx(9.7 / 2):
            fleet.on_throttled(Slot(clock.t))  # another thread's call was throttled meanwhile

    clock.t += 2
    flow = FlowControl(ceiling=10.0, fleet=fleet, clock=clock, sleep=sleep)
    flow.acquire()
    assert fleet.rate() == pytest.approx(9.7 / 4)
    n = round(clock.t * 9.7)
    assert n == pytest.approx(clock.t * 9.7, abs=1e-6) and n % 4 == 0  # a thinned own slot


def test_a_caller_waiting_for_a_far_slot_takes_the_new_grid_when_a_member_leaves() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    runners = make(8, clock, store)
    settle(runners, clock)
    fleet = runners[0].fleet
    for r in runners[1:]:  # the others leave, announced for 2.5 s from now
        r.fleet.leave()
        r.beat_once()
    runners[0].beat_once()
    leaves_at = clock.t + 2.0 + SETTLE_MARGIN_S
    steps: list[float] = []

    def sleep(seconds: float) -> None:
        steps.append(seconds)
        clock.t += seconds

    flow = FlowControl(ceiling=10.0, fleet=fleet, clock=clock, sleep=sleep)
    for _ in range(3):  # three own slots of eight members: the third is ~2.5 s away
        flow.acquire()
        flow.on_answered()
    assert fleet.members() == 8
    clock.t = leaves_at - 0.5
    flow.acquire()  # its slot would be ~0.8 s ahead on the old grid
    assert fleet.members() == 1
    assert clock.t - leaves_at < 0.25 + 1 / 9.7  # it looked within a check, then took a new slot
    assert max(steps) <= 0.25  # it never slept more than one check at a time


def test_a_lone_member_does_not_thin_and_cuts_on_a_second_429() -> None:
    clock, store = Clock(), fleet_sim.MemoryStore()
    (runner,) = make(1, clock, store)
    settle([runner], clock)
    fleet = runner.fleet
    clock.t += 2
    assert fleet.on_throttled(fleet.reserve()) is False
    assert fleet.rate() == pytest.approx(9.7)  # alone: halving would halve the fleet
    runner.beat_once()
    assert fleet.limit == 10.0  # no majority rule for one member
    clock.t += 2.1
    assert fleet.on_throttled(fleet.reserve()) is True
    assert fleet.limit == 5.0


@pytest.mark.parametrize("k", [2, 4, 8])
def test_simulated_instances_converge_to_fair_shares_of_the_limit(k: int) -> None:
    r = fleet_sim.simulate(spans=[(0.0, 40.0)] * k, limits=[(0.0, 10.0)])
    assert sum(r.ok) > 0
    assert r.goodput >= 0.95
    assert r.share_429 <= 0.02
    assert r.fairness >= 0.9


def test_simulated_join_then_leave_keeps_the_limit_full_without_429s() -> None:
    r = fleet_sim.simulate(**fleet_sim.scenarios()["2 + 2 join, then leave"])
    assert r.events == [20.0, 40.0] and len(r.settled()) == 40
    assert sum(r.ok) > 0
    assert r.settled_goodput >= 0.95 and r.goodput >= 0.93  # a hand-over costs < 2.5 s of slots
    assert r.share_429 <= 0.02
    assert r.settled_fairness >= 0.9
    assert r.per_instance[2] > 0 and r.per_instance[3] > 0


def test_simulated_halving_is_learned_once_for_the_fleet() -> None:
    r = fleet_sim.simulate(**fleet_sim.scenarios()["K=4, limit halves"])
    assert [f.limit for f in r.fleets] == [5.0] * 4
    assert sum(f.cuts for f in r.fleets) <= 4  # one reaction per member at most
    late = r.ok[25:]
    assert sum(late) >= 0.95 * 5 * len(late)


def test_simulated_restored_limit_is_found_within_ten_seconds() -> None:
    r = fleet_sim.simulate(**fleet_sim.scenarios()["K=4, limit doubles"])
    assert [f.limit for f in r.fleets] == [10.0] * 4
    after = next(s for s in range(20, 40) if sum(r.ok[s:s + 5]) >= 0.95 * 50)
    assert after - 20 <= 10


class FakeContainer:
    def __init__(self) -> None:
        self.exists = False
        self.blobs: dict[str, dict[str, str]] = {}

    def upload_blob(self, name: str, data: bytes, *, overwrite: bool,
                    metadata: dict[str, str]) -> object:
        if not self.exists:
            raise ResourceNotFoundError("ContainerNotFound")
        self.blobs[name] = metadata
        return None

    def list_blobs(self, *, name_starts_with: str, include: list[str]) -> list[Any]:
        assert include == ["metadata"]

        class Blob:
            def __init__(self, metadata: dict[str, str]) -> None:
                self.metadata = metadata

        return [Blob(m) for n, m in self.blobs.items() if n.startswith(name_starts_with)]

    def delete_blob(self, blob: str) -> None:
        if blob not in self.blobs:
            raise ResourceNotFoundError("BlobNotFound")
        del self.blobs[blob]

    def create_container(self) -> object:
        self.exists = True
        return None


def test_the_blob_store_keeps_heartbeats_as_metadata_and_creates_its_container() -> None:
    container = FakeContainer()
    store = BlobHeartbeatStore(container)
    store.put("m0", {"instance": "m0"})
    assert container.blobs == {"fleet/vision/m0": {"instance": "m0"}}
    container.blobs["other/thing"] = {"instance": "no"}
    assert store.list() == [{"instance": "m0"}]
    store.delete("m0")
    store.delete("m0")  # already gone: fine
    assert store.list() == []
