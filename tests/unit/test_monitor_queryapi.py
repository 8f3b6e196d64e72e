"""Query API semantics: response typing, value encoding, KQL error mapping."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from devstack.monitor.envelopes import Context, map_envelope
from devstack.monitor.queryapi import QueryFailure, encode_value, run_query
from devstack.monitor.store import Received, Store

CTX = Context(workspace_id="00000000-0000-4000-8000-0000000010ca", resource_id="/rid")
NOW = datetime(2024, 5, 31, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "q.duckdb", retention=timedelta(days=30), clock=lambda: NOW)
    env: dict[str, Any] = {
        "name": "Microsoft.ApplicationInsights.Request", "iKey": "k",
        "time": "2024-05-31T11:30:00Z", "tags": {"ai.operation.id": "op1"},
        "data": {"baseType": "RequestData", "baseData": {
            "id": "r1", "name": "POST /api/analyze", "duration": "0.00:00:00.250",
            "responseCode": "200", "success": True, "properties": {"tier": "S1"},
            "measurements": {"bytes": 2048}}},
    }
    s.ingest([Received(json.dumps(env), map_envelope(env, CTX))])
    yield s
    s.close()


def ask(store: Store, query: str, timespan: str | None = None) -> dict[str, Any]:
    return run_query(store, {"query": query, "timespan": timespan}, now=NOW)


def test_columns_are_typed_and_values_encoded(store: Store) -> None:
    answer = ask(store, "AppRequests | project TimeGenerated, Name, Success, DurationMs, "
                        "ItemCount, Properties, tier = tostring(Properties.tier), "
                        "bytes = toreal(Measurements.bytes) | extend n = 1")
    [table] = answer["tables"]
    assert table["name"] == "PrimaryResult"
    assert [(c["name"], c["type"]) for c in table["columns"]] == [
        ("TimeGenerated", "datetime"), ("Name", "string"), ("Success", "bool"),
        ("DurationMs", "real"), ("ItemCount", "int"), ("Properties", "dynamic"),
        ("tier", "string"), ("bytes", "real"), ("n", "long")]
    assert table["rows"] == [["2024-05-31T11:30:00.000000Z", "POST /api/analyze", True, 250.0,
                              1, '{"tier": "S1"}', "S1", 2048.0, 1]]
    json.dumps(answer, allow_nan=False)  # strictly valid JSON


def test_aggregates_and_timespan(store: Store) -> None:
    answer = ask(store, "AppRequests | summarize n = count(), p95 = percentile(DurationMs, 95) "
                        "by bin(TimeGenerated, 1h)", "PT3600.0S")
    assert answer["tables"][0]["rows"] == [["2024-05-31T11:00:00.000000Z", 1, 250.0]]
    assert ask(store, "AppRequests | count", "PT600S")["tables"][0]["rows"] == [[0]]


@pytest.mark.parametrize(("value", "kind", "encoded"), [
    (None, "string", None),
    (float("nan"), "real", "NaN"),
    (float("inf"), "real", "Infinity"),
    (timedelta(seconds=90), "timespan", "00:01:30"),
    (Decimal("1.50"), "decimal", "1.50"),
    (UUID(int=1), "guid", "00000000-0000-0000-0000-000000000001"),
    (date(2024, 1, 2), "datetime", "2024-01-02T00:00:00.000000Z"),
    ([1, 2], "dynamic", "[1,2]"),
    ({"a": datetime(2024, 1, 1, tzinfo=UTC)}, "dynamic", '{"a":"2024-01-01T00:00:00.000000Z"}'),
    ('{"x":1}', "dynamic", '{"x":1}'),
])
def test_value_encoding(value: Any, kind: str, encoded: Any) -> None:
    assert encode_value(value, kind) == encoded


def failure(store: Store, query: str, timespan: str | None = None) -> dict[str, Any]:
    with pytest.raises(QueryFailure) as caught:
        ask(store, query, timespan)
    assert caught.value.status == 400
    body = caught.value.body()["error"]
    assert body["code"] == "BadArgumentError"
    return body


def test_syntax_error(store: Store) -> None:
    body = failure(store, "AppRequests | where")
    assert body["innererror"]["code"] == "SyntaxError"
    assert body["innererror"]["innererror"]["code"] == "SYN0002"


@pytest.mark.parametrize("query", [
    "AppRequests | make-series n = count() on TimeGenerated step 1h",
    "AppRequests | summarize percentiles(DurationMs, 50, 95)",
])
def test_unsupported_kql_is_refused_loudly(store: Store, query: str) -> None:
    body = failure(store, query)
    assert body["innererror"]["code"] == "SemanticError"
    inner = body["innererror"]["innererror"]
    assert inner["code"] == "UnsupportedByLocalEmulator"
    assert "unsupported KQL construct" in inner["message"]


@pytest.mark.parametrize("query", ["NoSuchTable | take 1", "AppRequests | project NoSuchColumn"])
def test_unknown_names_are_semantic_errors(store: Store, query: str) -> None:
    body = failure(store, query)
    assert body["innererror"]["code"] == "SemanticError"
    assert "Traceback" not in json.dumps(body)


@pytest.mark.parametrize("body", [None, {}, {"query": ""}, {"query": 1},
                                  {"query": "AppRequests", "timespan": 5}])
def test_bad_bodies(store: Store, body: Any) -> None:
    with pytest.raises(QueryFailure) as caught:
        run_query(store, body, now=NOW)
    assert caught.value.status == 400


def test_bad_timespan(store: Store) -> None:
    assert "timespan" in failure(store, "AppRequests", "PT-1H")["innererror"]["message"]


def test_statistics_on_request(store: Store) -> None:
    answer = run_query(store, {"query": "AppRequests | count"}, now=NOW,
                       prefer="wait=60,include-statistics=true")
    assert answer["statistics"]["query"]["executionTime"] >= 0
