"""The scale-out CLMC store on ClickHouse SQL (CLMC-9, 10), run in-process by `chdb`.

Same layout as `base` describes: one MergeTree table per (db, rp, measurement) ordered by
time, `time Int64` ns, tags `Nullable(String)`, fields of their `Nullable` type. Tables live in
the ClickHouse database `flame`, which is the session's current one, so `MeasurementSchema.table`
pastes as is. The catalog lives in `_flame_*` tables beside them.

Differences from DuckDB a caller may notice: ClickHouse has no multi-statement transactions,
so `append_many` writes the rows, then the meta keys (a crash in between makes WAL replay apply
those rows again; last-write-wins makes that replay harmless); `query` binds `?` parameters as
SQL literals on our side.

Last write wins as in the DuckDB store, at write time rather than with ReplacingMergeTree (whose
merges replace whole rows, at an unknown time, unless every query says FINAL): rows the series
index cannot rule out are looked up, their stored versions read, deleted (lightweight DELETE)
and written back merged field by field. Queries never see two versions of a point.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.limits import Limits
from flame.clmc.store._catalog import (
    Catalog,
    CatalogReads,
    TableInfo,
    classify,
    given_sids,
    physical_schema,
    widen,
)
from flame.clmc.store._series import MAX_COLUMN, MIN_COLUMN, Admission, Key, SeriesIndex, merge_last
from flame.clmc.store.base import (
    DEFAULT_RP,
    ConfigVersion,
    FieldType,
    RetentionPolicy,
    table_name,
)

__all__ = ["CLICKHOUSE_TYPES", "ClickHouseStore"]

CLICKHOUSE_TYPES: Mapping[FieldType, str] = {
    FieldType.FLOAT: "Nullable(Float64)",
    FieldType.INTEGER: "Nullable(Int64)",
    FieldType.UNSIGNED: "Nullable(UInt64)",
    FieldType.STRING: "Nullable(String)",
    FieldType.BOOLEAN: "Nullable(Bool)",
}
_MERGE_TREE = "ENGINE = MergeTree ORDER BY tuple()"
_BOOTSTRAP = [
    "CREATE DATABASE IF NOT EXISTS flame",
    "USE flame",
    f"CREATE TABLE IF NOT EXISTS _flame_databases (name String) {_MERGE_TREE}",
    "CREATE TABLE IF NOT EXISTS _flame_rps (db String, name String, duration_ns Int64, "
    f"is_default Bool) {_MERGE_TREE}",
    "CREATE TABLE IF NOT EXISTS _flame_columns (db String, rp String, measurement String, "
    f"key String, physical String, is_tag Bool, ftype String) {_MERGE_TREE}",
    f"CREATE TABLE IF NOT EXISTS _flame_meta (key String, value String) {_MERGE_TREE}",
    "CREATE TABLE IF NOT EXISTS _flame_config (kind String, name String, version String, "
    f"time_ns Int64, body String, seq UInt64) {_MERGE_TREE}",
]


def _q(identifier: str) -> str:
    return '"' + identifier.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: object) -> str:
    """A ClickHouse SQL literal for a Python value (for binding `?` on our side)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def bind(sql: str, params: Sequence[object]) -> str:
    """Replace each `?` outside quotes with the next parameter as a literal."""
    if not params:
        return sql
    out: list[str] = []
    it = iter(params)
    quote: str | None = None
    i = 0
    while i < len(sql):
        c = sql[i]
        if quote is not None:
            out.append(c)
            if c == "\\" and i + 1 < len(sql):
                out.append(sql[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"`":
            quote = c
            out.append(c)
        elif c == "?":
            try:
                out.append(literal(next(it)))
            except StopIteration:
                raise ValueError("more ? placeholders than parameters") from None
        else:
            out.append(c)
        i += 1
    return "".join(out)


class ClickHouseStore(CatalogReads):
    """`Store` on an in-process ClickHouse (chdb) whose data lives in `path`."""

    def __init__(self, path: str | Path) -> None:
        from chdb import session  # noqa: PLC0415 - heavy and optional (the scale-out store)

        chdb_session: Any = session  # chdb's API is untyped
        self._session: Any = chdb_session.Session(str(path))
        self._lock = threading.RLock()
        self._catalog = Catalog()
        for stmt in _BOOTSTRAP:
            self._session.query(stmt)
        for db, rp, m, key, phys, is_tag, ftype in self._rows(
            "SELECT db, rp, measurement, key, physical, is_tag, ftype FROM _flame_columns"
        ):
            self._catalog.add_column(
                db, rp, m, key, phys, bool(is_tag), None if is_tag else FieldType(ftype)
            )
        self._policies: dict[str, list[RetentionPolicy]] = {}
        self._load_policies()
        self._published = {}
        self._publish()
        self.series = SeriesIndex(self._series_rows, self._tables_of)

    def _exec(self, sql: str) -> None:
        self._session.query(sql)

    def _table(self, sql: str) -> pa.Table:
        return self._session.query(sql, "ArrowTable")

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        t = self._table(sql)
        cols = [c.to_pylist() for c in t.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def _load_policies(self) -> None:
        policies: dict[str, list[RetentionPolicy]] = {
            str(name): [] for (name,) in self._rows("SELECT name FROM _flame_databases")
        }
        for db, name, duration, default in self._rows(
            "SELECT db, name, duration_ns, is_default FROM _flame_rps ORDER BY name"
        ):
            policies.setdefault(str(db), []).append(
                RetentionPolicy(str(name), int(duration), bool(default))
            )
        self._policies = policies

    # -- catalog --------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        with self._lock:
            if name in self._policies:
                return
            self._exec(f"INSERT INTO _flame_databases VALUES ({literal(name)})")
            self._exec(
                f"INSERT INTO _flame_rps VALUES ({literal(name)}, {literal(DEFAULT_RP)}, 0, true)"
            )
            self._load_policies()

    def drop_database(self, name: str) -> None:
        with self._lock:
            for k, info in list(self._catalog.tables.items()):
                if k[0] == name:
                    self._exec(f"DROP TABLE IF EXISTS {info.table}")
            self._exec(f"DELETE FROM _flame_databases WHERE name = {literal(name)}")
            for meta in ("_flame_rps", "_flame_columns"):
                self._exec(f"DELETE FROM {meta} WHERE db = {literal(name)}")
            gone = [k for k in self._catalog.tables if k[0] == name]
            self._catalog.drop(name)
            self._publish(gone)
            self._load_policies()
            self.series.forget(name)

    def drop_measurement(self, database: str, measurement: str) -> None:
        """Drop the measurement from every retention policy, data and field types alike."""
        with self._lock:
            self.retention_policies(database)
            for k, info in list(self._catalog.tables.items()):
                if k[0] == database and k[2] == measurement:
                    self._exec(f"DROP TABLE IF EXISTS {info.table}")
                    self._catalog.drop(database, k[1], measurement)
                    self._publish([k])
            self._exec(
                f"DELETE FROM _flame_columns WHERE db = {literal(database)} "
                f"AND measurement = {literal(measurement)}"
            )
            self.series.forget(database)

    def create_retention_policy(self, database: str, policy: RetentionPolicy) -> None:
        """Create or alter `policy`; making it the default clears the old default."""
        with self._lock:
            kept = [
                RetentionPolicy(p.name, p.duration_ns, p.default and not policy.default)
                for p in self.retention_policies(database)
                if p.name != policy.name
            ]
            db = literal(database)
            # No UPDATE on plain MergeTree: rewrite this database's policies.
            self._exec(f"DELETE FROM _flame_rps WHERE db = {db}")
            values = ", ".join(
                f"({db}, {literal(p.name)}, {p.duration_ns}, {literal(p.default)})"
                for p in [*kept, policy]
            )
            self._exec(f"INSERT INTO _flame_rps VALUES {values}")
            self._load_policies()

    # -- data -----------------------------------------------------------------------------------

    def append(
        self,
        database: str,
        rp: str,
        measurement: str,
        batch: pa.Table,
        tag_keys: Collection[str] | None = None,
    ) -> None:
        with self._lock:
            self._append_one(database, rp, measurement, batch, tag_keys)

    def append_many(
        self,
        items: Sequence[tuple[str, str, str, pa.Table]],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        with self._lock:
            for db, rp, _, _ in items:
                self._require_rp(db, rp)
            for db, rp, m, batch in items:
                self._append_one(db, rp, m, batch, None)
            for key, value in (meta or {}).items():
                self._exec(f"DELETE FROM _flame_meta WHERE key = {literal(key)}")
                self._exec(f"INSERT INTO _flame_meta VALUES ({literal(key)}, {literal(value)})")

    def _append_one(
        self, db: str, rp: str, m: str, batch: pa.Table, tag_keys: Collection[str] | None
    ) -> None:
        self._require_rp(db, rp)
        if batch.num_rows == 0:
            return
        cols = classify(batch, tag_keys)
        existing = self._catalog.get(db, rp, m)
        info = existing or TableInfo(db, rp, m)
        new, names = info.plan(cols)  # raises FieldTypeConflict before any change
        table = table_name(db, rp, m)
        if existing is None:  # every column at once, whatever the width of the first batch
            defs = ["time Int64"] + [
                f"{_q(phys)} {'Nullable(String)' if is_tag else CLICKHOUSE_TYPES[ftype]}"  # type: ignore[index]
                for _, phys, is_tag, ftype in new
            ]
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)}) "
                "ENGINE = MergeTree ORDER BY time"
            )
        for key, phys, is_tag, ftype in new:
            if existing is not None:
                sql_type = "Nullable(String)" if is_tag else CLICKHOUSE_TYPES[ftype]  # type: ignore[index]
                self._exec(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_q(phys)} {sql_type}")
            self._exec(
                "INSERT INTO _flame_columns VALUES ("
                + ", ".join(
                    literal(v)
                    for v in (db, rp, m, key, phys, is_tag, "" if ftype is None else str(ftype))
                )
                + ")"
            )
            self._catalog.add_column(db, rp, m, key, phys, is_tag, ftype)
        if new:
            self._publish([(db, rp, m)])
        time_idx = batch.schema.get_field_index("time")
        arrays = [batch.column(time_idx)] + [batch.column(c.index) for c in cols]
        physical = pa.Table.from_arrays(arrays, names=["time", *names])
        tkey: Key = (db, rp, m)
        tags = [(c.key, batch.column(c.index)) for c in cols if c.is_tag]
        overlap = self.series.overlaps(tkey, physical, tags, given_sids(batch))
        if overlap.maybe.any():
            stored_info = self._catalog.get(db, rp, m)
            assert stored_info is not None
            physical = self._merge_stored(stored_info, physical, overlap.maybe)
        # chdb's Python() table function finds `_flame_rows` among this frame's locals.
        _flame_rows = physical.rename_columns([f"c{i}" for i in range(physical.num_columns)])
        targets = ", ".join(_q(n) for n in physical.column_names)
        sources = ", ".join(f"c{i}" for i in range(physical.num_columns))
        self._session.query(
            f"INSERT INTO {table} ({targets}) SELECT {sources} FROM Python(_flame_rows)"
        )
        del _flame_rows
        self.series.applied(tkey, overlap)

    def _merge_stored(self, info: TableInfo, physical: pa.Table, maybe: np.ndarray) -> pa.Table:
        """`physical` with the rows flagged `maybe` merged, last write winning field by field,
        with each other and with the stored rows of the same series and time (which go)."""
        schema = physical_schema(info)
        cand = widen(physical.filter(pa.array(maybe)), schema)
        tag_cols = list(info.tags.values())
        times = sorted(set(cand.column("time").to_pylist()))
        where = f"time IN ({', '.join(str(int(t)) for t in times)})"
        stored = self._table(f"SELECT * FROM {info.table} WHERE {where}")
        if stored.num_rows:
            stored = widen(stored, schema)
            keys = ["time", *tag_cols]
            wanted = {
                tuple(r) for r in zip(*(cand.column(k).to_pylist() for k in keys), strict=True)
            }
            have = list(zip(*(stored.column(k).to_pylist() for k in keys), strict=True))
            hit = np.array([r in wanted for r in have], dtype=bool)
            stored = stored.filter(pa.array(hit))
            for row in {r for r, h in zip(have, hit, strict=True) if h}:
                conds = [f"time = {int(row[0])}"] + [
                    f"{_q(c)} IS NULL" if v is None else f"{_q(c)} = {literal(v)}"
                    for c, v in zip(tag_cols, row[1:], strict=True)
                ]
                self._exec(f"DELETE FROM {info.table} WHERE {' AND '.join(conds)}")
        rest = widen(physical.filter(pa.array(~maybe)), schema)
        parts = [stored, cand] if stored.num_rows else [cand]
        merged = merge_last(pa.concat_tables(parts), ["time", *tag_cols])
        return pa.concat_tables([rest, merged.select(schema.names).cast(schema)])

    def admit(
        self, database: str, rp: str, measurement: str, batch: pa.Table, limits: Limits
    ) -> Admission:
        """Check a batch's new series and tag values against `limits` (see `SeriesIndex`)."""
        tags = [(c.key, batch.column(c.index)) for c in classify(batch, None) if c.is_tag]
        return self.series.admit((database, rp, measurement), batch, tags, limits)

    def admit_many(
        self, database: str, rp: str, batches: Sequence[tuple[str, pa.Table]], limits: Limits
    ) -> list[Admission]:
        tagged = [
            (m, b, [(c.key, b.column(c.index)) for c in classify(b, None) if c.is_tag])
            for m, b in batches
        ]
        return self.series.admit_many(database, rp, tagged, limits)

    def _tables_of(self, db: str) -> list[Key]:
        return [k for k in list(self._published) if k[0] == db]

    def _series_rows(self, key: Key) -> pa.Table | None:
        info = self._catalog.get(*key)
        if info is None:
            return None
        tags = dict(info.tags)
        span = f"max(time) AS {_q(MAX_COLUMN)}, min(time) AS {_q(MIN_COLUMN)}"
        if tags:
            cols = ", ".join(f"{_q(p)} AS {_q(k)}" for k, p in tags.items())
            group = ", ".join(_q(p) for p in tags.values())
            sql = f"SELECT {cols}, {span} FROM {info.table} GROUP BY {group}"
        else:
            sql = f"SELECT {span} FROM {info.table} HAVING count() > 0"
        with self._lock:
            return self._table(sql)

    def query(self, sql: str, params: Sequence[object] = ()) -> pa.Table:
        with self._lock:
            return self._table(bind(sql, params))

    def delete(
        self,
        database: str,
        measurement: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> int:
        total = 0
        with self._lock:
            self.retention_policies(database)
            for k, info in list(self._catalog.tables.items()):
                if k[0] != database or (measurement is not None and k[2] != measurement):
                    continue
                where = _where(info, start_ns, end_ns, tags)
                if where is None:
                    continue
                n = self._rows(f"SELECT count() FROM {info.table} WHERE {where}")[0][0]
                if n:
                    self._exec(f"DELETE FROM {info.table} WHERE {where}")
                    total += int(n)
            if total:
                self.series.forget(database)
        return total

    def enforce_retention(self, now_ns: int) -> int:
        total = 0
        with self._lock:
            for db, policies in self._policies.items():
                for p in policies:
                    if p.duration_ns <= 0:
                        continue
                    for d, r, m in list(self._catalog.tables):
                        if d == db and r == p.name:
                            total += self._delete_rp(db, r, m, now_ns - p.duration_ns)
        return total

    def _delete_rp(self, db: str, rp: str, m: str, before_ns: int) -> int:
        info = self._catalog.get(db, rp, m)
        if info is None:
            return 0
        n = int(self._rows(f"SELECT count() FROM {info.table} WHERE time < {before_ns}")[0][0])
        if n:
            self._exec(f"DELETE FROM {info.table} WHERE time < {before_ns}")
        return n

    # -- meta and configuration data ----------------------------------------------------------

    def compact_idle(self) -> bool:
        return False  # ClickHouse merges parts in its own background threads

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            rows = self._rows(f"SELECT value FROM _flame_meta WHERE key = {literal(key)}")
        return None if not rows else str(rows[-1][0])

    def put_config(self, kind: str, name: str, version: str, body: str, time_ns: int) -> None:
        with self._lock:
            seq = int(self._rows("SELECT count() FROM _flame_config")[0][0])
            values = ", ".join(literal(v) for v in (kind, name, version, time_ns, body, seq))
            self._exec(f"INSERT INTO _flame_config VALUES ({values})")

    def config_at(self, kind: str, name: str, time_ns: int) -> ConfigVersion | None:
        with self._lock:
            rows = self._rows(
                "SELECT version, time_ns, body FROM _flame_config "
                f"WHERE kind = {literal(kind)} AND name = {literal(name)} AND time_ns <= {time_ns} "
                "ORDER BY time_ns DESC, seq DESC LIMIT 1"
            )
        if not rows:
            return None
        v, t, b = rows[0]
        return ConfigVersion(kind, name, str(v), int(t), str(b))

    def config_history(self, kind: str, name: str) -> list[ConfigVersion]:
        with self._lock:
            rows = self._rows(
                "SELECT version, time_ns, body FROM _flame_config "
                f"WHERE kind = {literal(kind)} AND name = {literal(name)} ORDER BY time_ns, seq"
            )
        return [ConfigVersion(kind, name, str(v), int(t), str(b)) for v, t, b in rows]

    def close(self) -> None:
        with self._lock:
            self._session.close()


def _where(
    info: TableInfo,
    start_ns: int | None,
    end_ns: int | None,
    tags: Mapping[str, str] | None,
) -> str | None:
    """The WHERE clause of a delete, or None when it cannot match (a tag the table lacks)."""
    where = ["1"]
    if start_ns is not None:
        where.append(f"time >= {start_ns}")
    if end_ns is not None:
        where.append(f"time < {end_ns}")
    for key, value in (tags or {}).items():
        col = info.tags.get(key)
        if col is None:
            if value != "":
                return None
            continue
        if value == "":
            where.append(f"({_q(col)} IS NULL OR {_q(col)} = '')")
        else:
            where.append(f"{_q(col)} = {literal(value)}")
    return " AND ".join(where)
