"""The emulator's DuckDB store: windows, retention with an injected clock, reset, raw envelopes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from devstack.monitor.envelopes import Context, Mapped, map_envelope
from devstack.monitor.store import TRANSLATIONS_KEPT, Received, Store, _batch
from tests.support.clocks import WallClock

CTX = Context(workspace_id="00000000-0000-4000-8000-0000000010ca", resource_id="/rid")
NOW = datetime(2024, 5, 31, 12, 0, tzinfo=UTC)


def trace(message: str, at: datetime) -> Received:
    env: dict[str, Any] = {
        "name": "Microsoft.ApplicationInsights.Message", "iKey": "k",
        "time": at.isoformat(), "tags": {"ai.operation.id": "op"},
        "data": {"baseType": "MessageData", "baseData": {"message": message}},
    }
    return Received(json.dumps(env), map_envelope(env, CTX))


@pytest.fixture
def clock() -> WallClock:
    return WallClock(NOW)


@pytest.fixture
def store(tmp_path: Path, clock: WallClock) -> Iterator[Store]:
    s = Store(tmp_path / "m.duckdb", retention=timedelta(days=30), clock=clock)
    yield s
    s.close()


def messages(store: Store, window: tuple[datetime | None, datetime | None] = (None, None)
             ) -> list[str]:
    result = store.query("AppTraces | order by TimeGenerated asc | project Message", window)
    return [row[0] for row in result.rows]


def test_window_restricts_rows(store: Store) -> None:
    store.ingest([trace("old", NOW - timedelta(days=2)), trace("new", NOW - timedelta(minutes=5))])
    assert messages(store) == ["old", "new"]
    assert messages(store, (NOW - timedelta(hours=1), NOW)) == ["new"]
    assert messages(store, (None, NOW - timedelta(days=1))) == ["old"]


def test_retention_deletes_only_expired_rows(store: Store, clock: WallClock) -> None:
    store.ingest([trace("expired", NOW - timedelta(days=31)),
                  trace("kept", NOW - timedelta(days=29))])
    assert store.purge() == 2  # the row and its raw envelope
    assert messages(store) == ["kept"]
    clock.now = NOW + timedelta(days=2)
    assert store.purge() == 2
    assert messages(store) == []
    assert store.counts()["RawEnvelopes"] == 0


def test_data_survives_reopen_and_is_purged_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    first = Store(path, retention=timedelta(days=30), clock=WallClock(NOW))
    first.ingest([trace("a", NOW)])
    first.close()
    later = Store(path, retention=timedelta(days=30), clock=WallClock(NOW + timedelta(days=40)))
    try:
        assert later.counts()["AppTraces"] == 1
        later.purge()
        assert later.counts()["AppTraces"] == 0
        later.ingest([trace("b", NOW + timedelta(days=40))])
        assert [e["seq"] for e in later.raw_envelopes(10)] == [2]  # sequence continues
    finally:
        later.close()


def test_reset_counts_and_raw_envelopes(store: Store) -> None:
    store.ingest([trace("a", NOW), Received('{"broken"', None, "Invalid JSON")])
    counts = store.counts()
    assert counts["AppTraces"] == 1 and counts["RawEnvelopes"] == 2
    raw = store.raw_envelopes(10)
    assert [(r["table"], r["accepted"]) for r in raw] == [("AppTraces", True), (None, False)]
    assert raw[0]["envelope"]["data"]["baseData"]["message"] == "a"
    assert raw[1]["envelope"] is None and raw[1]["error"] == "Invalid JSON"
    store.reset()
    assert set(store.counts().values()) == {0}


def test_kql_cannot_write(store: Store) -> None:
    import duckdb_kql

    with pytest.raises(duckdb_kql.KqlError):
        store.query(".set-or-replace AppTraces <| datatable(x: long)[1]", (None, None))


def test_a_file_from_an_older_emulator_gets_the_new_columns(tmp_path: Path,
                                                            clock: WallClock) -> None:


    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:
        old.execute('CREATE TABLE "AppRequests" ("TenantId" VARCHAR, '
                    '"TimeGenerated" TIMESTAMPTZ, "Name" VARCHAR, "DurationMs" DOUBLE)')
        old.execute("INSERT INTO \"AppRequests\" VALUES ('t', TIMESTAMPTZ '2024-05-31 11:00:00Z', "
                    "'kept', 10)")
    s = Store(path, retention=timedelta(days=30), clock=clock)
    try:
        result = s.query("AppRequests | project Name, PerformanceBucket, ItemCount",
                         (None, None))
        assert result.rows == [("kept", None, None)]
        assert s.query("AzureActivity | count", (None, None)).rows == [(0,)]
    finally:
        s.close()


def _request(at: datetime, duration: str, name: str) -> Received:
    env: dict[str, Any] = {
        "name": "Microsoft.ApplicationInsights.Request", "iKey": "k", "time": at.isoformat(),
        "tags": {"ai.operation.id": name},
        "data": {"baseType": "RequestData", "baseData": {
            "id": name, "name": name, "duration": duration, "responseCode": "200",
            "success": True, "properties": {"blob": name}}},
    }
    return Received(json.dumps(env), map_envelope(env, CTX))


def _stored(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    con: Any = store._con  # the rows exactly as stored, every column
    return {table: con.execute(f'SELECT * FROM store.main."{table}" ORDER BY ALL').fetchall()  # noqa: S608 - our table names
            for table in ("AppRequests", "AppTraces", "RawEnvelopes")}


def test_a_batch_is_stored_exactly_as_row_by_row_statements_store_it(
    tmp_path: Path, clock: WallClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [
        *(_request(NOW - timedelta(minutes=i), f"00:00:0{i % 10}.25", f"r{i}") for i in range(40)),
        *(trace(f"message {i} ü", NOW - timedelta(seconds=i)) for i in range(40)),
        Received("{not json", None, "the body is not JSON"),
    ]
    batched = Store(tmp_path / "a.duckdb", retention=timedelta(days=30), clock=clock)
    batched.ingest(items)
    monkeypatch.setattr("devstack.monitor.store._batch", lambda kinds, rows: None)
    by_row = Store(tmp_path / "b.duckdb", retention=timedelta(days=30), clock=clock)
    by_row.ingest(items)
    one, other = _stored(batched), _stored(by_row)
    assert [len(rows) for rows in one.values()] == [40, 40, 81]
    assert one == other


def test_values_a_scan_could_load_differently_go_in_row_by_row() -> None:
    ok = _batch(["VARCHAR", "DOUBLE", "TIMESTAMPTZ", "BOOLEAN"], [["a", 1, NOW, True],
                                                                  [None, 2.5, None, None]])
    assert ok is not None and [list(column) for column in ok.values()] == [
        ["a", None], [1, 2.5], [NOW, None], [True, None]]
    assert _batch(["DOUBLE"], [[float("nan")]]) is None  # a scan reads NaN as NULL
    assert _batch(["TIMESTAMPTZ"], [[NOW.replace(tzinfo=None)]]) is None
    assert _batch(["INTEGER"], [[True]]) is None
    assert _batch(["DOUBLE"], [["1.5"]]) is None
    assert _batch(["STRUCT"], [[None]]) is None


def test_a_nan_is_stored_as_nan_not_null(store: Store) -> None:
    row = _request(NOW, "00:00:01", "nan")
    assert row.mapped is not None
    [(table, values)] = row.mapped.rows
    nan = Received(row.raw, Mapped(row.mapped.time, row.mapped.kind,
                                   [(table, {**values, "DurationMs": float("nan")})]))
    store.ingest([nan, _request(NOW, "00:00:02", "plain")])
    result = store.query("AppRequests | order by Name asc | project Name, isnan(DurationMs)",
                         (None, None))
    assert result.rows == [("nan", True), ("plain", False)]


def test_a_remembered_translation_still_reads_each_querys_own_window(store: Store) -> None:
    store.ingest([trace("old", NOW - timedelta(days=2)), trace("new", NOW - timedelta(minutes=5))])
    text = "AppTraces | order by TimeGenerated asc | project Message"
    assert messages(store, (NOW - timedelta(hours=1), NOW)) == ["new"]
    assert messages(store, (None, NOW - timedelta(days=1))) == ["old"]  # same text, other window
    assert messages(store) == ["old", "new"]
    assert list(store._translated) == [text]  # translated once, run three times


def test_only_the_latest_translations_are_kept(store: Store) -> None:
    for n in range(TRANSLATIONS_KEPT + 5):
        assert store.query(f"print n = {n}", (None, None)).rows == [(n,)]
    assert len(store._translated) == TRANSLATIONS_KEPT
    assert "print n = 0" not in store._translated
    assert store.query("print n = 0", (None, None)).rows == [(0,)]  # translated again


def test_a_name_no_table_has_is_an_unknown_table_even_if_python_has_a_variable_so_named(
    store: Store,
) -> None:
    for name in ("text", "window", "Nope"):  # the first two are locals of Store.query
        with pytest.raises(duckdb.CatalogException, match=f"Table with name {name} does not"):
            store.query(f"{name} | take 1", (None, None))
