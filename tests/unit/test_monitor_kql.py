"""The translation layer around duckdb-kql: exact rewrites, loud refusals, code-only scanning."""

from __future__ import annotations

import duckdb_kql
import pytest

from devstack.monitor import kql


def test_rewrites_touch_code_only() -> None:
    text = ("T | where notempty(Name) // notempty(Comment)\n"
            "| extend s = 'notempty(x)', v = @\"percentiles(a, 1)\"")
    prepared = kql.prepare(text)
    assert prepared.kql.count("isnotempty(") == 1
    assert "// notempty(Comment)" in prepared.kql
    assert "'notempty(x)'" in prepared.kql and '@"percentiles(a, 1)"' in prepared.kql


def test_percentiles_expand_to_named_percentile_calls() -> None:
    prepared = kql.prepare("T | summarize percentiles(DurationMs, 50, 99.9) by Name")
    assert prepared.kql == ("T | summarize percentile_DurationMs_50 = percentile(DurationMs, 50), "
                            "percentile_DurationMs_99_9 = percentile(DurationMs, 99.9) by Name")
    named = kql.prepare("T | summarize (lo, hi) = percentiles(toreal(x), 5, 95)")
    assert named.kql == ("T | summarize lo = percentile(toreal(x), 5), "
                         "hi = percentile(toreal(x), 95)")


@pytest.mark.parametrize("query", [
    "T | summarize p = percentiles(x, 50, 95)",
    "T | summarize (a, b, c) = percentiles(x, 50, 95)",
    "T | summarize percentiles(x, y)",
    "T | summarize percentilew(x * 2, w, 50)",
    "T | render timechart | take 1",
])
def test_what_cannot_be_rewritten_faithfully_is_refused(query: str) -> None:
    with pytest.raises(duckdb_kql.KqlUnsupportedError):
        kql.prepare(query)


def test_render_is_cut_and_read() -> None:
    prepared = kql.prepare("T | summarize n = count() by k | order by n desc\n"
                           "| render barchart with (title = \"a, b\", ymin=0, ycolumns=n, k, "
                           "accumulate=true)")
    assert prepared.kql == "T | summarize n = count() by k | order by n desc"
    assert prepared.sorted
    body = prepared.render.body(query_sorted=prepared.sorted)
    assert (body["visualization"], body["title"], body["yMin"], body["yColumns"],
            body["accumulate"], body["yMax"]) == ("barchart", "a, b", 0, "n, k", True, "NaN")
    with pytest.raises(duckdb_kql.KqlSyntaxError):
        kql.prepare("T | render nosuchchart")
    with pytest.raises(duckdb_kql.KqlUnsupportedError):
        kql.prepare("T | render piechart with (nosuchproperty=1)")


def test_avg_nan_default_becomes_null_and_range_streams() -> None:
    sql = ("SELECT coalesce(avg(\"x\"), CAST('NaN' AS DOUBLE)) AS \"a\", "
           "coalesce(avg(\"x\") FILTER (WHERE (\"y\" = ')')), CAST('NaN' AS DOUBLE)) AS \"b\", "
           "coalesce(avg(\"z\"), 0) AS \"c\"")
    assert kql.finish_sql(sql, kql.prepare("print 1")) == (
        "SELECT avg(\"x\") AS \"a\", avg(\"x\") FILTER (WHERE (\"y\" = ')')) AS \"b\", "
        "coalesce(avg(\"z\"), 0) AS \"c\"")
    ranged = kql.finish_sql('SELECT UNNEST(generate_series(1, 10, 1)) AS "x"',
                            kql.prepare("print 1"))
    assert ranged == 'SELECT generate_series AS "x" FROM generate_series(1, 10, 1)'


@pytest.mark.parametrize(("weights", "percentile", "index"), [
    ([1, 1, 1, 1], 50, 2), ([1, 1, 1, 1], 51, 3), ([1, 1, 1, 1], 0, 1), ([1, 1, 1, 1], 100, 4),
    ([1, 100, 1], 50, 2), ([0, 0, 5], 10, 3), ([None, 2, 2], 50, 2),
])
def test_weighted_nearest_rank(weights: list[int | None], percentile: float, index: int) -> None:
    overflowed: list[bool] = []
    assert kql.weighted_rank(weights, percentile, lambda: overflowed.append(True)) == index
    assert not overflowed


def test_weighted_rank_overflow_empty_and_negative() -> None:
    overflowed: list[bool] = []
    big = 92233720368547758 * 100
    assert kql.weighted_rank([big, big, big], 50, lambda: overflowed.append(True)) == 2
    assert overflowed == [True]
    assert kql.weighted_rank([], 50, lambda: None) is None
    assert kql.weighted_rank([0, 0], 50, lambda: None) is None
    with pytest.raises(ValueError, match="negative"):
        kql.weighted_rank([1, -1], 50, lambda: None)
