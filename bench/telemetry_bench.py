"""Per-record cost of our telemetry path vs the seed's opencensus ``AzureLogHandler``.

    .venv/bin/python bench/telemetry_bench.py [--records 5000] [--repeat 3]

* **ours**: ``shared.telemetry.configure()`` (azure-monitor-opentelemetry), then per record one
  request span (``telemetry.invocation``) with one plain ``logging`` warning inside it;
* **seed**: ``logger.addHandler(AzureLogHandler(connection_string=...)); logger.warning(...)``;
* **SDK floor**: the least any OpenTelemetry-SDK span path can cost: a bare ``TracerProvider``
  (no sampler work, no processor, no exporter) starting, entering and ending the same span
  around the same ``logging`` call, whose record goes to a ``NullHandler``. Nothing is exported.

Both run in a fresh process and export to the same in-process HTTP sink on loopback (it answers
like ``/v2.1/track`` and counts items), so nothing leaves the machine. Reported per record:
the caller's wall time (what the function pays inline), the caller thread's own CPU time (the
wall time less waiting, mostly for the GIL while export threads convert earlier records), the
whole process's CPU time including the exporter's background threads, and how many items reached
the sink.

opencensus-ext-azure is retired and never an app dependency: it is installed only into a
throwaway virtualenv that this script creates under ``.devstack/bench-opencensus``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import _chart  # bench/ itself: the script's folder is first on sys.path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".devstack" / "bench-opencensus"
IKEY = "00000000-0000-0000-0000-000000000000"

# Each variant's setup defines record(i, text), flush() and WARMUP_ITEMS; MEASURE then runs the
# same warm-up and timed loop in all of them.
MEASURE = """
for i in range(200):  # warm-up
    record(i, "warm-up")
flush()
cpu0, t0, th0 = time.process_time(), time.perf_counter(), time.thread_time()
for i in range(n):
    record(i, "invalid_input")
inline, thread = time.perf_counter() - t0, time.thread_time() - th0
flush()
print(json.dumps({"inline_s": inline, "thread_s": thread, "cpu_s": time.process_time() - cpu0,
                  "total_s": time.perf_counter() - t0, "warmup_items": WARMUP_ITEMS}))
"""

OURS = """
import json, logging, sys, time
from shared import telemetry
from shared.settings import Settings
n, cs, with_span = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "span"
settings = Settings.from_env({"VISION_ENDPOINT": "http://127.0.0.1:9",
                              "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                              "APPLICATIONINSIGHTS_CONNECTION_STRING": cs})
assert telemetry.configure(settings) is telemetry.Mode.APP
logging.getLogger().setLevel(logging.WARNING)
log = logging.getLogger("bench.seed")
WARMUP_ITEMS = 400 if with_span else 200
def record(i, text):
    if with_span:
        with telemetry.invocation("bench", trigger=telemetry.Trigger.OTHER):
            log.warning("blob %s rejected: %s", i, text)
    else:
        log.warning("blob %s rejected: %s", i, text)
def flush():
    telemetry.force_flush(60_000)
"""

SEED = """
import json, logging, sys, time
from opencensus.ext.azure.log_exporter import AzureLogHandler
n, cs = int(sys.argv[1]), sys.argv[2]
logger = logging.getLogger(__name__)
handler = AzureLogHandler(connection_string=cs, enable_local_storage=False)
logger.addHandler(handler)
WARMUP_ITEMS = 200
def record(i, text):
    logger.warning("blob %s rejected: %s", i, text)
flush = handler.flush
"""

FLOOR = """
import json, logging, sys, time
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
n = int(sys.argv[1])
tracer = TracerProvider().get_tracer("bench")
log = logging.getLogger("bench.seed")
log.addHandler(logging.NullHandler())
log.propagate = False
WARMUP_ITEMS = 0
def record(i, text):
    span = tracer.start_span("bench", kind=trace.SpanKind.SERVER,
                             attributes={"faas.trigger": "other"})
    token = context.attach(trace.set_span_in_context(span))
    log.warning("blob %s rejected: %s", i, text)
    context.detach(token)
    span.set_attribute("pipeline.outcome", "completed")
    span.end()
def flush():
    pass
"""


def _sdk_self_telemetry(item: dict[str, Any]) -> bool:
    """The exporters' reports about themselves (statsbeat, the SDK's own item counts such as
    ``Item_Success_Count``, the ``_OTELRESOURCE_`` resource metric): not the records measured."""
    if not str(item.get("name", "")).endswith(".Metric"):
        return False
    base = item.get("data", {}).get("baseData", {})
    names = [str(m.get("name", "")) for m in base.get("metrics", [])]
    return "Statsbeat" in json.dumps(base) or any(
        n.startswith("Item_") or n == "_OTELRESOURCE_" for n in names
    )


class Sink(BaseHTTPRequestHandler):
    items = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = [json.loads(line) for line in body.splitlines() if line.strip()]
        items = parsed if isinstance(parsed, list) else [parsed]
        count = sum(1 for item in items if not _sdk_self_telemetry(item))
        with Sink.lock:
            Sink.items += count
        reply = json.dumps({"itemsReceived": count, "itemsAccepted": count, "errors": []})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def opencensus_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating a throwaway venv for opencensus-ext-azure in {VENV} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "opencensus-ext-azure"], check=True
        )
    return python


def run(python: Path, code: str, records: int, port: int, *extra: str) -> dict[str, float]:
    cs = f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{port}/"
    # A burst of thousands of records in well under a second overflows the OTel batch queues
    # (default 2048: the SDK then drops); size them so every record is exported and costed.
    env = {
        **os.environ,
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
        "OTEL_BLRP_SCHEDULE_DELAY": "1000",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100000",
        "OTEL_BLRP_MAX_QUEUE_SIZE": "100000",
        "OTEL_METRICS_EXPORTER": "none",
        "PYTHONPATH": str(REPO_ROOT),
    }
    before = Sink.items
    out = subprocess.run(
        [str(python), "-c", textwrap.dedent(code) + MEASURE, str(records), cs, *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    result["items"] = Sink.items - before - result.pop("warmup_items")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--chart", type=Path, default=Path("artifacts/bench/telemetry.svg"), help="SVG chart"
    )
    args = parser.parse_args()
    records: int = args.records

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    seed_python = opencensus_python()
    results: dict[str, list[dict[str, float]]] = {
        "ours": [],
        "ours_log": [],
        "seed": [],
        "floor": [],
    }
    columns = (
        ("ours", "ours: span+log"),
        ("ours_log", "ours: log only"),
        ("seed", "seed: AzureLogHandler"),
        ("floor", "SDK floor: span+log"),
    )
    variants = {
        "ours": (Path(sys.executable), OURS, ("span",)),
        "ours_log": (Path(sys.executable), OURS, ("log",)),
        "seed": (seed_python, SEED, ()),
        "floor": (Path(sys.executable), FLOOR, ()),
    }
    for i in range(args.repeat):  # interleaved, so machine noise hits all alike
        for name, title in columns:
            python, code, extra = variants[name]
            result = run(python, code, records, port, *extra)
            results[name].append(result)
            print(
                f"[{i + 1}/{args.repeat}] {title}: {result['thread_s'] / records * 1e6:.1f} us"
                " caller CPU per record",
                file=sys.stderr,
            )
    server.shutdown()

    def per_record_us(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[name])) / records * 1e6
    print(f"\n{records} records x {args.repeat} runs (median), exporting to a loopback sink")
    print(f"{'':32}" + "".join(f"{title:>24}" for _, title in columns))
    for label, key in (
        ("inline wall time / record", "inline_s"),
        ("caller-thread CPU / record", "thread_s"),
        ("process CPU / record (+export)", "cpu_s"),
        ("until flushed / record", "total_s"),
    ):
        print(
            f"{label:32}" + "".join(f"{per_record_us(name, key):>21.1f} us" for name, _ in columns)
        )
    items = {k: statistics.median(r["items"] for r in v) for k, v in results.items()}
    print(
        f"{'items received by the sink':32}"
        + "".join(f"{items[name]:>24.0f}" for name, _ in columns)
    )
    print("(span+log sends 2 items per record: the request and the trace; the floor exports none)")
    seed = per_record_us("seed", "thread_s")
    for name, title in columns[:2]:
        ours = per_record_us(name, "thread_s")
        verdict = "met" if ours <= seed else "NOT met"
        print(f"target {title} <= seed, caller-thread CPU: {ours:.1f} vs {seed:.1f} us: {verdict}")
    print(
        f"no OpenTelemetry-SDK span path can cost less than the floor's "
        f"{per_record_us('floor', 'thread_s'):.1f} us of caller CPU per record"
    )
    bars = [
        _chart.Bar(title, [("caller thread", per_record_us(name, "thread_s")),
                           ("export threads", max(0.0, per_record_us(name, "cpu_s")
                                                  - per_record_us(name, "thread_s")))])
        for name, title in columns
    ]
    _chart.write(args.chart, _chart.bars(
        f"CPU per telemetry record (median of {args.repeat} x {records})", "us", bars,
        [_chart.Mark("seed caller CPU", per_record_us("seed", "thread_s"))],
    ))
    print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
