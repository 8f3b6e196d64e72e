"""queries/*.kql: headers, parameters, and real runs on duckdb-kql over the Monitor emulator's
table schema (its own Store, in memory) with telemetry shaped like shared.telemetry emits it.
Also LogsQueryRunner's concurrent single queries and error classification over a fake
LogsQueryClient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.monitor.query import LogsQueryError, LogsQueryResult, LogsTable

from devstack.monitor.store import QueryResult, Store
from shared import telemetry as t
from shared.monitoring.logsquery import (
    BadQueryError,
    LogsQueryRunner,
    QueryAuthError,
    QueryBackendError,
    QueryConfigError,
    QuerySkipped,
    QuerySpec,
    QueryThrottledError,
    kql_literal,
    load_queries,
    parse_query,
)
from tests.support.polling import wait_for
from tests.support.telemetry_gen import Telemetry

QUERIES = load_queries()
EXPECTED = {
    "analysis_latency", "availability_by_probe", "calls_this_month", "error_breakdown",
    "operation", "outcomes", "success_rate", "throttle_rate", "throughput", "vision_errors",
}


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    # "now" when the rows are made, not when the module was imported: a worker may import it
    # minutes before it runs these tests, and the queries count back from the real clock
    tel = Telemetry(datetime.now(UTC).replace(microsecond=0))
    # three analysed images (one throttled once, then fine)
    for i, ms in enumerate((100.0, 200.0, 300.0)):
        op = f"op{i}"
        rid = tel.request(op, "analyzed", ms, **{t.ATTR_ATTEMPTS: "1"})
        if i == 2:
            tel.vision(op, rid, 429, 5.0, 1, **{t.ATTR_VISION_ERROR_CLASS: "throttled",
                                                t.ATTR_VISION_REASON: "throttled",
                                                t.ATTR_VISION_WILL_RETRY: "True"})
            tel.vision(op, rid, 200, ms - 50, 2)
        else:
            tel.vision(op, rid, 200, ms - 50)
        tel.event(op, rid, t.EVENT_ANALYZED, **{t.ATTR_OUTCOME: "analyzed"})
    # one rejected by preprocessing, one rejected by the service, one raised for a host retry
    rid = tel.request("op3", "rejected", 20.0, **{t.ATTR_ERROR_CLASS: "invalid_input",
                                                  t.ATTR_REASON: "text_not_image"})
    tel.event("op3", rid, t.EVENT_REJECTED, **{t.ATTR_ERROR_CLASS: "invalid_input",
                                               t.ATTR_REASON: "text_not_image"})
    rid = tel.request("op4", "rejected", 80.0, **{
        t.ATTR_ERROR_CLASS: "invalid_input", t.ATTR_REASON: "service_invalid_image_format",
        t.ATTR_STATUS_CODE: "400", t.ATTR_SERVICE_CODE: "InvalidImageFormat"})
    tel.vision("op4", rid, 400, 30.0, **{t.ATTR_VISION_ERROR_CLASS: "invalid_input",
                                         t.ATTR_VISION_INNER_CODE: "InvalidImageFormat",
                                         t.ATTR_VISION_ERROR_CODE: "InvalidRequest"})
    tel.event("op4", rid, t.EVENT_REJECTED, **{t.ATTR_ERROR_CLASS: "invalid_input",
                                               t.ATTR_REASON: "service_invalid_image_format"})
    tel.request("op5", "failed", 900.0, success=False, **{t.ATTR_ERROR_CLASS: "transient",
                                                          t.ATTR_REASON: "server_error_503"})
    # synthetic probe traffic: counted for quota, never in the KPIs
    rid = tel.request("op6", "analyzed", 5000.0, synthetic=True)
    tel.vision("op6", rid, 200, 4000.0, synthetic=True)
    tel.event("op6", rid, t.EVENT_ANALYZED, synthetic=True)
    tel.availability("pipeline", True, 1500.0, "local")
    tel.availability("pipeline", False, 3000.0, "local")
    tel.availability("vision", True, 250.0, "local")
    s = Store(None, retention=timedelta(days=400), clock=lambda: datetime.now(UTC))
    s.ingest(tel.items)
    yield s
    s.close()


def run(store: Store, name: str, **params: Any) -> list[dict[str, Any]]:
    result: QueryResult = store.query(QUERIES[name].render(params), (None, None))
    names = [c for c, _ in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


def test_every_expected_query_exists_with_a_header() -> None:
    assert set(QUERIES) >= EXPECTED
    for q in QUERIES.values():
        header = [ln for ln in q.text.splitlines() if ln.startswith("//")]
        assert any("Columns:" in ln for ln in header), q.name
        assert any("Parameters:" in ln for ln in header), q.name
        # constructs the local engine refuses (and would hide as errors only at run time)
        code = "\n".join(ln for ln in q.text.splitlines() if not ln.lstrip().startswith("//"))
        assert "make-series" not in code and "percentiles(" not in code, q.name


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_runs_on_duckdb_kql(store: Store, name: str) -> None:
    rows = run(store, name)
    columns_line = " ".join(ln for ln in QUERIES[name].text.splitlines() if ln.startswith("//"))
    for column in rows[0] if rows else []:
        assert column in columns_line, f"{name}: column {column} not documented in the header"


def test_success_rate_excludes_synthetic_and_counts_outcomes(store: Store) -> None:
    [row] = run(store, "success_rate")
    assert row["Invocations"] == 6
    assert (row["Succeeded"], row["Failed"]) == (5, 1)
    assert (row["Analyzed"], row["Rejected"], row["Duplicates"]) == (3, 2, 0)
    assert row["SuccessRatePct"] == pytest.approx(83.333, abs=0.001)
    assert row["AnalyzedPct"] == pytest.approx(50.0)


def test_latency_percentiles_come_from_rows(store: Store) -> None:
    rows = {r["Scope"]: r for r in run(store, "analysis_latency")}
    inv = rows["invocation"]
    assert inv["Count"] == 3
    assert inv["P50Ms"] == pytest.approx(200.0)
    assert 200.0 <= inv["P95Ms"] <= inv["P99Ms"] <= 300.0
    assert inv["MaxMs"] == pytest.approx(300.0)
    assert rows["vision_call"]["Count"] == 3  # successful attempts only, synthetic excluded


def test_throttle_rate(store: Store) -> None:
    [row] = run(store, "throttle_rate")
    assert (row["Calls"], row["Throttled"]) == (5, 1)
    assert (row["Operations"], row["ThrottledOperations"]) == (4, 1)
    assert row["ThrottleRatePct"] == pytest.approx(20.0)


def test_error_breakdown_by_class_and_code(store: Store) -> None:
    rows = run(store, "error_breakdown")
    got = {(r["Outcome"], r["ErrorClass"], r["Reason"], r["StatusCode"], r["ServiceCode"]):
           r["Count"] for r in rows}
    assert got == {
        ("rejected", "invalid_input", "text_not_image", "", ""): 1,
        ("rejected", "invalid_input", "service_invalid_image_format", "400",
         "InvalidImageFormat"): 1,
        ("failed", "transient", "server_error_503", "", ""): 1,
    }


def test_vision_errors_prefer_the_inner_code(store: Store) -> None:
    got = {(r["ResultCode"], r["ServiceCode"]): (r["Attempts"], r["Retried"])
           for r in run(store, "vision_errors")}
    assert got == {("429", ""): (1, 1), ("400", "InvalidImageFormat"): (1, 0)}


def test_outcomes_from_events(store: Store) -> None:
    got = {(r["Event"], r["Reason"]): r["Images"] for r in run(store, "outcomes")}
    assert got == {(t.EVENT_ANALYZED, ""): 3, (t.EVENT_REJECTED, "text_not_image"): 1,
                   (t.EVENT_REJECTED, "service_invalid_image_format"): 1}


def test_availability_by_probe(store: Store) -> None:
    rows = {r["Probe"]: r for r in run(store, "availability_by_probe")}
    assert (rows["pipeline"]["Runs"], rows["pipeline"]["Passed"]) == (2, 1)
    assert rows["pipeline"]["AvailabilityPct"] == pytest.approx(50.0)
    assert rows["pipeline"]["AvgDurationMs"] == pytest.approx(2250.0)
    assert rows["vision"]["Location"] == "local"


def test_calls_this_month_counts_synthetic_and_peak(store: Store) -> None:
    [row] = run(store, "calls_this_month")
    assert row["Calls"] == 6
    assert row["Throttled"] == 1
    assert row["QuotaCalls"] == 5
    assert row["SyntheticCalls"] == 1
    assert row["PeakTps"] == 6  # every row shares one timestamp in this fixture


def test_throughput_bins_and_parameters(store: Store) -> None:
    [row] = run(store, "throughput", binSize=timedelta(minutes=5))
    assert row["Invocations"] == 6
    assert row["PerSecond"] == pytest.approx(6 / 300, abs=0.001)


def test_operation_lists_request_dependencies_and_events(store: Store) -> None:
    rows = run(store, "operation", operationId="op2")
    assert sorted(r["Table"] for r in rows) == [
        "AppDependencies", "AppDependencies", "AppEvents", "AppRequests"]
    request = next(r for r in rows if r["Table"] == "AppRequests")
    assert all(r["ParentId"] == request["Id"] for r in rows if r["Table"] != "AppRequests")


def test_render_rejects_unknown_parameters_and_quotes_strings() -> None:
    q = QUERIES["operation"]
    assert 'let operationId = "a\\"b";' in q.render({"operationId": 'a"b'})
    with pytest.raises(ValueError, match="no parameter"):
        q.render({"nope": 1})
    assert kql_literal(timedelta(minutes=5)) == "300s"
    assert kql_literal(True) == "true"


def test_parse_query_requires_header_and_let_for_each_parameter() -> None:
    with pytest.raises(ValueError, match="header"):
        parse_query("x", "AppRequests | count")
    with pytest.raises(ValueError, match="no `let"):
        parse_query("x", "// x: y\n// Parameters: size (long)\nAppRequests | take size")


# --------------------------------------------------------------------------- runner


class FakeLogsClient:
    """The one LogsQueryClient call the runner makes, answering with the SDK's own models.

    ``answer`` is one answer for every query, or a dict of answers (or errors) by query text.
    """

    def __init__(self, answer: Any = None, error: Exception | None = None) -> None:
        self.answer = answer
        self.error = error
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.gate: threading.Event | None = None

    def query_workspace(self, workspace_id: str, query: str, **kwargs: Any) -> Any:
        with self.lock:
            self.calls.append(("query", query, kwargs))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(5)
            answer = self.answer.get(query) if isinstance(self.answer, dict) else self.answer
            error = answer if isinstance(answer, Exception) else self.error
            if error:
                raise error
            return answer
        finally:
            with self.lock:
                self.running -= 1

    def query_batch(self, queries: list[Any], **kwargs: Any) -> Any:
        raise AssertionError("the deprecated $batch operation must not be used")


def table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> LogsTable:
    return LogsTable(name="PrimaryResult", columns=[c for c, _ in columns],
                     columns_types=[k for _, k in columns], rows=rows)


def runner(client: FakeLogsClient, loopback: bool = True) -> LogsQueryRunner:
    return LogsQueryRunner(client, "ws", loopback=loopback)  # type: ignore[arg-type]


def test_run_returns_plain_rows_and_passes_enforce_https_only_locally() -> None:
    answer = LogsQueryResult(tables=[table([("Invocations", "long"), ("Props", "dynamic")],
                                           [[3, '{"a": 1}']])])
    client = FakeLogsClient(answer)
    result = runner(client).run("success_rate", timedelta(hours=1))
    assert result.rows == [{"Invocations": 3, "Props": {"a": 1}}]
    assert client.calls[0][2]["enforce_https"] is False
    runner(client, loopback=False).run("success_rate")
    assert "enforce_https" not in client.calls[1][2]


def test_run_many_sends_single_queries_with_per_query_errors() -> None:
    ok = LogsQueryResult(tables=[table([("Calls", "long")], [[1]])])
    bad = HttpResponseError(message="unsupported")
    bad.status_code = 400
    bad.model = LogsQueryError(code="BadArgumentError", message="unsupported")  # type: ignore[assignment]
    throughput = QUERIES["throughput"].render({"binSize": "1h"})
    client = FakeLogsClient({QUERIES["throttle_rate"].text: ok, throughput: bad})
    out = runner(client).run_many(["throttle_rate", ("throughput", {"binSize": "1h"})])
    assert [c[0] for c in client.calls] == ["query", "query"]
    assert out["throttle_rate"].rows == [{"Calls": 1}]  # type: ignore[union-attr]
    assert isinstance(out["throughput"], BadQueryError)


def test_run_many_keeps_to_its_concurrency_bound() -> None:
    ok = LogsQueryResult(tables=[table([("Calls", "long")], [[1]])])
    client = FakeLogsClient(ok)
    client.gate = threading.Event()
    r = LogsQueryRunner(client, "ws", loopback=True, max_concurrency=2)  # type: ignore[arg-type]
    specs = [QuerySpec("throttle_rate", key=f"k{i}") for i in range(6)]
    done: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: done.append(r.run_many(specs)))
    worker.start()
    # the pool picks them up on its threads
    wait_for(lambda: client.running >= 2, timeout=5, interval=0.01, what="two running queries")
    assert client.running == 2
    client.gate.set()
    worker.join(10)
    assert len(done[0]) == 6 and client.max_running == 2 and len(client.calls) == 6
    with pytest.raises(ValueError, match="max_concurrency"):
        LogsQueryRunner(client, "ws", max_concurrency=6)  # type: ignore[arg-type]


def test_a_throttled_query_stops_the_rest_and_carries_retry_after() -> None:
    from types import SimpleNamespace

    throttled = HttpResponseError(message="Too many requests")
    throttled.status_code = 429
    # the one field of the response the runner reads
    throttled.response = SimpleNamespace(headers={"Retry-After": "17"})  # type: ignore[assignment]
    client = FakeLogsClient(error=throttled)
    r = LogsQueryRunner(client, "ws", loopback=True, max_concurrency=1)  # type: ignore[arg-type]
    out = r.run_many([QuerySpec("throttle_rate", key=f"k{i}") for i in range(4)])
    first = out["k0"]
    assert isinstance(first, QueryThrottledError) and first.retry_after_s == 17.0
    assert all(isinstance(out[f"k{i}"], QuerySkipped) for i in (1, 2, 3))
    assert len(client.calls) == 1  # nothing more was sent into the wall


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "BadArgumentError", BadQueryError),
    (401, "AuthorizationRequiredError", QueryAuthError),
    (404, "WorkspaceNotFoundError", QueryConfigError),
    (503, None, QueryBackendError),
])
def test_http_errors_are_classified(status: int, code: str | None, kind: type) -> None:
    error = HttpResponseError(message="boom")
    error.status_code = status
    error.model = LogsQueryError(code=code, message="boom") if code else None  # type: ignore[assignment]
    with pytest.raises(kind):
        runner(FakeLogsClient(error=error)).run("success_rate")


def test_unreachable_backend_is_a_backend_error() -> None:
    out = runner(FakeLogsClient(error=ServiceRequestError("refused"))).run_many(["success_rate"])
    assert type(out["success_rate"]) is QueryBackendError
    with pytest.raises(QueryBackendError):
        runner(FakeLogsClient(error=ServiceRequestError("refused"))).run("success_rate")


def test_unknown_query_name() -> None:
    with pytest.raises(KeyError, match="no query named"):
        runner(FakeLogsClient()).run("nope")


def test_run_many_keys_the_same_query_per_timespan() -> None:
    answers = {QUERIES["throttle_rate"].text: LogsQueryResult(
        tables=[table([("Calls", "long")], [[1]])])}
    client = FakeLogsClient(answers)
    client.answer = {**answers, QUERIES["success_rate"].text: HttpResponseError("no such column")}
    client.answer[QUERIES["success_rate"].text].status_code = 400
    out = runner(client).run_many([
        QuerySpec("throttle_rate", timespan=timedelta(minutes=15), key="throttle_rate:15m"),
        QuerySpec("throttle_rate", key="throttle_rate:1h"),
        QuerySpec("success_rate", timespan=timedelta(days=1), key="daily"),
    ], timedelta(hours=1))
    spans = sorted(c[2]["timespan"] for c in client.calls)
    assert spans == [timedelta(minutes=15), timedelta(hours=1), timedelta(days=1)]
    assert list(out) == ["throttle_rate:15m", "throttle_rate:1h", "daily"]
    assert out["throttle_rate:1h"].name == "throttle_rate"  # type: ignore[union-attr]
    daily = out["daily"]
    assert isinstance(daily, BadQueryError) and daily.query == "success_rate"


def test_run_many_rejects_a_key_twice() -> None:
    client = FakeLogsClient([])
    with pytest.raises(ValueError, match="twice"):
        runner(client).run_many(["throttle_rate", QuerySpec("throttle_rate")])
    with pytest.raises(ValueError, match="twice"):
        runner(client).run_many([QuerySpec("success_rate", key="k"),
                                 QuerySpec("throttle_rate", key="k")])
    assert client.calls == []


def test_nothing_in_shared_calls_the_deprecated_batch_operation() -> None:
    from pathlib import Path

    sources = sorted((Path(__file__).resolve().parents[2] / "shared").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert ".query_batch(" not in text and "LogsBatchQuery" not in text, path
