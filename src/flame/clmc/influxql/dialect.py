"""The SQL that differs between stores. The compiler only builds SQL through a `Dialect`, so a
ClickHouse store can reuse it by supplying its own instance (argMax, match, LIMIT BY, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DUCKDB", "Dialect"]


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str = "duckdb"

    def regex_match(self, value: str, pattern: str) -> str:
        return f"regexp_matches({value}, {pattern})"

    def bucket(self, time: str, every: int, offset: int) -> str:
        """Start of the GROUP BY time(every, offset) window holding `time` (floor, also < 0)."""
        return f"({time} - ((({time} - {offset}) % {every}) + {every}) % {every})"

    def first(self, value: str, time: str) -> str:
        # earliest point; on equal times the greater value, like InfluxDB's reducer
        return f"arg_max({value}, row(-{time}, {value})) FILTER (WHERE {value} IS NOT NULL)"

    def last(self, value: str, time: str) -> str:
        return f"arg_max({value}, row({time}, {value})) FILTER (WHERE {value} IS NOT NULL)"

    def time_of_min(self, value: str, time: str) -> str:
        return f"arg_min({time}, row({value}, {time})) FILTER (WHERE {value} IS NOT NULL)"

    def time_of_max(self, value: str, time: str) -> str:
        return f"arg_max({time}, row({value}, -{time})) FILTER (WHERE {value} IS NOT NULL)"

    def nearest_rank(self, value: str, time: str, pct: str) -> tuple[str, str]:
        """(value, time) of InfluxDB's nearest-rank percentile: sorted[floor(n*p/100+0.5)-1]."""
        idx = f"CAST(floor(count({value}) * {pct} / 100.0 + 0.5) AS BIGINT)"
        items = f"list_sort(list(struct_pack(v := {value}, t := {time})) FILTER (WHERE {value} IS NOT NULL))"
        pick = f"(CASE WHEN {idx} >= 1 THEN {items}[{idx}] END)"
        return f"struct_extract({pick}, 'v')", f"struct_extract({pick}, 't')"

    def selected_point(
        self, name: str, value: str, time: str, extra: Sequence[str], pct: str | None
    ) -> str:
        """Struct (v, t, x0, x1, ...) of the point a selector picks, with other columns of it."""
        parts = [f"v := {value}", f"t := {time}", *(f"x{i} := {e}" for i, e in enumerate(extra))]
        point = f"struct_pack({', '.join(parts)})"
        keep = f"FILTER (WHERE {value} IS NOT NULL)"
        if name == "percentile" and pct is not None:
            idx = f"CAST(floor(count({value}) * {pct} / 100.0 + 0.5) AS BIGINT)"
            return f"(CASE WHEN {idx} >= 1 THEN list_sort(list({point}) {keep})[{idx}] END)"
        order = {
            "max": f"arg_max({point}, row({value}, -{time}))",
            "min": f"arg_min({point}, row({value}, {time}))",
            "first": f"arg_max({point}, row(-{time}, {value}))",
            "last": f"arg_max({point}, row({time}, {value}))",
        }[name]
        return f"{order} {keep}"

    def top_points(
        self, fields: dict[str, str], value: str, time: str, n: int, largest: bool
    ) -> str:
        """Rows (one column per `fields` key) of the n points with the greatest (least) value
        per group; on equal values the earlier point, as InfluxDB. For the select list."""
        point = "struct_pack(" + ", ".join(f"{k} := {v}" for k, v in fields.items()) + ")"
        pick = (f"arg_max({point}, row({value}, -{time}), {int(n)})" if largest
                else f"arg_min({point}, row({value}, {time}), {int(n)})")  # fmt: skip
        return f"unnest({pick}, recursive := true)"

    def field_of(self, struct: str, name: str) -> str:
        return f"struct_extract({struct}, '{name}')"

    def mode(self, value: str, time: str) -> str:
        """Most frequent value; on equal counts the one seen first, as InfluxDB."""
        seen = f"list({value} ORDER BY {time})"
        rank = f"struct_pack(c := -CAST(e.value AS BIGINT), p := list_position({seen}, e.key), k := e.key)"
        return f"list_sort(list_transform(map_entries(histogram({value})), lambda e: {rank}))[1].k"

    def median(self, value: str) -> str:
        return f"median(CAST({value} AS DOUBLE))"

    def stddev(self, value: str) -> str:
        return f"stddev_samp(CAST({value} AS DOUBLE))"

    def mean(self, value: str) -> str:
        return f"avg(CAST({value} AS DOUBLE))"

    def xor(self, a: str, b: str) -> str:
        return f"xor({a}, {b})"

    def int_div(self, a: str, b: str) -> str:
        return f"({a} // {b})"

    def float_div(self, a: str, b: str) -> str:
        # InfluxDB: x / 0 is 0
        return f"(CASE WHEN {b} = 0 THEN {a} * 0.0 ELSE CAST({a} AS DOUBLE) / NULLIF({b}, 0) END)"

    def mod(self, a: str, b: str, is_float: bool) -> str:
        # InfluxDB: integer x % 0 is 0, float x % 0 is NaN (null in JSON)
        zero = "NULL" if is_float else f"{a} * 0"
        return f"(CASE WHEN {b} = 0 THEN {zero} ELSE {a} % NULLIF({b}, 0) END)"

    def time_grid(self, start: str, stop: str, every: int) -> str:
        """A one-column (`__t`) relation of window starts from start to stop (inclusive)."""
        return f"(SELECT unnest(range({start}, {stop} + 1, {every})) AS __t)"

    def last_non_null(self, value: str, partition: str, order: str, frame: str) -> str:
        over = f"OVER ({partition} ORDER BY {order} {frame})"
        return f"last_value({value} IGNORE NULLS) {over}"

    def first_non_null(self, value: str, partition: str, order: str, frame: str) -> str:
        over = f"OVER ({partition} ORDER BY {order} {frame})"
        return f"first_value({value} IGNORE NULLS) {over}"

    def per_series_limit(
        self, partition: str, order: str, limit: int, offset: int, slimit: int = 0, soffset: int = 0
    ) -> str:
        """Clause keeping rows offset+1..offset+limit of each series (0: no upper bound) and,
        with slimit/soffset, only series soffset+1..soffset+slimit in series order."""
        conds = []
        if limit or offset:
            rn = f"row_number() OVER (PARTITION BY {partition} ORDER BY {order})"
            conds.append(f"{rn} > {int(offset)}")
            if limit:
                conds.append(f"{rn} <= {int(offset) + int(limit)}")
        if slimit or soffset:
            sn = f"dense_rank() OVER (ORDER BY {partition})"
            conds.append(f"{sn} > {int(soffset)}")
            if slimit:
                conds.append(f"{sn} <= {int(soffset) + int(slimit)}")
        return f" QUALIFY {' AND '.join(conds)}" if conds else ""


DUCKDB = Dialect()
