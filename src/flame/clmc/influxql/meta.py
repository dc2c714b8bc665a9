"""SHOW, CREATE, DROP and DELETE statements, over the store's catalog and small SQL queries."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.conditions import Params, TimeRange, compile_condition, split_time
from flame.clmc.influxql.context import Context
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.timefmt import format_go_duration
from flame.clmc.store.base import MeasurementSchema, RetentionPolicy

__all__ = ["run_meta"]

Series = dict[str, object]
_DAY = 86_400_000_000_000


def _all_schemas(
    ctx: Context, db: str, sources: Sequence[A.Measurement]
) -> dict[str, list[MeasurementSchema]]:
    """Measurement name -> its tables (one per retention policy); FROM limits to the default RP."""
    if sources:
        found = ctx.resolve_sources(
            [A.Measurement(s.name, s.regex, s.database or db, s.rp) for s in sources]
        )
    else:
        found = []
        for rp in ctx.store.retention_policies(db):
            for name in ctx.store.measurements(db, rp.name):
                schema = ctx.store.schema(db, rp.name, name)
                if schema is not None:
                    found.append(ctx.scoped(schema))
    out: dict[str, list[MeasurementSchema]] = {}
    for s in found:
        out.setdefault(s.measurement, []).append(s)
    return dict(sorted(out.items()))


def _where(ctx: Context, schema: MeasurementSchema, cond: A.Expr | None, params: Params) -> str:
    trange, rest = split_time(cond, ctx.now_ns)
    parts = trange.sql("time", params)
    if rest is not None:
        parts.append(compile_condition(rest, schema, params, ctx.dialect))
    return " WHERE " + " AND ".join(parts) if parts else ""


def _exists(ctx: Context, schema: MeasurementSchema, cond: A.Expr | None) -> bool:
    params = Params()
    sql = f"SELECT 1 AS x FROM {schema.table}{_where(ctx, schema, cond, params)} LIMIT 1"
    return bool(ctx.query(*params.finish(sql)).num_rows > 0)


def _page(values: list[list[object]], limit: int, offset: int) -> list[list[object]]:
    values = values[offset:]
    return values[:limit] if limit else values


def show_measurements(ctx: Context, s: A.ShowMeasurements) -> list[Series]:
    db = ctx.require_database(s.database)
    rx = re.compile(s.regex) if s.regex is not None else None
    names: list[list[object]] = []
    for name, schemas in _all_schemas(ctx, db, ()).items():
        if (rx is not None and not rx.search(name)) or (s.name is not None and name != s.name):
            continue
        if any(_exists(ctx, sc, s.condition) for sc in schemas):
            names.append([name])
    names = _page(names, s.limit, s.offset)
    return [{"name": "measurements", "columns": ["name"], "values": names}] if names else []


def show_tag_keys(ctx: Context, s: A.ShowTagKeys) -> list[Series]:
    db = ctx.require_database(s.database)
    out: list[Series] = []
    for name, schemas in _all_schemas(ctx, db, s.sources).items():
        keys: set[str] = set()
        for sc in schemas:
            if not sc.tag_keys:
                continue
            params = Params()
            counts = ", ".join(
                f"count({sc.tag_column(k)}) AS k{i}" for i, k in enumerate(sc.tag_keys)
            )
            row = ctx.query(
                *params.finish(
                    f"SELECT {counts} FROM {sc.table}{_where(ctx, sc, s.condition, params)}"
                )
            )
            got = row.to_pylist()[0]
            keys.update(k for i, k in enumerate(sc.tag_keys) if got[f"k{i}"])
        values = _page([[k] for k in sorted(keys)], s.limit, s.offset)
        if values:
            out.append({"name": name, "columns": ["tagKey"], "values": values})
    return out


def _key_filter(s: A.ShowTagValues) -> Callable[[str], bool]:
    if s.key_regex is not None:
        rx = re.compile(s.key_regex)
        return lambda k: bool(rx.search(k)) != s.negate
    keys = set(s.keys)
    return lambda k: (k in keys) != s.negate


def show_tag_values(ctx: Context, s: A.ShowTagValues) -> list[Series]:
    db = ctx.require_database(s.database)
    wanted = _key_filter(s)
    out: list[Series] = []
    for name, schemas in _all_schemas(ctx, db, s.sources).items():
        pairs: set[tuple[str, str]] = set()
        for sc in schemas:
            keys = [k for k in sc.tag_keys if wanted(k)]
            if not keys:
                continue
            params = Params()
            where = _where(ctx, sc, s.condition, params)
            parts = []
            for k in keys:
                col = sc.tag_column(k)
                cond = f"{where} AND {col} IS NOT NULL" if where else f" WHERE {col} IS NOT NULL"
                parts.append(
                    f"SELECT DISTINCT {params.add(k)} AS k, {col} AS v FROM {sc.table}{cond}"
                )
            rows = ctx.query(*params.finish(" UNION ".join(parts))).to_pydict()
            pairs.update(zip(rows["k"], rows["v"], strict=True))
        values = _page([[k, v] for k, v in sorted(pairs)], s.limit, s.offset)
        if values:
            out.append({"name": name, "columns": ["key", "value"], "values": values})
    return out


def _fields_present(ctx: Context, schema: MeasurementSchema) -> list[str]:
    """The fields some (visible) row of `schema` has a value of."""
    keys = list(schema.field_types)
    if not keys:
        return []
    counts = ", ".join(f"count({schema.field_column(k)}) AS f{i}" for i, k in enumerate(keys))
    got = ctx.query(f"SELECT {counts} FROM {schema.table}", []).to_pylist()[0]
    return [k for i, k in enumerate(keys) if got[f"f{i}"]]


def show_field_keys(ctx: Context, s: A.ShowFieldKeys) -> list[Series]:
    db = ctx.require_database(s.database)
    out: list[Series] = []
    for name, schemas in _all_schemas(ctx, db, s.sources).items():
        fields: dict[str, str] = {}
        for sc in schemas:
            if ctx.row_scoped(db):
                # only the fields of the rows this caller sees: a measurement's schema is
                # shared by every tenant's rows
                for k in _fields_present(ctx, sc):
                    fields.setdefault(k, sc.field_types[k].value)
            elif _exists(ctx, sc, None):
                for k, t in sc.field_types.items():
                    fields.setdefault(k, t.value)
        values = _page([[k, fields[k]] for k in sorted(fields)], s.limit, s.offset)
        if values:
            out.append({"name": name, "columns": ["fieldKey", "fieldType"], "values": values})
    return out


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def show_series(ctx: Context, s: A.ShowSeries) -> list[Series]:
    db = ctx.require_database(s.database)
    keys: set[str] = set()
    for name, schemas in _all_schemas(ctx, db, s.sources).items():
        prefix = name.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")
        for sc in schemas:
            tags = sorted(sc.tag_keys)
            params = Params()
            cols = ", ".join(sc.tag_column(k) for k in tags) or "1 AS one"
            rows = ctx.query(
                *params.finish(
                    f"SELECT DISTINCT {cols} FROM {sc.table}{_where(ctx, sc, s.condition, params)}"
                )
            )
            for row in rows.to_pylist():
                parts = [prefix] + [
                    f"{_escape_key(k)}={_escape_key(str(row[k]))}"
                    for k in tags
                    if row.get(k) not in (None, "")
                ]
                keys.add(",".join(parts))
    values = _page([[k] for k in sorted(keys)], s.limit, s.offset)
    return [{"columns": ["key"], "values": values}] if values else []


def _shard_duration(duration_ns: int) -> int:
    # InfluxDB's default shard group duration for a retention duration
    if duration_ns == 0 or duration_ns >= 180 * _DAY:
        return 7 * _DAY
    if duration_ns >= 2 * _DAY:
        return _DAY
    return _DAY // 24


def show_retention_policies(ctx: Context, s: A.ShowRetentionPolicies) -> list[Series]:
    db = ctx.require_database(s.database)
    values: list[list[object]] = [
        [
            rp.name,
            format_go_duration(rp.duration_ns),
            format_go_duration(_shard_duration(rp.duration_ns)),
            1,
            rp.default,
        ]
        for rp in ctx.store.retention_policies(db)
    ]
    columns = ["name", "duration", "shardGroupDuration", "replicaN", "default"]
    return [{"columns": columns, "values": values}]


def _refs(expr: A.Expr | None) -> set[str]:
    if isinstance(expr, A.VarRef):
        return {expr.name}
    if isinstance(expr, A.BinaryExpr):
        return _refs(expr.lhs) | _refs(expr.rhs)
    return set()


def _delete(ctx: Context, s: A.Delete) -> None:
    db = ctx.require_database(None, change=True)
    trange, rest = split_time(s.condition, ctx.now_ns)
    targets: list[str | None] = []
    for src in s.sources:
        if src.regex is not None:
            rx = re.compile(src.regex)
            targets.extend(m for m in ctx.store.measurements(db) if rx.search(m))
        else:
            targets.append(src.name)
    names = [t for t in targets if t is not None] if s.sources else ctx.store.measurements(db)
    fields = {
        k
        for rp in ctx.store.retention_policies(db)
        for m in names
        if (sc := ctx.store.schema(db, rp.name, m)) is not None
        for k in sc.field_types
        if k not in sc.tag_keys
    }
    bad = sorted(_refs(rest) & fields)
    if bad:
        raise StatementError(f"fields not supported in WHERE clause during deletion: {bad[0]}")
    tags: dict[str, str] = {}
    stack = [rest] if rest is not None else []
    while stack:
        e = stack.pop()
        if isinstance(e, A.BinaryExpr) and e.op is A.Op.AND:
            stack.extend((e.lhs, e.rhs))
        elif (isinstance(e, A.BinaryExpr) and e.op is A.Op.EQ and isinstance(e.lhs, A.VarRef)
              and isinstance(e.rhs, A.StringLiteral)):  # fmt: skip
            tags[e.lhs.name] = e.rhs.value
        else:
            raise StatementError(
                "DELETE supports only time bounds and tag = 'value' conditions joined by AND"
            )
    if trange.empty:
        return
    end = None if trange.hi is None else trange.hi + 1  # the store's end is exclusive
    for m in targets if s.sources else [None]:
        ctx.store.delete(db, m, trange.lo, end, tags or None)


def _require_change(ctx: Context, database: str) -> None:
    if ctx.access is not None and not ctx.access.may_change(database):
        raise StatementError(f"not authorized to use database {database}")


def run_meta(ctx: Context, stmt: A.Statement) -> list[Series]:
    store = ctx.store
    match stmt:
        case A.ShowDatabases():
            access = ctx.access
            names: list[list[object]] = [
                [d] for d in ctx.databases() if access is None or access.may_read(d)
            ]
            series: Series = {"name": "databases", "columns": ["name"]}
            if names:
                series["values"] = names
            return [series]
        case A.ShowMeasurements():
            return show_measurements(ctx, stmt)
        case A.ShowTagKeys():
            return show_tag_keys(ctx, stmt)
        case A.ShowTagValues():
            return show_tag_values(ctx, stmt)
        case A.ShowFieldKeys():
            return show_field_keys(ctx, stmt)
        case A.ShowSeries():
            return show_series(ctx, stmt)
        case A.ShowRetentionPolicies():
            return show_retention_policies(ctx, stmt)
        case A.CreateDatabase(name, duration, rp_name):
            _require_change(ctx, name)
            _refuse_nul(name, rp_name or "")
            store.create_database(name)
            if duration is not None or rp_name is not None:
                store.create_retention_policy(
                    name, RetentionPolicy(rp_name or "autogen", duration or 0, True)
                )
            ctx.forget_catalog()
            return []
        case A.DropDatabase(name):
            _require_change(ctx, name)
            if name in ctx.databases():
                store.drop_database(name)
            ctx.forget_catalog()
            return []
        case A.CreateRetentionPolicy(name, db, duration, _, _, default):
            ctx.require_database(db, change=True)
            _refuse_nul(name)
            if 0 < duration < 3_600_000_000_000:
                raise StatementError("retention policy duration must be at least 1h0m0s")
            store.create_retention_policy(db, RetentionPolicy(name, duration, default))
            return []
        case A.DropMeasurement(name):
            db = ctx.require_database(None, change=True)
            if name in store.measurements(db):
                store.drop_measurement(db, name)  # rows and field types, as InfluxDB
            return []
        case A.Delete():
            _delete(ctx, stmt)
            return []
        case A.DropSeries(sources, cond):
            if cond is not None and split_time(cond, ctx.now_ns)[0] != TimeRange():
                raise StatementError("DROP SERIES doesn't support time in WHERE clause")
            _delete(ctx, A.Delete(sources, cond))
            return []
    raise StatementError(f"unsupported statement {type(stmt).__name__}")


def _refuse_nul(*names: str) -> None:
    """Database and policy names end up in SQL identifiers, which cannot hold a NUL."""
    if any("\0" in n for n in names):
        raise StatementError("a database or retention policy name cannot contain a NUL character")
