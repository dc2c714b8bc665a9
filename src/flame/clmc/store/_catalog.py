"""What both SQL stores share: classifying batch columns and the in-memory schema catalog.

The catalog maps each (db, rp, measurement) to its keys, field types and physical columns; the
stores persist the same facts in a `_flame_columns` table and rebuild this cache on open.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.errors import DatabaseNotFound, FieldTypeConflict, RetentionPolicyNotFound
from flame.clmc.store.base import (
    DEFAULT_RP,
    FIELD,
    KIND_KEY,
    TAG,
    FieldType,
    MeasurementSchema,
    RetentionPolicy,
    table_name,
)

__all__ = ["BatchColumn", "Catalog", "CatalogReads", "TableInfo", "classify", "field_type_of"]


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
        columns = {"tag:" + k: _q(c) for k, c in self.tags.items()}
        columns |= {"field:" + k: _q(c) for k, (c, _) in self.fields.items()}
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


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


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
    retention policies by database (`_policies`) and the table schemas (`_catalog`)."""

    _lock: threading.RLock
    _policies: dict[str, list[RetentionPolicy]]
    _catalog: Catalog

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
        with self._lock:
            names = {k[2] for k in self._catalog.tables if k[0] == database and rp in (None, k[1])}
        return sorted(names)

    def schema(self, database: str, rp: str, measurement: str) -> MeasurementSchema | None:
        with self._lock:
            info = self._catalog.get(database, rp, measurement)
            return None if info is None else info.schema()

    def _require_db(self, database: str) -> None:
        if database not in self._policies:
            raise DatabaseNotFound(database)

    def _require_rp(self, database: str, rp: str) -> None:
        if not any(p.name == rp for p in self.retention_policies(database)):
            raise RetentionPolicyNotFound(rp)
