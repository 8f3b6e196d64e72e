"""Microsoft's published example queries for the App* tables, run by the real LogsQueryClient.

The queries live in ``example_queries.yaml`` with their sources. A case passes when the
emulator answers it the way Log Analytics would: a full (not partial) result with a table,
and, for a query ending in ``| render``, the visualization metadata that names its chart.
Most queries find the seeded telemetry; the row count is reported so an empty answer shows.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryClient, LogsQueryResult

from devstack.monitor.config import DEFAULT_WORKSPACE_ID
from tests.support.fidelity import Stack, record

pytestmark = [pytest.mark.integration, pytest.mark.fidelity]

QUERIES: dict[str, list[dict[str, Any]]] = yaml.safe_load(
    Path(__file__).with_name("example_queries.yaml").read_text(encoding="utf-8"))
CASES = [(group, case) for group, cases in QUERIES.items() for case in cases]
RENDER = re.compile(r"\|\s*render\s+(\w+)")


class _LocalToken:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fidelity-local-token", int(time.time()) + 3600)


def test_the_data_file_has_cases_for_every_app_table() -> None:
    tables = " ".join(case["table"] for _, case in CASES)
    for table in ("AppRequests", "AppDependencies", "AppTraces", "AppExceptions",
                  "AppAvailabilityResults", "AppMetrics", "AppEvents"):
        assert table in tables, table
    assert len(CASES) >= 20


@pytest.mark.parametrize(("group", "case"), CASES,
                         ids=[f"{g}:{c['title']}" for g, c in CASES])
def test_example_query(group: str, case: dict[str, Any], stack: Stack) -> None:
    client = LogsQueryClient(_LocalToken(), endpoint=f"{stack.monitor_http}/v1")
    name = f"{group}: {case['title']}"
    suite = f"Microsoft example queries ({group})"
    try:
        result = client.query_workspace(DEFAULT_WORKSPACE_ID, case["kql"],
                                        timespan=None, include_visualization=True,
                                        enforce_https=False)
    except HttpResponseError as exc:
        message = exc.message.splitlines()[0] if exc.message else str(exc)
        record(suite, name, False, f"HTTP {exc.status_code}: {message[:200]}")
        raise
    problems = []
    if not isinstance(result, LogsQueryResult):
        problems.append(f"partial result: {result.partial_error}")
        rows = sum(len(t.rows) for t in result.partial_data)
    else:
        rows = len(result.tables[0].rows) if result.tables else 0
        if not result.tables:
            problems.append("no table")
        expected = case.get("expect")
        first = list(result.tables[0].rows[0]) if rows else []
        missing = [v for v in expected or [] if v not in first]
        if missing:
            problems.append(f"first row {first} lacks {missing}")
        chart = RENDER.search(case["kql"])
        if chart and (result.visualization or {}).get("visualization") != chart.group(1):
            problems.append(f"render metadata {result.visualization!r} does not name "
                            f"{chart.group(1)}")
    record(suite, name, not problems, "; ".join(problems) or f"ok, {rows} row(s)")
    assert not problems, problems
