# ruff: noqa: S608 - every interpolated SQL identifier comes from this package's own table list
"""The emulator's DuckDB: workspace tables, raw envelopes, time-windowed KQL, retention.

One connection guarded by one lock: DuckDB connections must not run two statements at once, and
the HTTP handlers call in from a thread pool. The data lives in an attached file catalog
(``store``); the connection's own in-memory catalog holds one view per table that applies the
query's ``timespan`` (read from two session variables), so KQL sees exactly the rows inside the
window, the way Log Analytics restricts every table to the request's timespan.

Never executes KQL that writes (``allow_write=False``), never deletes anything but rows past
retention or on an explicit reset.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import duckdb_kql
import numpy as np
from duckdb_kql.engine import schema as kql_schema

from devstack.monitor import kql
from devstack.monitor.envelopes import TABLES, WORKSPACE_TABLES, Column, Mapped

RAW_TABLE = "RawEnvelopes"
_RAW_COLUMNS: list[Column] = [
    ("Seq", "BIGINT"), ("ReceivedAt", "TIMESTAMPTZ"), ("TimeGenerated", "TIMESTAMPTZ"),
    ("TableName", "VARCHAR"), ("Accepted", "BOOLEAN"), ("Error", "VARCHAR"),
    ("Envelope", "VARCHAR"),
]
#: The name a batch of rows is scanned under while it is inserted (never a table's name).
_BATCH_VIEW = "visionops_ingest_batch"
#: How many translated query texts a store remembers.
TRANSLATIONS_KEPT = 256
_START_VAR = "visionops_window_start"
_END_VAR = "visionops_window_end"


@dataclass(frozen=True, slots=True)
class Received:
    """One item of a track request: its raw JSON text and what became of it."""

    raw: str
    mapped: Mapped | None
    error: str | None = None


#: Every table a query can name: the ingested App* tables and the workspace's own.
ALL_TABLES: dict[str, list[Column]] = {**TABLES, **WORKSPACE_TABLES}

#: Kusto's message when a weighted percentile's weights overflow a long (it still answers).
WEIGHT_OVERFLOW_MESSAGE = (
    "Percentiles aggregator has encountered an overflow exception during evaluation (probably "
    "due to large weight expression). Results may be incorrect or incomplete (E_OVERFLOW)."
)


class QueryTimeout(Exception):
    """A query ran past its server timeout and was interrupted."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the query ran past {timeout_s:g} s and was stopped")
        self.timeout_s = timeout_s


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[tuple[str, str]]  # (name, DuckDB type name)
    rows: list[tuple[Any, ...]]
    render: kql.Render = field(default_factory=kql.Render)
    #: True when the query sorts (the service's ``render.isQuerySorted``).
    sorted: bool = False
    #: Problems the engine met while still answering: a partial result.
    warnings: tuple[str, ...] = ()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


#: The Python types a column of each kind may hold (besides None) for the rows to load as one
#: scanned batch exactly as they would bound one by one.
_BATCH_TYPES: dict[str, tuple[type, ...]] = {
    "VARCHAR": (str,), "JSON": (str,), "BOOLEAN": (bool,), "INTEGER": (int,), "BIGINT": (int,),
    "DOUBLE": (float, int), "TIMESTAMPTZ": (datetime,),
}


def _batch(kinds: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """``rows`` as one object array per column (``c0``, ``c1``, ...) for DuckDB to scan, or None
    when a value could load differently than a bound parameter: a type the column's kind does
    not list (a bool in an INTEGER, a str in a DOUBLE), a NaN (the scan reads it as NULL), a
    naive timestamp. Such rows go in one statement per row, as always."""
    columns: dict[str, Any] = {}
    for index, kind in enumerate(kinds):
        allowed = _BATCH_TYPES.get(kind)
        if allowed is None:
            return None
        values = [row[index] for row in rows]
        for value in values:
            if value is None:
                continue
            if type(value) not in allowed:
                return None
            if (kind == "DOUBLE" and math.isnan(value)) or (
                kind == "TIMESTAMPTZ" and value.tzinfo is None
            ):
                return None
        column = np.empty(len(values), dtype=object)
        column[:] = values
        columns[f"c{index}"] = column
    return columns


class Store:
    """Thread-safe owner of the DuckDB connection."""

    def __init__(
        self,
        db_path: Path | None,
        *,
        retention: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._lock = threading.Lock()
        self._retention = retention
        self._clock = clock
        self._con = duckdb_kql.connect(":memory:")
        # A query names tables, never this process's Python variables: without this, DuckDB
        # would look a name no table has up among the calling frames' locals ("text | take 1"
        # answered with this file's path instead of an unknown table). Batches are registered.
        self._con.execute("SET python_enable_replacements = false")
        target = ":memory:" if db_path is None else str(db_path)
        self._con.execute(f"ATTACH '{target.replace(chr(39), chr(39) * 2)}' AS store")
        for table, columns in ALL_TABLES.items():
            cols = ", ".join(f"{_quote(name)} {kind}" for name, kind in columns)
            self._con.execute(f"CREATE TABLE IF NOT EXISTS store.main.{_quote(table)} ({cols})")
            # A file written by an older emulator lacks the columns added since; add them.
            for name, kind in columns:
                self._con.execute(f"ALTER TABLE store.main.{_quote(table)} "
                                  f"ADD COLUMN IF NOT EXISTS {_quote(name)} {kind}")
            self._con.execute(
                f"CREATE OR REPLACE VIEW main.{_quote(table)} AS SELECT * FROM "
                f"store.main.{_quote(table)} WHERE TimeGenerated >= getvariable('{_START_VAR}') "
                f"AND TimeGenerated <= getvariable('{_END_VAR}')"
            )
        raw_cols = ", ".join(f"{name} {kind}" for name, kind in _RAW_COLUMNS)
        self._con.execute(f"CREATE TABLE IF NOT EXISTS store.main.{RAW_TABLE} ({raw_cols})")
        row = self._con.execute(f"SELECT coalesce(max(Seq), 0) FROM store.main.{RAW_TABLE}")
        self._seq = int(_one(row))
        self._warnings: list[str] = []
        kql.install(self._con, on_overflow=self._weight_overflow)
        # The tables never change after this, so neither does the schema the translator reads,
        # and a text always translates the same: dashboards and alert rules send the same few
        # texts again and again (the status report's: ~50 ms of translation each, every time).
        self._schema = kql_schema(self._con)
        self._translated: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def _weight_overflow(self) -> None:
        if WEIGHT_OVERFLOW_MESSAGE not in self._warnings:
            self._warnings.append(WEIGHT_OVERFLOW_MESSAGE)

    # --- writing ----------------------------------------------------------------------------

    def ingest(self, items: Sequence[Received]) -> None:
        """Store every item's raw JSON and the rows of the accepted ones, in one transaction."""
        received_at = self._clock()
        by_table: dict[str, list[list[Any]]] = {}
        for item in items:
            if item.mapped is None:
                continue
            for table, row in item.mapped.rows:
                by_table.setdefault(table, []).append([row[name] for name, _ in TABLES[table]])
        with self._lock:
            self._con.begin()
            try:
                for table, values in by_table.items():
                    self._insert(table, TABLES[table], values)
                raw_rows = []
                for item in items:
                    self._seq += 1
                    mapped = item.mapped
                    tables = sorted({t for t, _ in mapped.rows}) if mapped else []
                    raw_rows.append([
                        self._seq, received_at, mapped.time if mapped else None,
                        ",".join(tables) if tables else None, mapped is not None, item.error,
                        item.raw,
                    ])
                if raw_rows:
                    self._insert(RAW_TABLE, _RAW_COLUMNS, raw_rows)
                self._con.commit()
            except BaseException:
                self._con.rollback()
                raise

    def _insert(self, table: str, columns: Sequence[Column], rows: list[list[Any]]) -> None:
        """Append ``rows`` (values in ``columns`` order) to ``table``: one scan of the whole
        batch (~150x faster than a statement per row: 2,700 envelopes in 20 ms, not 3 s), or a
        statement per row when ``_batch`` finds a value the scan could load differently."""
        target = (f"store.main.{_quote(table)} "
                  f"({', '.join(_quote(name) for name, _ in columns)})")
        batch = _batch([kind for _, kind in columns], rows)
        if batch is None:
            placeholders = ", ".join("?" for _ in columns)
            self._con.executemany(f"INSERT INTO {target} VALUES ({placeholders})", rows)
            return
        self._con.register(_BATCH_VIEW, batch)
        try:
            self._con.execute(f"INSERT INTO {target} SELECT {', '.join(batch)} FROM {_BATCH_VIEW}")
        finally:
            self._con.unregister(_BATCH_VIEW)

    def purge(self, now: datetime | None = None) -> int:
        """Delete rows older than the retention period; the number of rows deleted."""
        cutoff = (now or self._clock()) - self._retention
        deleted = 0
        with self._lock:
            for table in ALL_TABLES:
                deleted += int(_one(self._con.execute(
                    f"DELETE FROM store.main.{_quote(table)} WHERE TimeGenerated < ?", [cutoff]
                )))
            deleted += int(_one(self._con.execute(
                f"DELETE FROM store.main.{RAW_TABLE} "
                "WHERE coalesce(TimeGenerated, ReceivedAt) < ?", [cutoff]
            )))
            if deleted:
                # Lets DuckDB reuse the freed blocks, so the file stops growing.
                self._con.execute("CHECKPOINT store")
        return deleted

    def reset(self) -> None:
        with self._lock:
            for table in [*ALL_TABLES, RAW_TABLE]:
                self._con.execute(f"DELETE FROM store.main.{_quote(table)}")
            self._con.execute("CHECKPOINT store")

    # --- reading ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                table: int(_one(self._con.execute(
                    f"SELECT count(*) FROM store.main.{_quote(table)}"
                )))
                for table in [*ALL_TABLES, RAW_TABLE]
            }

    def raw_envelopes(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` stored envelopes, oldest first, each with its parsed JSON."""
        with self._lock:
            rows = self._con.execute(
                f"SELECT Seq, ReceivedAt, TableName, Accepted, Error, Envelope "
                f"FROM store.main.{RAW_TABLE} ORDER BY Seq DESC LIMIT ?", [limit]
            ).fetchall()
        out = []
        for seq, received_at, table, accepted, error, raw in reversed(rows):
            try:
                envelope: Any = json.loads(raw)
            except ValueError:
                envelope = None
            out.append({
                "seq": seq, "receivedAt": received_at.astimezone(UTC).isoformat(),
                "table": table, "accepted": accepted, "error": error, "raw": raw,
                "envelope": envelope,
            })
        return out

    def query(
        self, text: str, window: tuple[datetime | None, datetime | None],
        *, timeout_s: float | None = None,
    ) -> QueryResult:
        """Run KQL ``text`` with every table restricted to ``window``.

        The text goes through this package's translation layer (:mod:`devstack.monitor.kql`)
        around ``duckdb-kql``; KQL and DuckDB errors propagate. Past ``timeout_s`` the running
        statement is interrupted and :class:`QueryTimeout` raised.
        """
        prepared = kql.prepare(text)
        start, end = window
        with self._lock:
            self._con.execute(
                f"SET VARIABLE {_START_VAR} = ?::TIMESTAMPTZ",
                [start if start is not None else "-infinity"],
            )
            self._con.execute(
                f"SET VARIABLE {_END_VAR} = ?::TIMESTAMPTZ",
                [end if end is not None else "infinity"],
            )
            self._con.execute("SET TimeZone='UTC'")
            translated = self._translate(prepared.kql)
            if translated.unbound:
                raise duckdb_kql.KqlSchemaError(", ".join(translated.unbound),
                                                hint="declared query parameter with no value")
            sql = kql.finish_sql(str(translated), prepared)
            self._warnings.clear()
            with self._deadline(timeout_s):
                # None when the statement produces no result set (typed as always a relation).
                relation: duckdb.DuckDBPyRelation | None = (
                    self._con.sql(sql, params=translated.parameters)
                    if translated.parameters else self._con.sql(sql)
                )
                if relation is None:
                    return QueryResult(columns=[], rows=[], render=prepared.render)
                columns = [(str(n), str(t)) for n, t in zip(relation.columns, relation.types,
                                                            strict=True)]
                rows = relation.fetchall()
            return QueryResult(columns=columns, rows=rows, render=prepared.render,
                               sorted=prepared.sorted, warnings=tuple(self._warnings))

    def _translate(self, text: str) -> Any:
        """``duckdb_kql.to_sql`` of ``text``, remembered for the last ``TRANSLATIONS_KEPT``
        texts (a failed translation is not remembered: it raises every time)."""
        translated = self._translated.get(text)
        if translated is None:
            translated = duckdb_kql.to_sql(text, schema=self._schema, allow_write=False)
            self._translated[text] = translated
            if len(self._translated) > TRANSLATIONS_KEPT:
                self._translated.popitem(last=False)
        else:
            self._translated.move_to_end(text)
        return translated

    @contextlib.contextmanager
    def _deadline(self, timeout_s: float | None) -> Iterator[None]:
        """Interrupt the connection if the block outlives ``timeout_s`` (caller holds the lock)."""
        if timeout_s is None:
            yield
            return
        guard = threading.Lock()
        state = {"running": True, "fired": False}

        def expire() -> None:
            with guard:  # never interrupt a statement that is not this query's
                if state["running"]:
                    state["fired"] = True
                    self._con.interrupt()

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except duckdb.InterruptException as exc:
            if state["fired"]:
                raise QueryTimeout(timeout_s) from exc
            raise
        finally:
            with guard:
                state["running"] = False
            timer.cancel()

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _one(cursor: duckdb.DuckDBPyConnection) -> Any:
    rows = cursor.fetchall()  # read to the end: DuckDB refuses other work on a pending result
    return rows[0][0] if rows else 0
