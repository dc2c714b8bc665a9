"""What both SQL stores share: classifying batch columns and the in-memory schema catalog.

The catalog maps each (db, rp, measurement) to its keys, field types and physical columns; the
stores persist the same facts in a `_flame_columns` table and rebuild this cache on open.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc.errors import DatabaseNotFound, FieldTypeConflict, RetentionPolicyNotFound
from flame.clmc.store.base import (
    DEFAULT_RP,
    FIELD,
    KIND_KEY,
    SID,
    SID_COLUMN,
    TAG,
    FieldType,
    MeasurementSchema,
    RetentionPolicy,
    table_name,
)
from flame.common.sqlident import quote_identifier

__all__ = [
    "BatchColumn",
    "Catalog",
    "CatalogReads",
    "TableInfo",
    "classify",
    "field_type_of",
    "given_sids",
    "physical_schema",
    "widen",
]


def field_type_of(dtype: pa.DataType) -> FieldType:
    if pa.types.is_floating(dtype):
        return FieldType.FLOAT
    if pa.types.is_unsigned_integer(dtype):
        return FieldType.UNSIGNED
    if pa.types.is_integer(dtype):
        return FieldType.INTEGER
    if pa.types.is_boolean(dtype):
        return FieldType.BOOLEAN
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return FieldType.STRING
    raise TypeError(f"unsupported Arrow type {dtype} for a field column")


@dataclass(frozen=True, slots=True)
class BatchColumn:
    index: int  # position in the batch
    key: str
    is_tag: bool
    ftype: FieldType | None  # None for tags


def classify(batch: pa.Table, tag_keys: Collection[str] | None) -> list[BatchColumn]:
    """Tag/field role of each non-time column (see `Store.append` for the rules)."""
    out: list[BatchColumn] = []
    for i, f in enumerate(batch.schema):
        if f.name == "time":
            continue
        kind = (f.metadata or {}).get(KIND_KEY)
        if kind == SID:
            continue
        if tag_keys is not None:
            is_tag = f.name in tag_keys and kind != FIELD
        elif kind is not None:
            is_tag = kind == TAG
        else:
            is_tag = pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        out.append(BatchColumn(i, f.name, is_tag, None if is_tag else field_type_of(f.type)))
    return out


@dataclass
class TableInfo:
    database: str
    rp: str
    measurement: str
    tags: dict[str, str] = field(default_factory=dict)  # key -> physical column (unquoted)
    fields: dict[str, tuple[str, FieldType]] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return table_name(self.database, self.rp, self.measurement)

    def used_columns(self) -> set[str]:
        return {"time", *self.tags.values(), *(c for c, _ in self.fields.values())}

    def physical_for(self, key: str, is_tag: bool) -> str:
        """A fresh column name: the key itself unless taken (a tag and a field share a key)."""
        used = self.used_columns()
        if key not in used:
            return key
        return key + ("\x1ftag" if is_tag else "\x1ffield")

    def schema(self) -> MeasurementSchema:
        columns = {"tag:" + k: quote_identifier(c) for k, c in self.tags.items()}
        columns |= {"field:" + k: quote_identifier(c) for k, (c, _) in self.fields.items()}
        return MeasurementSchema(
            database=self.database,
            rp=self.rp,
            measurement=self.measurement,
            table=self.table,
            tag_keys=tuple(sorted(self.tags)),
            field_types={k: t for k, (_, t) in sorted(self.fields.items())},
            columns=columns,
        )

    def plan(
        self, cols: Iterable[BatchColumn]
    ) -> tuple[list[tuple[str, str, bool, FieldType | None]], list[str]]:
        """New columns to add (key, physical, is_tag, type) and each batch column's physical name.

        Raises FieldTypeConflict before anything changes.
        """
        new: list[tuple[str, str, bool, FieldType | None]] = []
        names: list[str] = []
        pending = TableInfo(self.database, self.rp, self.measurement, dict(self.tags))
        pending.fields = dict(self.fields)
        for c in cols:
            if c.is_tag:
                phys = pending.tags.get(c.key)
                if phys is None:
                    phys = pending.physical_for(c.key, True)
                    pending.tags[c.key] = phys
                    new.append((c.key, phys, True, None))
            else:
                assert c.ftype is not None
                known = pending.fields.get(c.key)
                if known is None:
                    phys = pending.physical_for(c.key, False)
                    pending.fields[c.key] = (phys, c.ftype)
                    new.append((c.key, phys, False, c.ftype))
                else:
                    phys, existing = known
                    if existing != c.ftype:
                        raise FieldTypeConflict(self.measurement, c.key, c.ftype, existing)
            names.append(phys)
        return new, names


_ARROW = {
    FieldType.FLOAT: pa.float64(),
    FieldType.INTEGER: pa.int64(),
    FieldType.UNSIGNED: pa.uint64(),
    FieldType.STRING: pa.string(),
    FieldType.BOOLEAN: pa.bool_(),
}


def given_sids(batch: pa.Table) -> np.ndarray | None:
    """The series ids ingest attached to a batch (`SID_COLUMN`), if complete."""
    i = batch.schema.get_field_index(SID_COLUMN)
    if i < 0:
        return None
    col = batch.column(i)
    if col.null_count:  # merged with a batch without them
        return None
    return np.asarray(col.to_numpy())


def physical_schema(info: TableInfo) -> pa.Schema:
    """The Arrow schema of a table's rows: time, tags, fields, by physical column name."""
    return pa.schema(
        [pa.field("time", pa.int64())]
        + [pa.field(p, pa.string()) for p in info.tags.values()]
        + [pa.field(p, _ARROW[t]) for p, t in info.fields.values()]
    )


def widen(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with every column of `schema`, in its order and types (absent ones null)."""
    n = table.num_rows
    have = set(table.column_names)
    arrays = [
        pc.cast(table.column(f.name), f.type) if f.name in have else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


class Catalog:
    """Schemas by (db, rp, measurement); the store keeps it in step with its own tables."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str, str], TableInfo] = {}

    def get(self, database: str, rp: str, measurement: str) -> TableInfo | None:
        return self.tables.get((database, rp, measurement))

    def add_column(
        self,
        database: str,
        rp: str,
        measurement: str,
        key: str,
        physical: str,
        is_tag: bool,
        ftype: FieldType | None,
    ) -> None:
        info = self.tables.setdefault(
            (database, rp, measurement), TableInfo(database, rp, measurement)
        )
        if is_tag:
            info.tags[key] = physical
        else:
            assert ftype is not None
            info.fields[key] = (physical, ftype)

    def drop(self, database: str, rp: str | None = None, measurement: str | None = None) -> None:
        for k in list(self.tables):
            if (
                k[0] == database
                and (rp is None or k[1] == rp)
                and (measurement is None or k[2] == measurement)
            ):
                del self.tables[k]


class CatalogReads:
    """The catalog reads both SQL stores answer alike, from their in-memory caches: the
    retention policies by database (`_policies`) and the table schemas.

    Readers never take the store's lock (an apply holds it for as long as it runs, and a
    query must not wait for it): they read `_published`, the schemas as last committed,
    which the store replaces (`_publish`) after each change is committed. So a query never
    names a column its snapshot of the database does not have yet."""

    _lock: threading.RLock
    _policies: dict[str, list[RetentionPolicy]]
    _catalog: Catalog
    _published: dict[tuple[str, str, str], MeasurementSchema]

    def _publish(self, keys: Iterable[tuple[str, str, str]] | None = None) -> None:
        """Make the catalog's current state of `keys` (all if None) what readers see; call
        with the store's lock held, once the change is committed."""
        published = dict(getattr(self, "_published", {}))
        if keys is None:
            published = {}
            keys = list(self._catalog.tables)
        for key in keys:
            info = self._catalog.get(*key)
            if info is None:
                published.pop(key, None)
            else:
                published[key] = info.schema()
        self._published = published  # one reference swap: readers see old or new, whole

    def databases(self) -> list[str]:
        return sorted(self._policies)

    def retention_policies(self, database: str) -> list[RetentionPolicy]:
        policies = self._policies.get(database)
        if policies is None:
            raise DatabaseNotFound(database)
        return list(policies)

    def default_rp(self, database: str) -> str:
        for rp in self.retention_policies(database):
            if rp.default:
                return rp.name
        return DEFAULT_RP

    def measurements(self, database: str, rp: str | None = None) -> list[str]:
        published = self._published
        return sorted({k[2] for k in published if k[0] == database and rp in (None, k[1])})

    def schema(self, database: str, rp: str, measurement: str) -> MeasurementSchema | None:
        return self._published.get((database, rp, measurement))

    def _require_db(self, database: str) -> None:
        if database not in self._policies:
            raise DatabaseNotFound(database)

    def _require_rp(self, database: str, rp: str) -> None:
        if not any(p.name == rp for p in self.retention_policies(database)):
            raise RetentionPolicyNotFound(rp)
