# ruff: noqa: S608 - rewrites SQL that duckdb-kql generated; no client text is interpolated
"""Our translation layer around ``duckdb-kql``: KQL the service runs that the engine lacks.

Two small passes, each exact about what it touches and loud about what it cannot do:

* **Before** ``duckdb-kql`` (KQL text → KQL text): ``notempty()`` is the deprecated alias of
  ``isnotempty()``; ``percentiles(x, 50, 95)`` becomes one ``percentile()`` per value (named
  ``percentile_x_50`` … as the service names them, or after a ``(a, b) = percentiles(...)``
  tuple); ``percentilew()``/``percentilesw()`` become a carrier aggregate replaced after
  translation; a final ``| render`` is cut off and kept as the response's ``render`` metadata.
* **After** (generated SQL → SQL): ``avg()``/``avgif()`` over no values is null, as the
  summarize operator's documented aggregation defaults say (``duckdb-kql`` writes NaN);
  ``range`` streams from DuckDB's ``generate_series`` table function instead of unnesting a list
  that cannot exceed 2³² elements; the weighted-percentile carriers become
  ``visionops_percentilew``, a macro over a Python rank function that records a weight overflow
  the way Kusto reports it (a partial error next to the result).

Only code is rewritten: string literals and comments are skipped. Anything this layer cannot
rewrite faithfully raises :class:`duckdb_kql.KqlUnsupportedError`, never a plausible guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import duckdb
import duckdb_kql

__all__ = [
    "MAX_LONG",
    "Prepared",
    "Render",
    "WeightOverflow",
    "finish_sql",
    "install",
    "prepare",
]

MAX_LONG = 2**63 - 1
RANK_FUNCTION = "visionops_weighted_rank"
PERCENTILEW_MACRO = "visionops_percentilew"

#: The ``render`` operator's visualizations (Kusto reference, render operator).
VISUALIZATIONS = frozenset({
    "anomalychart", "areachart", "barchart", "card", "columnchart", "ladderchart", "linechart",
    "piechart", "pivotchart", "scatterchart", "stackedareachart", "table", "timechart",
    "timepivot", "treemap", "3dchart", "plotly",
})
#: ``with (...)`` property → key of the response's ``render`` object.
_RENDER_KEYS = {
    "accumulate": "accumulate", "kind": "kind", "legend": "legend", "series": "series",
    "title": "title", "xaxis": "xAxis", "xcolumn": "xColumn", "xtitle": "xTitle",
    "yaxis": "yAxis", "ycolumns": "yColumns", "ysplit": "ySplit", "ytitle": "yTitle",
    "ymin": "yMin", "ymax": "yMax", "anomalycolumns": "anomalyColumns",
}
_LIST_PROPERTIES = frozenset({"series", "ycolumns", "anomalycolumns"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


class WeightOverflow(Exception):
    """Recorded (not raised to the client) when a weighted percentile's weights exceed a long."""


@dataclass(frozen=True, slots=True)
class Render:
    """What a query's trailing ``| render`` asked for; ``None`` fields were not given."""

    visualization: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def body(self, *, query_sorted: bool) -> dict[str, Any]:
        """The response's ``render`` object, with the service's defaults for absent keys."""
        body: dict[str, Any] = {
            "visualization": self.visualization, "title": None, "accumulate": False,
            "isQuerySorted": query_sorted, "kind": None, "legend": None, "series": None,
            "yMin": "NaN", "yMax": "NaN", "xAxis": None, "xColumn": None, "xTitle": None,
            "yAxis": None, "yColumns": None, "ySplit": None, "yTitle": None,
            "anomalyColumns": None,
        }
        body.update(self.properties)
        return body


@dataclass(frozen=True, slots=True)
class Prepared:
    """KQL ready for ``duckdb-kql`` and what :func:`finish_sql` must do to its SQL."""

    kql: str
    render: Render
    sorted: bool
    #: Column name of each weighted-percentile carrier → its percentile.
    weighted: dict[str, str] = field(default_factory=dict)


# --- scanning KQL ---------------------------------------------------------------------------

def _code_mask(text: str) -> list[bool]:
    """True at each character that is KQL code (not in a string literal or a comment)."""
    mask = [True] * len(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif text.startswith("```", i):
            end = text.find("```", i + 3)
            end = n if end < 0 else end + 3
        elif text[i] in "'\"" or (
            text[i] in "@hH" and i + 1 < n and text[i + 1] in "'\""
            and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))
        ):
            verbatim = text[i] == "@"
            quote_at = i if text[i] in "'\"" else i + 1
            j = quote_at + 1
            while j < n and text[j] != text[quote_at]:
                j += 2 if (text[j] == "\\" and not verbatim) else 1
            end = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, end):
            mask[k] = False
        i = end
    return mask


def _close(text: str, mask: list[bool], open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at`` (code characters only)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[text[open_at]]]
    for i in range(open_at + 1, len(text)):
        if not mask[i]:
            continue
        if text[i] in pairs:
            stack.append(pairs[text[i]])
        elif text[i] in ")]}":
            if text[i] != stack.pop():
                break
            if not stack:
                return i
    raise duckdb_kql.KqlSyntaxError(f"unbalanced '{text[open_at]}' at offset {open_at}")


def _split_top(text: str, mask: list[bool], start: int, end: int, sep: str) -> list[str]:
    """``text[start:end]`` split at ``sep`` characters outside brackets."""
    parts, depth, last = [], 0, start
    for i in range(start, end):
        if not mask[i]:
            continue
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
        elif text[i] == sep and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:end])
    return parts


def _calls(text: str, names: tuple[str, ...]) -> list[tuple[int, int, int, str]]:
    """``(name_start, open_paren, close_paren, name)`` of each code call of ``names``."""
    mask = _code_mask(text)
    found = []
    pattern = re.compile(r"(?<![\w.])(" + "|".join(names) + r")\s*\(")
    for match in pattern.finditer(text):
        if not mask[match.start()]:
            continue
        open_at = match.end() - 1
        found.append((match.start(), open_at, _close(text, mask, open_at), match.group(1)))
    return found


# --- the KQL pass ---------------------------------------------------------------------------

def _unsupported(what: str) -> duckdb_kql.KqlUnsupportedError:
    return duckdb_kql.KqlUnsupportedError(what)


def _percentile_name(expr: str, value: str) -> str | None:
    """The service's column name for ``percentile(expr, value)`` when ``expr`` is a column."""
    if not _IDENT.fullmatch(expr) or not _NUMBER.match(value):
        return None
    return f"percentile_{expr}_{value.replace('.', '_')}"


def _tuple_names(text: str, name_start: int) -> tuple[int, list[str] | None]:
    """``(a, b) =`` or ``a =`` right before a call: where it starts and its names."""
    head = text[:name_start].rstrip()
    if not head.endswith("=") or head.endswith(("==", "!=", "<=", ">=")):
        return name_start, None
    head = head[:-1].rstrip()
    if head.endswith(")"):
        open_at = head.rfind("(")
        names = [n.strip() for n in head[open_at + 1:-1].split(",")]
        if open_at >= 0 and all(_IDENT.fullmatch(n) for n in names):
            return open_at, names
        return name_start, None
    match = re.search(r"([A-Za-z_][A-Za-z_0-9]*)$", head)
    if match is None:
        return name_start, None
    return match.start(), [match.group(1)]


def _expand_percentiles(text: str, weighted: dict[str, str]) -> str:
    calls = _calls(text, ("percentilesw", "percentilew", "percentiles"))
    for name_start, open_at, close_at, name in reversed(calls):
        mask = _code_mask(text)
        args = [a.strip() for a in _split_top(text, mask, open_at + 1, close_at, ",")]
        is_weighted = name != "percentiles"
        fixed = 2 if is_weighted else 1
        values = args[fixed:]
        if len(args) <= fixed or (name == "percentilew" and len(values) != 1):
            raise duckdb_kql.KqlSyntaxError(f"{name}() needs an expression"
                                            f"{', a weight' if is_weighted else ''} and "
                                            "percentile values")
        if not all(_NUMBER.match(v) for v in values):
            raise _unsupported(f"{name}() with a non-constant percentile ({', '.join(values)})")
        start, names = _tuple_names(text, name_start)
        if names is not None and len(names) != len(values):
            raise _unsupported(f"{name}() assigning {len(values)} percentiles to "
                               f"{len(names)} names")
        expr = args[0]
        pieces = []
        for index, value in enumerate(values):
            column = names[index] if names else _percentile_name(expr, value)
            if is_weighted:
                if column is None:
                    raise _unsupported(f"{name}() of an expression without a column name: "
                                       f"write name = {name}(...)")
                # A carrier duckdb-kql translates predictably; finish_sql swaps it out by name.
                weighted[column] = value
                pieces.append(f"{column} = sumif({expr}, {args[1]})")
            elif column is None:
                pieces.append(f"percentile({expr}, {value})")
            else:
                pieces.append(f"{column} = percentile({expr}, {value})")
        text = text[:start] + ", ".join(pieces) + text[close_at + 1:]
    return text


def _render_value(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        number = float(raw)
    except ValueError:
        return raw
    return int(number) if number.is_integer() and "." not in raw else number


def _render_properties(inner: str) -> dict[str, Any]:
    """The ``with (...)`` list: ``name=value`` pairs; a bare item extends a list property."""
    properties: dict[str, Any] = {}
    last: str | None = None
    for part in _split_top(inner, _code_mask(inner), 0, len(inner), ","):
        key, eq, value = part.partition("=")
        if eq and _IDENT.fullmatch(key.strip()):
            last = key.strip().lower()
            if last not in _RENDER_KEYS:
                raise _unsupported(f"render property {key.strip()!r}")
            parsed = _render_value(value)
            properties[_RENDER_KEYS[last]] = [parsed] if last in _LIST_PROPERTIES else parsed
        elif last in _LIST_PROPERTIES:
            properties[_RENDER_KEYS[last]].append(_render_value(part))
        else:
            raise duckdb_kql.KqlSyntaxError(f"render: cannot read {part.strip()!r}")
    for key in ("series", "yColumns", "anomalyColumns"):
        if key in properties:
            properties[key] = ", ".join(str(v) for v in properties[key])
    return properties


def _cut_render(text: str) -> tuple[str, Render]:
    mask = _code_mask(text)
    pipes = [i for i, ch in enumerate(text) if ch == "|" and mask[i]]
    for at in reversed(pipes):
        match = re.match(r"\s*render\b", text[at + 1:])
        if match is None:
            continue
        if at != pipes[-1]:
            raise _unsupported("render that is not the query's last operator")
        rest = text[at + 1 + match.end():].strip().rstrip(";").strip()
        kind_match = re.match(r"([A-Za-z0-9_]+)", rest)
        if kind_match is None or kind_match.group(1).lower() not in VISUALIZATIONS:
            raise duckdb_kql.KqlSyntaxError(f"render: unknown visualization in {rest!r}")
        rest = rest[kind_match.end():].strip()
        properties: dict[str, Any] = {}
        if rest:
            with_match = re.match(r"with\s*\(", rest)
            if with_match is None or not rest.endswith(")"):
                raise duckdb_kql.KqlSyntaxError(f"render: cannot read {rest!r}")
            properties = _render_properties(rest[with_match.end():-1])
        return text[:at].rstrip(), Render(kind_match.group(1).lower(), properties)
    return text, Render()


def _is_sorted(text: str) -> bool:
    mask = _code_mask(text)
    return any(mask[m.start()] for m in re.finditer(r"\|\s*(sort|order|top)\b", text))


def prepare(kql: str) -> Prepared:
    """Rewrite ``kql`` for ``duckdb-kql``; raises ``KqlUnsupportedError``/``KqlSyntaxError``."""
    text, render = _cut_render(kql)
    for start, _, _, _ in reversed(_calls(text, ("notempty",))):
        text = text[:start] + "isnotempty" + text[start + len("notempty"):]
    weighted: dict[str, str] = {}
    text = _expand_percentiles(text, weighted)
    return Prepared(kql=text, render=render, sorted=_is_sorted(text), weighted=weighted)


# --- the SQL pass ---------------------------------------------------------------------------

def _sql_close(sql: str, open_at: int) -> int:
    """Index of the ``)`` closing ``sql[open_at]``, skipping quoted strings and identifiers."""
    depth, i, n = 0, open_at, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced SQL at offset {open_at}")


_AVG_NAN_TAIL = ", CAST('NaN' AS DOUBLE))"


def _avg_is_null(sql: str) -> str:
    """``coalesce(avg(x)[ FILTER (WHERE c)], CAST('NaN' AS DOUBLE))`` → ``avg(x)[ FILTER …]``."""
    out, pos = [], 0
    marker = "coalesce(avg("
    while (at := sql.find(marker, pos)) >= 0:
        avg_open = at + len("coalesce(avg")
        end = _sql_close(sql, avg_open) + 1
        if sql.startswith(" FILTER (WHERE ", end):
            end = _sql_close(sql, end + len(" FILTER ")) + 1
        if not sql.startswith(_AVG_NAN_TAIL, end):
            out.append(sql[pos:at + len(marker)])
            pos = at + len(marker)
            continue
        out.append(sql[pos:at])
        out.append(sql[at + len("coalesce("):end])
        pos = end + len(_AVG_NAN_TAIL)
    out.append(sql[pos:])
    return "".join(out)


def _streamed_range(sql: str) -> str:
    """``SELECT UNNEST(generate_series(a, b, s)) AS "x"`` → the lazy table-function form."""
    marker = "SELECT UNNEST(generate_series("
    out, pos = [], 0
    while (at := sql.find(marker, pos)) >= 0:
        gen_open = at + len("SELECT UNNEST(generate_series")
        gen_close = _sql_close(sql, gen_open)
        alias = re.match(r'\) AS ("(?:[^"]|"")*")', sql[gen_close + 1:])
        if alias is None:
            out.append(sql[pos:gen_open])
            pos = gen_open
            continue
        out.append(sql[pos:at])
        out.append(f"SELECT generate_series AS {alias.group(1)} FROM "
                   f"generate_series{sql[gen_open:gen_close + 1]}")
        pos = gen_close + 1 + alias.end()
    out.append(sql[pos:])
    return "".join(out)


def _weighted_percentiles(sql: str, weighted: dict[str, str]) -> str:
    for column, value in weighted.items():
        quoted = '"' + column.replace('"', '""') + '"'
        replaced = False
        search = 0
        while (at := sql.find("coalesce(sum(", search)) >= 0:
            sum_open = at + len("coalesce(sum")
            sum_close = _sql_close(sql, sum_open)
            filter_head = ") FILTER (WHERE "
            if not sql.startswith(filter_head, sum_close):
                search = sum_close
                continue
            filter_open = sum_close + len(") FILTER ")
            filter_close = _sql_close(sql, filter_open)
            tail = f", 0) AS {quoted}"
            if not sql.startswith(tail, filter_close + 1):
                search = filter_close
                continue
            expr = sql[sum_open + 1:sum_close]
            weight = sql[filter_open + len("(WHERE "):filter_close]
            sql = (sql[:at] + f"{PERCENTILEW_MACRO}({expr}, {weight}, {value}) AS {quoted}"
                   + sql[filter_close + 1 + len(tail):])
            replaced = True
            search = at
        if not replaced:
            raise _unsupported(f"weighted percentile {column!r} in this position")
    return sql


def finish_sql(sql: str, prepared: Prepared) -> str:
    """The SQL ``duckdb-kql`` generated for ``prepared.kql``, with our semantics applied."""
    sql = _avg_is_null(sql)
    sql = _streamed_range(sql)
    if prepared.weighted:
        sql = _weighted_percentiles(sql, prepared.weighted)
    return sql


# --- the connection side --------------------------------------------------------------------

def weighted_rank(weights: list[int | None] | None, percentile: float,
                  on_overflow: Callable[[], None]) -> int | None:
    """1-based index of the nearest-rank weighted ``percentile`` in weights sorted by value."""
    if not weights:
        return None
    if any(w is not None and w < 0 for w in weights):
        raise ValueError("percentilew(): weights must not be negative")
    total = sum(w or 0 for w in weights)
    if total == 0:
        return None
    if total > MAX_LONG:
        on_overflow()
    rank = max(1, math.ceil(Fraction(str(percentile)) * total / 100))
    running = 0
    for index, weight in enumerate(weights, start=1):
        running += weight or 0
        if running >= rank:
            return index
    return len(weights)


def install(con: duckdb.DuckDBPyConnection, on_overflow: Callable[[], None]) -> None:
    """Register the rank function and the ``visionops_percentilew`` macro on ``con``."""
    con.create_function(
        RANK_FUNCTION, lambda ws, p: weighted_rank(ws, p, on_overflow),
        [duckdb.list_type(duckdb.sqltype("BIGINT")), duckdb.sqltype("DOUBLE")],
        duckdb.sqltype("BIGINT"), side_effects=True,
    )
    keep = "FILTER (WHERE v IS NOT NULL AND w IS NOT NULL)"
    con.execute(
        f"CREATE OR REPLACE MACRO {PERCENTILEW_MACRO}(v, w, p) AS "
        f"(list(v ORDER BY v) {keep})"
        f"[{RANK_FUNCTION}(list(CAST(w AS BIGINT) ORDER BY v) {keep}, p)]"
    )
