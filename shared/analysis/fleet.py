"""Membership and one learned limit for every instance that shares the Vision account.

Pure logic with an injected wall clock, plus a thin heartbeat runner; the storage adapter is a
small ``HeartbeatStore`` the composition root builds from the app's own storage account (blob
metadata under ``fleet/vision/``, one listing per beat). No server of our own.

Why it exists: the service admits N calls in any rolling second, counting every instance
together. Uncoordinated instances, each pacing evenly at its fair share, still collide by phase
(a simulation on the emulator's own window: 7-14 % 429s at 90-95 % of the limit with 4-8
instances). So the fleet shares two things through heartbeats:

* **who is there** — each instance writes a heartbeat every ``interval_s`` and lists the
  others; fresh within ``3 x interval_s`` counts. Members are ordered by when they joined, and a
  newcomer counts (for everyone, itself included) only ``interval_s + settle margin`` after its
  first heartbeat, by which time every member has listed it: the switch happens at the same
  instant everywhere, with no overlap.
* **one learned limit** — the fleet's estimate of the account's limit, with when it was decided;
  the newest decision wins. The fleet paces at ``limit x (1 - headroom)`` on **one time grid**
  (slot ``n`` at ``n / rate`` seconds of the wall clock) and member ``j`` of ``N`` sends only in
  the slots ``n = j (mod N)``: the sum is one evenly paced sender, which the rolling window
  admits, and each member gets exactly ``1/N`` of it.

The limit is learned once for the fleet. A member's first 429 (of a call sent at least
``hold_s`` after the current limit took effect) only *thins* that member: for a few seconds it
sends in every other one of its slots, on the same grid, and says so in its heartbeat — a call
that arrived late elsewhere then costs one member a few slots, not the fleet its limit. A member
throttled again while thinning, or half of the members thinning at once (every member meets
429s within a second when the limit itself drops), cuts the limit by ``beta``: each computes the
same value, and the others adopt the newest decision from the next listing — a cut only if they
were throttled themselves around then.
Below the ceiling (the tier's documented limit, or ``VISION_RATE_LIMIT_PER_SECOND``) the member
that made the decision (else the first member) sends one extra call — a probe — after
``probe_base_s``, then at doubling intervals up to ``probe_max_s``. Half-way between two of the
fleet's slots the window holds exactly as many calls as the estimate allows, so the probe is
admitted only if the limit rose, and a failed probe costs exactly one 429; two admitted probes
in a row (the first may only mean the fleet was not filling the window) undo one ``beta``
step. At the ceiling nothing probes: the rate never goes above it.

A member that cannot reach storage (``fresh()`` false) falls back to the local-only adaptive
controller; nothing here ever stops an analysis.

One module past 450 lines because membership, the learned limit, thinning and probing decide
together what each heartbeat says and are tested together; the storage adapter at the end is
the only part that knows about blobs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

logger = logging.getLogger(__name__)

WallClock = Callable[[], float]

#: Heartbeats older than this many intervals are a member that is gone (crashed, scaled in);
#: generous, since a slow storage answer must not make a live member look gone (its slots
#: would be taken twice), while a crashed member's slots idle only this long.
STALE_INTERVALS = 4.0
#: Extra wait of a newcomer beyond one interval, so that every member has listed it.
SETTLE_MARGIN_S = 0.5
#: A member adopts another's cut only if it was throttled itself within this long of it.
_CUT_EVIDENCE_S = 2.0
#: A first admitted probe is confirmed by a second one this much later.
_CONFIRM_AFTER_S = 0.5
#: The probe's answer is given up on after this long (it is then a plain call).
_PROBE_TIMEOUT_S = 30.0

__all__ = [
    "BlobHeartbeatStore",
    "Fleet",
    "FleetRunner",
    "Heartbeat",
    "HeartbeatStore",
    "new_instance_id",
]


def new_instance_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One member's heartbeat: who, since when, and the limit decision it holds."""

    instance: str
    joined_at: float
    beat_at: float
    limit: float
    decided_at: float
    probe_after: float
    probes_failed: int = 0
    decided_by: str = ""
    #: until when this member sends in every other one of its slots (it met a 429)
    thinning_until: float = 0.0
    #: when this member stops counting, for everyone at once (a graceful leave); 0: staying
    leaving_at: float = 0.0

    def to_fields(self) -> dict[str, str]:
        return {
            "instance": self.instance,
            "joined_at": repr(self.joined_at),
            "beat_at": repr(self.beat_at),
            "limit": repr(self.limit),
            "decided_at": repr(self.decided_at),
            "probe_after": repr(self.probe_after),
            "probes_failed": str(self.probes_failed),
            "decided_by": self.decided_by or "-",  # storage drops empty metadata values
            "thinning_until": repr(self.thinning_until),
            "leaving_at": repr(self.leaving_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Heartbeat | None:
        """``None`` for a heartbeat that is not ours or is malformed (it is then ignored)."""
        try:
            beat = cls(
                instance=str(fields["instance"]),
                joined_at=float(fields["joined_at"]),
                beat_at=float(fields["beat_at"]),
                limit=float(fields["limit"]),
                decided_at=float(fields["decided_at"]),
                probe_after=float(fields["probe_after"]),
                probes_failed=int(fields["probes_failed"]),
                decided_by=str(fields.get("decided_by", "-")).strip("-"),
                thinning_until=float(fields.get("thinning_until", "0")),
                leaving_at=float(fields.get("leaving_at", "0")),
            )
        except (KeyError, ValueError, TypeError):
            return None
        numbers = (beat.joined_at, beat.beat_at, beat.limit, beat.decided_at, beat.probe_after,
                   beat.leaving_at)
        if not all(math.isfinite(v) for v in numbers) or beat.limit <= 0 or not beat.instance:
            return None
        return beat


def _decision(beat: Heartbeat) -> tuple[float, str]:
    return beat.decided_at, beat.decided_by


class HeartbeatStore(Protocol):
    """Where heartbeats live (the app's storage account); every method may raise."""

    def put(self, instance: str, fields: dict[str, str]) -> None: ...

    def list(self) -> list[dict[str, str]]: ...

    def delete(self, instance: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Slot:
    """A reserved send time (wall clock) and whether it is the fleet's probe."""

    at: float
    probe: bool = False
    #: the grid it was cut from: (limit, members, index, thinning); an old grid's is not sent
    grid: tuple[float, int, int, bool] = (0.0, 0, 0, False)


class Fleet:
    """One member's view of the fleet: membership, the shared limit and its slots on the grid."""

    def __init__(
        self,
        ceiling: float,
        *,
        interval_s: float = 2.0,
        headroom: float = 0.03,
        beta: float = 0.5,
        hold_s: float = 2.0,
        probe_base_s: float = 4.0,
        probe_max_s: float = 8.0,
        instance: str | None = None,
        clock: WallClock = time.time,
    ) -> None:
        if ceiling <= 0 or interval_s <= 0 or not 0 <= headroom < 1 or not 0 < beta < 1:
            raise ValueError("ceiling and interval must be > 0, headroom in [0, 1), beta in (0, 1)")
        self.ceiling = ceiling
        self.floor = max(ceiling / 100, 0.01)
        self.interval_s = interval_s
        self._headroom = headroom
        self._beta = beta
        self._hold = hold_s
        self._probe_base = probe_base_s
        self._probe_max = probe_max_s
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self.instance = instance or new_instance_id()
        self._me = Heartbeat(self.instance, joined_at=now, beat_at=now, limit=ceiling,
                             decided_at=0.0, probe_after=0.0)  # 0: never
        self._adopted_at = -math.inf  # local time the current limit took effect here
        self._others: dict[str, Heartbeat] = {}
        self._last_ok = -math.inf  # last successful beat
        self._first_ok = False
        self._last_slot = -math.inf
        self._last_grid: tuple[float, int, int, bool] = (0.0, 0, 0, False)
        self._probe_sent: float | None = None
        self._throttled_at = -math.inf
        self._thinning_since = -math.inf
        self._thin_s = interval_s + 2 * SETTLE_MARGIN_S  # long enough to be seen in a listing
        self._confirming = False
        self.failures = 0
        self.cuts = 0
        self.probes = 0
        #: slots given up because the caller woke too late for them
        self.late_skips = 0
        #: called (under the lock, so it must only signal) when this member decided the limit
        self.on_decision: Callable[[], None] | None = None

    def now(self) -> float:
        return self._clock()

    # -- heartbeats ------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        with self._lock:
            self._me = replace(self._me, beat_at=self._clock())
            return self._me

    def observe(self, listed: list[dict[str, str]]) -> None:
        """A successful beat: the members listed, and the newest limit decision among them."""
        with self._lock:
            now = self._clock()
            others: dict[str, Heartbeat] = {}
            for fields in listed:
                beat = Heartbeat.from_fields(fields)
                if beat is None or beat.instance == self.instance:
                    continue
                if beat.beat_at >= now - STALE_INTERVALS * self.interval_s:
                    others[beat.instance] = beat
            self._others = others
            # the newest decision wins; the same instant is settled by the decider's id
            self._cut_if_most_are_thinning(others, now)
            newest = max(others.values(), key=_decision, default=None)
            if newest is not None and _decision(newest) > _decision(self._me):
                # a cut is adopted only by a member that met throttling itself around then:
                # a lone 429 (a call that arrived late) then costs the member that met it, not
                # the fleet; a real drop of the limit throttles every member within a second
                lower = newest.limit < self._me.limit
                if not lower or self._throttled_at >= newest.decided_at - _CUT_EVIDENCE_S:
                    self._adopt(newest, now)
            self._last_ok = now
            self._first_ok = True

    def _cut_if_most_are_thinning(self, others: dict[str, Heartbeat], now: float) -> None:
        """Half or more of the members thinning at once: the limit dropped (every member met
        429s), so the fleet's limit is cut — the same value decided by each of them."""
        if now >= self._me.thinning_until:
            return
        members, _, _ = self._view(now)
        thinning = [b for b in members
                    if (b.thinning_until if b.instance != self.instance
                        else self._me.thinning_until) > now]
        if len(members) > 1 and 2 * len(thinning) >= len(members):
            self._cut(now)

    def mark_failed(self) -> None:
        with self._lock:
            self.failures += 1

    def fresh(self) -> bool:
        """Is the membership current (a beat succeeded within the stale horizon)?"""
        with self._lock:
            return self._fresh(self._clock())

    def _fresh(self, now: float) -> bool:
        if not self._first_ok:
            # not listed yet: pending until it could be counted, unless storage already failed
            # (a newcomer that paced alone at the ceiling would overrun the fleet)
            return self.failures == 0 and now < self._settles_at()
        return now - self._last_ok <= STALE_INTERVALS * self.interval_s

    def _settles_at(self) -> float:
        return self._me.joined_at + self.interval_s + SETTLE_MARGIN_S

    def _adopt(self, beat: Heartbeat, now: float) -> None:
        if beat.limit != self._me.limit:
            self._adopted_at = now
        self._me = replace(self._me, limit=min(self.ceiling, beat.limit),
                           decided_at=beat.decided_at, probe_after=beat.probe_after,
                           probes_failed=beat.probes_failed,
                           decided_by=beat.decided_by)

    # -- membership ------------------------------------------------------------------------

    def _settled(self, beat: Heartbeat, now: float) -> bool:
        return now >= beat.joined_at + self.interval_s + SETTLE_MARGIN_S

    def _view(self, now: float) -> tuple[list[Heartbeat], int, float]:
        """Members in slot order (this one included), this one's index, and when it may send:
        a newcomer waits until every member counts it, and a leaver stops counting at the
        instant it announced (the same instant everywhere, both ways)."""
        staying = [b for b in self._others.values() if not 0 < b.leaving_at <= now]
        settled = [b for b in staying if self._settled(b, now)]
        start = -math.inf
        if not self._first_ok:
            start = self._settles_at()  # it does not know the others yet
        elif not self._settled(self._me, now):
            if settled:
                start = self._settles_at()
            else:  # a fleet starting together: everyone new counts everyone new at once
                settled = staying
        members = sorted([*settled, self._me], key=lambda b: (b.joined_at, b.instance))
        return members, members.index(self._me), start

    def leave(self) -> float | None:
        """A graceful leave: from the returned wall-clock time on, no member counts this one
        (by then each has listed the heartbeat that says so), and its slots pass to the others
        at once instead of idling until they notice it gone. ``None``: alone, nothing to say."""
        with self._lock:
            now = self._clock()
            if not self._others:  # no one else is listed: no one to hand the slots to
                return None
            if not self._me.leaving_at:
                self._me = replace(self._me, leaving_at=now + self.interval_s + SETTLE_MARGIN_S)
            return self._me.leaving_at

    def members(self) -> int:
        """How many instances share the limit now (this one included)."""
        with self._lock:
            return len(self._view(self._clock())[0])

    # -- the grid --------------------------------------------------------------------------

    @property
    def limit(self) -> float:
        with self._lock:
            return self._me.limit

    def fleet_rate(self) -> float:
        with self._lock:
            return self._me.limit * (1 - self._headroom)

    def rate(self) -> float:
        """This member's share of the fleet's rate (calls per second)."""
        with self._lock:
            now = self._clock()
            members, _, _ = self._view(now)
            share = self._me.limit * (1 - self._headroom) / len(members)
            return share / 2 if now < self._me.thinning_until and len(members) > 1 else share

    def reserve(self) -> Slot:
        """The next send time of this member (the grid's next own slot, or a probe now)."""
        with self._lock:
            now = self._clock()
            if self._probe_due(now):
                # half-way between two of the fleet's slots, the window holds exactly as many
                # calls as the estimated limit allows: one more is admitted only if it rose
                rate = self._me.limit * (1 - self._headroom)
                at = (math.floor(now * rate) + 0.5) / rate
                at = at if at >= now else at + 1 / rate
                self._probe_sent = at
                self.probes += 1
                return Slot(at, probe=True, grid=self._grid(now))
            members, index, earliest = self._view(now)
            count = len(members)
            # alone, thinning would halve the fleet for one late call: a lone member only
            # remembers the 429, and a second one within the thinning time cuts the limit
            thinning = now < self._me.thinning_until and count > 1
            grid = (self._me.limit, count, index, thinning)
            # slots taken on an old grid are given back (their callers re-reserve)
            last = self._last_slot if self._last_grid == grid else -math.inf
            start = max(now, last + 1e-6, earliest)
            rate = self._me.limit * (1 - self._headroom)
            first = math.ceil(start * rate - 1e-9)
            n = first + (index - first) % count
            if thinning and (n // count + index) % 2:
                # every other own slot, alternating between members, so that all members
                # thinning at once still send evenly, at half the rate
                n += count
            self._last_slot, self._last_grid = n / rate, grid
            return Slot(self._last_slot, grid=grid)

    def _grid(self, now: float) -> tuple[float, int, int, bool]:
        members, index, _ = self._view(now)
        thinning = now < self._me.thinning_until and len(members) > 1
        return self._me.limit, len(members), index, thinning

    def moved(self, slot: Slot) -> bool:
        """Has the grid ``slot`` was cut from changed (its caller should take a new one)?"""
        with self._lock:
            return self._moved(slot, self._clock())

    def _moved(self, slot: Slot, now: float) -> bool:
        return slot.grid != self._grid(now)

    def current(self, slot: Slot) -> bool:
        """May the caller that slept until ``slot`` send now? Not if the grid moved meanwhile
        (a limit decision, a membership change), nor if it woke so late that its call could
        still be in the service's window when a call one second of slots later arrives: the
        window's slack is ``floor(limit) / rate - 1`` (31 ms at 10/s less 3 %), and a late
        call spends it for someone else. Skipping one slot costs less than the 429."""
        with self._lock:
            now = self._clock()
            if self._moved(slot, now):
                return False
            if slot.probe:
                return True
            rate = self._me.limit * (1 - self._headroom)
            slack = max(1.0, math.floor(self._me.limit)) / rate - 1.0
            if now - slot.at <= slack:
                return True
            self.late_skips += 1
            return False

    def forget(self, slot: Slot) -> None:
        """``slot`` was not used, or its call got no answer: a probe in it did not happen."""
        with self._lock:
            if slot.probe and self._probe_sent == slot.at:
                self._probe_sent = None

    def _probe_due(self, now: float) -> bool:
        if self._me.limit >= self.ceiling or now < self._me.probe_after:
            return False
        if self._probe_sent is not None and now - self._probe_sent < _PROBE_TIMEOUT_S:
            return False
        members, index, earliest = self._view(now)
        if earliest > now:
            return False
        # the member that made the decision probes it (it knows at once, so a cut on a lone
        # 429 is undone before most members have adopted it); else the first member
        decider = self._me.decided_by
        if any(b.instance == decider for b in members):
            return decider == self.instance
        return index == 0

    # -- what the service answered -----------------------------------------------------------

    def on_throttled(self, slot: Slot) -> bool:
        """A call sent in ``slot`` was answered 429; True if the fleet's limit was lowered."""
        with self._lock:
            now = self._clock()
            if slot.probe:
                self._probe_sent = None
                self._confirming = False
                failed = self._me.probes_failed + 1
                wait = min(self._probe_max, self._probe_base * 2 ** (failed - 1))
                self._decide(now, self._me.limit, probe_after=now + wait, probes_failed=failed,
                             adopt=False)
                return False
            self._throttled_at = now
            if slot.at < self._adopted_at + self._hold:
                return False  # sent before the current limit could have freed the window
            if now >= self._me.thinning_until:
                # first answer: this member alone halves its sending, on the same grid (a late
                # call elsewhere costs one member a few slots, not the fleet its limit)
                self._thin(now)
                return False
            if slot.at < self._thinning_since + self._hold:
                return False
            # throttled even at half its share: the limit itself dropped
            self._cut(now)
            return True

    def _thin(self, now: float) -> None:
        self._thinning_since = now
        self._me = replace(self._me, thinning_until=now + self._thin_s)
        if self.on_decision is not None:
            self.on_decision()

    def _cut(self, now: float) -> None:
        limit = max(self.floor, self._me.limit * self._beta)
        self._me = replace(self._me, thinning_until=0.0)
        self._decide(now, limit, probe_after=now + self._probe_base, probes_failed=0,
                     adopt=True)
        self.cuts += 1

    def on_admitted(self, slot: Slot) -> bool:
        """A call sent in ``slot`` was answered; True if it was a probe that raised the limit."""
        with self._lock:
            if not slot.probe:
                return False
            now = self._clock()
            self._probe_sent = None
            if not self._confirming:
                # one admitted probe may only mean the fleet was not filling the window (some
                # callers waiting out a Retry-After): a second one, soon after, confirms it
                self._confirming = True
                self._me = replace(self._me, probe_after=now + _CONFIRM_AFTER_S)
                return False
            self._confirming = False
            limit = min(self.ceiling, self._me.limit / self._beta)
            self._decide(now, limit, probe_after=now + self._probe_base, probes_failed=0,
                         adopt=True)
            return True

    def _decide(self, now: float, limit: float, *, probe_after: float, probes_failed: int,
                adopt: bool) -> None:
        if adopt and limit != self._me.limit:
            self._adopted_at = now
        self._me = replace(self._me, limit=limit, decided_at=now, probe_after=probe_after,
                           probes_failed=probes_failed, decided_by=self.instance)
        if self.on_decision is not None:
            self.on_decision()  # publish now, not at the next interval


class FleetRunner:
    """The heartbeat loop of one member, on a daemon thread; storage errors never escape it.

    ``beat_once`` is the whole job (tests call it directly); ``start`` runs it every interval
    and at once after a limit decision (``wake``); ``leave`` announces a graceful stop so that
    every member takes over its slots at one instant; ``stop`` removes this member's heartbeat
    (else the others would keep its slots idle until the stale horizon).
    """

    def __init__(self, fleet: Fleet, store: HeartbeatStore,
                 *, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.fleet = fleet
        self._store = store
        self._on_error = on_error
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.slowest_beat_s = 0.0
        fleet.on_decision = self._wake.set

    def beat_once(self) -> bool:
        started = time.monotonic()
        try:
            self._store.put(self.fleet.instance, self.fleet.heartbeat().to_fields())
            listed = self._store.list()
        except Exception as exc:  # storage down or misconfigured: analysis goes on, local-only
            self.fleet.mark_failed()
            if not self._failing:
                logger.warning("fleet heartbeat failed (%s); pacing from local observations "
                               "until storage answers", type(exc).__name__)
            self._failing = True
            if self._on_error is not None:
                self._on_error(exc)
            return False
        self.slowest_beat_s = max(self.slowest_beat_s, time.monotonic() - started)
        if self._failing:
            logger.info("fleet heartbeat answered again")
        self._failing = False
        self.fleet.observe(listed)
        return True

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._wake.set()  # the first beat at once, on the thread: never in a caller's way
        self._thread = threading.Thread(target=self._run, name="vision-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            # beats on a fixed cadence (a slow answer does not stretch the interval)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if not self._stop.is_set():
                due = time.monotonic() + self.fleet.interval_s
                self.beat_once()

    def leave(self, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """A graceful stop: announce the leave in a heartbeat, keep this member's slots (calls
        still in flight may use them) until it takes effect everywhere, then ``stop``. At most
        ``interval_s`` plus the settle margin; at once when this member is alone."""
        if self._stop.is_set():
            return  # stopped already (a graceful stop, then the exit hook)
        at = self.fleet.leave()
        if at is not None and self.beat_once():
            sleep(min(max(0.0, at - self.fleet.now()), self.fleet.interval_s + SETTLE_MARGIN_S))
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._store.delete(self.fleet.instance)
        except Exception:  # the heartbeat then goes stale on its own
            logger.info("fleet heartbeat not removed; it expires by itself", exc_info=True)


class BlobHeartbeatStore:
    """Heartbeats as empty blobs whose metadata is the heartbeat: one listing reads them all.

    ``container`` is an azure-storage-blob ``ContainerClient`` of a container the app already
    owns; it is created on first use if missing (a fresh account).
    """

    PREFIX = "fleet/vision/"

    def __init__(self, container: ContainerClientLike) -> None:
        self._container = container

    def put(self, instance: str, fields: dict[str, str]) -> None:
        name = self.PREFIX + instance
        try:
            self._container.upload_blob(name, b"", overwrite=True, metadata=fields)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):  # created meanwhile by another
                self._container.create_container()
            self._container.upload_blob(name, b"", overwrite=True, metadata=fields)

    def list(self) -> list[dict[str, str]]:
        return [dict(blob.metadata or {})
                for blob in self._container.list_blobs(name_starts_with=self.PREFIX,
                                                       include=["metadata"])]

    def delete(self, instance: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):  # already gone
            self._container.delete_blob(self.PREFIX + instance)


class ContainerClientLike(Protocol):
    """What ``BlobHeartbeatStore`` uses of azure-storage-blob's ``ContainerClient``."""

    def upload_blob(self, name: str, data: bytes, *, overwrite: bool,
                    metadata: dict[str, str]) -> object: ...

    def list_blobs(self, *, name_starts_with: str, include: list[str]) -> Iterable[Any]: ...

    def delete_blob(self, blob: str) -> None: ...

    def create_container(self) -> object: ...
