"""The Azure Workbook is rendered from queries/ and checked in: this fails on any drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

from devstack import render_workbook

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_workbook_matches_the_queries() -> None:
    current = render_workbook.WORKBOOK.read_text(encoding="utf-8")
    assert current == render_workbook.rendered_text(), (
        "infra/workbook/visionops.workbook.json is stale: python -m devstack.render_workbook")
    assert render_workbook.main(["--check"]) == 0


def test_every_panel_runs_a_query_file_with_the_time_grain() -> None:
    workbook = json.loads(render_workbook.WORKBOOK.read_text(encoding="utf-8"))
    queries = {item["name"]: item["content"] for item in workbook["items"] if item["type"] == 3}
    assert {"latency", "success-rate", "throughput", "availability", "quota", "errors"} <= set(
        queries)
    for panel in render_workbook.PANELS:
        content = queries[panel.name]
        source = (REPO / "queries" / f"{panel.query}.kql").read_text(encoding="utf-8")
        # the whole file, only the panel's parameters bound
        assert render_workbook.bind(source.rstrip("\n"), panel.params) in content["query"], (
            panel.name)
        if panel.range_ms is None:
            assert content["timeContextFromParameter"] == "TimeRange"
        else:  # drift tiles need their whole baseline, whatever the pill says
            assert content["timeContext"] == {"durationMs": panel.range_ms}
            assert panel.range_ms >= 7 * 24 * 3_600_000
        for name, _ in panel.params:
            assert re.search(rf"^let {name} = \{{TimeRange:grain\}};", content["query"],
                             re.MULTILINE), panel.name
