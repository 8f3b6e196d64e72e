"""One convention for durations: result documents, records and telemetry carry milliseconds,
rounded to the microsecond."""

from __future__ import annotations


def ms(seconds: float) -> float:
    """``seconds`` (a clock difference) as milliseconds rounded to 3 decimals."""
    return round(seconds * 1000, 3)
