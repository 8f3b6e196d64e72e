"""Client-side flow control for one shared service limit: pacing, adaptive rate, retry budget,
circuit breaker. Pure Python, no SDK types, every clock injected (tests take milliseconds).

Why these shapes (see docs/pipeline.md, "Adaptive rate control", for the references):

* ``TokenBucket`` spaces *sends* (GCRA form); the rate can change while callers queue.
* ``AdaptiveRate`` is the AWS SDKs' "adaptive" retry mode idea — a CUBIC rate that drops
  multiplicatively on a throttle and grows back along a cubic curve that is flat around the rate
  that was last throttled — with the cubic's scale a share of the ceiling rather than an
  absolute TPS (a Vision limit is 10-20 calls/s, not thousands; the same ceiling on every
  instance keeps the growth equal for all, which is what makes CUBIC converge to fair shares).
  Two additions: a throttle of a call sent before the service's window could free again does
  not decrease again (one reaction per overload, as TCP reacts once per window), and in a gross
  overload (many instances starting at the tier's limit) the new rate comes from the admitted
  rate actually measured, not from repeated 0.7 steps. Latency-based limits (Netflix Gradient2,
  Envoy adaptive concurrency) were not chosen: a quota counts calls, not queueing, and the
  service answers a throttle explicitly.
* ``RetryBudget`` bounds retries of *failed* calls (5xx, timeouts, connection errors) to a
  share of recent first attempts (Finagle's retry budget; AWS's retry quota is the token form of
  the same idea), so an outage or a 5xx storm cannot multiply traffic. Throttled retries are not
  charged: they wait for ``Retry-After`` and for the limiter, which already bounds their rate.
* ``CircuitBreaker`` stops calling a service that keeps failing; while open it lets one probing
  call through every ``probe_interval_s``.

One module past 450 lines because the four pieces and ``FlowControl`` that composes them are
tested and tuned together; none is used without the others.

Nothing here sleeps while holding a lock, logs, or knows about HTTP.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.analysis.fleet import Fleet, Slot

Clock = Callable[[], float]
Sleep = Callable[[float], None]

__all__ = [
    "AdaptiveRate",
    "BreakerState",
    "CircuitBreaker",
    "FlowControl",
    "RetryBudget",
    "TokenBucket",
]


class TokenBucket:
    """Thread-safe token bucket (GCRA form): ``rate`` tokens per second, ``burst`` at most.

    ``reserve()`` takes the next slot under a lock and returns the wait; callers sleep *outside*
    it, so threads queue up in order without holding each other. ``pause()`` pushes the next slot
    out (the service answered ``Retry-After``); ``set_rate()`` changes the spacing of slots not
    yet issued.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._burst = burst
        self._interval = 1.0 / rate_per_second
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = -math.inf  # theoretical arrival time of the next conforming request

    @property
    def rate_per_second(self) -> float:
        return 1.0 / self._interval

    def set_rate(self, rate_per_second: float) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate must be > 0")
        with self._lock:
            self._interval = 1.0 / rate_per_second
            self._tolerance = (self._burst - 1) * self._interval

    def reserve(self) -> float:
        """Take the next slot; return how long the caller must wait for it (seconds)."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            slot = max(now, tat - self._tolerance)
            self._tat = tat + self._interval
            return slot - now

    def acquire(self) -> float:
        """Block until a token is available; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Issue no new slot for ``seconds`` (already-reserved slots are kept)."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds + self._tolerance)


# --------------------------------------------------------------------------- adaptive rate

#: Answers needed before the admitted share is trusted (see ``AdaptiveRate._admitted_share``).
_MIN_ANSWERS = 5


class AdaptiveRate:
    """CUBIC client rate between ``floor`` and ``ceiling`` calls per second.

    After a decrease at time ``t0`` from ``w_max`` the rate is
    ``w_max + c * (t - t0 - k)**3`` with ``c = growth * ceiling`` and
    ``k = cbrt(w_max * (1 - beta) / c)``: it is
    ``beta * w_max`` right after the throttle, flattens out at ``w_max`` after ``k`` seconds and
    probes beyond it ever faster after that. Before the first throttle it is the ceiling.
    """

    def __init__(
        self,
        ceiling: float,
        *,
        floor: float | None = None,
        beta: float = 0.7,
        growth: float = 0.001,
        measure_window_s: float = 2.0,
        hold_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be > 0")
        if not 0 < beta < 1 or growth <= 0:
            raise ValueError("beta must be in (0, 1) and growth > 0")
        self.ceiling = ceiling
        self.floor = min(ceiling, floor if floor is not None else max(ceiling / 100, 0.01))
        self._beta = beta
        self._growth = growth
        # absolute growth (a share of the ceiling every instance shares) is what makes CUBIC
        # fair: a share-of-own-rate growth would be multiplicative and never converge
        self._scale = growth * ceiling
        self._k = 0.0
        self._window = measure_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._w_max: float | None = None
        self._decreased_at = -math.inf
        self._hold_until = -math.inf
        self._hold_min = hold_s
        self._admitted: collections.deque[float] = collections.deque()
        self._throttled: collections.deque[float] = collections.deque()
        self._quiet_since = clock()  # start of the current admitted-rate measurement
        self.throttles = 0
        self.decreases = 0

    def _rate_at(self, now: float) -> float:
        if self._w_max is None:
            return self.ceiling
        t = now - self._decreased_at - self._k
        rate = self._w_max + self._scale * t * t * t
        return min(self.ceiling, max(self.floor, rate))

    def rate(self) -> float:
        with self._lock:
            return self._rate_at(self._clock())

    def on_admitted(self) -> None:
        """A call was answered by the service (anything but a throttle)."""
        with self._lock:
            now = self._clock()
            self._admitted.append(now)
            while self._admitted and self._admitted[0] <= now - self._window:
                self._admitted.popleft()
            while self._throttled and self._throttled[0] <= now - self._window:
                self._throttled.popleft()

    def on_throttled(self, sent_at: float, *, pause_s: float = 0.0) -> bool:
        """A call sent at ``sent_at`` was throttled; return True if the rate was decreased.

        ``pause_s`` is the ``Retry-After`` the service asked for: the admitted-rate measurement
        restarts after it, since the pause itself admits nothing.
        """
        with self._lock:
            now = self._clock()
            self.throttles += 1
            self._throttled.append(now)
            if sent_at < self._hold_until:
                return False  # already reacted to the overload this call was part of
            current = self._rate_at(now)
            w_max = current
            admitted = self._admitted_share(now)
            if admitted is not None and admitted < self._beta:
                # gross overload: the share this client really gets is far below its rate
                w_max = max(self.floor, current * admitted / self._beta)
            elif self._w_max is not None and w_max < self._w_max:
                # CUBIC's fast convergence: give up share sooner when the limit is shrinking
                # (or another instance joined), so newcomers catch up
                w_max = w_max * (1 + self._beta) / 2
            self._w_max = w_max
            self._k = (w_max * (1 - self._beta) / self._scale) ** (1 / 3)
            self._decreased_at = now
            # calls sent before the service's window frees again meet the same overload
            self._hold_until = now + max(pause_s, self._hold_min)
            self._quiet_since = now + pause_s
            self._admitted.clear()
            self._throttled.clear()
            self.decreases += 1
            return True

    def _admitted_share(self, now: float) -> float | None:
        """Admitted / answered calls since the last decrease (at most one window back).

        ``None`` below ``_MIN_ANSWERS`` answers: an idle client's one 429 says nothing about
        its share."""
        start = max(now - self._window, self._quiet_since)
        for events in (self._admitted, self._throttled):
            while events and events[0] <= start:
                events.popleft()
        answered = len(self._admitted) + len(self._throttled)
        if answered < _MIN_ANSWERS:
            return None
        return len(self._admitted) / answered


# --------------------------------------------------------------------------- retry budget


class RetryBudget:
    """Retries of failed calls <= ``ratio`` x first attempts in the last ``window_s``, plus a
    floor of ``min_per_second`` so a quiet client can still retry a single failure."""

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 0.5,
        window_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window_s <= 0:
            raise ValueError("ratio and min_per_second must be >= 0, window_s > 0")
        self._ratio = ratio
        self._reserve = min_per_second * window_s
        self._window = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._firsts: collections.deque[float] = collections.deque()
        self._retries: collections.deque[float] = collections.deque()
        self.exhausted = 0

    def _expire(self, now: float) -> None:
        for events in (self._firsts, self._retries):
            while events and events[0] <= now - self._window:
                events.popleft()

    def record_first_attempt(self) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._firsts.append(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) when there is none left."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._retries) < self._ratio * len(self._firsts) + self._reserve:
                self._retries.append(now)
                return True
            self.exhausted += 1
            return False

    def available(self) -> float:
        with self._lock:
            self._expire(self._clock())
            return self._ratio * len(self._firsts) + self._reserve - len(self._retries)


# --------------------------------------------------------------------------- breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one probing call in flight


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls (the service being down: 5xx,
    timeouts, connection errors — never a throttle or a 4xx). While open, ``allow()`` admits one
    probing call every ``probe_interval_s``; its success closes the breaker, its failure keeps
    it open for another interval."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        probe_interval_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or probe_interval_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and probe_interval_s > 0")
        self._threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._next_probe = -math.inf
        self.opened = 0
        self.probes = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def allow(self) -> bool:
        """May a call go out now? While open, True for exactly one probe per interval."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN and self._clock() >= self._next_probe:
                self._state = BreakerState.HALF_OPEN
                self._next_probe = self._clock() + self.probe_interval_s
                self.probes += 1
                return True
            return False

    def probe_due(self) -> bool:
        """Would ``allow()`` admit a call now (without taking the probe)?"""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            return self._state is BreakerState.OPEN and self._clock() >= self._next_probe

    def on_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0

    def on_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN:
                self._state = BreakerState.OPEN
                self._next_probe = self._clock() + self.probe_interval_s
            elif self._state is BreakerState.CLOSED and self._failures >= self._threshold:
                self._state = BreakerState.OPEN
                self._next_probe = self._clock() + self.probe_interval_s
                self.opened += 1

    def on_neutral(self) -> None:
        """A throttle: the service is up (it answered), just busy. Closes a probe's breaker and
        ends a run of failures, but is no success of an analysis."""
        with self._lock:
            self._failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._state = BreakerState.CLOSED


# --------------------------------------------------------------------------- composition


#: A caller re-reserves a fleet slot at most this often in one acquire (grid changes are rare).
_MAX_RESERVATIONS = 4
#: A caller waiting for its fleet slot looks this often whether the grid moved (a raised limit,
#: a member joining or leaving), so it takes a slot of the new grid at once, not after sleeping
#: out a slot of the old one (up to a few seconds at a small share).
REGRID_CHECK_S = 0.25


class FlowControl:
    """One client's flow control: pacing at the adaptive (or fixed) rate, budget, breaker.

    ``adaptive=False`` keeps the rate at the ceiling (a single instance with a known limit):
    then every ``Retry-After`` pauses the whole client, as a fixed bucket must. Adaptive, the
    throttled call's retry waits exactly ``Retry-After`` and the rest of the client goes on at
    the lowered rate; only a wait longer than ``pause_all_after_s`` (a full window, e.g. F0's
    minute or a quota) stops every caller — the S1 window frees within a second, and idling
    the whole instance for the rounded-up second of each 429 would cost more than the 429.

    With a ``fleet`` (``shared.analysis.fleet``) whose membership is current, sends go in this
    member's slots of the fleet's one time grid instead, and throttles and probes feed the fleet's
    shared limit; when the membership goes stale (storage unreachable) the local controller
    takes over again, so analysis never waits on storage.
    """

    def __init__(
        self,
        *,
        ceiling: float,
        adaptive: bool = True,
        burst: int = 1,
        headroom: float = 0.02,
        budget: RetryBudget | None = None,
        breaker: CircuitBreaker | None = None,
        pause_all_after_s: float = 1.0,
        fleet: Fleet | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.ceiling = ceiling
        self.fleet = fleet if adaptive else None
        self._slot = threading.local()  # the fleet slot of the call this thread is making
        self._paused_until = -math.inf
        self.adaptive = adaptive
        self.clock = clock
        paced = ceiling * (1.0 - headroom)
        self.controller = AdaptiveRate(paced, clock=clock) if adaptive else None
        self.bucket = TokenBucket(paced, burst, clock=clock, sleep=sleep)
        self.budget = budget or RetryBudget(clock=clock)
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self._pause_all_after = pause_all_after_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self.throttles = 0
        self.pauses = 0

    def _fleet(self) -> Fleet | None:
        fleet = self.fleet
        return fleet if fleet is not None and fleet.fresh() else None

    def rate(self) -> float:
        """Calls per second this client sends at now."""
        fleet = self._fleet()
        if fleet is not None:
            return fleet.rate()
        if self.controller is None:
            return self.bucket.rate_per_second
        return self.controller.rate()

    def acquire(self) -> float:
        """Wait for the next slot at the current rate; return the seconds waited."""
        fleet = self._fleet()
        if fleet is not None:
            with self._lock:
                waited = max(0.0, self._paused_until - self.clock())
            if waited > 0:
                self._sleep(waited)  # a pause first: a slot taken before it would be stale
            for _ in range(_MAX_RESERVATIONS):
                slot = fleet.reserve()
                wait = slot.at - fleet.now()
                while wait > 0 and not fleet.moved(slot):
                    step = min(wait, REGRID_CHECK_S)
                    self._sleep(step)
                    waited += step
                    wait = slot.at - fleet.now()
                if fleet.current(slot):
                    break  # else the grid moved, or this caller woke too late for its slot
                fleet.forget(slot)
            self._slot.value = slot
            return waited
        self._slot.value = None
        if self.controller is not None:
            self.bucket.set_rate(self.controller.rate())
        wait = self.bucket.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def on_throttled(self, sent_at: float, retry_after: float | None) -> None:
        with self._lock:
            self.throttles += 1
        self.breaker.on_neutral()  # a throttle is an answer: the service is up
        slot = self._take_slot()
        if slot is not None and self.fleet is not None:
            self.fleet.on_throttled(slot)
        elif self.controller is not None:
            wait = retry_after or 0.0
            paused = wait > self._pause_all_after
            self.controller.on_throttled(sent_at, pause_s=wait if paused else 0.0)

    def on_answered(self) -> None:
        """Any answer other than a throttle or a server error."""
        self.breaker.on_success()
        slot = self._take_slot()
        if slot is not None and self.fleet is not None:
            self.fleet.on_admitted(slot)
        elif self.controller is not None:
            self.controller.on_admitted()

    def on_failure(self) -> None:
        """5xx, 408, timeout or connection error: counts towards opening the breaker."""
        slot = self._take_slot()
        if slot is not None and self.fleet is not None:
            self.fleet.forget(slot)
        self.breaker.on_failure()

    def _take_slot(self) -> Slot | None:
        slot: Slot | None = getattr(self._slot, "value", None)
        self._slot.value = None
        return slot

    def pause(self, retry_after: float) -> None:
        """The service asked to wait ``retry_after`` before the next call."""
        if self.controller is None or retry_after > self._pause_all_after:
            with self._lock:
                self.pauses += 1
                self._paused_until = max(self._paused_until, self.clock() + retry_after)
            self.bucket.pause(retry_after)
