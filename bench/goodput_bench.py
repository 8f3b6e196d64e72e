"""Goodput against an S1 rate limit: our Vision client vs the plain SDK, same concurrency.

    .venv/bin/python bench/goodput_bench.py [--tps 10] [--threads 8] [--duration 60]

Starts its own Vision emulator (``python -m devstack.vision``, S1 at ``--tps``) on a free
loopback port and drives it, one variant after the other, from ``--threads`` threads that each
analyse a small JPEG (``smartCrops`` only, so the emulator's CPU is not the bottleneck) in a loop
for ``--duration`` seconds:

* ours: ``shared.analysis.vision.build_vision_client`` from app settings, one process alone
  (no fleet membership): the adaptive rate from the tier's limit as its ceiling, our retries on
  azure-core's ``RetryPolicy``, ``Retry-After`` honoured per call;
* baseline: ``ImageAnalysisClient`` with the SDK's default ``RetryPolicy`` (3 retries, backoff
  0.8, honours ``Retry-After``), nothing else.

Reported per variant: successful analyses per second inside the window (goodput), that as a
share of the limit, the emulator's own count of calls and 429 answers (``/admin/stats``; a 429
is a BlockedCall on the real account), and analyses that failed after their retries.
Targets for ours: >= 97 % of the limit with <= 0.5 % of calls answered 429, and no analysis
failed; the verdict is printed under the table.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _chart  # bench/ itself: the script's folder is first on sys.path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

KEY = "bench-key"
FEATURES = ("smartCrops",)
TARGET_GOODPUT, TARGET_429 = 0.97, 0.005


def small_jpeg() -> bytes:
    from PIL import Image, ImageDraw

    im = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
    ImageDraw.Draw(im).ellipse((40, 30, 120, 90), fill=(200, 60, 40))
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    duration_s: float
    succeeded: int  # analyses completed successfully inside the window
    failed: int  # analyses that raised after their retries
    calls: int  # HTTP calls the emulator counted
    throttled: int  # of which answered 429
    by_status: dict[str, int]
    #: per second of the window: (end of the second, analyses that succeeded, 429 answers)
    seconds: tuple[tuple[float, int, int], ...] = ()


class Emulator:
    """A private ``python -m devstack.vision`` process on a free port."""

    def __init__(self, tps: float) -> None:
        from devstack import procs

        self.port = procs.free_port()
        self.endpoint = f"http://{procs.LOOPBACK}:{self.port}"
        log_path = Path(tempfile.mkdtemp(prefix="goodput-")) / "vision.log"
        argv = [sys.executable, "-m", "devstack.vision", "--port", str(self.port), "--key", KEY,
                "--tier", "S1", "--tps", str(tps), "--concurrency", "2"]
        self._proc, self._record = procs.spawn("vision", argv, log_path=log_path, cwd=REPO_ROOT)
        self.tps = tps
        try:
            procs.wait_until(self._ready, timeout=120, interval=0.2, what="Vision emulator")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        from devstack import procs

        if self._proc.poll() is not None:
            raise procs.StartupError(f"the emulator exited; see {self._record.log}")
        return procs.http_ok(f"{self.endpoint}/healthz")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        response = httpx.request(method, self.endpoint + path, json=body, timeout=10,
                                 headers={"Ocp-Apim-Subscription-Key": KEY})
        response.raise_for_status()
        return response.json()

    def fresh_window(self) -> None:
        """Empty rolling window and zeroed counters, so each variant starts alike."""
        self.admin("PUT", "/admin/tier", {"tier": "S1", "tps": self.tps})
        self.admin("POST", "/admin/stats/reset")

    def stop(self) -> None:
        from devstack import procs

        procs.stop(self._record.pid)


def _drive(
    name: str,
    analyze: Callable[[], object],
    *,
    emulator: Emulator,
    threads: int,
    duration: float,
) -> Outcome:
    emulator.fresh_window()
    lock = threading.Lock()
    counts = {"succeeded": 0, "failed": 0}
    start = time.monotonic()
    deadline = start + duration

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                analyze()
            except Exception:  # an analysis that failed after its retries counts as failed
                key = "failed"
            else:
                key = "succeeded"
            if time.monotonic() <= deadline:
                with lock:
                    counts[key] += 1

    pool = [threading.Thread(target=worker, name=f"{name}-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    seconds = _sample_each_second(
        name, emulator, counts=counts, lock=lock, start=start, deadline=deadline
    )
    for thread in pool:
        thread.join()
    stats = emulator.admin("GET", "/admin/stats")
    by_status = {str(k): int(v) for k, v in stats["by_status"].items()}
    return Outcome(
        name=name, duration_s=duration, succeeded=counts["succeeded"], failed=counts["failed"],
        calls=int(stats["total"]), throttled=by_status.get("429", 0), by_status=by_status,
        seconds=seconds,
    )


def _throttled_so_far(emulator: Emulator) -> int:
    return int(emulator.admin("GET", "/admin/stats")["by_status"].get("429", 0))


def _sample_each_second(
    name: str,
    emulator: Emulator,
    *,
    counts: dict[str, int],
    lock: threading.Lock,
    start: float,
    deadline: float,
) -> tuple[tuple[float, int, int], ...]:
    """While the workers run: successes and 429s per second, and a progress line every 10 s."""
    samples: list[tuple[float, int, int]] = []
    last_ok = last_429 = 0
    tick = start
    while tick + 1 <= deadline:
        tick += 1
        time.sleep(max(0.0, tick - time.monotonic()))
        with lock:
            ok = counts["succeeded"]
        throttled = _throttled_so_far(emulator)
        samples.append((round(tick - start), ok - last_ok, throttled - last_429))
        last_ok, last_429 = ok, throttled
        if len(samples) % 10 == 0:
            print(f"  {name}: {len(samples)} s, {ok / len(samples):.2f} ok/s so far,"
                  f" {throttled} x 429", file=sys.stderr, flush=True)
    return tuple(samples)


def ours(emulator: Emulator, image: bytes, rate: float | None = None) -> Callable[[], object]:
    from shared.analysis.vision import build_vision_client
    from shared.settings import Settings

    settings = Settings.from_env({
        "VISION_ENDPOINT": emulator.endpoint,
        "VISION_KEY": KEY,
        "VISION_FEATURES": ",".join(FEATURES),
        "VISION_TIER": "S1",
        "VISION_RATE_LIMIT_PER_SECOND": str(rate or emulator.tps),
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",  # unused; Settings requires it
    })
    client = build_vision_client(settings.vision)
    return lambda: client.analyze(image, settings.vision.features)


def baseline(emulator: Emulator, image: bytes) -> Callable[[], object]:
    from azure.ai.vision.imageanalysis import ImageAnalysisClient
    from azure.ai.vision.imageanalysis.models import VisualFeatures
    from azure.core.credentials import AzureKeyCredential

    client = ImageAnalysisClient(emulator.endpoint, AzureKeyCredential(KEY))
    features = [VisualFeatures(name) for name in FEATURES]
    return lambda: client.analyze(image_data=image, visual_features=features)


def report(outcomes: list[Outcome], *, tps: float, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Goodput vs an S1 limit of {tps:g} calls/s, {threads} threads")
    for column in ("client", "ok/s", "% of limit", "calls", "429s", "429 share", "failed",
                   "calls by status"):
        table.add_column(column, justify="left" if column in ("client", "calls by status")
                         else "right", no_wrap=True)
    for o in outcomes:
        goodput = o.succeeded / o.duration_s
        share = o.throttled / o.calls if o.calls else 0.0
        table.add_row(
            o.name, f"{goodput:.2f}", f"{100 * goodput / tps:.1f} %", str(o.calls),
            str(o.throttled), f"{100 * share:.2f} %", str(o.failed),
            ", ".join(f"{k}: {v}" for k, v in sorted(o.by_status.items())),
        )
    Console(width=140).print(table)
    mine = outcomes[0]
    goodput = mine.succeeded / mine.duration_s / tps
    share = mine.throttled / mine.calls if mine.calls else 1.0
    misses = [name for name, ok in (("goodput", goodput >= TARGET_GOODPUT),
                                    ("429", share <= TARGET_429),
                                    ("failed", mine.failed == 0)) if not ok]
    print(f"{mine.name}: {100 * goodput:.1f} % of the limit (target >= "
          f"{100 * TARGET_GOODPUT:g} %), {100 * share:.2f} % of {mine.calls} calls answered 429 "
          f"(target <= {100 * TARGET_429:g} %), {mine.failed} failed: "
          + ("PASS" if not misses else "MISS " + ", ".join(misses)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tps", type=float, default=10.0, help="the emulator's S1 limit")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per variant")
    parser.add_argument(
        "--chart", type=Path, default=Path("artifacts/bench/goodput.svg"), help="SVG chart"
    )
    args = parser.parse_args(argv)

    image = small_jpeg()
    emulator = Emulator(args.tps)
    try:
        outcomes = [
            _drive(name, make(emulator, image), emulator=emulator, threads=args.threads,
                   duration=args.duration)
            for name, make in (("ours (shared.analysis.vision)", ours),
                               ("SDK default retry policy", baseline))
        ]
    finally:
        emulator.stop()
    report(outcomes, tps=args.tps, threads=args.threads)
    _chart.write(args.chart, chart_of(outcomes, tps=args.tps))
    print(f"chart: {args.chart}")
    return 0


def chart_of(outcomes: list[Outcome], *, tps: float) -> _chart.Chart:
    series = []
    for o in outcomes:
        series.append(_chart.Series(f"{o.name}: ok/s", [(t, ok) for t, ok, _ in o.seconds]))
        series.append(_chart.Series(f"{o.name}: 429/s", [(t, n) for t, _, n in o.seconds]))
    return _chart.lines(
        f"Successful analyses and 429 answers per second against an S1 limit of {tps:g}/s",
        "seconds into the window", "per second", series, [_chart.Mark("limit", tps)],
    )


if __name__ == "__main__":
    sys.exit(main())
