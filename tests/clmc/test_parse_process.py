"""The parse process (CLMC-8, issue 12): big write bodies parsed in a second process give the
same points, errors and drops as the in-process parser; a stored field type still wins; a dead
process never fails a write; stopping ingest stops it."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventually import eventually
from flame.clmc import _parseproc
from flame.clmc._parseproc import MIN_BYTES, ParseProcess
from flame.clmc.ingest import Ingest
from flame.clmc.lineproto import ParseResult, parse
from flame.clmc.store.base import table_name
from flame.clmc.store.duckdb_store import DuckDBStore

NOW = 1_700_000_100_000_000_000


def big_body(n: int = 2500, field: str = "v=1.5", first: int = 0) -> bytes:
    """One measurement, a few tags, the given field on every line (2,500 lines: over
    `MIN_BYTES`)."""
    lines = [
        f"req,sfe=sfe{i % 7},server=srv{i % 3},location=edge-{i % 5} {field},size={i}i,"
        f'state="ok" {1_700_000_000_000_000_000 + (first + i) * 1000}'
        for i in range(n)
    ]
    return "\n".join(lines).encode()


def odd_body() -> bytes:
    """Several measurements, parse errors, an escaped line, a point beyond the cutoff, a
    field-type conflict inside the body, a point without a timestamp."""
    lines = [
        f"cpu,host=h{i % 4},cpu=cpu{i % 2} usage_user={i}.5,usage_idle=9{i % 10}.25 "
        f"{1_700_000_000_000_000_000 + i}"
        for i in range(3000)
    ]
    lines += [
        f"mem,host=h{i} used={i}i,free=7i {1_700_000_000_000_000_000 + i}" for i in range(900)
    ]
    lines += [
        "bad line",
        r"disk,path=/var\ log free=1i 1700000000000000001",
        "mem,host=x used=1.5 1700000000000000002",  # int before: a conflict in the body
        "cpu,host=old usage_user=1 5",  # beyond the retention cutoff
        "mem,host=now used=3i",  # server time
        'proc,name=a cmd="a \\"quoted\\" b" 1700000000000000003',
    ]
    return "\n".join(lines).encode()


def same(a: ParseResult, b: ParseResult) -> None:
    assert [x.measurement for x in a.batches] == [x.measurement for x in b.batches]
    for x, y in zip(a.batches, b.batches, strict=True):
        assert x.table.equals(y.table, check_metadata=True)
        assert x.lines.tolist() == y.lines.tolist()
    assert [e.influx_message for e in a.errors] == [e.influx_message for e in b.errors]
    assert a.dropped == b.dropped
    assert a.beyond_retention == b.beyond_retention


@pytest.fixture
def proc() -> Iterator[ParseProcess]:
    p = ParseProcess()
    yield p
    p.close()


def via(p: ParseProcess, body: bytes, cutoff: int | None = None) -> ParseResult:
    """Parsed by the process (waiting for it to start)."""
    result = eventually(
        lambda: p.parse(body, "n", NOW, 1000, 256, cutoff),
        until=lambda r: r is not None,
        what="the parse process to answer",
    )
    assert result is not None
    return result


def test_parse_process_gives_what_the_local_parser_gives(proc: ParseProcess) -> None:
    body = odd_body()
    cutoff = 1_000
    remote = via(proc, body, cutoff)
    local = parse(body, "n", NOW, None, max_fields=1000, max_tags=256, cutoff=cutoff)
    same(remote, local)
    assert remote.errors  # the case has everything: errors, drops, retention, three batches
    assert remote.dropped
    assert remote.beyond_retention
    assert {b.measurement for b in remote.batches} >= {"cpu", "mem", "disk", "proc"}
    assert proc.used == 1


def test_big_bodies_go_to_the_process_and_are_stored(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", parse_process=True, parse_processes=1)
    ing.start()
    store.create_database("db")
    try:
        assert ing.pool.processes
        assert len(big_body()) >= MIN_BYTES
        written = [0]

        def write_one() -> int:
            out = ing.write("db", None, big_body(first=written[0] * 2500), now_ns=NOW)
            assert out.error() is None
            written[0] += 1
            return ing.pool.processes[0].used if ing.pool.processes[0] else 0

        eventually(write_one, until=lambda used: used >= 2, what="bodies parsed there")
        assert ing.wait_applied(30)
        rows = store.query(f"SELECT count(*) FROM {table_name('db', 'autogen', 'req')}")
        assert rows.column(0)[0].as_py() == written[0] * 2500
        pid = ing.pool.processes[0].pid
        assert pid is not None
        stats = ing.stats()["parse_process"]  # what /health shows
        assert isinstance(stats, dict)
        assert stats["pid"] == pid
        assert stats["bodies"] == sum(p.used for p in ing.pool.processes) >= 2
        assert stats["failures"] == 0
        assert stats["processes"][0] == {
            "pid": pid,
            "bodies": ing.pool.processes[0].used,
            "failures": 0,
        }
    finally:
        ing.stop()
        store.close()
    # stopping ingest ends the process
    eventually(lambda: _gone(pid), what="the parse process to exit")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until reaped: Popen.wait in close() reaps it, so this is a live process
    return False


def test_a_stored_field_type_still_wins(tmp_path: Path) -> None:
    """The process parses without the stored types: ingest parses again with them when a
    field's type differs, so the result is InfluxDB's (the stored type wins)."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", parse_process=True)
    ing.start()
    store.create_database("db")
    try:
        assert ing.write("db", None, b"req,sfe=a v=1i 1").error() is None
        assert ing.pool.processes
        via(ing.pool.processes[0], big_body(10))  # started and answering
        used = ing.pool.processes[0].used
        # first line float (the body's own choice), the rest integer (the stored type)
        body = big_body(1, "v=2.5") + b"\n" + big_body(2600, "v=3i", first=1)
        out = ing.write("db", None, body, now_ns=NOW)
        assert (
            ing.pool.processes[0].used == used + 1
        )  # parsed there, then again here with the types
        assert out.points == 2600
        assert out.dropped[0].line == 1
        assert "is type float, already exists as type integer" in (out.error() or "")
    finally:
        ing.stop()
        store.close()


def test_a_dead_parse_process_never_fails_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_parseproc, "RESTART_S", 0.0)
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", parse_process=True, parse_processes=2)
    ing.start()
    store.create_database("db")
    try:
        parser = ing.pool.processes[0]
        assert parser is not None
        via(parser, big_body(10))
        pid = parser.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        out = ing.write("db", None, big_body(first=0), now_ns=NOW)
        assert out.error() is None
        assert out.points == 2500
        assert parser.failures == 1
        # parsed here, not handed to the next process: a body a process failed on (a hang of
        # 120 s, say) is never tried on each process in turn
        assert ing.pool.processes[1].pid is None
        assert ing.pool.processes[1].used == 0
        # started again (RESTART_S = 0 here), and used again
        via(parser, big_body(10))
        assert parser.pid != pid
        assert ing.wait_applied(30)
        rows = store.query(f"SELECT count(*) FROM {table_name('db', 'autogen', 'req')}")
        assert rows.column(0)[0].as_py() == 2500
    finally:
        ing.stop()
        store.close()


def test_small_bodies_and_the_switch_stay_local(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    off = Ingest(store, tmp_path / "wal", parse_process=False)
    assert off.pool.processes == []
    off.stop()
    on = Ingest(store, tmp_path / "wal2", parse_process=True)
    try:
        on.start()
        store.create_database("db")
        assert on.write("db", None, b"m v=1 1").points == 1
        assert on.pool.processes
        assert all(p.pid is None for p in on.pool.processes)  # a small body starts none
    finally:
        on.stop()
        store.close()


def test_a_busy_process_passes_the_body_to_the_next(tmp_path: Path) -> None:
    """One parse process per CPU (issue 12): two writers' bodies are parsed at once in two
    processes, not one there and one in the server's interpreter. A body goes to the first
    process that is free."""
    store = DuckDBStore(tmp_path / "clmc.duckdb")
    ing = Ingest(store, tmp_path / "wal", parse_process=True, parse_processes=2)
    ing.start()
    store.create_database("db")
    try:
        first, second = ing.pool.processes
        for p in (first, second):
            via(p, big_body(10))  # both started and answering
        used = (first.used, second.used)
        with first._lock:  # the first busy with another writer's body
            out = ing.write("db", None, big_body(first=0), now_ns=NOW)
        assert out.error() is None
        assert (first.used, second.used) == (used[0], used[1] + 1)
        out = ing.write("db", None, big_body(first=2500), now_ns=NOW)  # free again: first
        assert out.error() is None
        assert (first.used, second.used) == (used[0] + 1, used[1] + 1)
        stats = ing.stats()["parse_process"]
        assert isinstance(stats, dict)
        assert [p["pid"] for p in stats["processes"]] == [first.pid, second.pid]
        assert stats["bodies"] == first.used + second.used
        assert ing.wait_applied(30)
        rows = store.query(f"SELECT count(*) FROM {table_name('db', 'autogen', 'req')}")
        assert rows.column(0)[0].as_py() == 5000
        pids = [first.pid, second.pid]
    finally:
        ing.stop()
        store.close()
    for pid in pids:  # stopping ingest ends both
        assert pid is not None
        eventually(functools.partial(_gone, pid), what="a parse process to exit")


def test_how_many_parse_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One per CPU (at most 4) unless FLAME_CLMC_PARSE_PROCESSES says otherwise; none with
    FLAME_CLMC_PARSE_PROCESS=0. None is started before the first big body."""
    store = DuckDBStore(None)
    cases = [
        ({}, min(4, os.cpu_count() or 1)),
        ({"FLAME_CLMC_PARSE_PROCESSES": "3"}, 3),
        ({"FLAME_CLMC_PARSE_PROCESSES": "0"}, 0),
        ({"FLAME_CLMC_PARSE_PROCESSES": "3", "FLAME_CLMC_PARSE_PROCESS": "0"}, 0),
    ]
    try:
        for i, (env, expected) in enumerate(cases):
            for name in ("FLAME_CLMC_PARSE_PROCESSES", "FLAME_CLMC_PARSE_PROCESS"):
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            ing = Ingest(store, tmp_path / f"wal{i}")
            assert len(ing.pool.processes) == expected, env
            assert all(p.pid is None for p in ing.pool.processes)
            assert (ing.stats()["parse_process"] is None) == (expected == 0)
            ing.stop()
    finally:
        store.close()
