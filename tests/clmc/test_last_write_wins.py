"""Last write wins (issue 12, item 2): a point with the measurement, tag set and time of a
stored one replaces it field by field, as InfluxDB does, in both stores; so retries are
idempotent. Differential: the same write sequence read back from a real InfluxDB 1.6."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from flame.clmc.ingest import Ingest
from flame.clmc.store._series import _MAX_SPANS, _Table
from flame.clmc.store.base import table_name
from flame.clmc.store.duckdb_store import DuckDBStore


def _chdb_missing() -> bool:
    try:
        import chdb  # noqa: F401
    except ImportError:
        return True
    return False


def _store(kind: str, path: Path) -> Any:
    if kind == "duckdb":
        return DuckDBStore(path / "s.duckdb")
    from flame.clmc.store.clickhouse_store import ClickHouseStore

    return ClickHouseStore(path / "ch")


@pytest.fixture(
    params=[
        "duckdb",
        pytest.param(
            "clickhouse",
            marks=pytest.mark.skipif(
                _chdb_missing(), reason="chdb not installed (pip install chdb)"
            ),
        ),
    ]
)
def ingest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ingest]:
    store = _store(str(request.param), tmp_path)
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    store.create_database("db")
    yield ing
    ing.stop()
    store.close()


def rows(ing: Ingest, m: str = "m") -> list[dict[str, object]]:
    assert ing.wait_applied(60)  # a loaded CI machine applies to ClickHouse slowly
    t = table_name("db", "autogen", m)
    got = ing.store.query(f"SELECT * FROM {t}").to_pylist()
    return sorted(got, key=lambda r: (r["time"], sorted((k, str(v)) for k, v in r.items())))


def write(ing: Ingest, body: bytes) -> None:
    assert ing.write("db", None, body).error() is None


def test_the_same_points_twice_are_stored_once(ingest: Ingest) -> None:
    body = "\n".join(f"m,h=a{i % 7},dc=x v={i},n={i}i {1000 + i}" for i in range(100)).encode()
    write(ingest, body)
    write(ingest, body)
    assert len(rows(ingest)) == 100
    write(ingest, body)  # also once applied
    assert len(rows(ingest)) == 100


def test_a_later_write_merges_fields_as_influxdb(ingest: Ingest) -> None:
    write(ingest, b"m,t=a v=1,w=2 10")
    assert len(rows(ingest)) == 1
    write(ingest, b"m,t=a v=3 10")
    write(ingest, b'm,t=a x="s" 10\nm,t=a v=4 10\nm,t=a v=5,y=true 10')
    write(ingest, b"m,t=a,u=1 v=9 10\nm,u=1,t=a v=10 10")  # tag order does not matter
    got = sorted(rows(ingest), key=lambda r: str(r.get("u")))
    assert [{k: v for k, v in r.items() if v is not None} for r in got] == [
        {"time": 10, "t": "a", "u": "1", "v": 10.0},
        {"time": 10, "t": "a", "v": 5.0, "w": 2.0, "x": "s", "y": True},
    ]


def test_duplicates_within_one_apply_batch_keep_the_last(ingest: Ingest) -> None:
    with ingest.paused():  # three records applied together
        write(ingest, b"m,t=a v=1,w=1 5\nm,t=b v=1 5")
        write(ingest, b"m,t=a v=2 5")
        write(ingest, b"m,t=a w=3 5\nm,t=a v=7 6")
    got = [(r["t"], r["time"], r["v"], r["w"]) for r in rows(ingest)]
    assert got == [("a", 5, 2.0, 3.0), ("b", 5, 1.0, None), ("a", 6, 7.0, None)]


def test_a_big_batch_with_repeats_is_merged(ingest: Ingest) -> None:
    """Over 4,096 rows the series index works hash-based: the same outcome."""
    body = "\n".join(f"m,h=a{i % 13} v={i} {i}" for i in range(6000)).encode()
    again = "\n".join(f"m,h=a{i % 13} w={i} {i}" for i in range(0, 6000, 2)).encode()
    with ingest.paused():
        write(ingest, body)
        write(ingest, again)
    got = rows(ingest)
    assert len(got) == 6000
    assert sum(r["w"] is not None for r in got) == 3000
    assert all(r["v"] == r["time"] for r in got)


def test_old_points_resent_after_new_ones_replace_their_twins(ingest: Ingest) -> None:
    write(ingest, "\n".join(f"m,t=a v={i} {i}" for i in range(50)).encode())
    write(ingest, "\n".join(f"m,t=a v={i} {i}" for i in range(50, 100)).encode())
    write(ingest, "\n".join(f"m,t=a v={-i} {i}" for i in range(0, 100, 10)).encode())
    got = rows(ingest)
    assert len(got) == 100
    assert [r["v"] for r in got[:11]] == [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -10.0]


def test_newest_first_and_backfill_keep_every_point_once(ingest: Ingest) -> None:
    """A client sending newest first (or a backfill) writes below each series' stored range:
    nothing to merge; a point resent at the range's edges or inside it still replaces its twin."""
    for start in (300, 200, 100, 0):  # newest first, 3 series
        write(
            ingest, "\n".join(f"m,t=a{i % 3} v={i} {i}" for i in range(start, start + 100)).encode()
        )
    write(ingest, b"m,t=a0 v=-1 0\nm,t=a2 v=-2 398\nm,t=a1 v=-3 205")  # least, greatest, inside
    got = {(r["t"], r["time"]): r["v"] for r in rows(ingest)}
    assert len(got) == 400
    assert (got[("a0", 0)], got[("a2", 398)], got[("a1", 205)]) == (-1.0, -2.0, -3.0)
    assert got[("a1", 1)] == 1.0


def test_a_gap_between_stored_bodies_is_filled_and_a_twin_in_a_span_replaced(
    ingest: Ingest,
) -> None:
    """Two writers interleave bodies: a body may land in a gap of its series' stored range;
    no stored point is there (the table's stored spans say so), a twin inside a span is."""
    write(ingest, "\n".join(f"m,t=a{i % 2} v={i} {i}" for i in range(200, 300)).encode())
    write(ingest, "\n".join(f"m,t=a{i % 2} v={i} {i}" for i in range(0, 100)).encode())
    assert len(rows(ingest)) == 200
    gap = [f"m,t=a{i % 2} v={i} {i}" for i in range(100, 200)]
    write(ingest, "\n".join([*gap, "m,t=a0 v=-1 250", "m,t=a1 v=-2 99"]).encode())
    got = {(r["t"], r["time"]): r["v"] for r in rows(ingest)}
    assert len(got) == 300
    assert (got[("a0", 250)], got[("a1", 99)], got[("a0", 150)]) == (-1.0, -2.0, 150.0)


def test_stored_spans_stay_bounded_and_cover_every_time() -> None:
    entry = _Table()
    times = [i * 10 for i in range(3 * _MAX_SPANS)]
    for t in reversed(times):  # every one its own span at first: merged past the bound
        entry.add_span(t, t + 1)
    assert len(entry.spans) <= _MAX_SPANS
    assert entry.in_spans(np.array(times, dtype=np.int64)).all()
    assert not entry.in_spans(np.array([-5, times[-1] + 5], dtype=np.int64)).any()
    entry.add_span(-100, 10**6)  # a span over all of them: one left
    assert entry.spans == [(-100, 10**6)]


def test_stored_time_ranges_survive_a_restart(tmp_path: Path) -> None:
    """After a restart the series index reloads each series' least and greatest time."""
    store = DuckDBStore(tmp_path / "s.duckdb")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    store.create_database("db")
    write(ing, "\n".join(f"m,t=a v={i} {i}" for i in range(100, 200)).encode())
    assert ing.wait_applied(60)
    ing.stop()
    store.close()
    store = DuckDBStore(tmp_path / "s.duckdb")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    try:
        write(ing, "\n".join(f"m,t=a v={-i} {i}" for i in range(50, 101)).encode())  # 100: twin
        got = {r["time"]: r["v"] for r in rows(ing)}
        assert len(got) == 150
        assert (got[100], got[101], got[50]) == (-100.0, 101.0, -50.0)
    finally:
        ing.stop()
        store.close()


def test_a_retry_after_a_crash_does_not_duplicate(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "s.duckdb")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    store.create_database("db")
    bodies = [
        "\n".join(f"cpu,host=h{j % 5} v={j} {i * 100 + j}" for j in range(100)).encode()
        for i in range(10)
    ]
    with ing.paused():
        for b in bodies[:6]:
            write(ing, b)
        ing.stop(drain=False)  # acknowledged, not applied: as after kill -9
    store.close()
    store = DuckDBStore(tmp_path / "s.duckdb")
    ing = Ingest(store, tmp_path / "wal")
    ing.start()
    try:
        for b in bodies:  # the client resends everything it is unsure of
            write(ing, b)
        assert len(rows(ing, "cpu")) == 1000
    finally:
        ing.stop()
        store.close()


SEQUENCE = [
    b"m,t=a v=1,w=2 10",
    b"m,t=a v=3 10",
    b'm,t=a x="s" 10\nm,t=a v=4 10\nm,t=a v=5,y=true 10',
    b"m,t=a,u=1 v=9 10\nm,u=1,t=a v=10 10",
    b"m,t=b v=1 20\nm,t=b v=2 20\nm,t=b w=3 20",
]


def test_last_write_wins_as_influxdb(real_influx: str, clmc_url: str) -> None:
    with httpx.Client(timeout=60) as c:
        for url in (real_influx, clmc_url):
            c.post(url + "/query", params={"q": "CREATE DATABASE lww"})
            for body in SEQUENCE:
                assert c.post(url + "/write", params={"db": "lww"}, content=body).status_code == 204
        q = {"db": "lww", "q": "SELECT * FROM m", "read_your_writes": "true"}
        ours = c.get(clmc_url + "/query", params=q).json()
        theirs = c.get(real_influx + "/query", params=q).json()
    assert ours == theirs


def test_series_ids_are_the_same_in_every_process() -> None:
    """They travel in WAL records from a process to the next one (which replays them)."""
    import subprocess
    import sys

    import pyarrow as pa  # type: ignore[import-untyped]

    from flame.clmc.store._series import series_ids

    code = (
        "import pyarrow as pa; from flame.clmc.store._series import series_ids; "
        "print(series_ids(2, [('host', pa.array(['a', 'b'])), ('dc', pa.array(['x', None]))]).tolist())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    here = series_ids(2, [("host", pa.array(["a", "b"])), ("dc", pa.array(["x", None]))])
    assert other == str(here.tolist())
