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

from devstack.vision.limits import window_for_tps
from shared.analysis.fleet import Fleet, FleetRunner, Slot

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
            if kind not in ("join", "leave") and member in self.gone:
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
        self.gone.add(i)
        self.runners[i].stop()

    def on_beat(self, i: int) -> None:
        self.runners[i].beat_once()
        self.push(self.clock.t + self.fleets[i].interval_s, "beat", i)

    def on_want(self, i: int) -> None:
        slot = self.fleets[i].reserve()
        self.push(max(self.clock.t, slot.at), "wake", (i, slot, 0))

    def on_wake(self, data: tuple[int, Slot, int]) -> None:
        i, slot, tries = data
        if not self.fleets[i].current(slot) and tries < 4:
            self.fleets[i].forget(slot)
            slot = self.fleets[i].reserve()
            self.push(max(self.clock.t, slot.at), "wake", (i, slot, tries + 1))
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
        return SimResult(n, sum(limit_at), self.ok, self.throttled, self.per, shares,
                         [self.fleets[i] for i in sorted(self.fleets)])


def _limit(limits: list[tuple[float, float]], second: int) -> float:
    value = limits[0][1]
    for at, tps in limits:
        if at <= second:
            value = tps
    return value


def scenarios(duration: float = 40.0, tps: float = 10.0) -> dict[str, dict[str, Any]]:
    """The scale-out bench's scenarios, as simulation inputs."""
    whole = (0.0, duration)
    third = duration / 3
    joiner = (round(third, 1), round(2 * third, 1))
    return {
        **{f"K={k}": {"spans": [whole] * k, "limits": [(0.0, tps)]} for k in (1, 2, 4, 8)},
        "K=4, limit halves": {"spans": [whole] * 4,
                              "limits": [(0.0, tps), (duration / 2, tps / 2)]},
        "K=4, limit doubles": {"spans": [whole] * 4,
                               "limits": [(0.0, tps / 2), (duration / 2, tps)]},
        "2 + 2 join, then leave": {"spans": [whole, whole, joiner, joiner],
                                   "limits": [(0.0, tps)]},
    }


def print_simulation(duration: float = 40.0, tps: float = 10.0) -> None:
    print(f"ours, simulated ({duration:g} s, the real fleet classes on the emulator's window, "
          "0-5 ms jitter):")
    for name, inputs in scenarios(duration, tps).items():
        r = simulate(seconds=duration, ceiling=tps, **inputs)
        print(f"  {name}: goodput {100 * r.goodput:.1f} %, 429 {100 * r.share_429:.1f} %, "
              f"fairness {r.fairness:.2f}")


if __name__ == "__main__":
    print_simulation()
