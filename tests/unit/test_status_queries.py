"""The status page's shared scans equal the queries they replace, on the same telemetry.

``status_windows`` (every KPI of the three windows in one query) must give what
``success_rate``, ``analysis_latency``, ``throttle_rate`` and ``error_breakdown`` give over each
window; ``status_alerts`` (every alert rule in one query) what each rule's own ``alert_*.kql``
gives over the rule's window — the query Azure runs. Run on the Monitor emulator's own Store
(duckdb-kql, in memory) with seven hours of app-shaped telemetry and incidents, so every window
and rule has data. Every row lies at least 5 s away from any window boundary, so the few
milliseconds between the two queries' clocks cannot move a row across one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from devstack.monitor.envelopes import Context, map_envelope
from devstack.monitor.store import Received, Store
from shared.monitoring.alerts import (
    STATUS_QUERY,
    STATUS_QUERY_RULES,
    alert_rules,
    evaluate,
    status_query_params,
)
from shared.monitoring.logsquery import load_queries
from shared.monitoring.status import WINDOWS
from shared.settings import Settings
from tests.support import telemetry_gen as gen

CTX = Context(workspace_id="00000000-0000-4000-8000-0000000010ca", resource_id="/rid")
QUERIES = load_queries()
SETTINGS = Settings.from_env({"VISION_ENDPOINT": "http://127.0.0.1:9",
                              "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                              "LATENCY_BASELINE_P95_MS": "1000"})


def _ingest(store: Store, envelopes: list[dict[str, Any]]) -> None:
    store.ingest([Received(json.dumps(e), map_envelope(e, CTX)) for e in envelopes])


@pytest.fixture(scope="module", params=["outage", "throttle", "latency"])
def store(request: pytest.FixtureRequest) -> Iterator[tuple[Store, datetime]]:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=7, seconds=5)  # rows at now - (20 k + 5) s
    traffic = gen.Traffic(per_minute=3)
    envelopes = traffic.envelopes(start, now, incident=request.param,
                                  onset=now - timedelta(minutes=2, seconds=5))
    for i in range(4):  # rejected images and probe traffic: counted or excluded as in the app
        t = now - timedelta(minutes=20 + 10 * i, seconds=5)
        envelopes.append(gen.request(t, duration_ms=90.0, outcome="rejected",
                                     error_class="invalid_input", reason="invalid_image"))
        envelopes.append(gen.request(t, duration_ms=9000.0, outcome="analyzed", synthetic=True))
    s = Store(None, retention=timedelta(days=400), clock=lambda: datetime.now(UTC))
    _ingest(s, envelopes)
    yield s, now
    s.close()


def rows(store: Store, name: str, window: timedelta | None, **params: Any
         ) -> list[dict[str, Any]]:
    span = (None, None) if window is None else (datetime.now(UTC) - window, None)
    result = store.query(QUERIES[name].render(params), span)
    names = [c for c, _ in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


R = TypeVar("R")
C = TypeVar("C")
ATTEMPTS = 5


def sandwiched(reference: Callable[[], R], combined: Callable[[], C]) -> tuple[C, R]:
    """``combined()`` with the ``reference()`` that held while it ran.

    ``reference()`` runs before and after; when both agree no row crossed a window boundary in
    between, so the combined answer must equal them. A crossing happens at most once per 20 s
    grid step, so a second attempt almost always agrees; five that all differ fail the test."""
    for _ in range(ATTEMPTS):
        before = reference()
        answer = combined()
        if reference() == before:
            return answer, before
    pytest.fail(f"rows crossed a window boundary during each of {ATTEMPTS} attempts")


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return bool(a == b)


def test_status_windows_equals_the_per_window_queries(store: tuple[Store, datetime]) -> None:
    s, _now = store

    def per_window() -> dict[str, dict[str, list[dict[str, Any]]]]:
        return {w.name: {name: rows(s, name, w.span) for name in
                         ("success_rate", "analysis_latency", "throttle_rate", "error_breakdown")}
                for w in WINDOWS}

    combined, reference = sandwiched(per_window, lambda: rows(s, "status_windows", None))
    checked = 0
    for w in WINDOWS:
        own = reference[w.name]
        mine = {(r["Scope"]): r for r in combined if r["Window"] == w.name and
                r["Scope"] != "errors"}
        [success] = own["success_rate"]
        for column in ("Invocations", "Succeeded", "Failed", "Analyzed", "Rejected",
                       "Duplicates", "SuccessRatePct"):
            assert close(mine["requests"][column], success[column]), (w.name, column)
            checked += 1
        latency = {r["Scope"]: r for r in own["analysis_latency"]}
        for scope in ("invocation", "vision_call"):
            for column in ("Count", "P50Ms", "P95Ms", "P99Ms"):
                assert close(mine[scope][column], latency[scope][column]), (w.name, scope, column)
                checked += 1
        [throttle] = own["throttle_rate"]
        for column in ("Calls", "Throttled", "Operations", "ThrottledOperations",
                       "ThrottleRatePct"):
            assert close(mine["attempts"][column], throttle[column]), (w.name, column)
            checked += 1
        keys = ("Outcome", "ErrorClass", "Reason", "StatusCode", "ServiceCode")
        errors = {tuple(r[k] for k in keys): r["Count"]
                  for r in combined if r["Window"] == w.name and r["Scope"] == "errors"}
        expected = {tuple(r[k] for k in keys): r["Count"]
                    for r in own["error_breakdown"]}
        assert errors == expected and expected, w.name
        checked += len(expected)
        assert mine["requests"]["Invocations"] > 0
    assert checked >= 3 * 20


def covered() -> list[Any]:
    """The rules ``status_alerts`` evaluates (the drift rules keep their own queries)."""
    rules = [r for r in alert_rules(SETTINGS) if r.name in STATUS_QUERY_RULES]
    assert len(rules) == len(STATUS_QUERY_RULES)
    return rules


def test_status_alerts_equals_each_rules_own_query(store: tuple[Store, datetime]) -> None:
    s, _now = store
    rules = covered()
    combined, reference = sandwiched(
        lambda: {r.name: rows(s, r.query, r.window, **r.params) for r in rules},
        lambda: rows(s, STATUS_QUERY, None, **status_query_params(rules)))
    compared = 0
    for rule in rules:
        own = reference[rule.name]
        mine = [r for r in combined if r["Rule"] == rule.name]
        assert len(mine) == len(own), rule.name  # "no data" exactly when the rule has none
        ours, theirs = evaluate(rule, mine), evaluate(rule, own)
        assert (ours.active, ours.rows) == (theirs.active, theirs.rows), rule.name
        assert close(ours.value, theirs.value), (rule.name, ours.value, theirs.value)
        compared += ours.value is not None
    assert compared == len(rules)  # every rule had data to compare


def test_an_incident_fires_the_same_rules_either_way(store: tuple[Store, datetime]) -> None:
    s, _now = store
    rules = covered()
    combined, reference = sandwiched(
        lambda: {r.name: rows(s, r.query, r.window, **r.params) for r in rules},
        lambda: rows(s, STATUS_QUERY, None, **status_query_params(rules)))
    ours = {r.name for r in rules if evaluate(r, [x for x in combined if x["Rule"] == r.name])
            .active}
    theirs = {r.name for r in rules if evaluate(r, reference[r.name]).active}
    assert ours == theirs and ours  # each incident fires at least one rule
