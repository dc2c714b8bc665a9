"""AST back to InfluxQL text (used by tests, logs and the dashboard)."""

from __future__ import annotations

import re
from decimal import Decimal

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.lexer import DURATION_UNITS, KEYWORDS

__all__ = ["quote_ident", "render", "render_duration", "render_expr"]

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def quote_ident(name: str) -> str:
    if _BARE.match(name) and name.upper() not in KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def render_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    for unit in ("w", "d", "h", "m", "s", "ms", "u", "ns"):
        size = DURATION_UNITS[unit]
        if ns % size == 0:
            return f"{sign}{ns // size}{unit}"
    raise AssertionError("unreachable: 1ns divides everything")


def _render_float(value: float) -> str:
    text = repr(value)
    if "e" in text or "n" in text:  # InfluxQL has no exponent syntax
        text = format(Decimal(text), "f")  # exact digits of the shortest repr
    return text if "." in text else text + ".0"


def render_expr(expr: A.Expr, *, nested: bool = False) -> str:
    match expr:
        case A.BinaryExpr(op, lhs, rhs):
            word = f" {op.value} "
            text = render_expr(lhs, nested=True) + word + render_expr(rhs, nested=True)
            return f"({text})" if nested else text
        case A.VarRef(name, hint):
            return quote_ident(name) + (f"::{hint}" if hint else "")
        case A.Wildcard(kind):
            return "*" + (f"::{kind}" if kind else "")
        case A.Call(name, args):
            return f"{name}({', '.join(render_expr(a) for a in args)})"
        case A.IntegerLiteral(value):
            return str(value)
        case A.NumberLiteral(value):
            return _render_float(value)
        case A.StringLiteral(value):
            return _quote_string(value)
        case A.BooleanLiteral(value):
            return "true" if value else "false"
        case A.DurationLiteral(ns):
            return render_duration(ns)
        case A.RegexLiteral(pattern):
            return "/" + pattern.replace("/", "\\/") + "/"
        case A.BoundParameter(name):
            return "$" + (name if _BARE.match(name) else quote_ident(name))
    raise TypeError(f"not an expression: {expr!r}")


def _source(m: A.Measurement) -> str:
    last = (
        "/" + (m.regex or "").replace("/", "\\/") + "/"
        if m.regex is not None
        else quote_ident(m.name or "")
    )
    if m.database is not None:
        return f"{quote_ident(m.database)}.{quote_ident(m.rp) if m.rp else ''}.{last}"
    if m.rp is not None:
        return f"{quote_ident(m.rp)}.{last}"
    return last


def _sources(sources: tuple[A.Measurement, ...], kw: str = " FROM ") -> str:
    return kw + ", ".join(_source(s) for s in sources) if sources else ""


def _where(cond: A.Expr | None) -> str:
    return f" WHERE {render_expr(cond)}" if cond is not None else ""


def _lim(limit: int, offset: int, a: str = "LIMIT", b: str = "OFFSET") -> str:
    return (f" {a} {limit}" if limit else "") + (f" {b} {offset}" if offset else "")


def _on(db: str | None) -> str:
    return f" ON {quote_ident(db)}" if db is not None else ""


def _dimension(d: A.Dimension) -> str:
    if isinstance(d, A.GroupByTime):
        off = f", {render_duration(d.offset_ns)}" if d.offset_ns else ""
        return f"time({render_duration(d.interval_ns)}{off})"
    return render_expr(d)


def _select(s: A.SelectStatement) -> str:
    fields = ", ".join(
        render_expr(f.expr) + (f" AS {quote_ident(f.alias)}" if f.alias else "") for f in s.fields
    )
    out = f"SELECT {fields}{_sources(s.sources)}{_where(s.condition)}"
    if s.dimensions:
        out += " GROUP BY " + ", ".join(_dimension(d) for d in s.dimensions)
    if s.fill != A.Fill():
        value = s.fill.value
        arg = (
            s.fill.mode.value
            if value is None
            else render_expr(
                A.IntegerLiteral(value) if isinstance(value, int) else A.NumberLiteral(value)
            )
        )
        out += f" fill({arg})"
    if s.descending:
        out += " ORDER BY time DESC"
    out += _lim(s.limit, s.offset) + _lim(s.slimit, s.soffset, "SLIMIT", "SOFFSET")
    if s.tz is not None:
        out += f" tz({_quote_string(s.tz)})"
    return out


def _show_measurements(s: A.ShowMeasurements) -> str:
    with_ = ""
    if s.regex is not None:
        with_ = " WITH MEASUREMENT =~ " + render_expr(A.RegexLiteral(s.regex))
    elif s.name is not None:
        with_ = " WITH MEASUREMENT = " + quote_ident(s.name)
    return (
        f"SHOW MEASUREMENTS{_on(s.database)}{with_}{_where(s.condition)}{_lim(s.limit, s.offset)}"
    )


def _show_tag_values(s: A.ShowTagValues) -> str:
    if s.key_regex is not None:
        key = ("!~ " if s.negate else "=~ ") + render_expr(A.RegexLiteral(s.key_regex))
    elif len(s.keys) == 1 and s.negate:
        key = "!= " + quote_ident(s.keys[0])
    elif len(s.keys) == 1:
        key = "= " + quote_ident(s.keys[0])
    else:
        key = "IN (" + ", ".join(quote_ident(k) for k in s.keys) + ")"
    return (f"SHOW TAG VALUES{_on(s.database)}{_sources(s.sources)} WITH KEY {key}"
            f"{_where(s.condition)}{_lim(s.limit, s.offset)}")  # fmt: skip


def _create_database(s: A.CreateDatabase) -> str:
    out = f"CREATE DATABASE {quote_ident(s.name)}"
    if s.duration_ns is None and s.rp_name is None:
        return out
    out += " WITH"
    if s.duration_ns is not None:
        out += f" DURATION {render_duration(s.duration_ns) if s.duration_ns else 'INF'}"
    return out + (f" NAME {quote_ident(s.rp_name)}" if s.rp_name is not None else "")


def _create_retention_policy(s: A.CreateRetentionPolicy) -> str:
    duration = render_duration(s.duration_ns) if s.duration_ns else "INF"
    out = (f"CREATE RETENTION POLICY {quote_ident(s.name)} ON {quote_ident(s.database)} DURATION "
           f"{duration} REPLICATION {s.replication}")  # fmt: skip
    out += f" SHARD DURATION {render_duration(s.shard_duration_ns)}" if s.shard_duration_ns else ""
    return out + (" DEFAULT" if s.default else "")


def render(stmt: A.Statement) -> str:
    match stmt:
        case A.SelectStatement():
            return _select(stmt)
        case A.ShowDatabases():
            return "SHOW DATABASES"
        case A.ShowMeasurements():
            return _show_measurements(stmt)
        case A.ShowTagKeys(db, sources, cond, limit, offset):
            return f"SHOW TAG KEYS{_on(db)}{_sources(sources)}{_where(cond)}{_lim(limit, offset)}"
        case A.ShowTagValues():
            return _show_tag_values(stmt)
        case A.ShowFieldKeys(db, sources, limit, offset):
            return f"SHOW FIELD KEYS{_on(db)}{_sources(sources)}{_lim(limit, offset)}"
        case A.ShowSeries(db, sources, cond, limit, offset):
            return f"SHOW SERIES{_on(db)}{_sources(sources)}{_where(cond)}{_lim(limit, offset)}"
        case A.ShowRetentionPolicies(db):
            return f"SHOW RETENTION POLICIES{_on(db)}"
        case A.CreateDatabase():
            return _create_database(stmt)
        case A.DropDatabase(name):
            return f"DROP DATABASE {quote_ident(name)}"
        case A.CreateRetentionPolicy():
            return _create_retention_policy(stmt)
        case A.DropMeasurement(name):
            return f"DROP MEASUREMENT {quote_ident(name)}"
        case A.Delete(sources, cond):
            return f"DELETE{_sources(sources)}{_where(cond)}"
        case A.DropSeries(sources, cond):
            return f"DROP SERIES{_sources(sources)}{_where(cond)}"
    raise TypeError(f"not a statement: {stmt!r}")
