"""Checking assigned values against TOSCA schemas, data types and constraints."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.units import (
    SCALAR_UNITS,
    ScalarError,
    is_range,
    is_timestamp,
    is_version,
    parse_scalar,
    version_key,
)
from flame.common.yamlshape import did_you_mean, kind_of
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.schemas import Constraint, PropertyDef, Schema
from flame.tosca.types import PRIMITIVES, Registry, TypeDef

FUNCTIONS = frozenset(
    {
        "get_input",
        "get_property",
        "get_attribute",
        "get_operation_output",
        "get_nodes_of_type",
        "get_artifact",
        "concat",
        "join",
        "token",
    }
)

# Called for every function use found in a value: (name, arguments, position).
FunctionHook = Callable[[str, Any, Position], None]


def function_call(value: Any) -> tuple[str, Any] | None:
    if isinstance(value, dict) and len(value) == 1:
        name = next(iter(value))
        if name in FUNCTIONS:
            return name, value[name]
    return None


@dataclass(frozen=True, slots=True)
class _Primitive:
    """A primitive type checked by one test: what it accepts, and its comparable form."""

    accepts: Callable[[Any], bool]
    expected: str  # "must be ..." in the diagnostic
    hint: str | None = None
    normal: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SIMPLE = {
    "string": _Primitive(lambda v: isinstance(v, str), "a string", 'quote the value, e.g. "1.0"'),
    "integer": _Primitive(_is_int, "an integer"),
    "float": _Primitive(_is_number, "a number", normal=float),
    "boolean": _Primitive(lambda v: isinstance(v, bool), "true or false"),
    "null": _Primitive(lambda v: v is None, "null"),
    "timestamp": _Primitive(is_timestamp, "an ISO 8601 timestamp", "e.g. 2026-11-23T19:00:00Z"),
    # version_key makes versions comparable: 1.10 > 1.9
    "version": _Primitive(is_version, "a version like 1.2 or 1.2.3", normal=version_key),
    "range": _Primitive(is_range, "a range [low, high] of integers (high may be UNBOUNDED)"),
}


def _describe(value: Any) -> str:
    return kind_of(value)


class ValueChecker:
    """Checks one value against a schema, reporting every problem into `sink`."""

    def __init__(self, registry: Registry, sink: DiagnosticSink, on_function: FunctionHook) -> None:
        self.registry = registry
        self.sink = sink
        self.on_function = on_function

    def check_properties(
        self,
        assigned: YMap | None,
        defs: dict[str, PropertyDef],
        owner: str,
        pos: Position,
        *,
        require: bool = True,
        kind: str = "property",
    ) -> None:
        """Check a `properties:` (or `attributes:`) block against definitions."""
        if assigned is not None:
            for name, value in assigned.items():
                pdef = defs.get(name)
                if pdef is None:
                    self.sink.error(
                        codes.UNKNOWN_PROPERTY if kind == "property" else codes.UNKNOWN_ATTRIBUTE,
                        f"{owner} has no {kind} '{name}'",
                        assigned.key_at(name),
                        value=name,
                        hint=did_you_mean(name, defs)
                        or (
                            f"its {kind} names are: {', '.join(sorted(defs))}"
                            if defs
                            else f"it defines no {kind}"
                        ),
                    )
                    continue
                self.check(value, pdef.schema, assigned.at(name), f"{kind} '{name}' of {owner}")
        if require:
            for name, pdef in defs.items():
                if (
                    pdef.required
                    and not pdef.has_default
                    and (assigned is None or name not in assigned)
                ):
                    self.sink.error(
                        codes.MISSING_PROPERTY,
                        f"{owner} is missing required {kind} '{name}' ({pdef.schema.type})",
                        pos,
                        value=name,
                        hint=f"add '{name}:' under properties",
                    )

    def check(self, value: Any, schema: Schema, pos: Position, what: str) -> Any:
        """Check `value`; return its normalised form for constraint comparison (or None)."""
        call = function_call(value)
        if call is not None:
            self.on_function(call[0], call[1], pos)
            return None
        normal = self._check_type(value, schema.type, schema, pos, what)
        if normal is _BAD:
            return None
        self._check_constraints(value, normal, schema.constraints, schema.type, pos, what)
        return normal

    def _wrong(
        self, value: Any, expected: str, pos: Position, what: str, hint: str | None = None
    ) -> Any:
        self.sink.error(
            codes.WRONG_VALUE_TYPE,
            f"{what} must be {expected}, got {_describe(value)}",
            pos,
            value=value if not isinstance(value, dict | list) else None,
            hint=hint,
        )
        return _BAD

    def _check_type(
        self, value: Any, type_name: str, schema: Schema | None, pos: Position, what: str
    ) -> Any:
        if type_name in PRIMITIVES:
            return self._check_primitive(value, type_name, schema, pos, what)
        dtype = self.registry.find("data_types", type_name)
        if dtype is None:
            # An unknown type is reported once where it is defined, not at every use.
            return _BAD
        primitive = dtype.primitive
        if primitive is not None:
            normal = self._check_primitive(
                value, primitive, Schema(primitive, pos, [], dtype.entry_schema), pos, what
            )
            if normal is not _BAD:
                self._check_constraints(value, normal, dtype.constraints, primitive, pos, what)
            return normal
        return self._check_data(value, dtype, pos, what)

    def _check_data(self, value: Any, dtype: TypeDef, pos: Position, what: str) -> Any:
        if dtype.is_a("tosca.datatypes.json") or dtype.is_a("tosca.datatypes.xml"):
            if not isinstance(value, str | dict | list):
                return self._wrong(value, "a JSON/XML document", pos, what)
            return value
        if not isinstance(value, YMap):
            if isinstance(value, dict) or (
                dtype.entry_schema is not None and isinstance(value, dict)
            ):
                return value
            return self._wrong(
                value,
                f"a mapping of {dtype.name} fields",
                pos,
                what,
                hint=f"fields: {', '.join(sorted(dtype.properties))}" if dtype.properties else None,
            )
        self.check_properties(value, dtype.properties, f"{what} ({dtype.name})", value.pos)
        self._check_constraints(value, value, dtype.constraints, dtype.name, pos, what)
        return value

    def _check_primitive(
        self, value: Any, type_name: str, schema: Schema | None, pos: Position, what: str
    ) -> Any:
        simple = _SIMPLE.get(type_name)
        if simple is not None:
            if not simple.accepts(value):
                return self._wrong(value, simple.expected, pos, what, hint=simple.hint)
            return simple.normal(value)
        if type_name in SCALAR_UNITS:
            try:
                return parse_scalar(value, type_name)
            except ScalarError as exc:
                self.sink.error(codes.BAD_SCALAR, f"{what}: {exc}", pos, value=value, hint=exc.hint)
                return _BAD
        if type_name == "list":
            return self._check_list(value, schema, pos, what)
        if type_name == "map":
            return self._check_map(value, schema, pos, what)
        return value  # 'any'; PRIMITIVES is closed

    def _check_list(self, value: Any, schema: Schema | None, pos: Position, what: str) -> Any:
        if not isinstance(value, list):
            return self._wrong(value, "a list", pos, what, hint="write one '- item' per line")
        entry = schema.entry_schema if schema is not None else None
        if entry is not None:
            for index, item in enumerate(value):
                item_pos = value.at(index) if isinstance(value, YSeq) else pos
                self.check(item, entry, item_pos, f"{what}[{index}]")
        return value

    def _check_map(self, value: Any, schema: Schema | None, pos: Position, what: str) -> Any:
        if not isinstance(value, dict):
            return self._wrong(value, "a mapping", pos, what)
        entry = schema.entry_schema if schema is not None else None
        key_schema = schema.key_schema if schema is not None else None
        for key, item in value.items():
            item_pos = value.at(key) if isinstance(value, YMap) else pos
            if key_schema is not None:
                key_pos = value.key_at(key) if isinstance(value, YMap) else pos
                self.check(key, key_schema, key_pos, f"key '{key}' of {what}")
            if entry is not None:
                self.check(item, entry, item_pos, f"entry '{key}' of {what}")
        return value

    # -- constraints ---------------------------------------------------------------------

    def _check_constraints(
        self,
        raw: Any,
        normal: Any,
        constraints: list[Constraint],
        type_name: str,
        pos: Position,
        what: str,
    ) -> None:
        for constraint in constraints:
            problem = self._violates(raw, normal, constraint, type_name)
            if problem is not None:
                message, hint = problem
                self.sink.error(
                    codes.CONSTRAINT_VIOLATED,
                    f"{what}: {message}",
                    pos,
                    value=raw if not isinstance(raw, dict | list) else None,
                    hint=hint,
                )

    def _arg(self, argument: Any, type_name: str) -> Any:
        if type_name == "version":
            return version_key(argument) if is_version(argument) else argument
        if type_name in SCALAR_UNITS:
            try:
                return parse_scalar(argument, type_name)
            except ScalarError:
                return None
        return argument

    def _violates(
        self, raw: Any, normal: Any, c: Constraint, type_name: str
    ) -> tuple[str, str | None] | None:
        op, arg = c.operator, c.argument
        if op in ("equal", "greater_than", "greater_or_equal", "less_than", "less_or_equal"):
            bound = self._arg(arg, type_name)
            try:
                ok = {
                    "equal": lambda: normal == bound,
                    "greater_than": lambda: normal > bound,
                    "greater_or_equal": lambda: normal >= bound,
                    "less_than": lambda: normal < bound,
                    "less_or_equal": lambda: normal <= bound,
                }[op]()
            except TypeError:
                return (f"cannot compare {raw!r} with {arg!r} ({op})", None)
            if not ok:
                words = op.replace("_", " ")
                return (
                    f"{raw!r} is not {words} {arg!r}"
                    if op != "equal"
                    else f"{raw!r} must equal {arg!r}",
                    None,
                )
            return None
        if op == "in_range":
            low = self._arg(arg[0], type_name)
            high = arg[1]
            high_value = None if high == "UNBOUNDED" else self._arg(high, type_name)
            # A range value is within a range when both of its bounds are.
            points = (
                [math.inf if p == "UNBOUNDED" else p for p in normal]
                if isinstance(normal, list)
                else [normal]
            )
            try:
                ok = all(p >= low and (high_value is None or p <= high_value) for p in points)
            except TypeError:
                return (f"cannot compare {raw!r} with range {arg!r}", None)
            if not ok:
                return (
                    f"{raw!r} is outside the range [{arg[0]}, {arg[1]}]",
                    f"use a value from {arg[0]} to {arg[1]}",
                )
            return None
        if op == "valid_values":
            allowed = [self._arg(a, type_name) for a in arg]
            if normal not in allowed:
                hint = did_you_mean(raw, [str(a) for a in arg]) if isinstance(raw, str) else None
                listed = ", ".join(str(a) for a in arg)
                return (
                    f"{raw!r} is not one of the valid values: {listed}",
                    hint or f"use one of: {listed}",
                )
            return None
        if op in ("length", "min_length", "max_length"):
            if not isinstance(raw, str | list | dict):
                return None
            size = len(raw)
            if op == "length" and size != arg:
                return (f"length is {size}, must be {arg}", None)
            if op == "min_length" and size < arg:
                return (f"length is {size}, must be at least {arg}", None)
            if op == "max_length" and size > arg:
                return (f"length is {size}, must be at most {arg}", None)
            return None
        if op == "pattern":
            if isinstance(raw, str) and re.fullmatch(arg, raw) is None:
                return (f"'{raw}' does not match the pattern {arg!r}", None)
            return None
        return None  # 'schema' constraints are not evaluated here


class _Bad:
    """Marker: the value failed its type check, so constraints are not evaluated."""


_BAD = _Bad()
