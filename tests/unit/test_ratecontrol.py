"""The flow-control pieces with an injected clock (no sleeps): the adaptive rate converges
against a shared sliding-window limit, honours Retry-After, the retry budget runs out in a
failure storm, and the breaker recovers after an outage."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from devstack.vision.limits import window_for_tps
from shared.analysis.ratecontrol import (
    AdaptiveRate,
    BreakerState,
    CircuitBreaker,
    FlowControl,
    RetryBudget,
    TokenBucket,
)
from tests.support.clocks import FakeClock

# --------------------------------------------------------------------------- convergence


@dataclass
class SimClient:
    flow: FlowControl
    admitted: list[float] = field(default_factory=list)
    throttled: int = 0


def simulate(clients: int, *, limit: float = 10.0, duration: float = 90.0,
             changes: tuple[tuple[float, float], ...] = (),
             seed: int = 7) -> tuple[list[SimClient], list[float], int]:
    """K saturated clients (each as fast as its limiter lets it) against one rolling-second
    limit, with 20-40 ms of latency; Retry-After as the emulator computes it (rounded up)."""
    clock, rng = FakeClock(0.0), random.Random(seed)
    window = window_for_tps(limit)
    sims = [SimClient(FlowControl(ceiling=limit, clock=clock, sleep=lambda s: None))
            for _ in range(clients)]
    events: list[tuple[float, int, str, int, float]] = []
    order = 0

    def push(at: float, kind: str, who: int, sent: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, who, sent))

    for who in range(clients):
        push(rng.uniform(0, 0.1), "ready", who)
    pending = list(changes)
    calls = 0
    while events:
        at, _, kind, who, sent = heapq.heappop(events)
        if at > duration:
            break
        clock.now = at
        while pending and pending[0][0] <= at:
            window = window_for_tps(pending.pop(0)[1])
        flow = sims[who].flow
        if kind == "ready":  # take the next slot, send at it, and be ready again
            if flow.controller is not None:
                flow.bucket.set_rate(flow.controller.rate())
            slot = at + flow.bucket.reserve()
            push(slot + rng.uniform(0.01, 0.02), "arrive", who, slot)
            push(slot, "ready", who)
        elif kind == "arrive":
            calls += 1
            wait = window.try_acquire(at)
            push(at + rng.uniform(0.01, 0.02), "ok" if wait is None else "429", who,
                 sent if wait is None else -max(1.0, math.ceil(wait)))
        elif kind == "ok":
            flow.on_answered()
            sims[who].admitted.append(at)
        else:
            sims[who].throttled += 1
            retry_after = -sent
            flow.on_throttled(at - 0.05, retry_after)
            flow.pause(retry_after)
    return sims, [t for s in sims for t in s.admitted], calls


def admitted_between(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)


def test_one_instance_holds_just_under_the_limit_without_429() -> None:
    sims, admitted, calls = simulate(1, duration=30)
    assert sims[0].throttled == 0 and calls == len(admitted)
    assert admitted_between(admitted, 0, 30) >= 0.97 * 10 * 30


# What the controller achieves in this model, as floors (see docs/pipeline.md for the bench):
# (instances, min/max per-instance goodput, share of calls answered 429)
CONVERGENCE = [(2, 0.6, 0.10), (4, 0.45, 0.20), (8, 0.25, 0.35)]


@pytest.mark.parametrize(("clients", "fairness", "throttled_share"), CONVERGENCE)
def test_instances_starting_at_the_tier_limit_converge_to_shares_of_it(
    clients: int, fairness: float, throttled_share: float
) -> None:
    sims, admitted, calls = simulate(clients, duration=90)
    late = admitted_between(admitted, 30, 90)
    assert late >= 0.8 * 10 * 60  # the shared limit stays used
    per_client = [admitted_between(s.admitted, 30, 90) for s in sims]
    assert min(per_client) / max(per_client) >= fairness  # nobody is starved
    throttled = sum(s.throttled for s in sims)
    # they no longer send at K times the limit: 44-73 % 429s with K static buckets at it
    assert throttled / calls <= throttled_share


def test_a_halved_limit_is_found_within_seconds() -> None:
    sims, admitted, _ = simulate(4, duration=60, changes=((30.0, 5.0),))
    assert admitted_between(admitted, 40, 60) >= 0.75 * 5 * 20
    assert sum(s.flow.rate() for s in sims) <= 2.0 * 5


# --------------------------------------------------------------------------- Retry-After


def test_a_throttle_decreases_once_per_overload_and_regrows() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    assert rate.rate() == 10.0
    assert rate.on_throttled(clock.now - 0.01, pause_s=0.0)
    lowered = rate.rate()
    assert lowered == pytest.approx(7.0)
    # calls already sent into the same overload (before the window could free) do not count
    clock.now += 0.5
    assert not rate.on_throttled(clock.now - 0.2)
    assert rate.rate() >= lowered
    clock.now += 60
    assert rate.rate() == 10.0  # back at the ceiling once the throttles stop


def test_gross_overload_uses_the_admitted_share_not_repeated_steps() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    rate.on_throttled(clock.now - 0.01)  # too few answers to judge: the plain 0.7 step
    assert rate.rate() == pytest.approx(7.0)
    for _ in range(6):  # calls of the same overload: counted, no second decrease
        clock.now += 0.15
        rate.on_throttled(clock.now - 0.05)
    clock.now += 0.2
    rate.on_admitted()
    before = rate.rate()
    rate.on_throttled(clock.now - 0.01)  # 1 of 8 answers admitted since the decrease
    assert rate.rate() == pytest.approx(before / 8, rel=0.01)


def test_an_idle_clients_lone_throttle_is_an_ordinary_step() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock)
    clock.now += 60  # nothing sent for a minute: no share to measure
    rate.on_throttled(clock.now - 0.01, pause_s=120)
    assert rate.rate() == pytest.approx(7.0)


def test_retry_after_pauses_everyone_only_when_longer_than_the_window() -> None:
    clock = FakeClock()
    flow = FlowControl(ceiling=100.0, clock=clock, sleep=clock.sleep)
    flow.pause(1.0)  # S1: the retried call waits; others go on at the lowered rate
    assert flow.bucket.reserve() == pytest.approx(0.0)
    flow.pause(30.0)  # a full window (F0 minute, quota): nobody sends before it
    assert flow.bucket.reserve() == pytest.approx(30.0, abs=0.05)
    static = FlowControl(ceiling=100.0, adaptive=False, clock=clock, sleep=clock.sleep)
    static.pause(1.0)  # a fixed bucket always pauses
    assert static.bucket.reserve() == pytest.approx(1.0, abs=0.05)


def test_token_bucket_rate_changes_apply_to_new_slots() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    assert [bucket.reserve() for _ in range(2)] == pytest.approx([0.0, 0.1])
    bucket.set_rate(2.0)
    assert bucket.reserve() == pytest.approx(0.2)  # the slot already promised stands
    assert bucket.reserve() == pytest.approx(0.7)


# --------------------------------------------------------------------------- retry budget


def test_the_retry_budget_is_a_share_of_recent_first_attempts() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window_s=10.0, clock=clock)
    for _ in range(50):
        budget.record_first_attempt()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 10 and budget.exhausted == 90
    clock.now += 10.0  # the window moves on: old attempts and retries expire together
    assert not budget.try_spend()
    for _ in range(5):
        budget.record_first_attempt()
    assert budget.try_spend() and not budget.try_spend()


def test_a_quiet_client_keeps_a_small_reserve() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.5, window_s=10.0, clock=clock)
    assert sum(budget.try_spend() for _ in range(10)) == 5


# --------------------------------------------------------------------------- breaker


def test_breaker_recovers_after_an_outage_with_one_probe_per_interval() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, probe_interval_s=5.0, clock=clock)
    breaker.on_failure()
    breaker.on_failure()
    breaker.on_success()  # not consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    # a 10-minute outage: calls are refused except one probe every 5 s
    probes = 0
    for _ in range(600 * 10):
        clock.now += 0.1
        if breaker.allow():
            probes += 1
            breaker.on_failure()
    assert 600 / 5 - 5 <= probes <= 600 / 5 + 1  # never more than one per interval
    assert breaker.probes == probes and breaker.opened == 1
    clock.now += 5
    assert breaker.allow() and not breaker.allow()  # one probe in flight, nothing else
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_throttle_or_4xx_probe_closes_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, probe_interval_s=1.0, clock=clock)
    breaker.on_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.on_neutral()  # the service answered: it is up
    assert breaker.closed
