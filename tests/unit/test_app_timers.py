"""The app's own timers (probes, quota, re-drive of parked blobs) on the schedules the example
settings give them, driven by the local host's timer driver with a fake clock: an hour passes in
milliseconds."""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack.host.host import Host, HostOptions
from devstack.host.timers import MemoryStatusStore, TimerFire
from tests.support.clocks import TimerClock

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _schedules_from_example() -> dict[str, str]:
    values = json.loads((REPO_ROOT / "local.settings.json.example").read_text())["Values"]
    return {k: v for k, v in values.items() if k.endswith("_SCHEDULE")}


def test_probe_and_quota_timers_fire_on_their_schedules(tmp_path: Path) -> None:
    schedules = _schedules_from_example()
    assert schedules == {"PROBE_SCHEDULE": "0 */5 * * * *",
                         "PROBE_E2E_SCHEDULE": "30 */10 * * * *",
                         "QUOTA_SCHEDULE": "0 7 * * * *",
                         "TUNING_SCHEDULE": "0 15 3 * * *",
                         "REDRIVE_SCHEDULE": "*/10 * * * * *"}
    clock = TimerClock(T0)
    environ = {**os.environ, **schedules}
    host = Host(HostOptions(script_root=REPO_ROOT, state_dir=tmp_path / "state",
                            settings_path=tmp_path / "local.settings.json",
                            triggers=frozenset({"timerTrigger"})),
                clock=clock, sleep=clock.sleep, environ=environ, timer_store=MemoryStatusStore())
    host.load()
    assert host.timer_driver is not None
    fired: dict[str, list[TimerFire]] = defaultdict(list)

    async def record(fire: TimerFire) -> None:  # the schedule is under test, not the probes
        fired[fire.spec.name].append(fire)

    async def main() -> None:
        clock.stopping = asyncio.Event()
        clock.end = T0 + timedelta(hours=3, minutes=20)  # past the daily review
        assert host.timer_driver is not None
        await host.timer_driver.run(record, clock.stopping)

    try:
        asyncio.run(main())
    finally:
        host.invoker.shutdown()

    def times(name: str) -> list[str]:
        return [f.scheduled.strftime("%H:%M:%S") for f in fired[name]]

    def every(start_min: int, step_min: int, second: int) -> list[str]:
        return [f"{m // 60:02d}:{m % 60:02d}:{second:02d}" for m in range(start_min, 200, step_min)]

    assert times("vision_probe") == every(5, 5, 0)
    assert times("e2e_probe") == every(0, 10, 30)
    assert times("quota_check") == ["00:07:00", "01:07:00", "02:07:00", "03:07:00"]
    assert times("tuning_review") == ["03:15:00"]
    redrives = times("redrive_parked")
    assert redrives[:3] == ["00:00:10", "00:00:20", "00:00:30"] and redrives[-1] == "03:19:50"
    assert len(redrives) == 1199  # every 10 s for 3 h 20 min
    assert not any(f.past_due for fires in fired.values() for f in fires)
