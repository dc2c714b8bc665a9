"""The SELECT list: wildcard expansion, aggregate/raw classification and InfluxDB column names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flame.clmc.influxql import ast as A
from flame.clmc.influxql.errors import StatementError
from flame.clmc.influxql.render import render_expr
from flame.clmc.influxql.transforms import TRANSFORMS, check_transform
from flame.clmc.store.base import FieldType, MeasurementSchema

__all__ = ["AGGREGATES", "SELECTORS", "SelectList", "calls_in", "plan_fields"]

AGGREGATES = frozenset(
    {
        "count",
        "sum",
        "mean",
        "median",
        "min",
        "max",
        "first",
        "last",
        "spread",
        "stddev",
        "percentile",
        "distinct",
        "mode",
        "top",
        "bottom",
    }
)
SELECTORS = frozenset({"first", "last", "min", "max", "percentile"})
POINTS = frozenset({"top", "bottom"})  # selectors of several points
NUMERIC_ONLY = frozenset({"sum", "mean", "median", "min", "max", "spread", "stddev", "percentile"})
_NUMERIC = frozenset({FieldType.FLOAT, FieldType.INTEGER, FieldType.UNSIGNED})


@dataclass(frozen=True, slots=True)
class SelectList:
    exprs: tuple[A.Expr, ...]
    names: tuple[str, ...]
    aggregate: bool
    calls: tuple[A.Call, ...]  # distinct aggregate calls, in order of appearance
    aux: tuple[A.VarRef, ...] = ()  # read from a lone selector's point (`max(v), host`)
    transform: A.Call | None = None  # derivative(...) and friends, applied to exprs[0]
    top: A.Call | None = None  # top(f, N) / bottom(f, N): N points per series and window


def calls_in(expr: A.Expr) -> Iterable[A.Call]:
    if isinstance(expr, A.Call):
        yield expr
    elif isinstance(expr, A.BinaryExpr):
        yield from calls_in(expr.lhs)
        yield from calls_in(expr.rhs)


def _has_bare_ref(expr: A.Expr) -> bool:
    if isinstance(expr, A.VarRef):
        return True
    if isinstance(expr, A.BinaryExpr):
        return _has_bare_ref(expr.lhs) or _has_bare_ref(expr.rhs)
    return False


def _name(expr: A.Expr) -> str:
    match expr:
        case A.VarRef(name):
            return name
        case A.Call(name):
            return name
        case A.BinaryExpr(_, lhs, rhs):
            parts = [p for p in (_name(lhs), _name(rhs)) if p]
            return "_".join(parts)
    return ""


def _dedupe(names: Sequence[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        unique, n = name, 0
        while unique in seen:
            n += 1
            unique = f"{name}_{n}"
        seen.add(unique)
        out.append(unique)
    return tuple(out)


def plan_fields(
    fields: Sequence[A.Field], schemas: Sequence[MeasurementSchema], group_tags: Sequence[str]
) -> SelectList:
    field_types: dict[str, FieldType] = {}
    tags: set[str] = set()
    for s in schemas:
        tags.update(s.tag_keys)
        for k, t in s.field_types.items():
            field_types.setdefault(k, t)
    tags.difference_update(group_tags)
    transform = _transform_of(fields)
    if transform is not None:
        return transform
    found = {c for f in fields for c in calls_in(f.expr) if not _is_wildcard_call(c)}
    aggregate = bool(found) or any(_is_wildcard_call(c) for f in fields for c in calls_in(f.expr))
    # beside a single selector, fields and tags are read from the selected point
    if len(found) > 1 and any(c.name in POINTS for c in found):
        name = next(c.name for c in found if c.name in POINTS)
        raise StatementError(f"selector function {name}() cannot be combined with other functions")
    selector = len(found) == 1 and next(iter(found)).name in SELECTORS | POINTS
    mixed = aggregate and not selector

    exprs: list[A.Expr] = []
    names: list[str] = []
    for f in fields:
        expr = f.expr
        if isinstance(expr, A.VarRef) and expr.name.lower() == "time":
            continue  # time is always the first column
        if isinstance(expr, A.Wildcard):
            if mixed:
                raise StatementError("mixing aggregate and non-aggregate queries is not supported")
            _expand_wildcard(expr, field_types, tags, exprs, names)
        elif isinstance(expr, A.Call) and _is_wildcard_call(expr):
            _expand_wildcard_call(expr, field_types, exprs, names)
        else:
            if mixed and _has_bare_ref(expr):
                raise StatementError("mixing aggregate and non-aggregate queries is not supported")
            exprs.append(expr)
            names.append(f.alias or _name(expr))

    calls = _checked_calls(exprs)
    aux: list[A.VarRef] = []
    if aggregate:
        for expr in exprs:
            for ref in _bare_refs(expr):
                if ref not in aux:
                    aux.append(ref)
    top = calls[0] if len(calls) == 1 and calls[0].name in POINTS else None
    return SelectList(tuple(exprs), _dedupe(names), aggregate, tuple(calls), tuple(aux), top=top)


def _expand_wildcard(
    expr: A.Wildcard,
    field_types: dict[str, FieldType],
    tags: set[str],
    exprs: list[A.Expr],
    names: list[str],
) -> None:
    """`*`, `*::field`, `*::tag`: every field and/or tag, sorted, as InfluxDB lists them."""
    keys: set[str] = set()
    if expr.kind != "tag":
        keys.update(field_types)
    if expr.kind != "field":
        keys.update(tags)
    for key in sorted(keys):
        both = key in tags and key in field_types
        if key in field_types and expr.kind != "tag":
            exprs.append(A.VarRef(key, "field" if both else None))
            names.append(key)
        if key in tags and expr.kind != "field":
            exprs.append(A.VarRef(key, "tag"))
            names.append(key)  # `key_1` when it is a field too, as InfluxDB


def _expand_wildcard_call(
    expr: A.Call, field_types: dict[str, FieldType], exprs: list[A.Expr], names: list[str]
) -> None:
    """`mean(*)`: the call on every field it accepts, named `mean_<field>`."""
    for key in sorted(field_types):
        if expr.name in NUMERIC_ONLY and field_types[key] not in _NUMERIC:
            continue
        exprs.append(A.Call(expr.name, (A.VarRef(key), *expr.args[1:])))
        names.append(f"{expr.name}_{key}")


def _checked_calls(exprs: Sequence[A.Expr]) -> list[A.Call]:
    """The distinct calls of the select list, in order, each checked."""
    calls: list[A.Call] = []
    for expr in exprs:
        for call in calls_in(expr):
            _check_call(call)
            if call not in calls:
                calls.append(call)
    if any(c.name == "distinct" for c in calls) and len(exprs) > 1:
        raise StatementError(
            "aggregate function distinct() cannot be combined with other functions or fields"
        )
    return calls


def _transform_of(fields: Sequence[A.Field]) -> SelectList | None:
    """The plan of `SELECT derivative(x|agg(x)[, unit]) ...`: the inner series, transformed."""
    found = [c for f in fields for c in calls_in(f.expr) if c.name in TRANSFORMS]
    if not found:
        return None
    call = found[0]
    if len(fields) != 1 or fields[0].expr != call:
        raise StatementError(f"{call.name}() must be the only field of its query on this server")
    check_transform(call)
    inner = call.args[0]
    name = fields[0].alias or call.name
    if isinstance(inner, A.VarRef):
        return SelectList((inner,), (name,), False, (), transform=call)
    if isinstance(inner, A.Call) and inner.name in AGGREGATES and inner.name != "distinct":
        _check_call(inner)
        return SelectList((inner,), (name,), True, (inner,), transform=call)
    raise StatementError(f"aggregate function required inside the call to {call.name}")


def _is_wildcard_call(call: A.Call) -> bool:
    return bool(call.args) and isinstance(call.args[0], A.Wildcard)


def _bare_refs(expr: A.Expr) -> list[A.VarRef]:
    if isinstance(expr, A.VarRef):
        return [expr]
    if isinstance(expr, A.BinaryExpr):
        return _bare_refs(expr.lhs) + _bare_refs(expr.rhs)
    return []


def _check_call(call: A.Call) -> None:
    name = call.name
    if name not in AGGREGATES:
        if name == "count" or name in (
            "top",
            "bottom",
            "sample",
            "integral",
            "elapsed",
            "holt_winters",
        ):
            raise StatementError(f"function {name}() is not supported by this server")
        raise StatementError(f"undefined function {name}()")
    if name in POINTS:
        if len(call.args) == 3:
            raise StatementError(f"{name}() by tag values is not supported by this server")
        if len(call.args) != 2 or not isinstance(call.args[0], A.VarRef):
            raise StatementError(
                f"invalid number of arguments for {name}, expected at least 2, got {len(call.args)}"
            )
        limit = call.args[1]
        if not isinstance(limit, A.IntegerLiteral):
            raise StatementError(
                f"expected integer as last argument in {name}(), found {render_expr(limit)}"
            )
        if limit.value < 1:
            raise StatementError(f"limit ({limit.value}) in {name} function must be at least 1")
        return
    want = 2 if name == "percentile" else 1
    if len(call.args) != want:
        raise StatementError(
            f"invalid number of arguments for {name}, expected {want}, got {len(call.args)}"
        )
    arg = call.args[0]
    if name == "count" and isinstance(arg, A.Call) and arg.name == "distinct":
        if len(arg.args) != 1 or not isinstance(arg.args[0], A.VarRef):
            raise StatementError("expected field argument in distinct()")
        return
    if not isinstance(arg, A.VarRef):
        raise StatementError(f"expected field argument in {name}()")
    if name == "percentile" and not isinstance(call.args[1], A.IntegerLiteral | A.NumberLiteral):
        raise StatementError("expected float argument in percentile()")
