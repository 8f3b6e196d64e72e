"""Timer trigger: NCRONTAB schedules, schedule monitor, ``past_due`` — like the Timers extension.

* Schedules are six-field NCRONTAB (seconds first, ``0 */5 * * * *``); five-field expressions and
  ``hh:mm:ss`` constant intervals are accepted as by the real host. ``%SETTING%`` is resolved
  before this module sees the schedule. Times are UTC unless ``WEBSITE_TIME_ZONE`` names an IANA
  zone.
* With ``useMonitor`` (default: true unless the schedule fires more often than once a minute) the
  last/next occurrence is persisted, in ``azure-webjobs-hosts`` at
  ``timers/<hostId>/<functionId>/status`` like the real host when storage is configured, else in
  the state directory. A host that was down over a due time fires once on start with
  ``past_due=True``.
* ``runOnStartup`` fires once when the host starts.

The driver never reads the wall clock or sleeps by itself: ``clock`` and ``sleep`` are injected, so
tests move time by hand (``due(now)`` / ``tick(now)``) instead of waiting minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol

from devstack.host.loader import FunctionSpec
from devstack.host.settings import HostConfigError, parse_timespan

log = logging.getLogger(__name__)

_MIN_MONITOR_INTERVAL = timedelta(minutes=1)


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (aware datetimes)."""
        ...


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    zone: tzinfo = UTC

    def next_after(self, moment: datetime) -> datetime:
        from croniter import croniter

        six = len(self.expression.split()) == 6
        base = moment.astimezone(self.zone)
        found = croniter(self.expression, base, second_at_beginning=six).get_next(datetime)
        if not isinstance(found, datetime):
            raise HostConfigError(f"schedule {self.expression!r} has no next occurrence")
        return found.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    interval: timedelta

    def next_after(self, moment: datetime) -> datetime:
        return moment + self.interval


def parse_schedule(expression: str, *, function: str = "timer", zone: tzinfo = UTC) -> Schedule:
    """An NCRONTAB (6 or 5 fields) or ``hh:mm:ss`` schedule; a clear error otherwise."""
    from croniter import croniter

    text = expression.strip()
    fields = text.split()
    if len(fields) == 1 and ":" in text:
        try:
            interval = parse_timespan(text)
        except ValueError as exc:
            raise HostConfigError(f"function '{function}': bad schedule {expression!r}") from exc
        if interval <= timedelta(0):
            raise HostConfigError(f"function '{function}': schedule interval must be positive")
        return IntervalSchedule(interval)
    if len(fields) not in (5, 6) or not croniter.is_valid(
            text, second_at_beginning=len(fields) == 6):
        raise HostConfigError(
            f"function '{function}': schedule {expression!r} is not a valid NCRONTAB expression "
            "(six fields, seconds first, e.g. '0 */5 * * * *')")
    return CronSchedule(text, zone)


def time_zone(settings: Mapping[str, str]) -> tzinfo:
    name = settings.get("WEBSITE_TIME_ZONE")
    if not name:
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise HostConfigError(f"WEBSITE_TIME_ZONE={name!r} is not an IANA time zone") from exc


# -- schedule status persistence --------------------------------------------------------------


class StatusStore(Protocol):
    def read(self, function_id: str) -> dict[str, str] | None: ...

    def write(self, function_id: str, status: Mapping[str, str]) -> None: ...


class MemoryStatusStore:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, str]] = {}

    def read(self, function_id: str) -> dict[str, str] | None:
        found = self.items.get(function_id)
        return None if found is None else dict(found)

    def write(self, function_id: str, status: Mapping[str, str]) -> None:
        self.items[function_id] = dict(status)


def status_blob_name(host_id: str, function_id: str) -> str:
    return f"timers/{host_id}/{function_id}/status"


class FileStatusStore:
    """Status files under the state directory, same relative layout as the real host's blobs."""

    def __init__(self, root: Path, host_id: str) -> None:
        self._root = root
        self._host_id = host_id

    def _path(self, function_id: str) -> Path:
        return self._root / status_blob_name(self._host_id, function_id)

    def read(self, function_id: str) -> dict[str, str] | None:
        path = self._path(function_id)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("Unreadable timer status %s: starting the schedule afresh", path)
            return None
        return {str(k): str(v) for k, v in document.items()} if isinstance(document, dict) else None

    def write(self, function_id: str, status: Mapping[str, str]) -> None:
        path = self._path(function_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(status)), encoding="utf-8")
        tmp.replace(path)


class BlobStatusStore:
    """The real host's location: ``azure-webjobs-hosts/timers/<hostId>/<functionId>/status``."""

    def __init__(self, connection: str, host_id: str) -> None:
        from devstack.host.storage import HOSTS_CONTAINER, blob_service

        self._container = blob_service(connection).get_container_client(HOSTS_CONTAINER)
        self._host_id = host_id

    def read(self, function_id: str) -> dict[str, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._container.get_blob_client(status_blob_name(self._host_id, function_id))
        try:
            document = json.loads(blob.download_blob().readall())
        except ResourceNotFoundError:
            return None
        except ValueError:
            return None
        return {str(k): str(v) for k, v in document.items()} if isinstance(document, dict) else None

    def write(self, function_id: str, status: Mapping[str, str]) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        blob = self._container.get_blob_client(status_blob_name(self._host_id, function_id))
        blob.upload_blob(json.dumps(dict(status)).encode("utf-8"), overwrite=True)


# -- the driver -------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class TimerState:
    spec: FunctionSpec
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool
    next: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimerFire:
    """One due occurrence: what the function receives as ``TimerRequest``."""

    spec: FunctionSpec
    scheduled: datetime
    past_due: bool
    reason: str
    schedule_status: Mapping[str, str] | None = field(default=None)

    def request_json(self) -> str:
        """The trigger payload the host sends the worker for a timer."""
        return json.dumps({
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": dict(self.schedule_status) if self.schedule_status else None,
            "IsPastDue": self.past_due,
        })

    def timer_request(self) -> Any:
        """A real ``func.TimerRequest``, decoded by the library's converter like the worker."""
        import azure.functions as func
        from azure.functions.meta import Datum

        return func.timer.TimerRequestConverter.decode(Datum(self.request_json(), "json"),
                                                       trigger_metadata={})


def default_use_monitor(schedule: Schedule, now: datetime) -> bool:
    first = schedule.next_after(now)
    return schedule.next_after(first) - first >= _MIN_MONITOR_INTERVAL


def timer_state(spec: FunctionSpec, *, zone: tzinfo = UTC,
                now: datetime | None = None) -> TimerState:
    schedule = parse_schedule(str(spec.trigger.get("schedule", "")), function=spec.name,
                              zone=zone)
    monitor = spec.trigger.get("useMonitor")
    use_monitor = (bool(monitor) if monitor is not None
                   else default_use_monitor(schedule, now or datetime.now(UTC)))
    return TimerState(spec=spec, schedule=schedule,
                      run_on_startup=bool(spec.trigger.get("runOnStartup", False)),
                      use_monitor=use_monitor)


class TimerDriver:
    """Decides when timers fire and fires them; time comes only from ``clock`` and ``sleep``."""

    def __init__(self, timers: Iterable[TimerState], store: StatusStore, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_sleep: float = 1.0) -> None:
        self._timers = list(timers)
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._max_sleep = max_sleep
        self._started = False

    @property
    def timers(self) -> list[TimerState]:
        return self._timers

    def start(self, now: datetime) -> list[TimerFire]:
        """Load persisted status and return the startup fires (past due, runOnStartup)."""
        fires: list[TimerFire] = []
        for timer in self._timers:
            status = self._store.read(timer.spec.function_id) if timer.use_monitor else None
            persisted_next = _parse_iso(status.get("Next")) if status else None
            timer.last = _parse_iso(status.get("Last")) if status else None
            timer.next = timer.schedule.next_after(now)
            if persisted_next is not None and persisted_next < now:
                log.info("Timer '%s' is past due (due %s, host was not running)",
                         timer.spec.name, _iso(persisted_next))
                fires.append(self._fire(timer, persisted_next, now, past_due=True))
            elif timer.run_on_startup:
                fires.append(self._fire(timer, now, now, past_due=False,
                                        reason="Timer fired at startup (runOnStartup)"))
            else:
                self._persist(timer, now)
            log.info("Timer '%s': next occurrence %s", timer.spec.name, _iso(timer.next))
        self._started = True
        return fires

    def due(self, now: datetime) -> list[TimerFire]:
        """The occurrences due at ``now``; each timer's schedule advances past ``now``."""
        if not self._started:
            return self.start(now)
        fires: list[TimerFire] = []
        for timer in self._timers:
            if timer.next is None or timer.next > now:
                continue
            scheduled = timer.next
            # More than one occurrence missed (a suspended machine, a clock jump): fire once.
            missed = timer.schedule.next_after(scheduled) <= now
            timer.next = timer.schedule.next_after(now)
            fires.append(self._fire(timer, scheduled, now, past_due=missed))
        return fires

    def next_wakeup(self) -> datetime | None:
        pending = [t.next for t in self._timers if t.next is not None]
        return min(pending) if pending else None

    def _fire(self, timer: TimerState, scheduled: datetime, now: datetime, *, past_due: bool,
              reason: str | None = None) -> TimerFire:
        if timer.next is None or timer.next <= now:
            timer.next = timer.schedule.next_after(now)
        timer.last = scheduled
        status = self._persist(timer, now)
        return TimerFire(spec=timer.spec, scheduled=scheduled, past_due=past_due,
                         reason=reason or f"Timer fired at {_iso(now)}",
                         schedule_status=status if timer.use_monitor else None)

    def _persist(self, timer: TimerState, now: datetime) -> dict[str, str]:
        status = {
            "Last": _iso(timer.last) if timer.last else "0001-01-01T00:00:00+00:00",
            "Next": _iso(timer.next) if timer.next else "",
            "LastUpdated": _iso(now),
        }
        if timer.use_monitor:
            try:
                self._store.write(timer.spec.function_id, status)
            except Exception:  # monitoring is best effort, the schedule goes on
                log.warning("Could not persist the schedule status of '%s'", timer.spec.name,
                            exc_info=True)
        return status

    async def tick(self, invoke: Callable[[TimerFire], Awaitable[Any]],
                   now: datetime | None = None) -> list[TimerFire]:
        """Fire everything due at ``now`` (default: the clock) through ``invoke``."""
        moment = now if now is not None else self._clock()
        fires = await asyncio.to_thread(self.due, moment)
        for fire in fires:
            await invoke(fire)
        return fires

    async def run(self, invoke: Callable[[TimerFire], Awaitable[Any]],
                  stopping: asyncio.Event) -> None:
        """Fire timers on schedule until ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await self.tick(invoke)
            except Exception:  # a failing tick must not stop the timers
                log.exception("Timer tick failed")
            wakeup = self.next_wakeup()
            if wakeup is None:
                await stopping.wait()
                return
            delay = (wakeup - self._clock()).total_seconds()
            await self._sleep(min(max(delay, 0.0), self._max_sleep))
