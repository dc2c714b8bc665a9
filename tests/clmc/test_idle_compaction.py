"""Idle compaction (CLMC-9, issue 12): DuckDB's checkpoint, which blocks every commit while it
runs, happens when ingest pauses rather than inside a commit of the next burst; never while
applying is paused, and a failing one does not stop applying."""

from __future__ import annotations

import itertools
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
    # storm_rate=1: every write counts as a burst, so only the idle path compacts here
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.2, storm_rate=1.0)
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


def test_an_in_memory_store_has_nothing_to_compact() -> None:
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
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.5, storm_rate=1.0)
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = DuckDBStore(tmp_path / "clmc.duckdb", idle_checkpoint_bytes=SMALL)
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=0.2, compact_retry_s=0.5)
    ingest.start()
    calls: list[float] = []

    def broken() -> bool:
        calls.append(time.monotonic())
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "compact_idle", broken)
    try:
        store.create_database("db")
        with caplog.at_level(logging.ERROR, logger="flame.clmc.ingest"):
            assert ingest.write("db", None, body(100)).error() is None
            eventually(lambda: len(calls) >= 1, timeout=10)
            assert ingest.write("db", None, body(100, first=1000)).error() is None
            assert ingest.wait_applied(10)
            assert count(store) == 200  # applying went on
            time.sleep(0.6)  # past the retry delay: the next writes try again
            assert ingest.write("db", None, body(100, first=2000)).error() is None
            eventually(lambda: len(calls) >= 2, timeout=10)
        # never two attempts within the retry delay: one error line per attempt, not per write
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert all(gap >= 0.45 for gap in gaps), gaps
        assert caplog.text.count("compacting the store between writes failed") == len(calls)
    finally:
        ingest.stop()
        store.close()


def test_slow_writes_that_never_pause_still_compact(tmp_path: Path) -> None:
    """Agents reporting every moment never leave ingest idle for a second: while writes come
    slowly (under the storm rate), the applier compacts between two of them."""
    path = tmp_path / "clmc.duckdb"
    store = DuckDBStore(path, idle_checkpoint_bytes=SMALL)
    ingest = Ingest(store, tmp_path / "wal", idle_compact_s=3600)  # never idle long enough
    ingest.start()
    try:
        store.create_database("db")
        written = 0
        deadline = time.monotonic() + 30
        while ingest.compactor.done == 0 and time.monotonic() < deadline:
            assert ingest.write("db", None, body(300, first=written)).error() is None
            written += 300
            time.sleep(0.05)  # ~6,000 points/s: slow, and never a 1 s pause
        assert ingest.compactor.done >= 1
        assert ingest.wait_applied(10)
        assert count(store) == written
        assert duck_log(path) < SMALL + 300 * 200  # folded in (plus what came after)
    finally:
        ingest.stop()
        store.close()
