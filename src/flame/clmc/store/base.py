"""The store interface every CLMC store implements, and its physical layout.

Layout (the contract between ingest, which writes, and InfluxQL, which compiles to SQL):
- one table per (database, retention policy, measurement), named by `table_name`;
- column `time` is BIGINT nanoseconds since the epoch (UTC);
- each tag key is a nullable VARCHAR column, each field key a nullable typed column
  (`FIELD_SQL_TYPES`); the physical column of a key is given by `MeasurementSchema.columns`
  (a key that is both a tag and a field gets a distinct column for the field, as InfluxDB
  reports `key_1`);
- a table is created with every column of its first batch in one statement; later new keys add
  columns (ALTER TABLE ADD COLUMN), at most `Limits.max_fields_per_measurement` fields and
  `max_tag_keys_per_measurement` tags in all, so no point's width can make the store's cost
  explode; a field's type is fixed by its first write (a conflicting write is a field-type
  conflict, answered as InfluxDB does) until DROP MEASUREMENT forgets it;
- one row per series and time: a write of a stored point replaces it, field by field, as
  InfluxDB does (last write wins; retries are idempotent).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from flame.common.sqlident import quote_identifier

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

    from flame.clmc.limits import Limits
    from flame.clmc.store._series import Admission


class FieldType(enum.StrEnum):
    FLOAT = "float"
    INTEGER = "integer"
    UNSIGNED = "unsigned"
    STRING = "string"
    BOOLEAN = "boolean"


FIELD_SQL_TYPES: Mapping[FieldType, str] = {
    FieldType.FLOAT: "DOUBLE",
    FieldType.INTEGER: "BIGINT",
    FieldType.UNSIGNED: "UBIGINT",
    FieldType.STRING: "VARCHAR",
    FieldType.BOOLEAN: "BOOLEAN",
}

DEFAULT_RP = "autogen"

# Arrow field metadata marking a batch column as a tag or a field (see `Store.append`).
KIND_KEY = b"flame.kind"
TAG = b"tag"
FIELD = b"field"
# A batch column ingest may add: each row's series id (`_series.series_ids`), computed when the
# write was admitted, so applying it need not hash its tags again. Never stored.
SID = b"sid"
SID_COLUMN = "\x1fsid"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    name: str
    duration_ns: int  # 0 = keep forever
    default: bool = False


@dataclass(frozen=True, slots=True)
class MeasurementSchema:
    database: str
    rp: str
    measurement: str
    table: str  # quoted SQL identifier, ready to paste into SQL
    tag_keys: tuple[str, ...]
    field_types: Mapping[str, FieldType]
    columns: Mapping[str, str] = field(default_factory=dict)  # key -> quoted column identifier

    def tag_column(self, key: str) -> str:
        return self.columns.get("tag:" + key, quote_identifier(key))

    def field_column(self, key: str) -> str:
        return self.columns.get("field:" + key, quote_identifier(key))


def table_name(database: str, rp: str, measurement: str) -> str:
    """The quoted table of one measurement; '\x1f' cannot occur in InfluxDB names."""
    return quote_identifier(f"{database}\x1f{rp}\x1f{measurement}")


class Store(Protocol):
    """What ingest, query, retention and the alert engine need from a store."""

    # catalog
    def create_database(self, name: str) -> None: ...
    def drop_database(self, name: str) -> None: ...
    def databases(self) -> list[str]: ...
    def retention_policies(self, database: str) -> list[RetentionPolicy]: ...
    def create_retention_policy(self, database: str, policy: RetentionPolicy) -> None: ...
    def measurements(self, database: str, rp: str | None = None) -> list[str]: ...
    def schema(self, database: str, rp: str, measurement: str) -> MeasurementSchema | None: ...

    # data
    def append(
        self,
        database: str,
        rp: str,
        measurement: str,
        batch: pa.Table,
        tag_keys: Collection[str] | None = None,
    ) -> None:
        """Append rows whose columns are `time` (int64 ns), tag keys and field keys.

        Which columns are tags: `tag_keys` if given, else the columns whose Arrow field metadata
        has `KIND_KEY: TAG` (fields `KIND_KEY: FIELD`), else every string column. A new field
        whose type differs from the stored one raises `FieldTypeConflict`; an unknown database
        `DatabaseNotFound`, an unknown retention policy `RetentionPolicyNotFound`.
        """
        ...

    def append_many(
        self,
        items: Sequence[tuple[str, str, str, pa.Table]],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Append several batches and set `meta` keys in ONE transaction (all or nothing).

        Ingest records its write-ahead-log position in `meta`, so replay after a crash is exact.
        """
        ...

    def get_meta(self, key: str) -> str | None: ...

    def compact_idle(self) -> bool:
        """Between bursts of writes: do the deferred housekeeping of recent appends now (DuckDB:
        fold its log into the database file) rather than inside a later append. True if it
        did."""
        ...

    def admit(
        self, database: str, rp: str, measurement: str, batch: pa.Table, limits: Limits
    ) -> Admission:
        """Check a batch's new series and tag values against `limits` and reserve those
        admitted (ingest calls it before logging a write)."""
        ...

    def admit_many(
        self, database: str, rp: str, batches: Sequence[tuple[str, pa.Table]], limits: Limits
    ) -> list[Admission]:
        """`admit` for several measurements' batches (one write's), in order, in one pass."""
        ...

    def drop_measurement(self, database: str, measurement: str) -> None:
        """Drop a measurement from every retention policy: rows and field types."""
        ...

    def query(self, sql: str, params: Sequence[object] = ()) -> pa.Table: ...

    def delete(
        self,
        database: str,
        measurement: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> int:
        """Delete matching rows (CLMC-10); returns how many went."""
        ...

    def enforce_retention(self, now_ns: int) -> int: ...

    # configuration data (CLMC-3): versions of service templates, topologies, ... over time
    def put_config(self, kind: str, name: str, version: str, body: str, time_ns: int) -> None: ...
    def config_at(self, kind: str, name: str, time_ns: int) -> ConfigVersion | None: ...
    def config_history(self, kind: str, name: str) -> list[ConfigVersion]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One version of a configuration item, in force from `time_ns` until the next one."""

    kind: str
    name: str
    version: str
    time_ns: int
    body: str
