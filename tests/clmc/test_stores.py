"""The stores (CLMC-3, 9, 10): layout, schema evolution, conflicts, retention, deletion,
configuration versions, persistence across reopen. Each test runs on DuckDB (the default) and on
ClickHouse through chdb (skipped with a reason when chdb is not installed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from flame.clmc.errors import DatabaseNotFound, FieldTypeConflict, RetentionPolicyNotFound
from flame.clmc.lineproto import parse
from flame.clmc.store.base import FieldType, RetentionPolicy, table_name
from flame.clmc.store.duckdb_store import DuckDBStore, default_threads

Store = Any


def _chdb_missing() -> bool:
    try:
        import chdb  # noqa: F401
    except ImportError:
        return True
    return False


def _open(kind: str, path: Path) -> Store:
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
                _chdb_missing(),
                reason="chdb not installed (pip install chdb): the ClickHouse store is tested in-process with it",
            ),
        ),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def duck(kind: str, tmp_path: Path) -> Iterator[Store]:
    st = _open(kind, tmp_path)
    yield st
    st.close()


def load(store: Store, body: bytes, db: str = "db", rp: str = "autogen") -> None:
    for b in parse(body).batches:
        store.append(db, rp, b.measurement, b.table)


def rows(store: Store, m: str, db: str = "db", rp: str = "autogen") -> list[dict[str, object]]:
    return store.query(f"SELECT * FROM {table_name(db, rp, m)} ORDER BY time").to_pylist()


def test_layout_and_schema_evolution(duck: Store) -> None:
    duck.create_database("db")
    load(duck, b"cpu,host=a v=1 1")
    load(duck, b"cpu,host=b,dc=x v=2,n=3i 2")
    schema = duck.schema("db", "autogen", "cpu")
    assert schema is not None
    assert schema.tag_keys == ("dc", "host")
    assert schema.field_types == {"n": FieldType.INTEGER, "v": FieldType.FLOAT}
    assert schema.table == table_name("db", "autogen", "cpu")
    assert rows(duck, "cpu") == [
        {"time": 1, "host": "a", "v": 1.0, "dc": None, "n": None},
        {"time": 2, "host": "b", "v": 2.0, "dc": "x", "n": 3},
    ]
    assert duck.measurements("db") == ["cpu"]
    got = duck.query(
        f"SELECT count(*) AS n FROM {schema.table} WHERE time >= ? AND host = ?", [2, "b"]
    )
    assert got.column(0).to_pylist() == [1]
    quoted = duck.query(f"SELECT count(*) AS n FROM {schema.table} WHERE host = ?", ["it's ? odd"])
    assert quoted.column(0).to_pylist() == [0]


def test_field_type_conflict_is_refused_whole(duck: Store) -> None:
    duck.create_database("db")
    load(duck, b"cpu v=1 1")
    (b,) = parse(b"cpu v=2i,w=1 2").batches
    with pytest.raises(FieldTypeConflict) as exc:
        duck.append("db", "autogen", "cpu", b.table)
    assert exc.value.message == (
        'field type conflict: input field "v" on measurement "cpu" is type integer, already exists as type float'
    )
    assert len(rows(duck, "cpu")) == 1
    schema = duck.schema("db", "autogen", "cpu")
    assert schema is not None
    assert "w" not in schema.field_types


def test_tag_and_field_with_one_key_get_separate_columns(duck: Store) -> None:
    duck.create_database("db")
    load(duck, b"c,k=x k=1 1")
    s = duck.schema("db", "autogen", "c")
    assert s is not None
    assert s.tag_keys == ("k",)
    assert s.field_types == {"k": FieldType.FLOAT}
    assert s.tag_column("k") != s.field_column("k")
    got = duck.query(f"SELECT {s.tag_column('k')} AS t, {s.field_column('k')} AS f FROM {s.table}")
    assert got.to_pylist() == [{"t": "x", "f": 1.0}]


def test_plain_arrow_tables_strings_are_tags_unless_told(duck: Store) -> None:
    duck.create_database("db")
    t = pa.table({"time": pa.array([1], pa.int64()), "host": ["a"], "msg": ["hi"], "v": [1.5]})
    duck.append("db", "autogen", "m", t, tag_keys={"host"})
    s = duck.schema("db", "autogen", "m")
    assert s is not None
    assert s.tag_keys == ("host",)
    assert s.field_types == {"msg": FieldType.STRING, "v": FieldType.FLOAT}


def test_unknown_database_and_policy(duck: Store) -> None:
    t = parse(b"m v=1 1").batches[0].table
    with pytest.raises(DatabaseNotFound, match='database not found: "nope"'):
        duck.append("nope", "autogen", "m", t)
    duck.create_database("db")
    with pytest.raises(RetentionPolicyNotFound, match="retention policy not found: weekly"):
        duck.append("db", "weekly", "m", t)


def test_retention_policies_and_enforcement(duck: Store) -> None:
    duck.create_database("db")
    assert duck.retention_policies("db") == [RetentionPolicy("autogen", 0, True)]
    duck.create_retention_policy("db", RetentionPolicy("short", 100, default=True))
    assert {p.name: p.default for p in duck.retention_policies("db")} == {
        "autogen": False,
        "short": True,
    }
    assert next(p.name for p in duck.retention_policies("db") if p.default) == "short"
    load(duck, b"m v=1 100\nm v=2 950\nm v=3 1000", rp="short")
    load(duck, b"m v=1 1", rp="autogen")
    assert duck.enforce_retention(now_ns=1000) == 1  # older than 1000 - 100
    assert [r["v"] for r in rows(duck, "m", rp="short")] == [2.0, 3.0]
    assert len(rows(duck, "m")) == 1  # autogen keeps everything


def test_delete_by_time_measurement_and_tags(duck: Store) -> None:
    duck.create_database("db")
    load(duck, b"a,h=x v=1 1\na,h=y v=2 2\na,h=x v=3 3\nb,h=x v=4 4\nc v=5 5")
    assert duck.delete("db", "a", tags={"h": "x"}, start_ns=2) == 1
    assert [r["v"] for r in rows(duck, "a")] == [1.0, 2.0]
    assert duck.delete("db", tags={"h": "x"}) == 2  # a@1 and b@4
    assert duck.delete("db", tags={"nope": "z"}) == 0
    assert duck.delete("db", end_ns=3) == 1  # a,h=y@2
    assert [r["v"] for r in rows(duck, "c")] == [5.0]
    assert duck.delete("db", "c") == 1


def test_configuration_versions_in_force(duck: Store) -> None:
    duck.put_config("template", "video", "v1", '{"sf": 1}', 100)
    duck.put_config("template", "video", "v2", '{"sf": 2}', 200)
    duck.put_config("topology", "edge", "t1", "{}", 150)
    assert duck.config_at("template", "video", 99) is None
    v = duck.config_at("template", "video", 150)
    assert v is not None
    assert (v.version, v.body) == ("v1", '{"sf": 1}')
    v = duck.config_at("template", "video", 10**9)
    assert v is not None
    assert v.version == "v2"
    assert [c.version for c in duck.config_history("template", "video")] == ["v1", "v2"]


def test_append_many_is_atomic_with_its_meta(duck: Store, kind: str) -> None:
    if kind != "duckdb":
        pytest.skip("ClickHouse has no multi-statement transactions (documented: at-least-once)")
    duck.create_database("db")
    good = parse(b"m v=1 1").batches[0].table
    bad = parse(b"m v=1i 2").batches[0].table
    with pytest.raises(FieldTypeConflict):
        duck.append_many([("db", "autogen", "m", good), ("db", "autogen", "m", bad)], {"k": "1"})
    assert duck.get_meta("k") is None
    assert duck.measurements("db") == []  # the table created in the failed transaction is gone
    duck.append_many([("db", "autogen", "m", good)], {"k": "2"})
    assert duck.get_meta("k") == "2"
    assert len(rows(duck, "m")) == 1


def test_persists_across_reopen(kind: str, tmp_path: Path) -> None:
    st = _open(kind, tmp_path)
    st.create_database("db")
    load(st, b"m,t=a v=1,n=2i 1")
    st.close()
    st = _open(kind, tmp_path)
    try:
        s = st.schema("db", "autogen", "m")
        assert s is not None
        assert s.field_types == {"n": FieldType.INTEGER, "v": FieldType.FLOAT}
        assert rows(st, "m") == [{"time": 1, "t": "a", "v": 1.0, "n": 2}]
    finally:
        st.close()


def test_drop_database(duck: Store) -> None:
    duck.create_database("db")
    duck.create_database("db")  # idempotent, as InfluxDB's CREATE DATABASE
    load(duck, b"m v=1 1")
    duck.drop_database("db")
    assert duck.databases() == []
    assert duck.measurements("db") == []
    with pytest.raises(DatabaseNotFound):
        duck.retention_policies("db")


def test_duckdb_threads_leave_a_cpu_to_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAME_CLMC_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert default_threads() == 1  # two CPUs: one for DuckDB, one for parsing and requests
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert default_threads() == 7
    monkeypatch.setenv("FLAME_CLMC_THREADS", "3")
    store = DuckDBStore()
    try:
        assert store.threads == 3
        setting = store.query("SELECT current_setting('threads') AS t").column(0)[0].as_py()
        assert int(setting) == 3  # what DuckDB really runs with
    finally:
        store.close()
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("FLAME_CLMC_THREADS", bad)
        with pytest.raises(ValueError, match="FLAME_CLMC_THREADS"):
            default_threads()
