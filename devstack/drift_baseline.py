"""Operator command: pin the drift baseline to a time range, show it, or go back to rolling.

    python -m devstack.drift_baseline show  [--settings local.settings.json]
    python -m devstack.drift_baseline pin   [--hours 168 | --from ISO --to ISO] [--settings …]
    python -m devstack.drift_baseline unpin [--settings …]

``pin`` snapshots the distribution of every image descriptor over the range (the
``drift_distribution`` query) into ``drift/baseline.json`` of the status container; the status
evaluation then compares the current window with that range (``shared.monitoring.drift``). It
refuses a
range with fewer than ``DRIFT_MIN_IMAGES`` analysed images: a baseline of nothing would make every
window look new. Works against Azure and against the local stack (the same settings). Not part of
the deployed app: it is run by a person, not on the analysis path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from devstack.replay import load_environment
from shared.monitoring.drift import BASELINE_DOCUMENT, Baseline, JsonDocuments, load_baseline
from shared.monitoring.logsquery import QueryResult, Timespan
from shared.settings import Settings

DISTRIBUTION_QUERY = "drift_distribution"


class Runner(Protocol):
    def run(self, name: str, timespan: Timespan = ..., *,
            params: Any = ...) -> QueryResult: ...


class PinRefused(Exception):
    """The range cannot serve as a baseline (the message says why)."""


def pin(runner: Runner, documents: JsonDocuments, settings: Settings, *, start: datetime,
        end: datetime, now: datetime) -> Baseline:
    """Snapshot ``[start, end)`` as the pinned baseline and save it; returns what was saved."""
    if not start < end <= now:
        raise PinRefused("the range must start before it ends, and end by now")
    lookback_start, lookback_end = now - start, now - end
    result = runner.run(
        DISTRIBUTION_QUERY, timespan=lookback_start + timedelta(minutes=1),
        params={"baselineStart": _seconds(lookback_start), "baselineEnd": _seconds(lookback_end),
                "currentWindow": timedelta(seconds=1)})
    rows = [{"Descriptor": r["Descriptor"], "Bin": r["Bin"], "Images": r["Baseline"],
             "Share": r["BaselineShare"]} for r in result.rows if r.get("Baseline")]
    images = sum(r["Images"] for r in rows if r["Descriptor"] == "brightness")
    if images < settings.drift.min_images:
        raise PinRefused(f"{images} analysed images with descriptors in the range; at least"
                         f" DRIFT_MIN_IMAGES={settings.drift.min_images} are needed")
    baseline = Baseline.pinned(start, end, pinned_at=now, distribution=tuple(rows))
    documents.write_json(BASELINE_DOCUMENT, baseline.to_json())
    return baseline


def unpin(documents: JsonDocuments) -> None:
    documents.write_json(BASELINE_DOCUMENT, Baseline().to_json())


def _seconds(delta: timedelta) -> timedelta:
    return timedelta(seconds=int(delta.total_seconds()))


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.drift_baseline",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=("show", "pin", "unpin"))
    parser.add_argument("--hours", type=float, help="pin: the last N hours (default: "
                        "DRIFT_BASELINE_HOURS)")
    parser.add_argument("--from", dest="start", help="pin: range start (ISO 8601, UTC)")
    parser.add_argument("--to", dest="end", help="pin: range end (ISO 8601, UTC; default now)")
    parser.add_argument("--settings", help="a local.settings.json whose Values to use")
    args = parser.parse_args(argv)

    from shared.composition import status_store
    from shared.monitoring.logsquery import LogsQueryRunner

    settings = Settings.from_env(load_environment(args.settings))
    documents = status_store(settings)
    now = datetime.now(UTC)
    if args.action == "unpin":
        unpin(documents)
    elif args.action == "pin":
        end = _time(args.end) if args.end else now
        start = (_time(args.start) if args.start
                 else end - timedelta(hours=args.hours or settings.drift.baseline_hours))
        try:
            pin(LogsQueryRunner.from_settings(settings), documents, settings, start=start,
                end=end, now=now)
        except PinRefused as exc:
            print(f"not pinned: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(load_baseline(documents).describe(settings.drift, now), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
