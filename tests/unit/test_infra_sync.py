"""Alert rules → Bicep stay in sync, and every KQL the infra deploys runs on duckdb-kql.

The rules file is what ``infra/main.bicep`` loads; it must equal a fresh render of
``shared.monitoring.alerts``. Each rendered query (parameters filled in) and each workbook query is
run on
the Monitor emulator's own table schema, so a query that Log Analytics would get but duckdb-kql
cannot parse fails here, not in Azure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.monitor.store import Store
from devstack.render_alerts import RULES_FILE, render
from devstack.render_workbook import WORKBOOK

QUERIES_DIR = Path(__file__).resolve().parents[2] / "queries"


def _store() -> Store:
    return Store(None, retention=timedelta(days=400), clock=lambda: datetime.now(UTC))


def test_rendered_rules_equal_a_fresh_render() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == render(), (
        "infra/alerts/scheduled-query-rules.json drifted: run python -m devstack.render_alerts")


RULES = json.loads(RULES_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("rule", RULES, ids=[r["name"] for r in RULES])
def test_every_alert_query_runs_on_duckdb_kql(rule: dict[str, object]) -> None:
    criterion = rule["criterion"]
    assert isinstance(criterion, dict)
    result = _store().query(str(criterion["query"]), (None, None))
    column = criterion.get("metricMeasureColumn")
    if column is not None:
        assert column in [name for name, _ in result.columns]


def _workbook_queries() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(node: object, title: str) -> None:
        if isinstance(node, dict):
            name = str(node.get("name", title))
            content = node.get("content")
            if isinstance(content, dict) and isinstance(content.get("query"), str):
                found.append((name, content["query"]))
            for value in node.values():
                walk(value, name)
        elif isinstance(node, list):
            for value in node:
                walk(value, title)

    walk(json.loads(WORKBOOK.read_text(encoding="utf-8")), "workbook")
    return found


WORKBOOK_QUERIES = _workbook_queries()


def test_the_workbook_has_queries() -> None:
    assert len(WORKBOOK_QUERIES) >= 6


@pytest.mark.parametrize(("name", "kql"), WORKBOOK_QUERIES, ids=[n for n, _ in WORKBOOK_QUERIES])
def test_every_workbook_query_runs_on_duckdb_kql(name: str, kql: str) -> None:
    # The portal substitutes the time grain; one minute stands in for it here.
    _store().query(kql.replace("{TimeRange:grain}", "1m"), (None, None))
