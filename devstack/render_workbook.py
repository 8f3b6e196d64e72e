"""Renders the Azure Workbook (``infra/workbook/visionops.workbook.json``) from ``queries/*.kql``.

The workbook shows what the status page shows — deployment markers, latency, success rate,
throughput, availability, quota, errors, throttling, image and model drift, the tuning review's
audit trail — with the very same query files, so a query fixed once is fixed in the status
endpoint, the alerts and the workbook. Binned queries get the workbook's time grain
(``{TimeRange:grain}``) for their ``binSize`` parameter; drift tiles look back over their whole
baseline. Independent of ``shared``: it reads the files only.

The workbook's queries use the workspace tables (AppRequests …): deploy it with the Log
Analytics workspace as its ``sourceId``.

    python -m devstack.render_workbook          # write the file
    python -m devstack.render_workbook --check  # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
QUERIES = REPO_ROOT / "queries"
WORKBOOK = REPO_ROOT / "infra" / "workbook" / "visionops.workbook.json"
SCHEMA = "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"
WORKSPACE = "microsoft.operationalinsights/workspaces"
GRAIN = "{TimeRange:grain}"
DRIFT_RANGE_MS = (7 * 24 * 60 + 16) * 60_000  # the default baseline, current window, a minute


@dataclass(frozen=True, slots=True)
class Panel:
    """One workbook tile: a query file, what to keep of it, and how to draw it."""

    name: str
    title: str
    query: str
    visualization: str  # timechart | barchart | table | tiles
    params: tuple[tuple[str, str], ...] = ()
    project: str | None = None  # appended "| project ..." to pick the plotted columns
    width: str = "50"
    #: a fixed look-back instead of the TimeRange pill, for queries that need their baseline
    range_ms: int | None = None


PANELS: tuple[Panel, ...] = (
    # Workbook charts have no annotations: the deployment markers get their own chart on the
    # same time range, one point per marker and version, full width above the others.
    Panel("deployments", "Deployments (markers: one point per deployment event, by version)",
          "status_series_deployments", "timechart", (("binSize", GRAIN),),
          "bin_start, version, markers = 1", width="100"),
    Panel("latency", "Latency p50 / p95 (ms)", "status_series_requests", "timechart",
          (("binSize", GRAIN),), "bin_start, p50_ms, p95_ms"),
    Panel("success-rate", "Success rate (share of invocations)", "status_series_requests",
          "timechart", (("binSize", GRAIN),), "bin_start, success_rate"),
    Panel("throughput", "Throughput (invocations per bin)", "throughput", "barchart",
          (("binSize", GRAIN),), "TimeGenerated, Analyzed, Rejected, Failed"),
    Panel("throttling", "Vision calls and 429s per bin", "status_series_vision", "timechart",
          (("binSize", GRAIN),), "bin_start, calls, throttled"),
    Panel("availability", "Probe availability (%)", "status_series_availability", "timechart",
          (("binSize", GRAIN),), "bin_start, availability_pct"),
    Panel("availability-by-probe", "Availability by probe", "availability_by_probe", "table"),
    Panel("quota", "Quota: used and month-end forecast (ratio of the monthly quota)",
          "status_quota", "tiles"),
    Panel("errors", "Errors by outcome, class and code", "error_breakdown", "table"),
    # Drift compares with the baseline before the current window (7 days by default), so these
    # tiles look back over that whole range whatever the time pill says (docs/drift.md).
    Panel("drift-score", "Input drift: PSI per descriptor vs the baseline, per 15 min (24 h)",
          "drift_series", "timechart", (), "bin_start, Descriptor, Psi", range_ms=DRIFT_RANGE_MS),
    Panel("drift-now", "Input drift now: PSI and means per descriptor", "drift_input", "table",
          range_ms=DRIFT_RANGE_MS),
    Panel("drift-distribution", "Current vs baseline: share of images per descriptor bin",
          "drift_distribution", "table",
          project="Descriptor, Bin, CurrentShare, BaselineShare", range_ms=DRIFT_RANGE_MS),
    Panel("drift-output", "Output confidence and model version vs the baseline", "drift_output",
          "table", range_ms=DRIFT_RANGE_MS),
    Panel("tuning", "Tuning review: reviews, applied changes, reverts and pins",
          "tuning_changes", "table", width="100"),
)


def bind(text: str, params: tuple[tuple[str, str], ...]) -> str:
    """Replace each ``let <name> = <default>;`` with the given KQL text."""
    for name, value in params:
        pattern = re.compile(rf"^let\s+{re.escape(name)}\s*=\s*[^;\n]+;", re.MULTILINE)
        replacement = f"let {name} = {value};"
        # a function, not a template string: the value may contain backslashes or braces
        text, count = pattern.subn(lambda _m: replacement, text, count=1)  # noqa: B023
        if count != 1:
            raise ValueError(f"query declares no `let {name} = …;`")
    return text


def panel_query(panel: Panel, queries: Path = QUERIES) -> str:
    text = (queries / f"{panel.query}.kql").read_text(encoding="utf-8").rstrip("\n")
    text = bind(text, panel.params)
    if panel.project:
        text += f"\n| project {panel.project}"
    return text


def render(queries: Path = QUERIES) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"type": 1, "name": "title", "content": {"json": (
            "## VisionOps\nAnalysis pipeline health from Application Insights telemetry. Every "
            "tile runs a file from `queries/` (the same queries as `GET /api/status` and the "
            "alert rules; runbook: docs/runbook.md).")}},
        {"type": 9, "name": "parameters", "content": {
            "version": "KqlParameterItem/1.0", "style": "pills", "queryType": 0,
            "resourceType": WORKSPACE,
            "parameters": [{
                "id": "6f1f3f7e-5c1b-4a57-9a54-0d6c5b0e7a11", "version": "KqlParameterItem/1.0",
                "name": "TimeRange", "label": "Time range", "type": 4, "isRequired": True,
                "value": {"durationMs": 86_400_000},
                "typeSettings": {"selectableValues": [
                    {"durationMs": 900_000}, {"durationMs": 3_600_000},
                    {"durationMs": 21_600_000}, {"durationMs": 86_400_000},
                    {"durationMs": 604_800_000}], "allowCustom": True},
            }]}},
    ]
    for panel in PANELS:
        time_context: dict[str, Any] = (
            {"timeContext": {"durationMs": panel.range_ms}} if panel.range_ms is not None
            else {"timeContextFromParameter": "TimeRange"})
        items.append({
            "type": 3, "name": panel.name, "customWidth": panel.width,
            "content": {
                "version": "KqlItem/1.0", "title": panel.title,
                "query": panel_query(panel, queries), "size": 0,
                **time_context, "queryType": 0,
                "resourceType": WORKSPACE, "visualization": panel.visualization,
            },
        })
    return {"version": "Notebook/1.0", "items": items, "fallbackResourceIds": [],
            "$schema": SCHEMA}


def rendered_text(queries: Path = QUERIES) -> str:
    return json.dumps(render(queries), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = rendered_text()
    if args.check:
        current = WORKBOOK.read_text(encoding="utf-8") if WORKBOOK.exists() else ""
        if current != text:
            sys.stderr.write(f"{WORKBOOK.relative_to(REPO_ROOT)} is out of date; run "
                             "python -m devstack.render_workbook\n")
            return 1
        return 0
    WORKBOOK.parent.mkdir(parents=True, exist_ok=True)
    WORKBOOK.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
