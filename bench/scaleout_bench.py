"""Several instances against one Vision limit: ours vs today's static bucket vs the plain SDK.

    .venv/bin/python bench/scaleout_bench.py [--duration 40] [--threads 4] [--quick]

Starts one Vision emulator (S1, ``--tps`` calls per rolling second for *all* callers) and, per
scenario and variant, K separate worker processes (``--worker``, this same file) that each build
their client exactly as the app does from **default** app settings (only the endpoint, key,
features and storage connection given) and analyse a small JPEG (``smartCrops``) from
``--threads`` threads in a loop:

* ``ours``: ``shared.analysis.vision.build_vision_client`` — adaptive rate from the tier's limit;
* ``static``: the same with ``VISION_RATE_MODE=static`` — today's fixed token bucket at the tier's
  limit in every instance, ``Retry-After`` pausing all threads;
* ``sdk``: ``ImageAnalysisClient`` with the SDK's default ``RetryPolicy``.

Scenarios: K = 1, 2, 4, 8 steady; K = 4 with the limit halved at mid-run; K = 4 from half the
limit doubled back at mid-run; 2 instances, 2 more joining at a third and leaving at two thirds
of a run half as long again. The limit changes through the emulator's admin API
(``PUT /admin/tier``).

Reported per scenario and variant: goodput as a share of the limit and the 429 share of the
emulator's calls, over the whole run and over its *settled* seconds (outside the 10 s after each
change that the targets allow for re-converging; a steady run has no change, so both are the
same), analyses that failed after their retries, calls per success, fairness (min/max over
instances of successes against an equal split of the limit among those running, over the
settled seconds), time to re-converge (from the start or a change, the first second from which
a 5 s window holds >= 95 % of the limit with <= 2 % of calls answered 429; "never" if no window
does), and the slots ours skipped because a caller woke too late for them. The verdict judges
the settled numbers (``_targets``). Charts: one per scenario. Last, a simulated floor: the 429
share of instances that pace evenly at a perfectly known fair share.
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
import _targets
import fleet_sim
from goodput_bench import FEATURES, KEY, Emulator, small_jpeg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

VARIANTS = ("ours", "static", "sdk")
TARGET_GOODPUT, TARGET_429 = _targets.GOODPUT, _targets.SHARE_429
TARGET_FAIRNESS, TARGET_RECONVERGE_S = _targets.FAIRNESS, _targets.RECONVERGE_S
WINDOW_S = 5


# --------------------------------------------------------------------------- worker process


class Azurite:
    """A private Azurite on free ports: the storage account whose heartbeats ours shares."""

    def __init__(self) -> None:
        from devstack import procs
        from devstack.azurite import AzuriteConfig, azurite_argv

        root = Path(tempfile.mkdtemp(prefix="scaleout-azurite-"))
        self.config = AzuriteConfig(location=root / "data", blob_port=procs.free_port(),
                                    queue_port=procs.free_port(),
                                    table_port=procs.free_port())
        self._proc, self._record = procs.spawn("azurite", azurite_argv(self.config),
                                               log_path=root / "azurite.log",
                                               cwd=REPO_ROOT)
        try:
            procs.wait_until(lambda: procs.port_open(self.config.blob_port), timeout=60,
                             interval=0.2, what="Azurite")
        except BaseException:
            self.stop()
            raise

    @property
    def connection_string(self) -> str:
        return self.config.connection_string

    def stop(self) -> None:
        from devstack import procs

        procs.stop(self._record.pid)


def _client(variant: str, endpoint: str, storage: str) -> Callable[[bytes], object]:
    if variant == "sdk":
        from azure.ai.vision.imageanalysis import ImageAnalysisClient
        from azure.ai.vision.imageanalysis.models import VisualFeatures
        from azure.core.credentials import AzureKeyCredential

        sdk = ImageAnalysisClient(endpoint, AzureKeyCredential(KEY))
        features = [VisualFeatures(name) for name in FEATURES]
        return lambda image: sdk.analyze(image_data=image, visual_features=features)
    from shared.analysis.vision import build_vision_client
    from shared.composition import vision_fleet
    from shared.settings import Settings

    env = {
        "VISION_ENDPOINT": endpoint,
        "VISION_KEY": KEY,
        "VISION_FEATURES": ",".join(FEATURES),
        "AzureWebJobsStorage": storage,  # the heartbeats' account (static ignores it)
    }
    if variant == "static":
        env["VISION_RATE_MODE"] = "static"
    settings = Settings.from_env(env)
    # as the composition root builds it: the fleet membership, then the client
    client = build_vision_client(settings.vision, fleet=vision_fleet(settings))
    return _Analyze(client, settings.vision.features)


@dataclass(frozen=True, slots=True)
class _Analyze:
    client: Any
    features: tuple[str, ...]

    def __call__(self, image: bytes) -> object:
        return self.client.analyze(image, self.features)


def worker(args: argparse.Namespace) -> int:
    from devstack import procs

    joins_late = args.start_at > 0.5
    if joins_late:  # a scaled-out instance joins the fleet when it starts: warm imports only
        _client("sdk" if args.variant == "sdk" else "static", args.endpoint, args.storage)
    else:
        analyze = _client(args.variant, args.endpoint, args.storage)
    out = Path(args.out)
    out.with_suffix(".ready").write_text("ready")
    go = out.parent / "go"
    procs.wait_until(go.exists, timeout=300, interval=0.05, what="the run's start")
    epoch = float(go.read_text())
    start, stop = epoch + args.start_at, epoch + args.start_at + args.duration
    if joins_late:
        time.sleep(max(0.0, start - time.time()))
        analyze = _client(args.variant, args.endpoint, args.storage)
    image = small_jpeg()
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
                    target.append(now - epoch)

    time.sleep(max(0.0, start - time.time()))  # all instances of a run begin together
    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if args.variant == "ours":  # a graceful stop: calls in flight done, it leaves the fleet
        from shared.composition import leave_vision_fleet

        leave_vision_fleet()
    flow = getattr(getattr(analyze, "client", None), "flow", None)
    fleet = getattr(flow, "fleet", None)
    if fleet is not None and args.debug:
        print(f"fleet {fleet.instance}: members={fleet.members()} limit={fleet.limit:.2f} "
              f"cuts={fleet.cuts} probes={fleet.probes} storage_failures={fleet.failures}",
              file=sys.stderr)
    elif args.debug:
        print(f"worker {out.name}: no fleet", file=sys.stderr)
    result: dict[str, Any] = {"successes": successes, "failures": failures,
                              "start": start - epoch, "stop": stop - epoch}
    if fleet is not None:
        result["late_skips"] = fleet.late_skips
    Path(args.out).write_text(json.dumps(result))
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
    #: seconds of this scenario's run, when not the bench's ``--duration``
    length: float | None = None


def scenarios(duration: float, tps: float) -> list[Scenario]:
    whole = Instance(0, duration)
    mid = duration / 2
    # join/leave runs half as long again, so each phase has settled seconds after its change
    longer = 1.5 * duration
    third = longer / 3
    return [
        *(Scenario(f"K={k}", (whole,) * k) for k in (1, 2, 4, 8)),
        Scenario("K=4, limit halves", (whole,) * 4, changes=((mid, tps / 2),)),
        Scenario("K=4, limit doubles", (whole,) * 4, changes=((mid, tps),),
                 initial_tps=tps / 2),
        Scenario("2 + 2 join, then leave",
                 (Instance(0, longer), Instance(0, longer),
                  Instance(third, 2 * third), Instance(third, 2 * third)),
                 changes=((third, tps), (2 * third, tps)), length=longer),
    ]


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
    #: slots ours skipped because its caller woke too late for them (None: not ours)
    late_skips: int | None = None

    def ok_per_second(self) -> list[int]:
        return [sum(counts) for counts in zip(*self.ok_per_instance(), strict=True)]

    def ok_per_instance(self) -> list[list[int]]:
        out = []
        for times in self.successes:
            counts = [0] * int(self.duration)
            for t in times:
                if 0 <= t < self.duration:
                    counts[int(t)] += 1
            out.append(counts)
        return out

    def events(self) -> list[float]:
        """Changes the run re-converges after: each change, and the start when the run
        begins below the limit every client starts from."""
        marks = [t for t, _ in self.scenario.changes]
        return [0.0, *marks] if self.scenario.initial_tps is not None else marks

    def settled(self) -> list[int]:
        """The seconds judged against the targets (all of them in a steady run)."""
        return _targets.settled_seconds(int(self.duration), self.events())

    @property
    def goodput_share(self) -> float:
        return sum(self.ok_per_second()) / sum(self.limit)

    @property
    def share_429(self) -> float:
        return self.total_429 / self.total_calls if self.total_calls else 0.0

    @property
    def settled_goodput(self) -> float:
        return _targets.share(self.ok_per_second(), self.limit, self.settled())

    @property
    def settled_429(self) -> float:
        return _targets.share(self.throttled, self.calls, self.settled())

    @property
    def calls_per_success(self) -> float:
        ok = sum(len(s) for s in self.successes)
        return self.total_calls / ok if ok else float("inf")

    @property
    def fairness(self) -> float:
        """min/max over instances of successes against an equal split of the limit among
        those running, over the settled seconds (with every instance running all along:
        min/max per-instance goodput)."""
        spans = [(i.start_s, i.stop_s) for i in self.scenario.instances]
        return _targets.fairness(self.ok_per_instance(), _targets.fair_shares(self.limit, spans),
                                 self.settled())

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
                        and (not calls or blocked / calls <= TARGET_429)):
                    found = s - event
                    break
            out.append(found)
        return out


def run_once(scenario: Scenario, variant: str, *, emulator: Emulator, storage: str, tps: float,
             duration: float, threads: int, workdir: Path, debug: bool = False) -> Run:
    initial = scenario.initial_tps or tps
    duration = scenario.length or duration
    emulator.admin("PUT", "/admin/tier", {"tier": "S1", "tps": initial})
    emulator.admin("POST", "/admin/stats/reset")
    from devstack import procs as devprocs

    run_dir = workdir / f"{variant}-{len(list(workdir.iterdir()))}"
    run_dir.mkdir()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for number, instance in enumerate(scenario.instances):
        out = run_dir / f"{number}.json"
        argv = [sys.executable, __file__, "--worker", "--variant", variant,
                "--endpoint", emulator.endpoint, "--storage", storage,
                "--threads", str(threads), "--start-at", repr(instance.start_s),
                "--duration", repr(instance.stop_s - instance.start_s),
                "--out", str(out), *(["--debug"] if debug else [])]
        procs.append((subprocess.Popen(argv, cwd=REPO_ROOT), out))
    # every worker has imported the SDK and built its client (a running fleet) before the start
    devprocs.wait_until(lambda: all(out.with_suffix(".ready").exists() for _, out in procs),
                        timeout=300, interval=0.1, what="the workers")
    epoch = time.time() + 4.0  # two heartbeats: every member has listed every other
    (run_dir / "go.tmp").write_text(repr(epoch))
    (run_dir / "go.tmp").rename(run_dir / "go")
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
        if "late_skips" in data:
            result.late_skips = (result.late_skips or 0) + int(data["late_skips"])
    result.total_calls, result.total_429 = sum(calls), sum(throttled)
    return result


# --------------------------------------------------------------------------- pacing floor


def even_pacing_429_share(instances: int, utilisation: float, *, tps: float = 10.0,
                          seconds: float = 200.0, seed: int = 1) -> float:
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
              for k in (1, 2, 4, 8)]
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
                        f"per instance, {duration:g} s per run, join/leave 1.5 x): goodput and "
                        "429s of the whole run, then of the settled seconds (outside "
                        f"{TARGET_RECONVERGE_S:g} s after each change), which the verdict judges")
    for column in ("scenario", "client", "goodput", "429 share", "settled goodput (seconds)",
                   "settled 429", "failed", "calls/success", "fairness",
                   "re-converge (start / changes)", "late skips", "verdict"):
        table.add_column(column, justify="left" if column in ("scenario", "client") else "right")
    for r in runs:
        times = r.reconverge()
        verdicts = verdict(r)
        misses = [name for name, ok in verdicts.items() if not ok]
        table.add_row(r.scenario.name, r.variant, f"{100 * r.goodput_share:.1f} %",
                      f"{100 * r.share_429:.1f} %",
                      f"{100 * r.settled_goodput:.1f} % ({len(r.settled())} s)",
                      f"{100 * r.settled_429:.1f} %", str(r.failures),
                      f"{r.calls_per_success:.2f}", f"{r.fairness:.2f}", _seconds(times),
                      "-" if r.late_skips is None else str(r.late_skips),
                      "PASS" if not misses else "MISS " + ", ".join(misses))
    Console(width=190).print(table)


def verdict(r: Run) -> dict[str, bool]:
    """Each target of the scenario, met or not. The settled ones are met only over seconds that
    sent calls: a run too short to have any settled second (``--quick`` with changes) or one
    that sent nothing fails them, it never passes on nothing."""
    times = r.reconverge()
    settled = r.settled()
    judged = bool(settled) and sum(r.calls[s] for s in settled) > 0
    return {
        "goodput": judged and r.settled_goodput >= TARGET_GOODPUT,
        "429": judged and r.settled_429 <= TARGET_429,
        "failed": r.failures == 0,
        "fairness": judged and r.fairness >= TARGET_FAIRNESS,
        "re-converge": all(t is not None and t <= TARGET_RECONVERGE_S for t in times),
    }


def chart_of(runs: list[Run], scenario: Scenario) -> _chart.Chart:
    series = []
    mine = [r for r in runs if r.scenario is scenario]
    if mine:
        series.append(_chart.Series("limit", list(enumerate(mine[0].limit))))
    for r in mine:
        series.append(_chart.Series(f"{r.variant}: ok/s", list(enumerate(r.ok_per_second()))))
        series.append(_chart.Series(f"{r.variant}: 429/s", list(enumerate(r.throttled))))
    return _chart.lines(f"{scenario.name}: successful analyses and 429 answers per second",
                        "seconds into the run", "per second", series)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tps", type=float, default=10.0, help="the emulator's S1 limit")
    parser.add_argument("--threads", type=int, default=4, help="threads per instance")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true",
                        help="20 s runs, ours and static only")
    parser.add_argument("--variant-only", dest="variants", action="append", choices=VARIANTS,
                        help="only this client (repeatable)")
    parser.add_argument("--only", action="append", default=[],
                        help="only scenarios whose name contains this (repeatable)")
    parser.add_argument("--charts", type=Path, default=Path("artifacts/bench"),
                        help="folder for one SVG per scenario")
    parser.add_argument("--json", type=Path, help="also write the per-second series here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true",
                        help="workers print their fleet's counters")
    for name in ("--variant", "--endpoint", "--storage", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    duration = 20.0 if args.quick else args.duration
    variants = args.variants or (("ours", "static") if args.quick else VARIANTS)
    chosen = [s for s in scenarios(duration, args.tps)
              if not args.only or any(o in s.name for o in args.only)]
    emulator = Emulator(args.tps)
    try:
        azurite = Azurite()
    except BaseException:
        emulator.stop()
        raise
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
            for scenario in chosen:
                for variant in variants:
                    print(f"  {scenario.name}: {variant} ...", file=sys.stderr, flush=True)
                    runs.append(run_once(scenario, variant, emulator=emulator,
                                         storage=azurite.connection_string, tps=args.tps,
                                         duration=duration, threads=args.threads,
                                         workdir=Path(tmp), debug=args.debug))
    finally:
        emulator.stop()
        azurite.stop()
    report(runs, tps=args.tps, threads=args.threads, duration=duration)
    print_pacing_floor(args.tps)
    fleet_sim.print_simulation(duration, args.tps)
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
            "per_instance_ok": [len(s) for s in r.successes], "failed": r.failures}


if __name__ == "__main__":
    sys.exit(main())
