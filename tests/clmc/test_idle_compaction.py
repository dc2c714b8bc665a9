"""Idle compaction (CLMC-9, issue 12): DuckDB's checkpoint, which blocks every commit while it
runs, happens when ingest pauses rather than inside a commit of the next burst; never while
applying is paused, and a failing one does not stop applying."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventually import eventually
from flame.clmc.ingest import Ingest
from flame.clmc.store.base import Store, table_name
from flame.clmc.store.duckdb_store import DuckDBStore

SMALL = 64 << 10  # the test's checkpoint threshold: a few thousand points' worth of log


def body(n: int, first: int = 0) -> bytes:
    return "\n".join(
        f"req,sfe=sfe{i % 9},server=srv{i % 4} rt={i}.5,size={i}i {1_700_000_000 + first + i}"
        for i in range(n)
    ).encode()


def duck_log(store_path: Path) -> int:
    wal = Path(f"{store_path}.wal")
    return wal.stat().st_size if wal.exists() else 0


def count(store: Store) -> int:
    sql = f"SELECT count(*) FROM {table_name('db', 'autogen', 'req')}"
    return int(store.query(sql).column(0)[0].as_py())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Ingest, Path]]:
    path = tmp_path / "clmc.duckdb"
    store = DuckDBStore(path, idle_checkpoint_bytes=SMALL)
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.2)
    ingest.start()
    store.create_database("db")
    yield ingest, path
    ingest.stop()
    store.close()


def test_an_idle_ingest_folds_duckdbs_log_into_the_database(
    setup: tuple[Ingest, Path], tmp_path: Path
) -> None:
    ingest, path = setup
    assert ingest.write("db", None, body(5000)).error() is None
    assert ingest.wait_applied(10)
    assert duck_log(path) >= SMALL  # written, not yet folded in
    eventually(lambda: duck_log(path) < SMALL, timeout=10)
    stats = ingest.stats()  # what /health shows
    assert stats["idle_compactions"] == 1
    assert isinstance(stats["last_idle_compaction_s"], float)
    ingest.stop()
    ingest.store.close()
    reopened = DuckDBStore(path)
    try:
        assert count(reopened) == 5000  # nothing lost by the checkpoint
    finally:
        reopened.close()


def test_compaction_waits_for_the_threshold_and_a_file() -> None:
    memory = DuckDBStore()
    try:
        assert memory.compact_idle() is False  # no log to fold
    finally:
        memory.close()


def test_below_the_threshold_nothing_is_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "clmc.duckdb"
    store = DuckDBStore(path)  # the real threshold, 16 MiB
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.1)
    ingest.start()
    try:
        store.create_database("db")
        assert ingest.write("db", None, body(500)).error() is None
        assert ingest.wait_applied(10)
        before = duck_log(path)
        assert before > 0
        time.sleep(0.5)
        assert duck_log(path) == before
        assert store.compact_idle() is False
        assert ingest.stats()["idle_compactions"] == 0
    finally:
        ingest.stop()
        store.close()


def test_no_compaction_while_applying_is_paused(tmp_path: Path) -> None:
    path = tmp_path / "clmc.duckdb"
    store = DuckDBStore(path, idle_checkpoint_bytes=SMALL)
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.5)
    ingest.start()
    try:
        store.create_database("db")
        assert ingest.write("db", None, body(5000)).error() is None
        assert ingest.wait_applied(10)
        with ingest.paused():  # e.g. the files being copied: they must not change
            time.sleep(1.0)  # the applier's idle moment falls inside the pause
            assert duck_log(path) >= SMALL
        assert ingest.write("db", None, body(10, first=9000)).error() is None
        eventually(lambda: duck_log(path) < SMALL, timeout=10)  # idle after the next apply
        assert count(store) == 5010
    finally:
        ingest.stop()
        store.close()


def test_a_failing_compaction_does_not_stop_applying(
    setup: tuple[Ingest, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ingest, _ = setup
    calls: list[float] = []

    def broken() -> bool:
        calls.append(time.monotonic())
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest.store, "compact_idle", broken)
    with caplog.at_level(logging.ERROR, logger="flame.clmc.ingest"):
        assert ingest.write("db", None, body(100)).error() is None
        eventually(lambda: len(calls) == 1, timeout=10)
        assert ingest.write("db", None, body(100, first=1000)).error() is None
        assert ingest.wait_applied(10)
    assert count(ingest.store) == 200
    assert "compacting the store while idle failed" in caplog.text
    eventually(lambda: len(calls) == 2, timeout=10)  # tried again after the next writes
