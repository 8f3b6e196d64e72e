"""The status report's canned query answers: a fake query runner over them, the rows of a
healthy app (``healthy_answers``, at ``NOW``) and the builders of windows and alert rows."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.monitoring.logsquery import QueryError, QueryResult, QuerySpec

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def result(name: str, rows: list[dict[str, Any]]) -> QueryResult:
    return QueryResult(name=name, columns=tuple(rows[0]) if rows else (), rows=rows)


class FakeRunner:
    """Answers each query from canned rows; records every ``run_many`` call."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]] | QueryError],
                 fail: QueryError | None = None) -> None:
        self.answers = answers
        self.fail = fail
        self.calls: list[Sequence[QuerySpec]] = []
        self.lock = threading.Lock()

    @property
    def queries(self) -> int:
        with self.lock:
            return sum(len(c) for c in self.calls)

    def run_many(self, items: Sequence[QuerySpec]) -> dict[str, QueryResult | QueryError]:
        with self.lock:
            self.calls.append(items)
        out: dict[str, QueryResult | QueryError] = {}
        for r in items:
            key = r.key or r.name
            if self.fail is not None:
                out[key] = self.fail
                continue
            answer = self.answers.get(key, self.answers.get(r.name, []))
            out[key] = answer if isinstance(answer, QueryError) else result(r.name, answer)
        return out


def window_rows(name: str, n: int) -> list[dict[str, Any]]:
    return [
        {"Window": name, "Scope": "requests", "Invocations": n, "Succeeded": n - 1, "Failed": 1,
         "Analyzed": n - 3, "Rejected": 2, "Duplicates": 0,
         "SuccessRatePct": round(100 * (n - 1) / n, 3)},
        {"Window": name, "Scope": "invocation", "Count": n, "P50Ms": 800.0, "P95Ms": 1200.0,
         "P99Ms": 1500.0},
        {"Window": name, "Scope": "vision_call", "Count": n, "P50Ms": 600.0, "P95Ms": 900.0,
         "P99Ms": 1000.0},
        {"Window": name, "Scope": "attempts", "Calls": n + 2, "Throttled": 2, "Operations": n,
         "ThrottledOperations": 2, "ThrottleRatePct": 2.0},
        {"Window": name, "Scope": "errors", "Outcome": "rejected", "ErrorClass": "invalid_input",
         "Reason": "invalid_image", "StatusCode": "", "ServiceCode": "", "Count": 2},
        {"Window": name, "Scope": "errors", "Outcome": "failed", "ErrorClass": "transient",
         "Reason": "server_error", "StatusCode": "503", "ServiceCode": "", "Count": 1},
    ]


def alert_rows(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {
        "error-rate": {"ErrorRate": 0.0, "Total": 20},
        "latency-p95": {"P95Ms": 1200.0, "Total": 20},
        "probe-availability": {"Probe": "vision", "AvailabilityPct": 100.0, "Total": 3},
        "throttling": {"ThrottleRate": 0.0, "Total": 30},
        "quota-forecast": {"ForecastRatio": 0.5},
        "slo-burn-fast": {"BurnRate": 0.0, "Total": 20},
        "slo-burn-slow": {"BurnRate": 0.5, "Total": 200},
    }
    for name, row in overrides.items():
        rows[name.replace("_", "-")] = row
    return [{"Rule": name, **row} for name, row in rows.items()]


def healthy_answers() -> dict[str, list[dict[str, Any]] | QueryError]:
    answers: dict[str, list[dict[str, Any]] | QueryError] = {}
    answers["status_windows"] = [row for name, n in (("15m", 90), ("1h", 360), ("24h", 8640))
                                 for row in window_rows(name, n)]
    answers["status_alerts"] = alert_rows()
    answers["status_probes"] = [
        {"probe": "vision", "runs": 288, "passed": 288, "availability_pct": 100.0,
         "last_time": NOW - timedelta(minutes=2), "last_success": True,
         "last_duration_ms": 900.0, "last_message": "passed", "last_location": "westeurope"}]
    answers["status_freshness"] = [
        {"table_name": "AppRequests", "newest": NOW - timedelta(seconds=70), "age_s": 70.0},
        {"table_name": "AppMetrics", "newest": NOW - timedelta(seconds=40), "age_s": 40.0}]
    answers["status_quota"] = [
        {"metric": "quota.used_ratio", "value": 0.25, "reported": NOW - timedelta(hours=1)},
        {"metric": "quota.forecast_ratio", "value": 0.5, "reported": NOW - timedelta(hours=1)}]
    answers["status_series_requests"] = [
        {"bin_start": NOW - timedelta(minutes=4 - i), "requests": 12, "failed": 0,
         "success_rate": 1.0, "p50_ms": 800.0, "p95_ms": 1100.0} for i in range(3)]
    answers["status_series_vision"] = [{"bin_start": NOW, "calls": 13, "throttled": 1}]
    answers["status_series_availability"] = [{"bin_start": NOW, "runs": 2, "passed": 2,
                                              "availability_pct": 100.0}]
    return answers
