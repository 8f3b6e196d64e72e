"""Durations and timespans at the Monitor emulator's edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devstack.monitor.timeparse import (
    format_instant,
    format_kql_timespan,
    parse_ai_duration,
    parse_instant,
    parse_iso_duration,
    parse_timespan,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "ms"), [
    ("0.00:00:01.500", 1500.0),
    ("0.00:00:00.000", 0.0),
    ("1.02:03:04.005", ((86_400 + 2 * 3600 + 3 * 60 + 4) * 1000) + 5.0),
    ("00:00:00.1234567", 123.4567),
    ("12:00:00", 12 * 3_600_000.0),
])
def test_ai_duration_to_milliseconds(text: str, ms: float) -> None:
    assert parse_ai_duration(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "1.5", "0.25:00:00", "0.00:61:00", "abc", "-0.00:00:01"])
def test_bad_ai_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_ai_duration(text)


def test_instants_accept_seven_digits_and_missing_offset() -> None:
    assert parse_instant("2024-05-01T12:00:00.1234567Z") == datetime(
        2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert parse_instant("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_instant("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_instant("yesterday")


@pytest.mark.parametrize(("text", "span"), [
    ("PT3600.0S", timedelta(hours=1)),
    ("P1D", timedelta(days=1)),
    ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
    ("PT0.5S", timedelta(milliseconds=500)),
    ("P1W", timedelta(weeks=1)),
])
def test_iso_durations(text: str, span: timedelta) -> None:
    assert parse_iso_duration(text) == span


@pytest.mark.parametrize("text", ["P", "PT", "1H", "PT1X", "P1DT", "-P1D", "P1M", "P1Y", ""])
def test_bad_iso_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso_duration(text)


def test_timespan_forms() -> None:
    assert parse_timespan(None, NOW) == (None, None)
    assert parse_timespan("PT3600.0S", NOW) == (NOW - timedelta(hours=1), NOW)
    start = datetime(2024, 4, 1, tzinfo=UTC)
    assert parse_timespan("2024-04-01T00:00:00.000Z/PT86400.0S", NOW) == (
        start, start + timedelta(days=1))
    assert parse_timespan("2024-04-01T00:00:00.000Z/2024-04-03T00:00:00.000Z", NOW) == (
        start, start + timedelta(days=2))
    assert parse_timespan("P1D/2024-04-02T00:00:00Z", NOW) == (start, start + timedelta(days=1))
    with pytest.raises(ValueError, match="before"):
        parse_timespan("2024-04-03T00:00:00Z/2024-04-01T00:00:00Z", NOW)


def test_formatting_for_the_query_api() -> None:
    assert format_instant(datetime(2024, 5, 1, 12, tzinfo=UTC)) == "2024-05-01T12:00:00.000000Z"
    assert format_instant(datetime(2024, 5, 1, 12)) == "2024-05-01T12:00:00.000000Z"
    assert format_kql_timespan(timedelta(seconds=1, milliseconds=500)) == "00:00:01.5000000"
    assert format_kql_timespan(timedelta(days=2, hours=3)) == "2.03:00:00"
    assert format_kql_timespan(-timedelta(minutes=5)) == "-00:05:00"
