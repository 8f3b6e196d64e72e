"""Detection: the alert rules fire soon enough on incidents and stay quiet on a healthy period.

Simulated time: for "k minutes after onset" the Monitor emulator is emptied and refilled with
telemetry whose onset lies k minutes before the real now (the emulator's KQL ``ago()`` reads
the wall clock), then the rules are evaluated exactly as the status endpoint evaluates them —
the same single queries (every rule in ``status_alerts.kql``; tests/unit/test_status_queries.py
holds it equal to each rule's own ``alert_*.kql``, which Azure runs). Every evaluation models one
run of a rule with a 1-minute frequency, so "active at k" means "fires at most k minutes after
onset".

Targets: outage ≤ 2 simulated minutes, latency x3 ≤ 5, 429 storm ≤ 2; none on the
healthy period. No test waits for real minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.monitoring.logsquery import LogsQueryRunner
from shared.monitoring.status import CLIENT_OPTIONS, build_status
from shared.settings import Settings
from tests.support.telemetry_gen import MonitorEmulator, Traffic, running_monitor

pytestmark = pytest.mark.integration

HISTORY = timedelta(minutes=16)  # covers every short rule window (the longest is 15 min)
TRAFFIC = Traffic(per_minute=6, base_ms=700.0)
SETTINGS = {
    "VISION_ENDPOINT": "http://127.0.0.1:9",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    # p95 of the healthy traffic is ~1 s; x3 latency is ~2.5 s at p95
    "LATENCY_BASELINE_P95_MS": "1000",
    "ALERT_LATENCY_FACTOR": "2",
    "ANALYSIS_SLO_TARGET": "0.99",
}


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEmulator]:
    yield from running_monitor(Path(tmp_path_factory.mktemp("detection-monitor")))


@pytest.fixture(scope="module")
def settings(monitor: MonitorEmulator) -> Settings:
    return Settings.from_env({**SETTINGS, "LOGS_QUERY_ENDPOINT": monitor.query_endpoint,
                              "LOGS_WORKSPACE_ID": monitor.workspace_id})


def active_after(monitor: MonitorEmulator, settings: Settings, incident: str | None,
                 minutes: int) -> set[str]:
    """The alerts active ``minutes`` simulated minutes after ``incident`` began."""
    monitor.reset()
    now = datetime.now(UTC)
    onset = now - timedelta(minutes=minutes)
    envelopes = TRAFFIC.envelopes(now - HISTORY, now, incident=incident, onset=onset)
    assert monitor.post(envelopes) == len(envelopes)
    runner = LogsQueryRunner.from_settings(settings, client_options=CLIENT_OPTIONS)
    report = build_status(settings, runner, now=now, quota_loader=lambda _s: None)
    errors = [a.error for a in report.alerts if a.error]
    assert not errors, errors
    return {a.rule.name for a in report.active_alerts}


def first_detection(monitor: MonitorEmulator, settings: Settings, incident: str, alert: str,
                    limit: int) -> tuple[int, set[str]]:
    for minute in range(1, limit + 1):
        active = active_after(monitor, settings, incident, minute)
        if alert in active:
            return minute, active
    pytest.fail(f"{alert} not active within {limit} simulated minutes of a {incident}")


def test_healthy_period_raises_nothing(monitor: MonitorEmulator, settings: Settings) -> None:
    assert active_after(monitor, settings, None, 0) == set()


def test_full_outage_detected_within_2_minutes(monitor: MonitorEmulator,
                                               settings: Settings) -> None:
    minute, active = first_detection(monitor, settings, "outage", "error-rate", limit=2)
    assert minute <= 2
    assert "latency-p95" not in active  # failing fast is not a latency incident


def test_latency_x3_detected_within_5_minutes(monitor: MonitorEmulator,
                                              settings: Settings) -> None:
    minute, active = first_detection(monitor, settings, "latency", "latency-p95", limit=5)
    assert minute <= 5
    assert not active & {"error-rate", "throttling", "slo-burn-fast"}


def test_429_storm_detected_within_2_minutes(monitor: MonitorEmulator,
                                             settings: Settings) -> None:
    minute, active = first_detection(monitor, settings, "throttle", "throttling", limit=2)
    assert minute <= 2
    assert "error-rate" not in active  # retries absorb the 429s: throttled, not failing
