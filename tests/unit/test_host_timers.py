"""Timer trigger of the local host: NCRONTAB schedules, monitor status and past_due, fake clock."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.host import Host, HostConfigError, HostOptions
from devstack.host.loader import FunctionSpec
from devstack.host.timers import (
    FileStatusStore,
    MemoryStatusStore,
    TimerDriver,
    TimerFire,
    parse_schedule,
    status_blob_name,
    timer_state,
)
from tests.support.clocks import TimerClock

APP_ROOT = Path(__file__).resolve().parents[1] / "host_app"
T0 = datetime(2030, 1, 1, 0, 0, 3, tzinfo=UTC)


def _spec(schedule: str, **extra: Any) -> FunctionSpec:
    trigger = {"type": "timerTrigger", "name": "timer", "schedule": schedule, **extra}
    return FunctionSpec(name="tick", func=lambda timer: None, trigger=trigger,
                        bindings=(trigger,), raw_bindings=(trigger,), is_async=False)


def test_six_field_ncrontab_is_seconds_first() -> None:
    schedule = parse_schedule("0 */5 * * * *")
    assert schedule.next_after(T0) == datetime(2030, 1, 1, 0, 5, 0, tzinfo=UTC)
    every_ten_seconds = parse_schedule("*/10 * * * * *")
    assert every_ten_seconds.next_after(T0) == datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert parse_schedule("00:00:30").next_after(T0) == T0 + timedelta(seconds=30)


def test_bad_schedule_is_a_clear_error() -> None:
    with pytest.raises(HostConfigError, match=r"'tick'.*NCRONTAB"):
        parse_schedule("every five minutes", function="tick")


def test_driver_fires_exactly_at_due_times() -> None:
    driver = TimerDriver([timer_state(_spec("*/10 * * * * *"), now=T0)], MemoryStatusStore())
    assert driver.due(T0) == []
    fired: list[datetime] = []
    moment = T0
    while moment < T0 + timedelta(seconds=40):
        moment += timedelta(seconds=1)
        fired += [fire.scheduled for fire in driver.due(moment)]
    assert fired == [datetime(2030, 1, 1, 0, 0, s, tzinfo=UTC) for s in (10, 20, 30, 40)]


def test_not_due_one_microsecond_early() -> None:
    driver = TimerDriver([timer_state(_spec("0 */5 * * * *"), now=T0)], MemoryStatusStore())
    driver.due(T0)
    due = datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
    assert driver.due(due - timedelta(microseconds=1)) == []
    [fire] = driver.due(due)
    assert fire.scheduled == due
    assert fire.past_due is False


def test_past_due_after_downtime_fires_once() -> None:
    store = MemoryStatusStore()
    first = TimerDriver([timer_state(_spec("0 */5 * * * *"), now=T0)], store)
    first.due(T0)
    assert store.read("Host.Functions.tick")["Next"] == "2030-01-01T00:05:00+00:00"

    # The host was down from 00:00:03 to 00:17:00: three occurrences missed, one past-due fire.
    restart = datetime(2030, 1, 1, 0, 17, tzinfo=UTC)
    second = TimerDriver([timer_state(_spec("0 */5 * * * *"), now=restart)], store)
    [fire] = second.due(restart)
    assert fire.past_due is True
    assert fire.scheduled == datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
    request = fire.timer_request()
    assert request.past_due is True
    assert request.schedule_status["Next"] == "2030-01-01T00:20:00+00:00"
    assert second.due(restart + timedelta(minutes=2)) == []
    assert [f.past_due for f in second.due(datetime(2030, 1, 1, 0, 20, tzinfo=UTC))] == [False]


def test_run_on_startup_and_monitor_defaults() -> None:
    driver = TimerDriver([timer_state(_spec("0 0 * * * *", runOnStartup=True), now=T0)],
                         MemoryStatusStore())
    [fire] = driver.due(T0)
    assert fire.past_due is False
    assert "startup" in fire.reason
    assert timer_state(_spec("*/10 * * * * *"), now=T0).use_monitor is False
    assert timer_state(_spec("0 */5 * * * *"), now=T0).use_monitor is True
    unmonitored = TimerDriver([timer_state(_spec("*/10 * * * * *"), now=T0)], MemoryStatusStore())
    unmonitored.due(T0)
    [fire] = unmonitored.due(T0 + timedelta(seconds=7))
    assert json.loads(fire.request_json())["ScheduleStatus"] is None


def test_file_status_store_mirrors_the_blob_layout(tmp_path: Path) -> None:
    store = FileStatusStore(tmp_path, "my-host")
    store.write("Host.Functions.tick", {"Last": "a", "Next": "b", "LastUpdated": "c"})
    path = tmp_path / "timers" / "my-host" / "Host.Functions.tick" / "status"
    assert status_blob_name("my-host", "Host.Functions.tick") == \
        "timers/my-host/Host.Functions.tick/status"
    assert json.loads(path.read_text()) == {"Last": "a", "Next": "b", "LastUpdated": "c"}
    assert store.read("Host.Functions.tick") == {"Last": "a", "Next": "b", "LastUpdated": "c"}


def test_run_loop_with_fake_clock_and_sleep() -> None:
    clock = TimerClock(T0)
    driver = TimerDriver([timer_state(_spec("*/10 * * * * *"), now=T0)], MemoryStatusStore(),
                         clock=clock, sleep=clock.sleep)
    fires: list[TimerFire] = []

    async def invoke(fire: TimerFire) -> None:
        fires.append(fire)

    async def main() -> None:
        clock.stopping = asyncio.Event()
        clock.end = T0 + timedelta(seconds=31)
        await driver.run(invoke, clock.stopping)

    asyncio.run(main())
    assert [f.scheduled.second for f in fires] == [10, 20, 30]
    assert all(s <= 1.0 for s in clock.slept)


def test_timer_fires_on_schedule_through_the_host_with_a_fake_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acceptance: the test app's timer, loaded and driven by the host itself, on a fake clock."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("HOST_TEST_RECORD", str(record))
    environ = {**os.environ, "TEST_SCHEDULE": "*/10 * * * * *"}
    clock = TimerClock(T0)
    host = Host(HostOptions(script_root=APP_ROOT, state_dir=tmp_path / "state",
                            settings_path=tmp_path / "local.settings.json",
                            triggers=frozenset({"timerTrigger"})),
                clock=clock, sleep=clock.sleep, environ=environ, timer_store=MemoryStatusStore())
    host.load()
    assert [s.name for s in host.functions] == ["tick"]
    assert host.timer_driver is not None
    driver = host.timer_driver

    async def main() -> None:
        clock.stopping = asyncio.Event()
        clock.end = T0 + timedelta(seconds=45)
        await driver.run(host.fire_timer, clock.stopping)

    try:
        asyncio.run(main())
    finally:
        host.invoker.shutdown()
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["last"] for r in rows] == [f"2030-01-01T00:00:{s}+00:00" for s in (10, 20, 30, 40)]
    assert [r["next"] for r in rows] == [f"2030-01-01T00:00:{s}+00:00" for s in (20, 30, 40, 50)]
    assert not any(r["past_due"] for r in rows)
