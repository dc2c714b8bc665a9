"""The default CLMC store on DuckDB (CLMC-3, 9, 10): see `base` for the layout.

Writes go through one connection under a lock (DuckDB allows one writer per process anyway);
queries run on per-thread cursors so they read a consistent snapshot while ingest appends.
The catalog (databases, retention policies, columns, meta, configuration versions) lives in
`_flame_*` tables inside the same database file, so one file is the whole state.

DuckDB's memory is capped (`memory_limit`, default 2 GB or `FLAME_CLMC_MEMORY_LIMIT`): a query
or an apply that needs more spills to disk where DuckDB can, and fails with an error (a
statement error, or a quarantined WAL record) where it cannot, instead of growing the process.

Last write wins (as InfluxDB): a row with the series and time of a stored row replaces it,
field by field (fields the new row lacks keep their stored values); so do two such rows in one
batch, the later one winning. Only rows the series index (`_series`) cannot rule out are
looked up: one not after its series' newest stored time, or twice in the batch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.limits import Limits
from flame.clmc.store._catalog import (
    BatchColumn,
    Catalog,
    CatalogReads,
    TableInfo,
    classify,
    given_sids,
    physical_schema,
    widen,
)
from flame.clmc.store._series import Admission, Key, SeriesIndex, merge_last
from flame.clmc.store.base import (
    DEFAULT_RP,
    FIELD_SQL_TYPES,
    ConfigVersion,
    FieldType,
    RetentionPolicy,
    table_name,
)
from flame.common.sqlident import quote_identifier

__all__ = ["DEFAULT_MEMORY_LIMIT", "DuckDBStore"]

DEFAULT_MEMORY_LIMIT = "2GB"
_REINDEX_AFTER_RETENTION_S = 3600.0  # series expired by retention stop counting within this

_BOOTSTRAP = [
    "CREATE TABLE IF NOT EXISTS _flame_databases (name VARCHAR PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS _flame_rps (db VARCHAR, name VARCHAR, duration_ns BIGINT,
       is_default BOOLEAN, PRIMARY KEY (db, name))""",
    """CREATE TABLE IF NOT EXISTS _flame_columns (db VARCHAR, rp VARCHAR, measurement VARCHAR,
       key VARCHAR, physical VARCHAR, is_tag BOOLEAN, ftype VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS _flame_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS _flame_config (kind VARCHAR, name VARCHAR, version VARCHAR,
       time_ns BIGINT, body VARCHAR)""",
]


# `_flame_columns`' columns: db, rp, measurement, key, physical, is_tag, ftype
_COLUMN_TYPES = [pa.string()] * 5 + [pa.bool_(), pa.string()]
CHECKPOINT_BYTES = 256 << 20  # DuckDB checkpoints inside the commit that makes its log this big
IDLE_CHECKPOINT_BYTES = 16 << 20  # ... and `compact_idle` from this size (DuckDB's default)


def default_threads() -> int:
    """DuckDB's worker threads: FLAME_CLMC_THREADS, else one less than the CPUs this process
    may use (at least one). The parse processes and the request threads need a core under
    ingest; DuckDB's pool on every core competed with them and burnt CPU in small parallel
    inserts (one thread instead of two on 2 CPUs: +8 % points/s, 6 of 6 rounds better)."""
    raw = os.environ.get("FLAME_CLMC_THREADS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"FLAME_CLMC_THREADS={raw!r}: give a whole number of threads, >= 1")
        return int(raw)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


class DuckDBStore(CatalogReads):
    """`Store` on one DuckDB database; `path=None` keeps everything in memory (tests)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        memory_limit: str | None = None,
        idle_checkpoint_bytes: int = IDLE_CHECKPOINT_BYTES,
        threads: int | None = None,
    ) -> None:
        self._con = duckdb.connect(":memory:" if path is None else str(path))
        # Checkpoint less often than DuckDB's 16MB default: under sustained ingest each
        # checkpoint rewrites blocks, and our own WAL already makes every write durable. Most
        # checkpoints happen when ingest is idle instead (`compact_idle`).
        self._con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_BYTES >> 20}MB'")
        self._duck_wal = None if path is None else Path(f"{path}.wal")
        self._idle_checkpoint_bytes = idle_checkpoint_bytes
        self.memory_limit = (
            memory_limit or os.environ.get("FLAME_CLMC_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT
        )
        self._con.execute("SET memory_limit = ?", [self.memory_limit])
        self.threads = threads if threads is not None else default_threads()
        self._con.execute(f"SET threads = {self.threads}")
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        # Queries' cursors come from this connection, never used to write, under their own
        # lock: a query thread never waits for an apply holding `_lock`.
        self._reader = self._con.cursor()
        self._reader_lock = threading.Lock()
        self._published = {}
        self._catalog = Catalog()
        for stmt in _BOOTSTRAP:
            self._con.execute(stmt)
        self._load_catalog()
        self._publish()
        # Databases and their policies, cached: ingest asks on every write.
        self._policies: dict[str, list[RetentionPolicy]] = {}
        self._load_policies()
        self.series = SeriesIndex(self._series_rows, self._tables_of)
        self._reindexed: dict[str, float] = {}

    def _load_policies(self) -> None:
        policies: dict[str, list[RetentionPolicy]] = {
            name: []
            for (name,) in self._con.execute("SELECT name FROM _flame_databases").fetchall()
        }
        for db, name, duration, default in self._con.execute(
            "SELECT db, name, duration_ns, is_default FROM _flame_rps ORDER BY name"
        ).fetchall():
            policies.setdefault(db, []).append(RetentionPolicy(name, int(duration), bool(default)))
        self._policies = policies

    def _load_catalog(self) -> None:
        rows = self._con.execute(
            "SELECT db, rp, measurement, key, physical, is_tag, ftype FROM _flame_columns"
        ).fetchall()
        for db, rp, m, key, phys, is_tag, ftype in rows:
            self._catalog.add_column(
                db, rp, m, key, phys, bool(is_tag), None if is_tag else FieldType(ftype)
            )

    # -- catalog --------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        with self._lock:
            if name in self._policies:
                return
            self._con.execute("BEGIN")
            try:
                self._con.execute("INSERT INTO _flame_databases VALUES (?)", [name])
                self._con.execute(
                    "INSERT INTO _flame_rps VALUES (?, ?, 0, TRUE)", [name, DEFAULT_RP]
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._load_policies()

    def drop_database(self, name: str) -> None:
        with self._lock:
            tables = [t for k, t in self._catalog.tables.items() if k[0] == name]
            self._con.execute("BEGIN")
            try:
                for info in tables:
                    self._con.execute(f"DROP TABLE IF EXISTS {info.table}")
                for meta in ("_flame_databases", "_flame_rps", "_flame_columns"):
                    col = "name" if meta == "_flame_databases" else "db"
                    self._con.execute(f"DELETE FROM {meta} WHERE {col} = ?", [name])
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            gone = [k for k in self._catalog.tables if k[0] == name]
            self._catalog.drop(name)
            self._publish(gone)
            self._load_policies()
            self.series.forget(name)

    def drop_measurement(self, database: str, measurement: str) -> None:
        """Drop the measurement from every retention policy, data and schema alike: its field
        types are forgotten (a field may come back with another type), as InfluxDB does."""
        with self._lock:
            self._require_db(database)
            tables = [
                t for k, t in self._catalog.tables.items() if k[::2] == (database, measurement)
            ]
            self._con.execute("BEGIN")
            try:
                for info in tables:
                    self._con.execute(f"DROP TABLE IF EXISTS {info.table}")
                self._con.execute(
                    "DELETE FROM _flame_columns WHERE db = ? AND measurement = ?",
                    [database, measurement],
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            for info in tables:
                self._catalog.drop(database, info.rp, measurement)
            self._publish([(database, info.rp, measurement) for info in tables])
            self.series.forget(database)

    def create_retention_policy(self, database: str, policy: RetentionPolicy) -> None:
        """Create or alter `policy`; making it the default clears the old default."""
        with self._lock:
            self._require_db(database)
            self._con.execute("BEGIN")
            try:
                if policy.default:
                    self._con.execute(
                        "UPDATE _flame_rps SET is_default = FALSE WHERE db = ?", [database]
                    )
                self._con.execute(
                    "INSERT OR REPLACE INTO _flame_rps VALUES (?, ?, ?, ?)",
                    [database, policy.name, policy.duration_ns, policy.default],
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
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
            self._append_all([(database, rp, measurement, batch, tag_keys)], None)

    def append_many(
        self,
        items: Sequence[tuple[str, str, str, pa.Table]],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._append_all([(d, r, m, b, None) for d, r, m, b in items], meta)

    def _append_all(
        self,
        items: Sequence[tuple[str, str, str, pa.Table, Collection[str] | None]],
        meta: Mapping[str, str] | None,
    ) -> None:
        checked: set[tuple[str, str]] = set()
        for db, rp, _, _, _ in items:
            if (db, rp) not in checked:
                self._require_rp(db, rp)
                checked.add((db, rp))
        added: list[tuple[str, str, str, str, str, bool, FieldType | None]] = []
        created: set[Key] = set()
        self._con.execute("BEGIN")
        try:
            for db, rp, m, batch, tag_keys in items:
                if batch.num_rows == 0:
                    continue
                added.extend(self._append_one(db, rp, m, batch, tag_keys, created))
            if added:  # the new columns recorded in one statement, however many tables are new
                rows = [(*a[:6], None if a[6] is None else str(a[6])) for a in added]
                _flame_cols = pa.table(
                    [pa.array([r[i] for r in rows], t) for i, t in enumerate(_COLUMN_TYPES)],
                    names=[f"c{i}" for i in range(len(_COLUMN_TYPES))],
                )
                self._con.execute("INSERT INTO _flame_columns SELECT * FROM _flame_cols")
                del _flame_cols
            for key, value in (meta or {}).items():
                self._con.execute("INSERT OR REPLACE INTO _flame_meta VALUES (?, ?)", [key, value])
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            # Columns added in the failed transaction are gone: forget them too.
            for db, rp, m, *_ in added:
                self._catalog.drop(db, rp, m)
            for db, rp, m in {(a[0], a[1], a[2]) for a in added}:
                self._reload_table(db, rp, m)
            raise
        if added:  # new tables and columns, committed: now queries may name them
            self._publish({(a[0], a[1], a[2]) for a in added})

    def _reload_table(self, db: str, rp: str, m: str) -> None:
        rows = self._con.execute(
            "SELECT key, physical, is_tag, ftype FROM _flame_columns "
            "WHERE db = ? AND rp = ? AND measurement = ?",
            [db, rp, m],
        ).fetchall()
        for key, phys, is_tag, ftype in rows:
            self._catalog.add_column(
                db, rp, m, key, phys, bool(is_tag), None if is_tag else FieldType(ftype)
            )

    def _append_one(
        self,
        db: str,
        rp: str,
        m: str,
        batch: pa.Table,
        tag_keys: Collection[str] | None,
        created: set[Key],
    ) -> list[tuple[str, str, str, str, str, bool, FieldType | None]]:
        """Append one table's rows; returns the columns it added (the caller records them)."""
        cols = classify(batch, tag_keys)
        info = self._catalog.get(db, rp, m) or TableInfo(db, rp, m)
        new, names = info.plan(cols)
        table = table_name(db, rp, m)
        tkey: Key = (db, rp, m)
        exists = self._catalog.get(db, rp, m) is not None or tkey in created
        added = []
        if not exists:
            created.add(tkey)
            # every column at once: one statement, whatever the width of the first batch
            defs = ["time BIGINT NOT NULL"] + [
                f"{quote_identifier(phys)} {'VARCHAR' if is_tag else FIELD_SQL_TYPES[ftype]}"  # type: ignore[index]
                for _, phys, is_tag, ftype in new
            ]
            self._con.execute(f"CREATE TABLE {table} ({', '.join(defs)})")
        for key, phys, is_tag, ftype in new:
            if exists:
                sql_type = "VARCHAR" if is_tag else FIELD_SQL_TYPES[ftype]  # type: ignore[index]
                self._con.execute(
                    f"ALTER TABLE {table} ADD COLUMN {quote_identifier(phys)} {sql_type}"
                )
            self._catalog.add_column(db, rp, m, key, phys, is_tag, ftype)
            added.append((db, rp, m, key, phys, is_tag, ftype))
        time_idx = batch.schema.get_field_index("time")
        arrays = [batch.column(time_idx)] + [batch.column(c.index) for c in cols]
        physical = pa.Table.from_arrays(arrays, names=["time", *names])
        overlap = self.series.overlaps(tkey, physical, _tag_arrays(batch, cols), given_sids(batch))
        if overlap.maybe.any():
            physical = self._merge_stored(
                self._catalog.get(db, rp, m), table, physical, overlap.maybe
            )
        # DuckDB finds `_flame_batch` among this frame's locals (a replacement scan): cheaper
        # than registering a view per table, which a batch of 200 measurements would feel
        _flame_batch = physical
        self._con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _flame_batch")
        del _flame_batch
        self.series.applied(tkey, overlap)
        return added

    def _merge_stored(
        self, info: TableInfo | None, table: str, physical: pa.Table, maybe: np.ndarray
    ) -> pa.Table:
        """`physical` with the rows flagged `maybe` merged, last write winning field by field,
        with each other and with the stored rows of the same series and time (which go)."""
        assert info is not None
        schema = physical_schema(info)
        cand = widen(physical.filter(pa.array(maybe)), schema)
        tag_cols = [phys for phys in info.tags.values()]
        cond = " AND ".join(
            ["t.time = c.time"]
            + [
                f"t.{quote_identifier(p)} IS NOT DISTINCT FROM c.{quote_identifier(p)}"
                for p in tag_cols
            ]
        )
        times = cand.column("time")
        lo, hi = pa.compute.min(times).as_py(), pa.compute.max(times).as_py()
        self._con.register("_flame_cand", cand.select(["time", *tag_cols]))
        try:
            where = f"t.time BETWEEN {int(lo)} AND {int(hi)}"
            stored = self._con.sql(
                f"SELECT t.* FROM {table} t WHERE {where} AND EXISTS "
                f"(SELECT 1 FROM _flame_cand c WHERE {cond})"
            ).to_arrow_table()
            if stored.num_rows:
                self._con.execute(
                    f"DELETE FROM {table} t USING _flame_cand c WHERE {where} AND {cond}"
                )
        finally:
            self._con.unregister("_flame_cand")
        rest = widen(physical.filter(pa.array(~maybe)), schema)
        parts = [widen(stored, schema), cand] if stored.num_rows else [cand]
        merged = merge_last(pa.concat_tables(parts), ["time", *tag_cols])
        return pa.concat_tables([rest, merged.select(schema.names).cast(schema)])

    def admit(
        self, database: str, rp: str, measurement: str, batch: pa.Table, limits: Limits
    ) -> Admission:
        """Check a batch's new series and tag values against `limits` (see `SeriesIndex`)."""
        cols = classify(batch, None)
        return self.series.admit(
            (database, rp, measurement), batch, _tag_arrays(batch, cols), limits
        )

    def admit_many(
        self, database: str, rp: str, batches: Sequence[tuple[str, pa.Table]], limits: Limits
    ) -> list[Admission]:
        return self.series.admit_many(
            database,
            rp,
            [(m, b, _tag_arrays(b, classify(b, None))) for m, b in batches],
            limits,
        )

    def _tables_of(self, db: str) -> list[Key]:
        return [k for k in list(self._published) if k[0] == db]

    def _series_rows(self, key: Key) -> pa.Table | None:
        """The table's distinct tag sets (columns named by tag key) with `max(time)` and
        `min(time)`."""
        schema = self._published.get(key)
        if schema is None:
            return None
        if schema.tag_keys:
            cols = ", ".join(
                f"{schema.tag_column(k)} AS {quote_identifier(k)}" for k in schema.tag_keys
            )
            sql = (
                f'SELECT {cols}, max(time) AS "\x1fmax", min(time) AS "\x1fmin" '
                f"FROM {schema.table} GROUP BY ALL"
            )
        else:
            sql = (
                f'SELECT max(time) AS "\x1fmax", min(time) AS "\x1fmin" FROM {schema.table} '
                "HAVING count(*) > 0"
            )
        try:
            return self.query(sql)
        except duckdb.CatalogException:  # dropped meanwhile
            return None

    def query(self, sql: str, params: Sequence[object] = ()) -> pa.Table:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            with self._reader_lock:
                cur = self._reader.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur.sql(sql, params=list(params) if params else None).to_arrow_table()

    def delete(
        self,
        database: str,
        measurement: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> int:
        """Delete rows with start_ns <= time < end_ns whose tags equal `tags` (CLMC-10)."""
        total = 0
        with self._lock:
            self._require_db(database)
            targets = [
                info
                for k, info in self._catalog.tables.items()
                if k[0] == database and (measurement is None or k[2] == measurement)
            ]
            for info in targets:
                where: list[str] = []
                params: list[object] = []
                if start_ns is not None:
                    where.append("time >= ?")
                    params.append(start_ns)
                if end_ns is not None:
                    where.append("time < ?")
                    params.append(end_ns)
                missing = False
                for key, value in (tags or {}).items():
                    col = info.tags.get(key)
                    if col is None:
                        # InfluxDB treats an absent tag as the empty string.
                        missing = value != ""
                        if missing:
                            break
                        continue
                    if value == "":
                        where.append(
                            f"({quote_identifier(col)} IS NULL OR {quote_identifier(col)} = '')"
                        )
                    else:
                        where.append(f"{quote_identifier(col)} = ?")
                        params.append(value)
                if missing:
                    continue
                sql = f"DELETE FROM {info.table}" + (
                    " WHERE " + " AND ".join(where) if where else ""
                )
                row = self._con.execute(sql, params).fetchone()
                total += int(row[0]) if row else 0
            if total:
                self.series.forget(database)
        return total

    def enforce_retention(self, now_ns: int) -> int:
        """Delete rows older than each finite retention policy's duration; returns the count."""
        total = 0
        with self._lock:
            rps = self._con.execute(
                "SELECT db, name, duration_ns FROM _flame_rps WHERE duration_ns > 0"
            ).fetchall()
            for db, rp, duration in rps:
                for (d, r, _), info in list(self._catalog.tables.items()):
                    if d == db and r == rp:
                        row = self._con.execute(
                            f"DELETE FROM {info.table} WHERE time < ?", [now_ns - int(duration)]
                        ).fetchone()
                        gone = int(row[0]) if row else 0
                        total += gone
                        if gone and time.monotonic() - self._reindexed.get(db, 0) > (
                            _REINDEX_AFTER_RETENTION_S
                        ):
                            # series whose last points expired stop counting towards limits
                            self._reindexed[db] = time.monotonic()
                            self.series.forget(db)
        return total

    # -- meta and configuration data ----------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._con.execute("SELECT value FROM _flame_meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def put_config(self, kind: str, name: str, version: str, body: str, time_ns: int) -> None:
        """Record that `version` of `kind`/`name` is in force from `time_ns` on (CLMC-3)."""
        with self._lock:
            self._con.execute(
                "INSERT INTO _flame_config VALUES (?, ?, ?, ?, ?)",
                [kind, name, version, time_ns, body],
            )

    def config_at(self, kind: str, name: str, time_ns: int) -> ConfigVersion | None:
        with self._lock:
            row = self._con.execute(
                "SELECT version, time_ns, body FROM _flame_config "
                "WHERE kind = ? AND name = ? AND time_ns <= ? "
                "ORDER BY time_ns DESC, rowid DESC LIMIT 1",
                [kind, name, time_ns],
            ).fetchone()
        return None if row is None else ConfigVersion(kind, name, row[0], int(row[1]), row[2])

    def config_history(self, kind: str, name: str) -> list[ConfigVersion]:
        with self._lock:
            rows = self._con.execute(
                "SELECT version, time_ns, body FROM _flame_config WHERE kind = ? AND name = ? "
                "ORDER BY time_ns, rowid",
                [kind, name],
            ).fetchall()
        return [ConfigVersion(kind, name, v, int(t), b) for v, t, b in rows]

    def compact_idle(self) -> bool:
        """Checkpoint once DuckDB's log holds `idle_checkpoint_bytes`: a checkpoint blocks
        every commit while it runs (about 0.4 s per million rows here), so one between bursts
        of writes keeps it out of the next burst's applies (DuckDB would run it inside the
        commit that crosses `CHECKPOINT_BYTES`, with the writes waiting behind it)."""
        try:
            size = self._duck_wal.stat().st_size if self._duck_wal is not None else 0
        except FileNotFoundError:
            return False
        if size < self._idle_checkpoint_bytes:
            return False
        with self._lock:
            self._con.execute("CHECKPOINT")
        return True

    def close(self) -> None:
        with self._lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
            self._con.close()


def _tag_arrays(batch: pa.Table, cols: Sequence[BatchColumn]) -> list[tuple[str, pa.Array]]:
    return [(c.key, batch.column(c.index)) for c in cols if c.is_tag]
