"""fill() of empty GROUP BY time windows, as SQL over the grid of windows (`__t` per series)."""

from __future__ import annotations

from dataclasses import dataclass

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.conditions import Params
from flame.clmc.influxql.dialect import Dialect

__all__ = ["FillSpec", "fill_column"]


@dataclass(frozen=True, slots=True)
class FillSpec:
    fill: A.Fill
    gcols: list[str]  # the series columns
    descending: bool  # InfluxDB fills in output order
    dialect: Dialect
    params: Params


_NUMERIC = frozenset({"float", "integer", "unsigned", "number"})


def fill_column(col: str, is_count: bool, kind: str, spec: FillSpec) -> str:
    """The select-list item giving `col` (of `kind`) filled; `col` is NULL in empty windows."""
    fill, d = spec.fill, spec.dialect
    numeric = kind in _NUMERIC
    if fill.mode is A.FillMode.NULL:
        return f"COALESCE({col}, 0) AS {col}" if is_count else col  # count of nothing is 0
    if fill.mode is A.FillMode.NUMBER:
        if not numeric and not is_count:
            return col
        return f"COALESCE({col}, {spec.params.add(fill.value)}) AS {col}"
    part = f"PARTITION BY {', '.join(spec.gcols)}" if spec.gcols else ""
    order = "__t DESC" if spec.descending else "__t"
    before = "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"
    prev = d.last_non_null(col, part, order, before)
    if fill.mode is A.FillMode.PREVIOUS:
        return f"COALESCE({col}, {prev}) AS {col}"
    if not numeric:  # linear: numbers only, and only between two known windows
        return col
    after = "ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING"
    known_t = f"CASE WHEN {col} IS NOT NULL THEN __t END"
    prev_t = d.last_non_null(known_t, part, order, before)
    nxt = d.first_non_null(col, part, order, after)
    nxt_t = d.first_non_null(known_t, part, order, after)
    interp = f"({prev} + ({nxt} - {prev}) * CAST(__t - {prev_t} AS DOUBLE) / ({nxt_t} - {prev_t}))"
    if kind != "float":  # InfluxDB interpolates in floats and truncates to an integer
        interp = f"CAST(trunc({interp}) AS BIGINT)"
    return f"COALESCE({col}, {interp}) AS {col}"
