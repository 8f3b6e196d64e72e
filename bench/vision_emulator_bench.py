"""CPU per image of the Vision emulator's ``read``, ``people`` and ``smartCrops``: now vs before.

    .venv/bin/python bench/vision_emulator_bench.py [--repeat 3] [--baseline REV] [--chart SVG]

"Before" is the emulator as it was at ``--baseline`` (default: the revision before the BlazePose
people detector was added), exported from git into a temporary folder; "now" is this checkout.
Both run the same code path, ``Analyzer.analyze_sync`` on the raw image bytes, on the same
images: the repo's ``samples/`` and the SDK's ``sample.jpg`` (from the package index's source
distribution, cached; left out, with a note, when unreachable). Each round starts one fresh
process per version, alternating before/now so that load from elsewhere on the machine hits
both alike; a process warms up on every image once, then measures one call per image and
feature with ``time.process_time()`` (all threads of the process). Reported: the median over
``--repeat`` rounds. Target: read and people CPU per image grow by at most 25 % (mean over the
images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import _chart  # bench/ itself: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
# A child imports the emulator it was given on PYTHONPATH, so this checkout goes last there.
sys.path.insert(len(sys.path) if "--child" in sys.argv else 0, str(REPO))

FEATURES = ("read", "people", "smartCrops")
TARGET_GROWTH = 0.25


def images() -> list[Path]:
    found = sorted(p for p in (REPO / "samples").iterdir() if p.suffix in (".png", ".jpg"))
    try:
        import pytest

        from tests.support import sdk_sample

        found.append(sdk_sample.sample_jpg())
    except pytest.skip.Exception as skipped:
        print(f"note: SDK sample.jpg left out: {skipped}")
    return found


def measure(paths: list[str], repeat: int) -> dict[str, dict[str, float]]:
    """Runs in the child process: median CPU seconds per (feature, image) over ``repeat``."""
    from devstack.vision.analysis import Analyzer
    from devstack.vision.config import VisionConfig
    from devstack.vision.params import AnalyzeParams

    analyzer = Analyzer(VisionConfig(key="bench", max_concurrency=1))
    data = {path: Path(path).read_bytes() for path in paths}
    samples: dict[str, dict[str, list[float]]] = {f: {p: [] for p in paths} for f in FEATURES}
    for round_ in range(repeat + 1):
        for feature in FEATURES:
            ratios = (0.9, 1.33) if feature == "smartCrops" else ()
            params = AnalyzeParams("2024-02-01", (feature,), aspect_ratios=ratios)
            for path in paths:
                start = time.process_time()
                analyzer.analyze_sync(data[path], params)
                if round_:  # round 0 warms caches and lazily built detectors
                    samples[feature][path].append(time.process_time() - start)
    analyzer.close()
    return {f: {p: statistics.median(v) for p, v in by.items()} for f, by in samples.items()}


def default_baseline() -> str:
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "devstack/vision/pose.py"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()
    if not added:
        raise SystemExit("no commit adds devstack/vision/pose.py: pass --baseline REV")
    return added[-1] + "^"


def export(rev: str, into: Path) -> Path:
    """The ``devstack`` package as it was at ``rev``, unpacked under ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), rev, "devstack"],
        cwd=REPO, check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def run_child(root: Path, paths: list[Path], repeat: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(repeat), *map(str, paths)],
        cwd=root, env=env, check=True, capture_output=True, text=True,
    ).stdout
    result: dict[str, dict[str, float]] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="git revision of the 'before' emulator")
    parser.add_argument("--chart", type=Path, default=Path("artifacts/bench/vision-emulator.svg"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[1:], int(args.child[0]))))
        return
    paths = images()
    if not paths:
        raise SystemExit("no images to measure")
    rev = args.baseline or default_baseline()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"before": export(rev, Path(tmp)), "now": REPO}
        for round_ in range(1, args.repeat + 1):
            for version, root in roots.items():
                print(f"round {round_}/{args.repeat}: {version} on {len(paths)} images", flush=True)
                runs[version].append(run_child(root, paths, 1))
    before, now = (
        {f: {str(p): statistics.median(r[f][str(p)] for r in runs[v]) for p in paths}
         for f in FEATURES}
        for v in ("before", "now")
    )
    print(f"CPU ms per image, median of {args.repeat} rounds; before = {rev}")
    print(f"{'image':<16}" + "".join(f"{f + ' before':>18}{f + ' now':>15}" for f in FEATURES))
    for path in paths:
        key = str(path)
        cells = "".join(
            f"{before[f][key] * 1000:>18.0f}{now[f][key] * 1000:>15.0f}" for f in FEATURES
        )
        print(f"{path.name:<16}{cells}")
    failed = []
    bars = []
    for feature in FEATURES:
        total_before = sum(before[feature].values()) / len(paths) * 1000
        total_now = sum(now[feature].values()) / len(paths) * 1000
        growth = total_now / total_before - 1
        budget = f"(target <= +{TARGET_GROWTH:.0%})" if feature != "smartCrops" else "(no target)"
        print(f"{feature}: {total_before:.0f} -> {total_now:.0f} ms per image, "
              f"{growth:+.1%} {budget}")
        if feature != "smartCrops" and growth > TARGET_GROWTH:
            failed.append(feature)
        bars += [_chart.Bar(f"{feature} before", [("before", total_before)]),
                 _chart.Bar(f"{feature} now", [("now", total_now)])]
    print(f"measured {len(paths)} images x {len(FEATURES)} features x {args.repeat} rounds")
    chart = _chart.bars(f"Vision emulator CPU per image (mean of {len(paths)} images)", "ms", bars)
    print(f"chart: {_chart.write(args.chart, chart)}")
    if failed:
        raise SystemExit(f"CPU per image grew by more than {TARGET_GROWTH:.0%}: {failed}")


if __name__ == "__main__":
    main()
