"""WHERE clauses: the time range is taken out of the top-level AND chain (InfluxDB only bounds
time there); the rest compiles to a SQL predicate over one measurement's table."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.dialect import Dialect
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.timefmt import parse_time_string
from flame.clmc.store.base import FieldType, MeasurementSchema

__all__ = ["Params", "TimeRange", "compile_condition", "split_time"]

_NUMERIC = frozenset({FieldType.FLOAT, FieldType.INTEGER, FieldType.UNSIGNED})
_FLIP = {A.Op.LT: A.Op.GT, A.Op.GT: A.Op.LT, A.Op.LTE: A.Op.GTE, A.Op.GTE: A.Op.LTE}


_MARK = re.compile("\x1e(\\d+)\x1e")


class Params:
    """SQL parameters. `add` returns a marker; `finish` numbers the markers the SQL still uses
    ($1, $2, ...), so pieces can be built in any order and dropped pieces leave no parameter."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object) -> str:
        self.values.append(value)
        return f"\x1e{len(self.values) - 1}\x1e"

    def finish(self, sql: str) -> tuple[str, list[object]]:
        used: dict[int, int] = {}

        def number(m: re.Match[str]) -> str:
            idx = int(m.group(1))
            if idx not in used:
                used[idx] = len(used) + 1
            return f"${used[idx]}"

        text = _MARK.sub(number, sql)
        values: list[object] = [None] * len(used)
        for idx, pos in used.items():
            values[pos - 1] = self.values[idx]
        return text, values


@dataclass(frozen=True, slots=True)
class TimeRange:
    lo: int | None = None  # inclusive ns
    hi: int | None = None  # inclusive ns

    def sql(self, column: str, params: Params) -> list[str]:
        out = []
        if self.lo is not None:
            out.append(f"{column} >= {params.add(self.lo)}")
        if self.hi is not None:
            out.append(f"{column} <= {params.add(self.hi)}")
        return out

    @property
    def empty(self) -> bool:
        return self.lo is not None and self.hi is not None and self.lo > self.hi


def _is_time(expr: A.Expr) -> bool:
    return isinstance(expr, A.VarRef) and expr.name.lower() == "time"


def _mentions_time(expr: A.Expr) -> bool:
    if _is_time(expr):
        return True
    if isinstance(expr, A.BinaryExpr):
        return _mentions_time(expr.lhs) or _mentions_time(expr.rhs)
    if isinstance(expr, A.Call):
        return expr.name == "now" or any(_mentions_time(a) for a in expr.args)
    return False


def time_value(expr: A.Expr, now_ns: int) -> int:
    """The ns value of the other side of a time comparison."""
    match expr:
        case A.StringLiteral(text):
            ns = parse_time_string(text)
            if ns is None:
                raise StatementError(
                    f"invalid time literal: '{text}' (use RFC3339, e.g. '2026-01-01T00:00:00Z')"
                )
            return ns
        case A.IntegerLiteral(v) | A.DurationLiteral(v):
            return v
        case A.NumberLiteral(v):
            return int(v)
        case A.Call("now", ()):
            return now_ns
        case A.BinaryExpr(A.Op.ADD, lhs, rhs):
            return time_value(lhs, now_ns) + time_value(rhs, now_ns)
        case A.BinaryExpr(A.Op.SUB, lhs, rhs):
            return time_value(lhs, now_ns) - time_value(rhs, now_ns)
    raise StatementError(
        "invalid time condition: compare time with a time string, an integer, or now() +/- a duration"
    )


def split_time(cond: A.Expr | None, now_ns: int) -> tuple[TimeRange, A.Expr | None]:
    """The time range bounded by every time comparison and the condition without them.

    As InfluxDB 1.6, a time comparison bounds the whole query wherever it stands, even under
    OR, and drops out of what remains: `host = 'a' OR time > X` is host a after X."""
    bounds: list[tuple[A.Op, int]] = []

    def strip(e: A.Expr) -> A.Expr | None:  # None: nothing left
        if isinstance(e, A.BinaryExpr) and e.op in (A.Op.AND, A.Op.OR):
            lhs, rhs = strip(e.lhs), strip(e.rhs)
            if lhs is None or rhs is None:
                return lhs or rhs  # the time part drops out of AND and OR alike
            return A.BinaryExpr(e.op, lhs, rhs)
        if not _mentions_time(e):
            return e
        bounds.append(_time_bound(e, now_ns))
        return None

    rest = strip(cond) if cond is not None else None
    lo: int | None = None
    hi: int | None = None
    for op, value in bounds:
        if op in (A.Op.GT, A.Op.GTE, A.Op.EQ):
            v = value + 1 if op is A.Op.GT else value
            lo = v if lo is None else max(lo, v)
        if op in (A.Op.LT, A.Op.LTE, A.Op.EQ):
            v = value - 1 if op is A.Op.LT else value
            hi = v if hi is None else min(hi, v)
    return TimeRange(lo, hi), rest


def _time_bound(e: A.Expr, now_ns: int) -> tuple[A.Op, int]:
    """`time OP value` (either way round) as (op with time on the left, value in ns)."""
    comparisons = (A.Op.EQ, A.Op.LT, A.Op.LTE, A.Op.GT, A.Op.GTE)
    if not (isinstance(e, A.BinaryExpr) and e.op in comparisons):
        raise StatementError("invalid time condition: compare time with =, <, <=, > or >=")
    if _is_time(e.lhs):
        return e.op, time_value(e.rhs, now_ns)
    if _is_time(e.rhs):
        return _FLIP.get(e.op, e.op), time_value(e.lhs, now_ns)
    raise StatementError("invalid time condition: one side must be time")


@dataclass(frozen=True, slots=True)
class _Operand:
    sql: str
    kind: str  # "tag", "string", "number", "boolean", "null", or a FieldType value
    bare: str | None = None  # a tag's column without COALESCE
    text: str | None = None  # a string literal's value


class _CondCompiler:
    def __init__(self, schema: MeasurementSchema, params: Params, dialect: Dialect) -> None:
        self.schema, self.params, self.dialect = schema, params, dialect

    def operand(self, expr: A.Expr) -> _Operand:
        schema = self.schema
        match expr:
            case A.VarRef(name, hint):
                if hint != "tag" and name in schema.field_types:  # a field wins over a tag
                    return _Operand(schema.field_column(name), schema.field_types[name].value)
                if hint != "field" and name in schema.tag_keys:
                    col = schema.tag_column(name)
                    return _Operand(f"COALESCE({col}, '')", "tag", bare=col)
                return _Operand("''", "tag")  # unknown keys behave as absent tags
            case A.StringLiteral(v):
                return _Operand(self.params.add(v), "string", text=v)
            case A.IntegerLiteral(v) | A.DurationLiteral(v):
                return _Operand(f"CAST({self.params.add(v)} AS BIGINT)", "number")
            case A.NumberLiteral(v):
                return _Operand(f"CAST({self.params.add(v)} AS DOUBLE)", FieldType.FLOAT.value)
            case A.BooleanLiteral(v):
                return _Operand(self.params.add(v), "boolean")
            case A.BinaryExpr(op, lhs, rhs) if op in A.ARITHMETIC:
                a, b = self.operand(lhs), self.operand(rhs)
                if not (_numeric(a.kind) and _numeric(b.kind)):
                    return _Operand("NULL", "null")
                if op is A.Op.DIV:
                    return _Operand(self.dialect.float_div(a.sql, b.sql), FieldType.FLOAT.value)
                if op is A.Op.MOD:
                    is_float = FieldType.FLOAT.value in (a.kind, b.kind)
                    kind = FieldType.FLOAT.value if is_float else "number"
                    return _Operand(self.dialect.mod(a.sql, b.sql, is_float), kind)
                if op in (A.Op.BITAND, A.Op.BITOR, A.Op.BITXOR):
                    ints = ("number", FieldType.INTEGER.value, FieldType.UNSIGNED.value)
                    floats = (FieldType.FLOAT.value,)
                    if (
                        a.kind in floats
                        or b.kind in floats
                        or a.kind not in ints
                        or b.kind not in ints
                    ):
                        return _Operand("NULL", "null")
                if op is A.Op.BITXOR:
                    return _Operand(self.dialect.xor(a.sql, b.sql), FieldType.INTEGER.value)
                kind = (
                    FieldType.FLOAT.value if FieldType.FLOAT.value in (a.kind, b.kind) else "number"
                )
                return _Operand(f"({a.sql} {op.value} {b.sql})", kind)
        raise StatementError(f"unsupported expression in WHERE: {type(expr).__name__}")

    def cond(self, expr: A.Expr) -> str:
        if isinstance(expr, A.BinaryExpr):
            if expr.op in (A.Op.AND, A.Op.OR):
                return f"({self.cond(expr.lhs)} {expr.op.value} {self.cond(expr.rhs)})"
            if expr.op in (A.Op.EQREGEX, A.Op.NEQREGEX):
                if not isinstance(expr.rhs, A.RegexLiteral):
                    raise StatementError("the right side of =~ and !~ must be a regex")
                left = self.operand(expr.lhs)
                if left.kind not in ("tag", FieldType.STRING.value):
                    return "FALSE"
                match = self.dialect.regex_match(left.sql, self.params.add(expr.rhs.pattern))
                return f"(NOT {match})" if expr.op is A.Op.NEQREGEX else match
            if expr.op in A.COMPARISONS:
                return self.compare(expr.op, self.operand(expr.lhs), self.operand(expr.rhs))
        if isinstance(expr, A.BooleanLiteral):
            return "TRUE" if expr.value else "FALSE"
        raise StatementError("invalid condition: expected a comparison, AND or OR")

    def compare(self, op: A.Op, a: _Operand, b: _Operand) -> str:
        sql_op = "<>" if op is A.Op.NEQ else op.value
        stringy = ("tag", "string", FieldType.STRING.value)
        if a.kind in stringy and b.kind in stringy:
            if op is A.Op.EQ and a.bare is not None and b.text:
                return f"({a.bare} = {b.sql})"  # NULL never equals a non-empty value: skip COALESCE
            return f"({a.sql} {sql_op} {b.sql})"
        if _numeric(a.kind) and _numeric(b.kind):
            return f"({a.sql} {sql_op} {b.sql})"
        boolish = ("boolean", FieldType.BOOLEAN.value)
        if a.kind in boolish and b.kind in boolish and op in (A.Op.EQ, A.Op.NEQ):
            return f"({a.sql} {sql_op} {b.sql})"
        return "FALSE"  # incomparable types never match, as in InfluxDB


def _numeric(kind: str) -> bool:
    return kind == "number" or kind in {t.value for t in _NUMERIC}


def compile_condition(
    expr: A.Expr, schema: MeasurementSchema, params: Params, dialect: Dialect
) -> str:
    return _CondCompiler(schema, params, dialect).cond(expr)
