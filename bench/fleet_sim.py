"""A discrete-event simulation of K instances sharing one Vision limit through
``shared.analysis.fleet``.

The real ``Fleet`` and ``FleetRunner`` classes (injected wall clock, an in-memory heartbeat
store) against the Vision emulator's own sliding-log window (``devstack.vision.limits``): each
instance has ``threads`` callers that reserve a slot, sleep until it, take a new one if the grid
moved meanwhile (as ``FlowControl.acquire`` does), arrive at the service with a little jitter
and retry a 429 after its whole-second ``Retry-After``. No processes, no sleeps: 40 simulated
seconds of 8 instances take well under a second, which is what made choosing the headroom,
the decrease factor and the probing schedule cheap before any real bench run.
"""

from __future__ import annotations

import heapq
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _targets  # bench/ itself: this file's folder is on sys.path

from devstack.vision.limits import window_for_tps
from shared.analysis.fleet import Fleet, FleetRunner, Slot
from shared.analysis.ratecontrol import REGRID_CHECK_S

_EPOCH = 1_000_000.0  # simulated wall-clock start of the run


class SimClock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class MemoryStore:
    """``HeartbeatStore`` in memory; ``failing`` makes every call raise (storage down)."""

    def __init__(self) -> None:
        self.beats: dict[str, dict[str, str]] = {}
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise ConnectionError("storage unreachable")

    def put(self, instance: str, fields: dict[str, str]) -> None:
        self._check()
        self.beats[instance] = dict(fields)

    def list(self) -> list[dict[str, str]]:
        self._check()
        return [dict(v) for v in self.beats.values()]

    def delete(self, instance: str) -> None:
        self._check()
        self.beats.pop(instance, None)


@dataclass(slots=True)
class SimResult:
    seconds: int
    allowed: float
    ok: list[int]  # per second
    throttled: list[int]
    per_instance: list[int]
    fair_shares: list[float]
    fleets: list[Fleet] = field(default_factory=list)
    limit_at: list[float] = field(default_factory=list)  # per second
    per_second: list[list[int]] = field(default_factory=list)  # per instance, per second
    spans: list[tuple[float, float]] = field(default_factory=list)
    #: what the run re-converges after (limit steps, joins, leaves; the start if below the limit)
    events: list[float] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return sum(self.ok) / self.allowed

    @property
    def share_429(self) -> float:
        calls = sum(self.ok) + sum(self.throttled)
        return sum(self.throttled) / calls if calls else 0.0

    @property
    def fairness(self) -> float:
        rates = [n / s for n, s in zip(self.per_instance, self.fair_shares, strict=True) if s]
        return min(rates) / max(rates) if rates and max(rates) > 0 else 0.0

    def settled(self) -> list[int]:
        return _targets.settled_seconds(self.seconds, self.events)

    @property
    def settled_goodput(self) -> float:
        return _targets.share(self.ok, self.limit_at, self.settled())

    @property
    def settled_429(self) -> float:
        calls = [a + b for a, b in zip(self.ok, self.throttled, strict=True)]
        return _targets.share(self.throttled, calls, self.settled())

    @property
    def settled_fairness(self) -> float:
        return _targets.fairness(self.per_second, _targets.fair_shares(self.limit_at, self.spans),
                                 self.settled())


def simulate(
    *,
    spans: list[tuple[float, float]],
    limits: list[tuple[float, float]],
    seconds: float = 40.0,
    threads: int = 4,
    jitter_s: float = 0.005,
    seed: int = 1,
    ceiling: float = 10.0,
    **fleet_options: Any,
) -> SimResult:
    """``spans``: (start, stop) second of each instance; ``limits``: (second, calls/s) steps,
    the first at 0 (the window restarts empty at each step, as the emulator's admin API does).
    Instances that start at 0 join 8 s early (a fleet already running); later ones join when
    they start, as a scaled-out instance does."""
    sim = _Sim(spans, limits, seconds=seconds, threads=threads, jitter_s=jitter_s, seed=seed,
               ceiling=ceiling, options=fleet_options)
    return sim.run()


class _Sim:
    def __init__(self, spans: list[tuple[float, float]], limits: list[tuple[float, float]], *,
                 seconds: float, threads: int, jitter_s: float, seed: int, ceiling: float,
                 options: dict[str, Any]) -> None:
        self.spans, self.limits, self.seconds = spans, limits, seconds
        self.threads, self.jitter, self.ceiling, self.options = threads, jitter_s, ceiling, options
        self.rng = random.Random(seed)
        self.clock = SimClock(_EPOCH - 10)
        self.store = MemoryStore()
        self.window = window_for_tps(limits[0][1])
        self.steps = list(limits[1:])
        self.events: list[tuple[float, int, str, Any]] = []
        self.counter = 0
        n = int(seconds)
        self.ok, self.throttled, self.per = [0] * n, [0] * n, [0] * len(spans)
        self.per_second = [[0] * n for _ in spans]
        self.fleets: dict[int, Fleet] = {}
        self.runners: dict[int, FleetRunner] = {}
        self.gone: set[int] = set()

    def push(self, at: float, kind: str, data: Any) -> None:
        self.counter += 1
        heapq.heappush(self.events, (at, self.counter, kind, data))

    def run(self) -> SimResult:
        for i, (start, stop) in enumerate(self.spans):
            self.push(_EPOCH + start - (8.0 if start == 0 else 0.0), "join", i)
            self.push(_EPOCH + stop, "leave", i)
        while self.events:
            at, _, kind, data = heapq.heappop(self.events)
            if at > _EPOCH + self.seconds:
                break
            self.clock.t = max(self.clock.t, at)
            while self.steps and _EPOCH + self.steps[0][0] <= self.clock.t:
                self.window = window_for_tps(self.steps.pop(0)[1])
            member = data if isinstance(data, int) else data[0]
            if kind not in ("join", "leave", "quit") and member in self.gone:
                continue
            getattr(self, "on_" + kind)(data)
        return self.result()

    def on_join(self, i: int) -> None:
        fleet = Fleet(self.ceiling, clock=self.clock, instance=f"m{i:02d}", **self.options)
        self.fleets[i], self.runners[i] = fleet, FleetRunner(fleet, self.store)
        self.runners[i].beat_once()
        self.push(self.clock.t + fleet.interval_s * self.rng.uniform(0.1, 1.0), "beat", i)
        for _ in range(self.threads):
            self.push(max(self.clock.t, _EPOCH + self.spans[i][0]), "want", i)

    def on_leave(self, i: int) -> None:
        """A graceful stop, as the app's: announce the leave, hand the slots over when it
        takes effect everywhere (no more calls from it meanwhile: its work is done)."""
        self.gone.add(i)
        at = self.fleets[i].leave()
        if at is not None and self.runners[i].beat_once():
            self.push(at, "quit", i)
        else:
            self.runners[i].stop()

    def on_quit(self, i: int) -> None:
        self.runners[i].stop()

    def on_beat(self, i: int) -> None:
        self.runners[i].beat_once()
        self.push(self.clock.t + self.fleets[i].interval_s, "beat", i)

    def on_want(self, i: int) -> None:
        self.sleep_until(i, self.fleets[i].reserve(), 0)

    def sleep_until(self, i: int, slot: Slot, tries: int) -> None:
        """As ``FlowControl.acquire``: sleep towards the slot, looking every
        ``REGRID_CHECK_S`` whether the grid moved."""
        self.push(max(self.clock.t, min(slot.at, self.clock.t + REGRID_CHECK_S)), "wake",
                  (i, slot, tries))

    def on_wake(self, data: tuple[int, Slot, int]) -> None:
        i, slot, tries = data
        if self.clock.t < slot.at and not self.fleets[i].moved(slot):
            self.sleep_until(i, slot, tries)
        elif not self.fleets[i].current(slot) and tries < 4:
            self.fleets[i].forget(slot)
            self.sleep_until(i, self.fleets[i].reserve(), tries + 1)
        else:
            self.push(self.clock.t + abs(self.rng.gauss(0, self.jitter)), "arrive", (i, slot))

    def on_arrive(self, data: tuple[int, Slot]) -> None:
        i, slot = data
        second = int(self.clock.t - _EPOCH)
        wait = self.window.try_acquire(self.clock.t)
        answer_at = self.clock.t + 0.02 + self.rng.uniform(0, 0.01)
        counted = 0 <= second < len(self.ok)
        if wait is None:
            self.per[i] += 1
            if counted:
                self.ok[second] += 1
                self.per_second[i][second] += 1
            self.push(answer_at, "admitted", (i, slot))
        else:
            if counted:
                self.throttled[second] += 1
            self.push(answer_at, "refused", (i, slot, max(1, math.ceil(wait))))

    def on_admitted(self, data: tuple[int, Slot]) -> None:
        self.fleets[data[0]].on_admitted(data[1])
        self.push(self.clock.t, "want", data[0])

    def on_refused(self, data: tuple[int, Slot, int]) -> None:
        i, slot, retry_after = data
        self.fleets[i].on_throttled(slot)
        self.push(self.clock.t + retry_after, "want", i)  # Retry-After, then a new slot

    def result(self) -> SimResult:
        n = len(self.ok)
        limit_at = [_limit(self.limits, s) for s in range(n)]
        shares = [0.0] * len(self.spans)
        for s in range(n):
            running = [i for i, (a, b) in enumerate(self.spans) if a <= s < b]
            for i in running:
                shares[i] += limit_at[s] / len(running)
        events = [at for at, _ in self.limits[1:]]
        events += [t for span in self.spans for t in span if 0 < t < n]
        if self.limits[0][1] < self.ceiling:
            events.append(0.0)
        return SimResult(n, sum(limit_at), self.ok, self.throttled, self.per, shares,
                         [self.fleets[i] for i in sorted(self.fleets)], limit_at,
                         self.per_second, list(self.spans), sorted(set(events)))


def _limit(limits: list[tuple[float, float]], second: int) -> float:
    value = limits[0][1]
    for at, tps in limits:
        if at <= second:
            value = tps
    return value


def scenarios(duration: float = 40.0, tps: float = 10.0) -> dict[str, dict[str, Any]]:
    """The scale-out bench's scenarios, as simulation inputs."""
    whole = (0.0, duration)
    longer = 1.5 * duration  # as the bench: each phase has settled seconds after its change
    third = longer / 3
    joiner = (round(third, 1), round(2 * third, 1))
    return {
        **{f"K={k}": {"spans": [whole] * k, "limits": [(0.0, tps)]} for k in (1, 2, 4, 8)},
        "K=4, limit halves": {"spans": [whole] * 4,
                              "limits": [(0.0, tps), (duration / 2, tps / 2)]},
        "K=4, limit doubles": {"spans": [whole] * 4,
                               "limits": [(0.0, tps / 2), (duration / 2, tps)]},
        "2 + 2 join, then leave": {"spans": [(0.0, longer), (0.0, longer), joiner, joiner],
                                   "limits": [(0.0, tps)], "seconds": longer},
    }


def print_simulation(duration: float = 40.0, tps: float = 10.0) -> None:
    print(f"ours, simulated ({duration:g} s, the real fleet classes on the emulator's window, "
          "0-5 ms jitter):")
    for name, inputs in scenarios(duration, tps).items():
        r = simulate(ceiling=tps, **{"seconds": duration, **inputs})
        print(f"  {name}: goodput {100 * r.goodput:.1f} %, 429 {100 * r.share_429:.1f} %; "
              f"settled ({len(r.settled())} s): goodput {100 * r.settled_goodput:.1f} %, "
              f"429 {100 * r.settled_429:.1f} %, fairness {r.settled_fairness:.2f}")


if __name__ == "__main__":
    print_simulation()
