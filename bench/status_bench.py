"""Status report computation on a million telemetry rows: ours (cold and cached) vs the old batch.

    .venv/bin/python bench/status_bench.py [--rows 1000000] [--cold 10] [--cached 2000]

A Monitor emulator process (``python -m devstack.monitor``, default per-caller limits) is started
on a DuckDB file holding ``--rows`` rows over the last 24 h, a realistic mix shaped like the
app's telemetry: per invocation a request, its Vision attempt(s) (1 in 100 throttled once, 1 in
250 failing), two log lines and a terminal event; probe runs every 5 minutes; quota gauges
hourly. One hour of that traffic is generated as envelopes and mapped by the emulator's own
envelope mapping; the other 23 hours are copies of it shifted back an hour at a time (new
operation ids), so loading a million rows takes seconds, not an hour of HTTP.

Measured, each through the real ``LogsQueryClient`` over loopback HTTP:

* **baseline**: the report as it was, one ``query_batch`` (the deprecated ``$batch``) of 25
  queries: 4 KPI queries x 3 windows, probes, freshness, quota, 7 alert rules, 3 series;
* **ours, cold**: ``build_status`` with the dashboard's 1 h series — 5 + 3 single queries,
  ``STATUS_QUERY_CONCURRENCY`` at a time (timed interleaved with the baseline, so a busy moment
  of a shared machine hits both alike);
* **ours, cached**: ``shared.monitoring.status_service.StatusService.report`` (as the HTTP handler
calls
  it) plus the JSON encoding of the body, from the shared cache.

Queries per report are counted by the emulator (``/admin/limits`` ``queries``; a batch's items
each count, as in Log Analytics). The emulator's per-caller rate limit is lifted for the timing
(ten baseline reports in a row are 250 queries: the real limit refuses them); the printout says
how many reports per 30 s each variant fits in that limit. Targets: p95 <= 2 s cold, p95 <=
250 ms cached. Chart: ``artifacts/bench/status.svg``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _chart  # bench/ itself: the script's folder is first on sys.path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import duckdb  # noqa: E402
import httpx  # noqa: E402

from devstack import procs  # noqa: E402
from devstack.monitor.config import DEFAULT_WORKSPACE_ID  # noqa: E402
from devstack.monitor.envelopes import TABLES, Context, map_envelope  # noqa: E402
from devstack.monitor.store import Received, Store  # noqa: E402
from shared.composition import get_query_runner  # noqa: E402
from shared.monitoring.alerts import alert_rules  # noqa: E402
from shared.monitoring.logsquery import load_queries  # noqa: E402
from shared.monitoring.reportcache import ReportCache  # noqa: E402
from shared.monitoring.status import CLIENT_OPTIONS, WINDOWS, WINDOWS_BY_NAME, build_status  # noqa: E402
from shared.monitoring.status_service import StatusService  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support import telemetry_gen as gen  # noqa: E402

TARGET_COLD_MS = 2000.0
TARGET_CACHED_MS = 250.0
#: Rows per invocation in the mix: request, ~1.014 attempts, 2 traces, 1 event.
ROWS_PER_INVOCATION = 5.014


# --------------------------------------------------------------------------- the data


def _trace(t: datetime, op: str, message: str) -> dict[str, Any]:
    return {"name": "Microsoft.ApplicationInsights.Message", "time": gen._time(t), "iKey": gen.IKEY,
            "tags": {"ai.operation.id": op, "ai.cloud.role": gen.ROLE},
            "data": {"baseType": "MessageData",
                     "baseData": {"ver": 2, "message": message, "severityLevel": 1}}}


def _event(t: datetime, op: str) -> dict[str, Any]:
    return {"name": "Microsoft.ApplicationInsights.Event", "time": gen._time(t), "iKey": gen.IKEY,
            "tags": {"ai.operation.id": op, "ai.cloud.role": gen.ROLE},
            "data": {"baseType": "EventData", "baseData": {
                "ver": 2, "name": "ImageAnalyzed",
                "properties": {"pipeline.outcome": "analyzed"}}}}


def one_hour(end: datetime, per_minute: int) -> list[dict[str, Any]]:
    """An hour of app-shaped telemetry ending at ``end`` (healthy, with ordinary noise)."""
    envelopes = gen.Traffic(per_minute=per_minute).envelopes(end - timedelta(hours=1), end)
    extra: list[dict[str, Any]] = []
    for env in envelopes:
        if env["data"]["baseType"] == "RequestData":
            t = datetime.fromisoformat(env["time"].replace("Z", "+00:00"))
            op = env["tags"]["ai.operation.id"]
            extra += [_trace(t, op, "analysing image"), _trace(t, op, "document written"),
                      _event(t, op)]
    return envelopes + extra


def load(db: Path, rows: int, now: datetime) -> dict[str, int]:
    """Fill ``db`` with about ``rows`` rows over the 24 h before ``now``; counts per table."""
    per_minute = max(1, round(rows / 24 / 60 / ROWS_PER_INVOCATION))
    ctx = Context(workspace_id=DEFAULT_WORKSPACE_ID, resource_id="/bench")
    store = Store(db, retention=timedelta(days=30), clock=lambda: now)
    try:
        envelopes = one_hour(now, per_minute)
        store.ingest([Received("{}", map_envelope(e, ctx)) for e in envelopes])
    finally:
        store.close()
    con = duckdb.connect(str(db))
    try:
        for table in TABLES:
            columns = [name for name, _ in TABLES[table]]
            for hour in range(1, 24):
                shifted = ", ".join(
                    f"\"TimeGenerated\" - INTERVAL {hour} HOUR" if c == "TimeGenerated" else
                    f"\"OperationId\" || '-{hour}'" if c == "OperationId" else f'"{c}"'
                    for c in columns)
                con.execute(
                    f'INSERT INTO "{table}" SELECT {shifted} '  # noqa: S608 - our table names
                    f'FROM "{table}" WHERE "TimeGenerated" >= ?', [now - timedelta(hours=1)])
        con.execute("DELETE FROM RawEnvelopes")
        con.execute("CHECKPOINT")
        counts = {}
        for table in TABLES:
            row = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()  # noqa: S608
            if row and row[0]:
                counts[table] = int(row[0])
    finally:
        con.close()
    return counts


# --------------------------------------------------------------------------- the baseline


def old_batch(settings: Settings) -> list[tuple[str, str, timedelta]]:
    """(key, KQL, timespan) of the report as one $batch used to carry it (25 queries)."""
    q = load_queries()
    items = [(f"{name}:{w.name}", q[name].render(), w.span) for w in WINDOWS
             for name in ("success_rate", "analysis_latency", "throttle_rate", "error_breakdown")]
    items += [("status_probes", q["status_probes"].render(), timedelta(hours=24)),
              ("status_freshness", q["status_freshness"].render(), timedelta(hours=24)),
              ("status_quota", q["status_quota"].render(), timedelta(days=2))]
    items += [(f"alert:{r.name}", q[r.query].render(r.params), r.window)
              for r in alert_rules(settings)]
    hour = WINDOWS_BY_NAME["1h"]
    items += [(name, q[name].render({"binSize": hour.bin_size}), hour.span)
              for name in ("status_series_requests", "status_series_vision",
                           "status_series_availability")]
    return items


def run_old_batch(client: Any, items: Sequence[tuple[str, str, timedelta]]) -> None:
    from azure.monitor.query import LogsBatchQuery, LogsQueryStatus

    answers = client.query_batch(
        [LogsBatchQuery(DEFAULT_WORKSPACE_ID, kql, timespan=span) for _, kql, span in items],
        enforce_https=False)
    failed = [k for (k, _, _), a in zip(items, answers, strict=True)
              if a.status == LogsQueryStatus.FAILURE]
    if failed:
        raise RuntimeError(f"baseline queries failed: {failed}")


# --------------------------------------------------------------------------- measuring


def ms_stats(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def timed(fn: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def admitted(base: str) -> int:
    """Queries the emulator has let through (a batch's items each count)."""
    return int(httpx.get(f"{base}/admin/limits", timeout=30).json()["stats"]["queries"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cold", type=int, default=10, help="cold reports to time per variant")
    parser.add_argument("--cached", type=int, default=2000, help="cached reports to time")
    parser.add_argument("--charts", type=Path, default=REPO_ROOT / "artifacts" / "bench")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        state = Path(tmp)
        now = datetime.now(UTC)
        started = time.perf_counter()
        print(f"loading about {args.rows:,} rows into a Monitor emulator database", flush=True)
        counts = load(state / "monitor.duckdb", args.rows, now)
        total = sum(counts.values())
        print(f"loaded {total:,} rows in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{t} {n:,}" for t, n in sorted(counts.items())))
        port = procs.free_port()
        # The per-caller rate limit is lifted for the timing: ten baseline reports (250 queries)
        # in a row would be refused with 429 by the real limit of 200 per 30 s.
        argv = [sys.executable, "-m", "devstack.monitor", "--port", str(port), "--state-dir",
                str(state), "--query-rate-limit", "1000000"]
        _, record = procs.spawn("monitor", argv, log_path=state / "monitor.log", cwd=REPO_ROOT)
        base = f"http://{procs.LOOPBACK}:{port}"
        try:
            procs.wait_until(lambda: procs.http_ok(f"{base}/healthz"), timeout=120,
                             what="Monitor emulator")
            return measure(args, base, total)
        finally:
            procs.stop(record.pid)


def measure(args: argparse.Namespace, base: str, total: int) -> int:
    from azure.monitor.query import LogsQueryClient

    from shared.monitoring.logsquery import LocalTokenCredential

    env = {"VISION_ENDPOINT": "http://127.0.0.1:9", "AzureWebJobsStorage":
           "UseDevelopmentStorage=true", "LOGS_QUERY_ENDPOINT": f"{base}/v1",
           "LOGS_WORKSPACE_ID": DEFAULT_WORKSPACE_ID}
    os.environ.update(env)
    settings = Settings.from_env(env)
    history = WINDOWS_BY_NAME["1h"]
    runner = get_query_runner()
    quota = None

    def ours_cold() -> None:
        report = build_status(settings, runner, history=history, quota_loader=lambda _s: quota)
        if report.telemetry["query_errors"]:
            raise RuntimeError(f"queries failed: {report.telemetry['query_errors']}")

    # the baseline gets all the time it needs: a batch of 25 runs its queries one by one
    client = LogsQueryClient(LocalTokenCredential(), endpoint=f"{base}/v1",
                             **{**CLIENT_OPTIONS, "read_timeout": 600})
    items = old_batch(settings)
    print("warming up (imports, connections, DuckDB's first read of the file)", flush=True)
    ours_cold()
    run_old_batch(client, items)
    print(f"timing {args.cold} cold reports of each kind, then {args.cached} cached",
          flush=True)

    # interleaved, so a busy moment of a shared machine hits both alike
    old: list[float] = []
    cold: list[float] = []
    old_count = our_count = 0
    for _ in range(args.cold):
        before = admitted(base)
        old += timed(lambda: run_old_batch(client, items), 1)
        middle = admitted(base)
        cold += timed(ours_cold, 1)
        old_count, our_count = old_count + middle - before, our_count + admitted(base) - middle
    old_queries, our_queries = old_count / args.cold, our_count / args.cold

    cache: ReportCache[Any] = ReportCache(ttl_s=3600, wait_s=30)
    service = StatusService(settings, runner, cache=cache, quota_loader=lambda _s: quota)
    loop = asyncio.new_event_loop()
    try:
        def ours_cached() -> None:
            served = loop.run_until_complete(service.report(history))
            json.dumps(served.body, allow_nan=False)

        ours_cached()  # fills the cache
        before = admitted(base)
        cached = timed(ours_cached, args.cached)
        cached_queries = admitted(base) - before
    finally:
        loop.close()
        cache.shutdown()

    rows = [("baseline: one $batch (25 queries), cold", old, old_queries, None),
            ("ours: single queries, cold", cold, our_queries, TARGET_COLD_MS),
            ("ours: from the shared cache", cached, cached_queries / args.cached,
             TARGET_CACHED_MS)]
    return report(rows, total, args.charts)


Row = tuple[str, list[float], float, float | None]


def report(rows: Sequence[Row], total: int, charts: Path) -> int:
    """Print the table and the budget, draw the chart; 0 when every target is met."""
    old_queries, our_queries = rows[0][2], rows[1][2]
    print(f"\nreport computation on {total:,} rows (the dashboard's report: core + 1 h series)")
    print(f"{'variant':<42} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'queries':>8}  target p95")
    verdicts = []
    for label, samples, queries, target in rows:
        p50, p95 = ms_stats(samples)
        verdict = "" if target is None else (
            f"<= {target:.0f} ms: {'met' if p95 <= target else 'MISSED'}")
        if target is not None:
            verdicts.append(p95 <= target)
        print(f"{label:<42} {len(samples):>5} {p50:>9.1f} {p95:>9.1f} {queries:>8.2f}  {verdict}")
    chart = _chart.bars(
        f"Status report on {total:,} rows: p50 and p95 (ms)", "ms",
        [_chart.Bar(label, [("p50", ms_stats(s)[0]),
                            ("p95 - p50", ms_stats(s)[1] - ms_stats(s)[0])])
         for label, s, _, _ in rows],
        [_chart.Mark("cold target", TARGET_COLD_MS), _chart.Mark("cached target",
                                                                  TARGET_CACHED_MS)])
    path = _chart.write(charts / "status.svg", chart)
    print(f"Log Analytics allows 200 queries per 30 s per identity: {200 / old_queries:.0f}"
          f" uncached baseline reports, {200 / our_queries:.0f} of ours; cached, one instance"
          f" spends {our_queries:.0f} per STATUS_CACHE_TTL_SECONDS however many callers")
    print(f"chart: {path}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
