"""SELECT compiled to one SQL query per measurement; only result rows come back to Python.

Shape of the aggregate query (fill other than none adds the grid steps)::

    WITH agg  AS (SELECT g0.., bucket(time) AS __t, agg(field) AS a0.. FROM t WHERE .. GROUP BY ..),
         grid AS (every series x every window),  j AS (grid LEFT JOIN agg),
         f    AS (fill(a0)..)
    SELECT g0.., __t, expr(a0..) AS c0.. FROM f ORDER BY g0.., __t
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.conditions import Params, TimeRange, compile_condition, split_time
from flame.clmc.influxql.context import Context
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.fields import SELECTORS, SelectList, plan_fields
from flame.clmc.influxql.fill import FillSpec, fill_column
from flame.clmc.influxql.rows import Rows, Series
from flame.clmc.influxql.transforms import transform_sql
from flame.clmc.store.base import MeasurementSchema

__all__ = ["run_select", "select_rows"]

MAX_WINDOWS = 5_000_000  # GROUP BY time windows per series a query may ask for
_NUMERIC = frozenset({"float", "integer", "unsigned", "number"})


@dataclass(frozen=True, slots=True)
class _Val:
    sql: str
    kind: str  # FieldType value, "number" (literal), "tag" or "null"


def run_select(ctx: Context, stmt: A.SelectStatement) -> list[Series]:
    return [rows.series() for rows in select_rows(ctx, stmt)]


def select_rows(ctx: Context, stmt: A.SelectStatement) -> list[Rows]:
    """The series of a SELECT, values not yet converted to Python."""
    if stmt.tz is not None and stmt.tz.upper() not in ("UTC", "ETC/UTC"):
        raise StatementError(f"tz('{stmt.tz}') is not supported: only UTC")
    schemas = ctx.resolve_sources(stmt.sources, check_rp=True)
    if _wildcards(stmt):
        # under a row scope, `*` and regexes expand to the keys of the rows the caller sees
        schemas = [n for n in map(ctx.narrowed, schemas) if n is not None]
    trange, cond = split_time(stmt.condition, ctx.now_ns)
    every, offset = 0, 0
    dim_tags: list[str] = []
    wildcard_dims: list[A.Wildcard | A.RegexLiteral] = []
    for d in stmt.dimensions:
        if isinstance(d, A.GroupByTime):
            if d.interval_ns <= 0:
                raise StatementError("group by time interval must be positive")
            every, offset = d.interval_ns, d.offset_ns % d.interval_ns
        elif isinstance(d, A.VarRef):
            dim_tags.append(d.name)
        else:
            wildcard_dims.append(d)
    all_tags = sorted({k for s in schemas for k in s.tag_keys})
    for d in wildcard_dims:
        rx = re.compile(d.pattern) if isinstance(d, A.RegexLiteral) else None
        dim_tags.extend(k for k in all_tags if rx is None or rx.search(k))
    group_tags = sorted(set(dim_tags))
    select = plan_fields(stmt.fields, schemas, group_tags)
    if select.transform is not None:
        name = select.transform.name
        if select.aggregate and not every:
            raise StatementError(f"{name} aggregate requires a GROUP BY interval")
        if not select.aggregate and every:
            raise StatementError(f"aggregate function required inside the call to {name}")
    if every and not select.aggregate:
        raise StatementError("GROUP BY requires at least one aggregate function")
    if not select.exprs or trange.empty:
        return []

    out: list[Rows] = []
    in_sql = len(schemas) == 1 and bool(group_tags)
    for schema in schemas:
        q = _Query(ctx, stmt, schema, select, trange, cond, group_tags, every, offset)
        q.series_in_sql = in_sql
        out.extend(q.run())
    if (stmt.soffset or stmt.slimit) and not in_sql:
        out = out[stmt.soffset :]
        if stmt.slimit:
            out = out[: stmt.slimit]
    return out


class _Query:
    def __init__(
        self,
        ctx: Context,
        stmt: A.SelectStatement,
        schema: MeasurementSchema,
        select: SelectList,
        trange: TimeRange,
        cond: A.Expr | None,
        group_tags: list[str],
        every: int,
        offset: int,
    ) -> None:
        self.ctx, self.stmt, self.schema, self.select = ctx, stmt, schema, select
        self.trange, self.cond, self.group_tags = trange, cond, group_tags
        self.every, self.offset = every, offset
        self.d = ctx.dialect
        self.params = Params()
        self.gcols = [f"g{i}" for i in range(len(group_tags))]
        self.series_in_sql = False  # set when SLIMIT/SOFFSET can run in this query
        self.bare = False  # no ORDER BY / LIMIT: the query feeds a transformation

    # --- pieces ---------------------------------------------------------------------------

    def _where(self, fields: Sequence[str]) -> str:
        parts = self.trange.sql("time", self.params)
        if self.cond is not None:
            parts.append(compile_condition(self.cond, self.schema, self.params, self.d))
        present = [self.schema.field_column(f) + " IS NOT NULL" for f in fields]
        parts.append("(" + " OR ".join(present) + ")")
        return " AND ".join(parts)

    def _group_select(self) -> list[str]:
        out = []
        for key, alias in zip(self.group_tags, self.gcols, strict=True):
            col = self.schema.tag_column(key) if key in self.schema.tag_keys else "NULL"
            out.append(f"COALESCE({col}, '') AS {alias}")
        return out

    def _ref(self, ref: A.VarRef) -> _Val:
        s = self.schema
        # a key that is both: the field, unless `::tag` (as InfluxDB)
        if ref.type_hint != "tag" and ref.name in s.field_types:
            return _Val(s.field_column(ref.name), s.field_types[ref.name].value)
        if ref.type_hint != "field" and ref.name in s.tag_keys:
            return _Val(s.tag_column(ref.name), "tag")
        return _Val("NULL", "null")

    def _value(
        self,
        expr: A.Expr,
        calls: dict[A.Call, _Val] | None = None,
        aux: dict[A.VarRef, _Val] | None = None,
    ) -> _Val:
        match expr:
            case A.VarRef() if aux is not None:
                return aux[expr]
            case A.VarRef():
                return self._ref(expr)
            case A.Call() if calls is not None:
                return calls[expr]
            case A.IntegerLiteral(v) | A.DurationLiteral(v):
                return _Val(f"CAST({self.params.add(v)} AS BIGINT)", "number")
            case A.NumberLiteral(v):
                return _Val(f"CAST({self.params.add(v)} AS DOUBLE)", "float")
            case A.StringLiteral() | A.BooleanLiteral():
                return _Val("NULL", "null")
            case A.BinaryExpr(op, lhs, rhs) if op in A.ARITHMETIC:
                a, b = self._value(lhs, calls, aux), self._value(rhs, calls, aux)
                if a.kind not in _NUMERIC or b.kind not in _NUMERIC:
                    return _Val("NULL", "null")
                is_float = "float" in (a.kind, b.kind)
                if op is A.Op.DIV:
                    return _Val(self.d.float_div(a.sql, b.sql), "float")
                if op is A.Op.MOD:
                    kind = "float" if is_float else "integer"
                    return _Val(self.d.mod(a.sql, b.sql, is_float), kind)
                if op in (A.Op.BITAND, A.Op.BITOR, A.Op.BITXOR):
                    if is_float:
                        return _Val("NULL", "null")
                    if op is A.Op.BITXOR:
                        return _Val(self.d.xor(a.sql, b.sql), "integer")
                    return _Val(f"({a.sql} {op.value} {b.sql})", "integer")
                kind = (
                    "float"
                    if is_float
                    else ("integer" if "integer" in (a.kind, b.kind) else b.kind)
                )
                return _Val(f"({a.sql} {op.value} {b.sql})", kind)
        raise StatementError(f"unsupported expression in SELECT: {type(expr).__name__}")

    def _order(self, time_col: str = "__t") -> str:
        direction = " DESC" if self.stmt.descending else ""
        return ", ".join([*self.gcols, time_col + direction])

    def _limit(self, order: str | None = None) -> tuple[str, str]:
        """(clause before ORDER BY, clause after it) applying LIMIT/OFFSET per series, and
        SLIMIT/SOFFSET when this query holds every series of the statement."""
        limit, offset = self.stmt.limit, self.stmt.offset
        if self.bare:
            return "", ""
        if not self.gcols:
            post = (f" LIMIT {int(limit)}" if limit else "") + (
                f" OFFSET {int(offset)}" if offset else ""
            )
            return "", post
        slimit, soffset = (self.stmt.slimit, self.stmt.soffset) if self.series_in_sql else (0, 0)
        partition = ", ".join(self.gcols)
        return self.d.per_series_limit(
            partition, order or self._order(), limit, offset, slimit, soffset
        ), ""

    # --- raw ------------------------------------------------------------------------------

    def raw_sql(self) -> str | None:
        refs = [r for e in self.select.exprs for r in _refs(e)]
        fields = sorted({r.name for r in refs if self._ref(r).kind not in ("tag", "null")})
        if not fields:
            return None
        cols = [f"{self._value(e).sql} AS c{i}" for i, e in enumerate(self.select.exprs)]
        # equal times across series in series-key order (needless when grouped by every tag)
        rest = sorted(set(self.schema.tag_keys) - set(self.group_tags))
        ties = [f"COALESCE({self.schema.tag_column(k)}, '')" for k in rest]
        order = ", ".join([self._order(), *ties])
        sel = ", ".join([*self._group_select(), "time AS __t", *cols])
        where = self._where(fields)
        if self.bare:  # feeding a transformation: mark repeated times, which it skips
            part = ", ".join([*self.gcols, "time"])
            tie = ", ".join(ties) or "time"
            dup = f"row_number() OVER (PARTITION BY {part} ORDER BY {tie}) AS __dup"
            seq = f"row_number() OVER (ORDER BY {order}) AS __o"  # the output order, ties included
            return f"SELECT {sel}, {dup}, {seq} FROM {self.schema.table} WHERE {where}"
        pre, post = self._limit(order)
        return f"SELECT {sel} FROM {self.schema.table} WHERE {where}{pre} ORDER BY {order}{post}"

    # --- aggregates -----------------------------------------------------------------------

    def _call_sql(self, call: A.Call) -> tuple[_Val, str | None]:
        """SQL of one aggregate over the table, its kind, and its point's time if a selector."""
        name = call.name
        arg = call.args[0]
        d = self.d
        if isinstance(arg, A.Call):  # count(distinct(f))
            inner = arg.args[0]
            assert isinstance(inner, A.VarRef)
            v = self._ref(inner)
            if v.kind in ("null", "tag"):
                return _Val("NULL", "null"), None
            return _Val(f"count(DISTINCT {v.sql})", "integer"), None
        assert isinstance(arg, A.VarRef)
        v = self._ref(arg)
        if v.kind in ("null", "tag"):
            return _Val("NULL", "null"), None
        col = v.sql
        numeric = v.kind in _NUMERIC
        if (
            name in ("sum", "mean", "median", "min", "max", "spread", "stddev", "percentile")
            and not numeric
        ):
            raise StatementError(f"unsupported {name} iterator type: {v.kind} field {arg.name}")
        if name == "count":
            return _Val(f"count({col})", "integer"), None
        if name == "sum":
            if v.kind == "integer":
                return _Val(f"CAST(sum({col}) AS BIGINT)", "integer"), None
            if v.kind == "unsigned":
                return _Val(f"CAST(sum({col}) AS UBIGINT)", "unsigned"), None
            return _Val(f"sum({col})", "float"), None
        if name == "mean":
            return _Val(d.mean(col), "float"), None
        if name == "mode":
            return _Val(d.mode(col, "time"), v.kind), None
        if name == "median":
            return _Val(d.median(col), "float"), None
        if name == "stddev":
            return _Val(d.stddev(col), "float"), None
        if name == "spread":
            return _Val(f"(max({col}) - min({col}))", v.kind), None
        if name == "min":
            return _Val(f"min({col})", v.kind), d.time_of_min(col, "time")
        if name == "max":
            return _Val(f"max({col})", v.kind), d.time_of_max(col, "time")
        if name == "first":
            return _Val(d.first(col, "time"), v.kind), f"min(time) FILTER (WHERE {col} IS NOT NULL)"
        if name == "last":
            return _Val(d.last(col, "time"), v.kind), f"max(time) FILTER (WHERE {col} IS NOT NULL)"
        if name == "percentile":
            pct_lit = call.args[1]
            assert isinstance(pct_lit, A.IntegerLiteral | A.NumberLiteral)
            pct = f"CAST({self.params.add(float(pct_lit.value))} AS DOUBLE)"
            value, time = d.nearest_rank(col, "time", pct)
            return _Val(value, v.kind), time
        raise StatementError(f"unsupported function {name}()")

    def _fields_of_calls(self) -> list[str]:
        out: set[str] = set()
        for call in self.select.calls:
            for ref in _refs(call):
                if self._ref(ref).kind not in ("tag", "null"):
                    out.add(ref.name)
        return sorted(out)

    def distinct_sql(self, fields: list[str]) -> str:
        call = self.select.calls[0]
        arg = call.args[0]
        assert isinstance(arg, A.VarRef)
        col = self._ref(arg).sql
        bucket = self._bucket_sql()
        sel = ", ".join([*self._group_select(), f"{bucket} AS __t", f"{col} AS c0"])
        grp = ", ".join([*self.gcols, "__t", "c0"])
        # values in order of first appearance, as InfluxDB lists them
        order = f"{self._order()}, min(time), c0"
        pre, post = self._limit(order)
        where = f"{self._where(fields)} AND {col} IS NOT NULL"
        return f"SELECT {sel} FROM {self.schema.table} WHERE {where} GROUP BY {grp}{pre} ORDER BY {order}{post}"

    def top_sql(self, fields: list[str]) -> str | None:
        """top/bottom(f, N): the N greatest/least points per series and window, in time order."""
        call = self.select.top
        assert call is not None
        arg, count = call.args[0], call.args[1]
        assert isinstance(arg, A.VarRef)
        assert isinstance(count, A.IntegerLiteral)
        v = self._ref(arg)
        if v.kind not in ("float", "integer", "unsigned"):
            return None
        calls = {call: v}
        point = {"__t": "time", "__v": v.sql}
        point.update({f"c{i}": self._value(e, calls).sql for i, e in enumerate(self.select.exprs)})
        top = call.name == "top"
        rows = self.d.top_points(point, v.sql, "time", count.value, largest=top)
        group = (
            [*self.gcols, self.d.bucket("time", self.every, self.offset)]
            if self.every
            else self.gcols
        )
        where = f"{self._where(fields)} AND {v.sql} IS NOT NULL"
        picked = f"SELECT {', '.join([*self._group_select(), rows])} FROM {self.schema.table} WHERE {where}"
        picked += f" GROUP BY {', '.join(group)}" if group else ""
        # time order even with ORDER BY time DESC, as InfluxDB
        order = ", ".join([*self.gcols, "__t", f"__v {'DESC' if top else 'ASC'}"])
        pre, post = self._limit(order)
        return f"SELECT * FROM ({picked}) k{pre} ORDER BY {order}{post}"

    def _bucket_sql(self) -> str:
        if self.every:
            return self.d.bucket("time", self.every, self.offset)
        return f"CAST({self.params.add(self.trange.lo or 0)} AS BIGINT)"

    def aggregate_sql(self, fields: list[str], start: int | None) -> str:
        calls: dict[A.Call, _Val] = {}
        aux: dict[A.VarRef, _Val] | None = None
        if self.select.aux:
            inner, calls, aux = self._selector_inner()
        else:
            inner = self._aggregate_inner(calls, fields)
        extra = [f"x{i}" for i in range(len(aux or {}))]
        source = "agg"
        ctes = [f"agg AS ({inner})"]
        fill = self.stmt.fill
        if self.every and fill.mode is not A.FillMode.NONE and start is not None:
            stop = self._stop()
            series = (
                f"SELECT DISTINCT {', '.join(self.gcols)} FROM agg"
                if self.gcols
                else "SELECT DISTINCT 1 AS __one FROM agg"
            )
            grid_cols = [f"s.{g}" for g in self.gcols]
            grid = self.d.time_grid(self.params.add(start), self.params.add(stop), self.every)
            ctes.append(
                f"grid AS (SELECT {', '.join([*grid_cols, 'w.__t'])} FROM ({series}) s, {grid} w)"
            )
            using = ", ".join([*self.gcols, "__t"])
            acols = [f"agg.a{i}" for i in range(len(calls))] + [f"agg.{x}" for x in extra]
            ctes.append(f"j AS (SELECT {', '.join([*[f'grid.{g}' for g in self.gcols], 'grid.__t', *acols])} "
                        f"FROM grid LEFT JOIN agg USING ({using}))")  # fmt: skip
            spec = FillSpec(fill, self.gcols, self.stmt.descending, self.d, self.params)
            filled = [
                fill_column(f"a{i}", call.name == "count", calls[call].kind, spec)
                for i, call in enumerate(calls)
            ]
            ctes.append(f"f AS (SELECT {', '.join([*self.gcols, '__t', *filled, *extra])} FROM j)")
            source = "f"
        outs = [
            f"{self._value(e, calls, aux).sql} AS c{i}" for i, e in enumerate(self.select.exprs)
        ]
        sel = ", ".join([*self.gcols, "__t", *outs])
        if self.bare:
            return f"WITH {', '.join(ctes)} SELECT {sel}, 0 AS __o FROM {source}"
        pre, post = self._limit()
        return (
            f"WITH {', '.join(ctes)} SELECT {sel} FROM {source}{pre} ORDER BY {self._order()}{post}"
        )

    def _aggregate_inner(self, calls: dict[A.Call, _Val], fields: list[str]) -> str:
        agg_cols: list[str] = []
        sel_time: str | None = None
        for i, call in enumerate(self.select.calls):
            val, time = self._call_sql(call)
            calls[call] = _Val(f"a{i}", val.kind)
            agg_cols.append(f"{val.sql} AS a{i}")
            sel_time = time
        single_selector = (
            not self.every
            and len(self.select.calls) == 1
            and self.select.calls[0].name in SELECTORS
            and sel_time is not None
        )
        if self.every:
            time_expr = self._bucket_sql()
        elif single_selector and sel_time is not None:
            time_expr = sel_time
        else:
            time_expr = f"CAST({self.params.add(self.trange.lo or 0)} AS BIGINT)"
        inner_sel = [*self._group_select(), f"{time_expr} AS __t", *agg_cols]
        group = [*self.gcols, "__t"] if self.every else self.gcols
        inner = (
            f"SELECT {', '.join(inner_sel)} FROM {self.schema.table} WHERE {self._where(fields)}"
        )
        inner += f" GROUP BY {', '.join(group)}" if group else ""
        inner += " HAVING count(*) > 0"
        return inner

    def _selector_inner(self) -> tuple[str, dict[A.Call, _Val], dict[A.VarRef, _Val]]:
        """`max(v), host, n`: one struct per group holds the selected point and its columns."""
        call = self.select.calls[0]
        arg = call.args[0]
        assert isinstance(arg, A.VarRef)
        v = self._ref(arg)
        refs = [self._ref(ref) for ref in self.select.aux]
        pct = None
        if call.name == "percentile":
            lit = call.args[1]
            assert isinstance(lit, A.IntegerLiteral | A.NumberLiteral)
            pct = f"CAST({self.params.add(float(lit.value))} AS DOUBLE)"
        point = self.d.selected_point(call.name, v.sql, "time", [r.sql for r in refs], pct)
        where = self._where(self._fields_of_calls())
        group = [*self.gcols, "__b"] if self.every else self.gcols
        bucket = self._bucket_sql() if self.every else "0"
        sel = ", ".join([*self._group_select(), f"{bucket} AS __b", f"{point} AS __p"])
        first = f"SELECT {sel} FROM {self.schema.table} WHERE {where}"
        first += f" GROUP BY {', '.join(group)}" if group else ""
        first += " HAVING count(*) > 0"
        time = "__b" if self.every else self.d.field_of("__p", "t")
        cols = [f"{self.d.field_of('__p', f'x{i}')} AS x{i}" for i in range(len(refs))]
        outer = ", ".join(
            [*self.gcols, f"{time} AS __t", f"{self.d.field_of('__p', 'v')} AS a0", *cols]
        )
        inner = f"SELECT {outer} FROM ({first}) p"
        aux = {
            ref: _Val(f"x{i}", "null" if r.kind == "null" else r.kind)
            for i, (ref, r) in enumerate(zip(self.select.aux, refs, strict=True))
        }
        return inner, {call: _Val("a0", v.kind)}, aux

    def _stop(self) -> int:
        hi = self.trange.hi if self.trange.hi is not None else self.ctx.now_ns
        return hi - ((hi - self.offset) % self.every)

    # --- run ------------------------------------------------------------------------------

    def _transformed(self, base: str) -> str:
        transform = self.select.transform
        assert transform is not None
        if self.select.aggregate:
            kind = self._call_sql(self.select.calls[0])[0].kind
        else:
            kind = self._value(self.select.exprs[0]).kind
        if kind not in _NUMERIC:
            raise StatementError(f"unsupported {transform.name} iterator type: {kind}")
        sql, _ = transform_sql(transform, base, self.gcols, kind, self.every, self.stmt.descending,
                               dedupe=not self.select.aggregate)  # fmt: skip
        self.bare = False
        pre, post = self._limit()
        direction = " DESC" if self.stmt.descending else ""
        return f"SELECT * FROM ({sql}) t{pre} ORDER BY {self._order()}, __o{direction}{post}"

    def run(self) -> list[Rows]:
        self.bare = self.select.transform is not None
        if not self.select.aggregate:
            sql = self.raw_sql()
        else:
            fields = self._fields_of_calls()
            if not fields:
                return []
            if self.select.top is not None:
                sql = self.top_sql(fields)
            elif self.select.calls[0].name == "distinct":
                sql = self.distinct_sql(fields)
            else:
                start = self._start(fields)
                if self.every and start is None:
                    return []
                sql = self.aggregate_sql(fields, start)
        if sql is None:
            return []
        if self.select.transform is not None:
            sql = self._transformed(sql)
        table = self.ctx.query(*self.params.finish(sql))
        return self._series(table)

    def _start(self, fields: list[str]) -> int | None:
        """First window start; without a lower time bound, the window of the first point."""
        if not self.every:
            return 0
        lo = self.trange.lo
        if lo is None:
            # parameters this adds are not in the main query's SQL, so `finish` leaves them out
            sql = f"SELECT min(time) AS t FROM {self.schema.table} WHERE {self._where(fields)}"
            first = self.ctx.query(*self.params.finish(sql)).column(0).to_pylist()[0]
            if first is None:
                return None
            lo = int(first)
        start = lo - ((lo - self.offset) % self.every)
        if (
            self.stmt.fill.mode is not A.FillMode.NONE
            and (self._stop() - start) // self.every > MAX_WINDOWS
        ):
            raise StatementError(
                f"too many GROUP BY time windows (more than {MAX_WINDOWS}): narrow the WHERE time range or widen the interval"
            )
        return start

    def _series(self, table: pa.Table) -> list[Rows]:
        t = table.column("__t")
        if t.null_count:
            # a lone percentile whose rank falls outside its points: InfluxDB emits no row
            table = table.filter(pc.is_valid(t))
        n = table.num_rows
        if n == 0:
            return []
        data = table.select(["__t", *(f"c{i}" for i in range(len(self.select.exprs)))])
        columns = ["time", *self.select.names]
        name = self.schema.measurement
        if not self.gcols:
            return [Rows({"name": name, "columns": columns}, data, self.ctx.epoch)]
        keys = [table.column(g).combine_chunks() for g in self.gcols]
        changed = None
        for key in keys:  # rows are sorted by series: a series ends where a key changes
            ne = pc.not_equal(key.slice(1), key.slice(0, n - 1))
            changed = ne if changed is None else pc.or_(changed, ne)
        assert changed is not None
        ends = [i + 1 for i in pc.indices_nonzero(changed).to_pylist()] + [n]
        out: list[Rows] = []
        start = 0
        for end in ends:
            tags = {
                k: str(key[start].as_py()) for k, key in zip(self.group_tags, keys, strict=True)
            }
            head: dict[str, object] = {"name": name, "tags": tags, "columns": columns}
            out.append(Rows(head, data.slice(start, end - start), self.ctx.epoch))
            start = end
        return out


def _wildcards(stmt: A.SelectStatement) -> bool:
    """Whether the statement's columns or groups depend on the keys its measurements have."""

    def wild(expr: A.Expr) -> bool:
        if isinstance(expr, A.Wildcard | A.RegexLiteral):
            return True
        if isinstance(expr, A.BinaryExpr):
            return wild(expr.lhs) or wild(expr.rhs)
        if isinstance(expr, A.Call):
            return any(wild(a) for a in expr.args)
        return False

    return any(wild(f.expr) for f in stmt.fields) or any(
        isinstance(d, A.Wildcard | A.RegexLiteral) for d in stmt.dimensions
    )


def _refs(expr: A.Expr) -> list[A.VarRef]:
    if isinstance(expr, A.VarRef):
        return [expr]
    if isinstance(expr, A.BinaryExpr):
        return _refs(expr.lhs) + _refs(expr.rhs)
    if isinstance(expr, A.Call):
        return [r for a in expr.args for r in _refs(a)]
    return []
