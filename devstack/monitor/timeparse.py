"""Time formats at the emulator's two edges.

* Ingestion: the exporter's durations (``d.hh:mm:ss.ffffff``) and envelope times (RFC 3339).
* Query: the ``timespan`` of a Log Analytics query (ISO 8601 ``duration``, ``start/end`` or
  ``start/duration``) and how a KQL ``timespan`` value is written back in a response.

Pure functions, no I/O; every parse error is a :class:`ValueError` with a message fit for a client.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import isodate

_AI_DURATION = re.compile(
    r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.(?P<frac>\d{1,7}))?$"
)
_FRACTION = re.compile(r"\.(\d+)")


def parse_ai_duration(text: str) -> float:
    """``"0.00:00:01.500"`` → ``1500.0`` milliseconds (the ``DurationMs`` column)."""
    match = _AI_DURATION.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"duration {text!r} is not in the format d.hh:mm:ss.ffffff")
    hours, minutes, seconds = int(match["h"]), int(match["m"]), int(match["s"])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"duration {text!r} has an out-of-range component")
    total_s = int(match["days"] or 0) * 86_400 + hours * 3_600 + minutes * 60 + seconds
    return total_s * 1000.0 + float(f"0.{match['frac'] or 0}") * 1000.0


def parse_instant(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 instant as an aware UTC datetime.

    Accepts any number of fractional digits (the exporter's contract says consumers must) and
    treats a value without an offset as UTC, the way the service does.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("time is missing or empty")
    value = text.strip()
    if value[-1] in "zZ":
        value = value[:-1] + "+00:00"
    # Python parses at most 6 fractional digits; .NET writers send 7.
    value = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value, count=1)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"time {text!r} is not an ISO 8601 date-time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_iso_duration(text: str) -> timedelta:
    """ISO 8601 duration (``PT3600.0S``, ``P1D``, ``P1DT2H30M``) as a timedelta.

    Parsed by isodate, which is lenient where a query's ``timespan`` is not: a duration with no
    element after ``P`` or ``T`` (``PT``, ``P1DT``), a sign, and years or months (no fixed
    length) are refused here.
    """
    value = text.strip().upper() if isinstance(text, str) else ""
    if not value.startswith("P") or value.endswith(("P", "T")):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    try:
        span = isodate.parse_duration(value)
    except isodate.ISO8601Error as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 duration") from exc
    if not isinstance(span, timedelta):
        raise ValueError(f"{text!r}: years and months have no fixed length; use days")
    return span


def parse_timespan(text: str | None, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The ``[start, end]`` window a query's ``timespan`` selects; ``(None, None)`` when absent.

    A bare duration ends at ``now``; ``start/duration`` and ``start/end`` are absolute (a
    ``duration/end`` form is accepted too). Start after end is an error, as in the service.
    """
    if text is None or not str(text).strip():
        return None, None
    value = str(text).strip()
    if "/" not in value:
        span = parse_iso_duration(value)
        return now - span, now
    first, _, second = value.partition("/")
    first, second = first.strip(), second.strip()
    if first.upper().startswith("P"):
        end = parse_instant(second)
        return end - parse_iso_duration(first), end
    start = parse_instant(first)
    end = start + parse_iso_duration(second) if second.upper().startswith("P") else (
        parse_instant(second)
    )
    if end < start:
        raise ValueError(f"timespan {text!r} ends before it starts")
    return start, end


def format_instant(value: datetime) -> str:
    """A datetime as the query API writes it: ISO 8601 in UTC with a ``Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_kql_timespan(value: timedelta) -> str:
    """A timedelta as KQL writes a ``timespan``: ``[-][d.]hh:mm:ss[.fffffff]``."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    days, rest = value.days, value.seconds
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    head = f"{sign}{days}." if days else sign
    text = f"{head}{hours:02d}:{minutes:02d}:{seconds:02d}"
    if value.microseconds:
        text += f".{value.microseconds * 10:07d}"
    return text
