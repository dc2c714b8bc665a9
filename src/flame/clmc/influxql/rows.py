"""Result series held as Arrow columns until they are written out."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc.influxql.timefmt import format_times

__all__ = ["Rows", "Series"]

Series = dict[str, object]


@dataclass(frozen=True, slots=True)
class Rows:
    """One result series whose values are still Arrow columns (`__t`, `c0`, ...), so chunked
    answers turn only one chunk at a time into Python rows."""

    head: dict[str, object]  # name, tags, columns
    table: pa.Table
    epoch: str | None

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def values(self, start: int = 0, stop: int | None = None) -> list[list[object]]:
        part = self.table.slice(start, (stop if stop is not None else len(self)) - start)
        cols = [_pylist(part.column(i)) for i in range(1, part.num_columns)]
        times = format_times(part.column(0), self.epoch)
        return [list(r) for r in zip(times, *cols, strict=True)]

    def series(self, start: int = 0, stop: int | None = None) -> Series:
        return {**self.head, "values": self.values(start, stop)}


def _pylist(col: pa.ChunkedArray) -> list[object]:
    if pa.types.is_floating(col.type) and pc.any(pc.is_nan(col)).as_py():
        col = pc.if_else(pc.is_nan(col), None, col)  # JSON has no NaN; InfluxDB shows null
    return list(col.to_pylist())
