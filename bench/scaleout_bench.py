"""Several instances against one Vision limit: ours vs today's static bucket vs the plain SDK.

    .venv/bin/python bench/scaleout_bench.py [--duration 40] [--threads 4] [--quick]

Starts one Vision emulator (S1, ``--tps`` calls per rolling second for *all* callers) and, per
scenario and variant, K separate worker processes (``--worker``, this same file) that each build
their client exactly as the app does from **default** app settings (only the endpoint, key,
features and storage connection given) and analyse a small JPEG (``smartCrops``) from
``--threads`` threads in a loop:

* ``ours``: ``shared.vision.build_vision_client`` — adaptive rate from the tier's limit;
* ``static``: the same with ``VISION_RATE_MODE=static`` — today's fixed token bucket at the tier's
  limit in every instance, ``Retry-After`` pausing all threads;
* ``sdk``: ``ImageAnalysisClient`` with the SDK's default ``RetryPolicy``.

Scenarios: K = 1, 2, 4, 8 steady; K = 4 with the limit halved at mid-run; K = 4 from half the
limit doubled back at mid-run; 2 instances, 2 more joining at a third and leaving at two thirds.
The limit changes through the emulator's admin API (``PUT /admin/tier``).

Reported per scenario and variant: goodput as a share of the limit (integrated over the run),
429 share of the emulator's calls, analyses that failed after their retries, calls per success,
fairness (min/max goodput per instance over the time each ran), and time to re-converge: from
the start or a change, the first second from which a 5 s window holds >= 95 % of the limit with
<= 2 % of calls answered 429 ("never" if no window does). Charts: one SVG per scenario. Last,
a simulated floor: the 429 share of instances that pace evenly at a perfectly known fair share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _chart  # bench/ itself: the script's folder is first on sys.path
from goodput_bench import FEATURES, KEY, Emulator, small_jpeg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

VARIANTS = ("ours", "static", "sdk")
TARGET_GOODPUT, TARGET_429, TARGET_FAIRNESS, TARGET_RECONVERGE_S = 0.95, 0.02, 0.8, 10.0
WINDOW_S = 5


# --------------------------------------------------------------------------- worker process


def _client(variant: str, endpoint: str) -> Callable[[bytes], object]:
    if variant == "sdk":
        from azure.ai.vision.imageanalysis import ImageAnalysisClient
        from azure.ai.vision.imageanalysis.models import VisualFeatures
        from azure.core.credentials import AzureKeyCredential

        sdk = ImageAnalysisClient(endpoint, AzureKeyCredential(KEY))
        features = [VisualFeatures(name) for name in FEATURES]
        return lambda image: sdk.analyze(image_data=image, visual_features=features)
    from shared.settings import Settings
    from shared.vision import build_vision_client

    env = {
        "VISION_ENDPOINT": endpoint,
        "VISION_KEY": KEY,
        "VISION_FEATURES": ",".join(FEATURES),
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",  # unused; Settings requires it
    }
    if variant == "static":
        env["VISION_RATE_MODE"] = "static"
    settings = Settings.from_env(env)
    client = build_vision_client(settings)
    return lambda image: client.analyze(image, settings.vision_features)


def worker(args: argparse.Namespace) -> int:
    analyze = _client(args.variant, args.endpoint)
    image = small_jpeg()
    start, stop = args.start_at, args.start_at + args.duration
    successes: list[float] = []
    failures: list[float] = []
    lock = threading.Lock()

    def loop() -> None:
        while time.time() < stop:
            try:
                analyze(image)
            except Exception:  # an analysis that failed after its retries
                target = failures
            else:
                target = successes
            now = time.time()
            if now <= stop:
                with lock:
                    target.append(now - args.epoch)

    time.sleep(max(0.0, start - time.time()))  # all instances of a run begin together
    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(args.out).write_text(json.dumps({"successes": successes, "failures": failures,
                                          "start": start - args.epoch,
                                          "stop": stop - args.epoch}))  # fmt: skip
    return 0


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Instance:
    start_s: float
    stop_s: float


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    instances: tuple[Instance, ...]
    #: (second into the run, new limit); the run starts at ``initial_tps``
    changes: tuple[tuple[float, float], ...] = ()
    initial_tps: float | None = None


def scenarios(duration: float, tps: float) -> list[Scenario]:
    whole = Instance(0, duration)
    mid = duration / 2
    third = duration / 3
    return [
        *(Scenario(f"K={k}", (whole,) * k) for k in (1, 2, 4, 8)),
        Scenario("K=4, limit halves", (whole,) * 4, changes=((mid, tps / 2),)),
        Scenario("K=4, limit doubles", (whole,) * 4, changes=((mid, tps),),
                 initial_tps=tps / 2),
        Scenario("2 + 2 join, then leave",
                 (whole, whole, Instance(third, 2 * third), Instance(third, 2 * third)),
                 changes=((third, tps), (2 * third, tps))),
    ]  # fmt: skip


@dataclass(slots=True)
class Run:
    scenario: Scenario
    variant: str
    duration: float
    limit: list[float]  # per second of the run
    calls: list[int] = field(default_factory=list)  # per second, from the emulator
    throttled: list[int] = field(default_factory=list)
    successes: list[list[float]] = field(default_factory=list)  # per instance, seconds
    failures: int = 0
    total_calls: int = 0
    total_429: int = 0

    def ok_per_second(self) -> list[int]:
        counts = [0] * int(self.duration)
        for times in self.successes:
            for t in times:
                if 0 <= t < self.duration:
                    counts[int(t)] += 1
        return counts

    @property
    def goodput_share(self) -> float:
        return sum(self.ok_per_second()) / sum(self.limit)

    @property
    def share_429(self) -> float:
        return self.total_429 / self.total_calls if self.total_calls else 0.0

    @property
    def calls_per_success(self) -> float:
        ok = sum(len(s) for s in self.successes)
        return self.total_calls / ok if ok else float("inf")

    @property
    def fairness(self) -> float:
        spans = [inst.stop_s - inst.start_s for inst in self.scenario.instances]
        rates = [len(times) / span for times, span in zip(self.successes, spans, strict=True)]
        return min(rates) / max(rates) if rates and max(rates) > 0 else 0.0

    def reconverge(self) -> list[float | None]:
        """Seconds from the start and from each change until a window meets the targets."""
        ok = self.ok_per_second()
        events = [0.0, *(t for t, _ in self.scenario.changes)]
        out: list[float | None] = []
        for index, event in enumerate(events):
            end = events[index + 1] if index + 1 < len(events) else self.duration
            found = None
            for s in range(int(event), int(end) - WINDOW_S + 1):
                window = range(s, s + WINDOW_S)
                calls = sum(self.calls[i] for i in window)
                blocked = sum(self.throttled[i] for i in window)
                allowed = sum(self.limit[i] for i in window)
                if (sum(ok[i] for i in window) >= TARGET_GOODPUT * allowed
                        and (not calls or blocked / calls <= TARGET_429)):  # fmt: skip
                    found = s - event
                    break
            out.append(found)
        return out


def run_once(scenario: Scenario, variant: str, *, emulator: Emulator, tps: float,
             duration: float, threads: int, workdir: Path) -> Run:  # fmt: skip
    initial = scenario.initial_tps or tps
    emulator.admin("PUT", "/admin/tier", {"tier": "S1", "tps": initial})
    emulator.admin("POST", "/admin/stats/reset")
    epoch = time.time() + 8.0  # time for every worker to import the SDK before the start
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for number, instance in enumerate(scenario.instances):
        out = workdir / f"{variant}-{number}.json"
        argv = [sys.executable, __file__, "--worker", "--variant", variant,
                "--endpoint", emulator.endpoint, "--threads", str(threads),
                "--epoch", repr(epoch), "--start-at", repr(epoch + instance.start_s),
                "--duration", repr(instance.stop_s - instance.start_s),
                "--out", str(out)]  # fmt: skip
        procs.append((subprocess.Popen(argv, cwd=REPO_ROOT), out))
    limit, calls, throttled = [], [], []
    current, changes = initial, list(scenario.changes)
    time.sleep(max(0.0, epoch - time.time()))
    last_total = last_429 = 0
    for second in range(int(duration)):
        while changes and changes[0][0] <= second:
            new = changes.pop(0)[1]
            if new != current:  # a join/leave marks an event without touching the limit
                current = new
                emulator.admin("PUT", "/admin/tier", {"tier": "S1", "tps": current})
        limit.append(current)
        time.sleep(max(0.0, epoch + second + 1 - time.time()))
        stats = emulator.admin("GET", "/admin/stats")
        total, blocked = int(stats["total"]), int(stats["by_status"].get("429", 0))
        calls.append(total - last_total)
        throttled.append(blocked - last_429)
        last_total, last_429 = total, blocked
    result = Run(scenario, variant, duration, limit, calls, throttled)
    for proc, out in procs:
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"worker {out.name} exited with {proc.returncode}")
        data = json.loads(out.read_text())
        result.successes.append(data["successes"])
        result.failures += len(data["failures"])
    result.total_calls, result.total_429 = sum(calls), sum(throttled)
    return result


# --------------------------------------------------------------------------- pacing floor


def even_pacing_429_share(instances: int, utilisation: float, *, tps: float = 10.0,
                          seconds: float = 200.0, seed: int = 1) -> float:  # fmt: skip
    """Share of calls the emulator's own window refuses when K instances already know their fair
    share and pace evenly at ``utilisation`` of it (rates 1 % apart, random phases, 0-5 ms
    jitter): what no uncoordinated controller can beat. A simulation, no processes."""
    import random

    from devstack.vision.limits import window_for_tps

    rng = random.Random(seed)
    window = window_for_tps(tps)
    arrivals: list[float] = []
    for _ in range(instances):
        rate = utilisation * tps / instances * rng.uniform(0.99, 1.01)
        t = rng.uniform(0, 1 / rate)
        while t < seconds:
            arrivals.append(t + rng.uniform(0, 0.005))
            t += 1 / rate
    arrivals.sort()
    refused = sum(1 for t in arrivals if window.try_acquire(t) is not None)
    return refused / len(arrivals)


def print_pacing_floor(tps: float) -> None:
    shares = [(k, [even_pacing_429_share(k, u, tps=tps) for u in (0.9, 0.95, 0.98)])
              for k in (1, 2, 4, 8)]  # fmt: skip
    print("429 share with a perfectly known fair share, evenly paced (simulated floor):")
    for k, values in shares:
        print(f"  K={k}: at 90 % {100 * values[0]:.1f} %, at 95 % {100 * values[1]:.1f} %,"
              f" at 98 % {100 * values[2]:.1f} % of the limit")


# --------------------------------------------------------------------------- report


def _seconds(values: list[float | None]) -> str:
    return " / ".join("never" if v is None else f"{v:.0f} s" for v in values)


def report(runs: list[Run], *, tps: float, threads: int, duration: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Scale-out against one S1 limit of {tps:g} calls/s ({threads} threads "
                        f"per instance, {duration:g} s per run)")  # fmt: skip
    for column in ("scenario", "client", "goodput", "429 share", "failed", "calls/success",
                   "fairness", "re-converge (start / changes)", "meets targets"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("scenario", "client") else "right")
    for r in runs:
        times = r.reconverge()
        meets = (r.goodput_share >= TARGET_GOODPUT and r.share_429 <= TARGET_429
                 and r.failures == 0 and r.fairness >= TARGET_FAIRNESS
                 and all(t is not None and t <= TARGET_RECONVERGE_S for t in times))  # fmt: skip
        table.add_row(r.scenario.name, r.variant, f"{100 * r.goodput_share:.1f} %",
                      f"{100 * r.share_429:.1f} %", str(r.failures), f"{r.calls_per_success:.2f}",
                      f"{r.fairness:.2f}", _seconds(times), "yes" if meets else "no")  # fmt: skip
    Console(width=160).print(table)


def chart_of(runs: list[Run], scenario: Scenario) -> _chart.Chart:
    series = []
    mine = [r for r in runs if r.scenario is scenario]
    if mine:
        series.append(_chart.Series("limit", list(enumerate(mine[0].limit))))
    for r in mine:
        series.append(_chart.Series(f"{r.variant}: ok/s", list(enumerate(r.ok_per_second()))))
        series.append(_chart.Series(f"{r.variant}: 429/s", list(enumerate(r.throttled))))
    return _chart.lines(f"{scenario.name}: successful analyses and 429 answers per second",
                        "seconds into the run", "per second", series)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tps", type=float, default=10.0, help="the emulator's S1 limit")
    parser.add_argument("--threads", type=int, default=4, help="threads per instance")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true",
                        help="20 s runs, ours and static only")  # fmt: skip
    parser.add_argument("--variant-only", dest="variants", action="append", choices=VARIANTS,
                        help="only this client (repeatable)")  # fmt: skip
    parser.add_argument("--only", action="append", default=[],
                        help="only scenarios whose name contains this (repeatable)")  # fmt: skip
    parser.add_argument("--charts", type=Path, default=Path("artifacts/bench"),
                        help="folder for one SVG per scenario")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the per-second series here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--variant", "--endpoint", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--epoch", "--start-at"):
        parser.add_argument(name, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    duration = 20.0 if args.quick else args.duration
    variants = args.variants or (("ours", "static") if args.quick else VARIANTS)
    chosen = [s for s in scenarios(duration, args.tps)
              if not args.only or any(o in s.name for o in args.only)]  # fmt: skip
    emulator = Emulator(args.tps)
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
            for scenario in chosen:
                for variant in variants:
                    print(f"  {scenario.name}: {variant} ...", file=sys.stderr, flush=True)
                    runs.append(run_once(scenario, variant, emulator=emulator, tps=args.tps,
                                         duration=duration, threads=args.threads,
                                         workdir=Path(tmp)))  # fmt: skip
    finally:
        emulator.stop()
    report(runs, tps=args.tps, threads=args.threads, duration=duration)
    print_pacing_floor(args.tps)
    for index, scenario in enumerate(chosen):
        path = args.charts / f"scaleout-{index + 1}.svg"
        _chart.write(path, chart_of(runs, scenario))
        print(f"chart ({scenario.name}): {path}")
    if args.json:
        args.json.write_text(json.dumps([_series(r) for r in runs], indent=1))
    return 0


def _series(r: Run) -> dict[str, Any]:
    return {"scenario": r.scenario.name, "variant": r.variant, "limit": r.limit,
            "ok": r.ok_per_second(), "calls": r.calls, "throttled": r.throttled,
            "per_instance_ok": [len(s) for s in r.successes], "failed": r.failures}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
