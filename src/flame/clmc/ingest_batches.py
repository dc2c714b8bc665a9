"""The column work of the write check (`flame.clmc.ingest`): field kinds and types of an Arrow
batch, what ingest knows of a measurement, and the batch less the rows it refuses. Whole-batch
(columnar) operations only: nothing here runs per point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.lineproto import Dropped, MeasurementBatch
from flame.clmc.store._series import Admission
from flame.clmc.store.base import FIELD, KIND_KEY, SID, SID_COLUMN, FieldType

__all__: list[str] = []  # private to flame.clmc.ingest


def _kind(f: pa.Field) -> bytes | None:
    return (f.metadata or {}).get(KIND_KEY)


@dataclass
class _Known:
    """What ingest knows of one measurement: stored and reserved field types and tag keys."""

    types: dict[str, FieldType]
    tags: set[str]

    def covers(self, schema: pa.Schema, field_idx: list[int], tag_idx: list[int]) -> bool:
        """Every field of `schema` known with its type, and every tag key known."""
        fields = (schema.field(i) for i in field_idx)
        return all(self.types.get(f.name) is _TYPES[f.type] for f in fields) and all(
            schema.field(i).name in self.tags for i in tag_idx
        )


def _agrees(known: _Known, schema: pa.Schema) -> bool:
    """No field of `schema` has another type than the one `known` has for it."""
    fields = (f for f in schema if _kind(f) == FIELD)
    return all(known.types.get(f.name, _TYPES[f.type]) is _TYPES[f.type] for f in fields)


def _refuse(dropped: list[Dropped], lines: np.ndarray, message: str) -> None:
    dropped.extend(Dropped(int(line), message) for line in lines)


def _admitted(
    batch: MeasurementBatch, admission: Admission, dropped: list[Dropped]
) -> MeasurementBatch:
    """The batch less the rows `Store.admit_many` refused, with its series ids (which spare
    the applier hashing the tags again)."""
    if admission.sids is not None:
        table = batch.table.append_column(_SID_FIELD, pa.array(admission.sids, pa.uint64()))
        batch = MeasurementBatch(batch.measurement, table, batch.lines)
    if admission.refused:
        for mask, reason in admission.refused:
            _refuse(dropped, batch.lines[mask], reason)
        batch = _without(batch, ~admission.keep, set())
    return batch


def _present(table: pa.Table, idx: list[int]) -> np.ndarray:
    """Per row, how many of the columns `idx` hold a value."""
    count = np.zeros(table.num_rows, dtype=np.int64)
    for i in idx:
        count += table.column(i).is_valid().to_numpy(zero_copy_only=False)
    return count


def _without(batch: MeasurementBatch, drop: np.ndarray, columns: set[int]) -> MeasurementBatch:
    table = batch.table
    if columns:
        table = table.select([i for i in range(table.num_columns) if i not in columns])
    lines = batch.lines
    if drop.any():
        table = table.filter(pa.array(~drop))
        lines = lines[~drop]
    return MeasurementBatch(batch.measurement, table, lines)


_SID_FIELD = pa.field(SID_COLUMN, pa.uint64(), metadata={KIND_KEY: SID})

_TYPES = {
    pa.float64(): FieldType.FLOAT,
    pa.int64(): FieldType.INTEGER,
    pa.uint64(): FieldType.UNSIGNED,
    pa.string(): FieldType.STRING,
    pa.bool_(): FieldType.BOOLEAN,
}


def _field_type(dtype: pa.DataType) -> FieldType:
    return _TYPES[dtype]
