"""The write path (CLMC-8, 9): WAL durability, replay without loss or duplicates, a torn tail,
type reservation across racing writes, overload refusal, read-your-writes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flame.clmc.errors import DatabaseNotFound, Overloaded, RetentionPolicyNotFound
from flame.clmc.ingest import Ingest, encode_items
from flame.clmc.lineproto import parse
from flame.clmc.store.base import Store, table_name
from flame.clmc.store.duckdb_store import DuckDBStore
from flame.clmc.wal import WriteAheadLog


def count(store: Store, m: str = "m", db: str = "db") -> int:
    return int(
        store.query(f"SELECT count(*) AS n FROM {table_name(db, 'autogen', m)}")
        .column(0)[0]
        .as_py()
    )


def test_write_is_applied_and_readable_after_wait(ingest: Ingest) -> None:
    out = ingest.write("db", None, b"m,h=a v=1 1\nm,h=b v=2 2")
    assert out.error() is None
    assert out.points == 2
    assert ingest.wait_applied(5)
    assert count(ingest.store) == 2


def test_outcome_texts_follow_influxdb(ingest: Ingest) -> None:
    assert ingest.write("db", None, b"m v=1 1\nbad").error() == (
        "partial write: unable to parse 'bad': missing fields dropped=0"
    )
    assert ingest.write("db", None, b"bad").error() == "unable to parse 'bad': missing fields"
    out = ingest.write("db", None, b"m v=2i 2\nm v=3i 3\nm v=4 4\nbad")
    assert out.error() == (
        'partial write: field type conflict: input field "v" on measurement "m" is type integer, '
        "already exists as type float dropped=2"
    )
    assert out.error_line() == 1
    assert out.points == 1


def test_unknown_targets(ingest: Ingest) -> None:
    with pytest.raises(DatabaseNotFound):
        ingest.write("nope", None, b"m v=1")
    with pytest.raises(RetentionPolicyNotFound):
        ingest.write("db", "weekly", b"m v=1")


def test_racing_writes_cannot_both_introduce_a_field_type(ingest: Ingest) -> None:
    results: list[str | None] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        value = f"{i}i" if i % 2 else f"{i}.5"
        results.append(ingest.write("db", None, f"race v={value} {i}".encode()).error())

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 4  # the type of whichever came first; the other four conflict
    assert ingest.wait_applied(5)
    assert count(ingest.store, "race") == 4


def _open(tmp_path: Path) -> Ingest:
    return Ingest(DuckDBStore(tmp_path / "clmc.duckdb"), tmp_path / "wal")


def test_restart_replays_unapplied_records_exactly_once(tmp_path: Path) -> None:
    first = _open(tmp_path)
    first.start()
    first.store.create_database("db")
    first.write("db", None, b"m v=1 1")
    first.stop()
    first.store.close()
    # Records that reached the log but not the store (a crash between fsync and apply):
    wal = WriteAheadLog(tmp_path / "wal", lambda *_: None)
    for i in (2, 3):
        wal.commit(
            encode_items([("db", "autogen", "m", parse(f"m v={i} {i}".encode()).batches[0].table)])
        )
    wal.close()
    again = _open(tmp_path)
    assert again.start() == 2
    assert count(again.store) == 3
    again.stop()
    again.store.close()
    third = _open(tmp_path)
    assert third.start() == 0  # the applied position was stored with the rows
    assert count(third.store) == 3
    third.stop()
    third.store.close()


def test_torn_tail_record_is_cut_and_writing_goes_on(tmp_path: Path) -> None:
    ing = _open(tmp_path)
    ing.start()
    ing.store.create_database("db")
    ing.write("db", None, b"m v=1 1")
    ing.stop()
    ing.store.close()
    (segment,) = sorted((tmp_path / "wal").glob("*.wal"))
    with segment.open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00half a record")
    ing = _open(tmp_path)
    assert ing.start() == 0
    ing.write("db", None, b"m v=2 2")
    ing.stop()
    ing.store.close()
    ing = _open(tmp_path)
    ing.start()
    assert count(ing.store) == 2
    ing.stop()
    ing.store.close()


def test_overload_is_refused_not_dropped(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", max_backlog_bytes=0)
    ing.start()
    store.create_database("db")
    with ing.paused():  # nothing is applied meanwhile
        ing.write("db", None, b"m v=1 1")
        with pytest.raises(Overloaded) as exc:
            ing.write("db", None, b"m v=2 2")
        assert exc.value.http_status == 503
        assert exc.value.retry_after_s >= 1
    assert ing.wait_applied(5)
    ing.write("db", None, b"m v=3 3")  # accepted again once the backlog drained
    assert ing.wait_applied(5)
    assert count(store) == 2
    ing.stop()
    store.close()


def test_concurrent_writers_group_commit(ingest: Ingest) -> None:
    def go(i: int) -> None:
        body = "\n".join(f"g,w={i} v={j} {i * 1000 + j}" for j in range(100)).encode()
        assert ingest.write("db", None, body).error() is None

    threads = [threading.Thread(target=go, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ingest.wait_applied(10)
    assert count(ingest.store, "g") == 1600


def test_a_replaced_log_directory_never_hides_new_writes(tmp_path: Path) -> None:
    import shutil

    ing = _open(tmp_path)
    ing.start()
    ing.store.create_database("db")
    for i in range(3):
        ing.write("db", None, f"m v={i} {i}".encode())
    ing.stop()
    ing.store.close()
    shutil.rmtree(tmp_path / "wal")  # the store remembers a log position the new log lacks
    ing = _open(tmp_path)
    ing.start()
    with ing.paused():
        ing.write("db", None, b"m v=9 9")  # durable in the new log, not yet in the store
        ing.stop(drain=False)
    ing.store.close()
    ing = _open(tmp_path)
    ing.start()
    assert count(ing.store) == 4
    ing.stop()
    ing.store.close()


def test_ingest_over_the_clickhouse_store(tmp_path: Path) -> None:
    pytest.importorskip(
        "chdb", reason="chdb not installed: the ClickHouse store is tested in-process with it"
    )
    from flame.clmc.store.clickhouse_store import ClickHouseStore

    store = ClickHouseStore(tmp_path / "ch")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    store.create_database("db")
    assert ing.write("db", None, b"m,h=a v=1 1\nm,h=b v=2 2").error() is None
    assert ing.write("db", None, b"m v=3i 3").error() == (
        'partial write: field type conflict: input field "v" on measurement "m" is type integer, '
        "already exists as type float dropped=1"
    )
    assert ing.wait_applied(10)
    with ing.paused():
        ing.write("db", None, b"m,h=c v=4 4")
        ing.stop(drain=False)
    store.close()
    store = ClickHouseStore(tmp_path / "ch")
    ing = Ingest(store, tmp_path / "wal")
    assert ing.start() == 1  # the unapplied record, replayed
    got = store.query('SELECT h, v FROM "db\x1fautogen\x1fm" ORDER BY time').to_pylist()
    assert got == [{"h": "a", "v": 1.0}, {"h": "b", "v": 2.0}, {"h": "c", "v": 4.0}]
    ing.stop()
    store.close()


def test_a_waiting_reader_ends_the_appliers_linger(tmp_path: Path) -> None:
    """CLMC-9, issue 12: under load the applier lingers for more records (bigger batches), but
    never while a reader waits for what is queued (read_your_writes, a quiet client's query):
    here it would linger a minute, and the wait ends as soon as the record is applied."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    # every apply counts as "under load" for a minute after it, and a linger lasts a minute
    ing = Ingest(store, tmp_path / "wal", linger_s=60.0, busy_window_s=60.0, parse_process=False)
    ing.start()
    store.create_database("db")
    try:
        assert ing.write("db", None, b"m,h=a v=1 1").error() is None
        assert ing.wait_applied(30)  # idle: applied at once
        # now "busy": this record would wait up to 60 s for company, without the reader
        assert ing.write("db", None, b"m,h=b v=2 2").error() is None
        assert ing.wait_applied(30)
        assert count(store) == 2
    finally:
        ing.stop()
        store.close()


def test_lingering_still_gathers_records_nobody_waits_for(tmp_path: Path) -> None:
    """Without a waiting reader the linger stays: records written while the applier is busy
    are applied together (one batch), which is what makes applying cheaper under load."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", linger_s=60.0, busy_window_s=60.0, parse_process=False)
    applied: list[int] = []
    real = ing._apply

    def spy(records: list[Any]) -> None:
        applied.append(len(records))
        real(records)

    ing._apply = spy  # type: ignore[method-assign]
    ing.start()
    store.create_database("db")
    try:
        assert ing.write("db", None, b"m,h=a v=1 1").error() is None
        assert ing.wait_applied(30)
        for i in range(3):  # lingered over: the applier waits for more
            assert ing.write("db", None, f"m,h=c{i} v=3 {3 + i}".encode()).error() is None
        assert applied == [1]  # nothing applied while it lingers and nobody asks
        assert ing.wait_applied(30)  # a reader: the three go in one batch at once
        assert applied == [1, 3]
        assert count(store) == 4
    finally:
        ing.stop()
        store.close()


@pytest.mark.parametrize(
    "marker",
    ['{"position": [], "attempts": 2}', '{"position": [1], "attempts": 1}', "[]", "{", "\0"],
)
def test_a_garbled_replay_marker_never_stops_a_start(tmp_path: Path, marker: str) -> None:
    """`replaying.json` (which record a start was applying) may be anything after a crash:
    unreadable, it names nothing, and the start replays as usual (it raised IndexError on an
    empty position before, which would have been a crash loop)."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", parse_process=False)
    ing.start()
    store.create_database("db")
    ing.stop()
    wal = WriteAheadLog(tmp_path / "wal", lambda *_: None)  # a record the store never saw
    wal.commit(encode_items([("db", "autogen", "m", parse(b"m,h=a v=1 1").batches[0].table)]))
    wal.close()
    (tmp_path / "wal" / "replaying.json").write_text(marker)
    again = Ingest(store, tmp_path / "wal", parse_process=False)
    try:
        assert again.start() == 1
        assert count(store) == 1
        assert again.quarantined == 0
    finally:
        again.stop()
        store.close()
