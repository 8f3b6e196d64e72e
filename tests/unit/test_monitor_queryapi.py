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
    "AppRequests | summarize p = percentiles(DurationMs, 50, 95)",
    "AppRequests | summarize percentiles(DurationMs, ItemCount)",
    "AppRequests | summarize percentilesw(DurationMs * 2, ItemCount, 50)",
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


def test_syntax_error_names_the_token_and_position(store: Store) -> None:
    inner = failure(store, "bad query")["innererror"]["innererror"]
    assert inner == {"code": "SYN0002", "line": 1, "pos": 5, "token": "query",
                     "message": "Query could not be parsed at 'query' on line [1,5]"}


def test_unknown_names_use_kusto_wording(store: Store) -> None:
    table = failure(store, "AppInsights | where TimeGenerated > ago(12h)")
    assert table["innererror"]["innererror"] == {
        "code": "SEM0100",
        "message": "Failed to resolve table or column expression named 'AppInsights'"}
    column = failure(store, "AppRequests | where NoSuchColumn == 1")
    assert column["innererror"]["innererror"]["message"] == (
        "Failed to resolve scalar expression named 'NoSuchColumn'")


def test_aggregates_over_no_rows_follow_the_documented_defaults(store: Store) -> None:
    answer = ask(store, "AppRequests | where Name == 'none' | summarize avg(DurationMs), "
                        "avgif(DurationMs, Success), sum(DurationMs), count(), "
                        "percentile(DurationMs, 50), stdev(DurationMs)")
    assert answer["tables"][0]["rows"] == [[None, None, 0.0, 0, None, 0.0]]
    assert ask(store, "AppRequests | summarize avg(DurationMs)")["tables"][0]["rows"] == [
        [250.0]]


def test_percentiles_expand_with_the_service_names(store: Store) -> None:
    answer = ask(store, "range x from 1 to 10 step 1 | summarize percentiles(x, 50, 95, 99.9)")
    [table] = answer["tables"]
    assert [c["name"] for c in table["columns"]] == [
        "percentile_x_50", "percentile_x_95", "percentile_x_99_9"]
    assert table["rows"] == [[5, 10, 10]]
    named = ask(store, "range x from 1 to 4 step 1 | summarize (lo, hi) = percentiles(x, 25, 75)")
    assert named["tables"][0]["columns"][0]["name"] == "lo"
    assert named["tables"][0]["rows"] == [[1, 3]]


def test_weighted_percentiles_and_the_overflow_partial_error(store: Store) -> None:
    answer = ask(store, "range x from 1 to 10 step 1 | extend w = iff(x == 10, 100, 1) "
                        "| summarize percentilesw(x, w, 50, 5)")
    assert answer["tables"][0]["rows"] == [[10, 6]]
    assert "error" not in answer
    # The SDK sample's query: the weights' sum overflows a long; Kusto answers and warns.
    partial = ask(store, "let Weight = 92233720368547758;\nrange x from 1 to 3 step 1\n"
                         "| summarize percentilesw(x, Weight * 100, 50)")
    assert partial["tables"][0]["rows"] == [[2]]
    assert partial["error"]["code"] == "PartialError"
    assert "overflow" in partial["error"]["details"][0]["innererror"]["message"]


def test_notempty_is_isnotempty_but_not_inside_strings(store: Store) -> None:
    answer = ask(store, "AppRequests | where notempty(Name) | project s = 'notempty(Name)'")
    assert answer["tables"][0]["rows"] == [["notempty(Name)"]]


def test_range_is_streamed_not_built_as_a_list(store: Store) -> None:
    # Past 2^32 elements: a list that size cannot be built at all.
    answer = ask(store, "range x from 1 to 5000000000 step 1 | count")
    assert answer["tables"][0]["rows"] == [[5_000_000_000]]


def test_performance_bucket_and_standard_tables(store: Store) -> None:
    answer = ask(store, "AppRequests | summarize count() by PerformanceBucket")
    assert answer["tables"][0]["rows"] == [["250ms-500ms", 1]]
    for table in ("AzureActivity", "Heartbeat", "Usage", "AppBrowserTimings",
                  "AppSystemEvents", "AppPerformanceCounters", "AppPageViews"):
        assert ask(store, f"{table} | count")["tables"][0]["rows"] == [[0]], table


def test_render_metadata_only_when_asked(store: Store) -> None:
    query = ("AppRequests | summarize n = count() by Name | sort by n desc "
             "| render columnchart with (title='Requests', xtitle='Name', ytitle='Count', "
             "ymax=100, ycolumns=n, Name)")
    assert "render" not in ask(store, query)
    answer = run_query(store, {"query": query}, now=NOW, prefer="include-render=true")
    assert answer["tables"][0]["rows"] == [["POST /api/analyze", 1]]
    render = answer["render"]
    assert (render["visualization"], render["title"], render["xTitle"], render["yTitle"],
            render["yMax"], render["yMin"], render["isQuerySorted"], render["yColumns"]) == (
        "columnchart", "Requests", "Name", "Count", 100, "NaN", True, "n, Name")
    plain = run_query(store, {"query": "AppRequests | take 1"}, now=NOW,
                      prefer="include-render=true")["render"]
    assert plain["visualization"] is None and plain["isQuerySorted"] is False
    assert "visualization" in failure(store, "AppRequests | render nosuchchart")[
        "innererror"]["innererror"]["message"]


def test_server_timeout_answers_gateway_timeout(store: Store) -> None:
    # 10^11 rows filtered one by one: minutes of work, stopped at the 0.2 s the client asked.
    query = "range x from 1 to 100000000000 step 1 | where x % 7 == 3 | count"
    with pytest.raises(QueryFailure) as caught:
        run_query(store, {"query": query}, now=NOW, prefer="wait=0.2")
    assert caught.value.status == 504
    body = caught.value.body()["error"]
    assert (body["code"], body["innererror"]["code"]) == ("GatewayTimeout", "GatewayTimeout")
    # The connection is usable afterwards, and a quick query is not cut short.
    assert run_query(store, {"query": "AppRequests | count"}, now=NOW,
                     prefer="wait=30")["tables"][0]["rows"] == [[1]]
    assert failure_status(store, "wait=soon") == 400


def failure_status(store: Store, prefer: str) -> int:
    with pytest.raises(QueryFailure) as caught:
        run_query(store, {"query": "AppRequests | count"}, now=NOW, prefer=prefer)
    return caught.value.status
