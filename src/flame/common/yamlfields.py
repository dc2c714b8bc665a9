"""Declarative field tables for user-written YAML mappings, with one way to locate a problem.

A `Shape` lists a mapping's fields; each `Field` names its key, what to use when it is absent and
a check that turns the YAML value into the model's value or returns a `Problem`. `read_map` walks
the table and hands every problem to `report`, the one mapper from a problem's location (the
field's value, its key, or the entry the mapping belongs to) to the YAML node's file:line:col.
Checks word their own messages and carry their own stable codes, so a file format keeps its
diagnostics while its field-by-field code becomes a table.

Checks that read a nested mapping call `read_map` again with their own shape, so nested problems
are located by the same mapper.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Literal

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_map, check_keys
from flame.common.yamlsrc import YMap

__all__ = [
    "ABSENT",
    "FAILED",
    "Check",
    "Field",
    "FieldContext",
    "Fields",
    "Problem",
    "Shape",
    "read_map",
    "report",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ABSENT: Any = _Marker("ABSENT")
"""As a `Field.default`: an absent key is not checked and reads as `Field.absent`."""

FAILED: Any = _Marker("FAILED")
"""Returned by a check that has already reported its problems (through `FieldContext.report`)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """What a check found wrong, worded in full; `report` locates it.

    `where` says which YAML node it points at: the field's value, the field's key, or the anchor
    (the entry the mapping belongs to, e.g. a node's id, used for missing fields). `key`
    overrides the field the location is taken from.
    """

    code: str
    message: str
    value: object = None
    hint: str | None = None
    where: Literal["value", "key", "anchor"] = "value"
    key: str | None = None


@dataclass(frozen=True, slots=True)
class FieldContext:
    """What a check knows besides the value: the subject (`what`), the key and the mapping."""

    what: str
    key: str
    map: YMap
    anchor: Position
    sink: DiagnosticSink

    @property
    def pos(self) -> Position:
        """Where the field's value is (the mapping itself when the key is absent)."""
        return self.map.at(self.key)

    def report(self, problem: Problem) -> None:
        report(self.sink, self.map, self.key, problem, self.anchor)


Check = Callable[[Any, FieldContext], Any]
"""Turns a YAML value into the model's value; returns a `Problem` or `FAILED` when it cannot."""


def _accept(value: Any, _ctx: FieldContext) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a mapping.

    Absent keys: `missing` is reported (a required field), else `default` is checked like a
    written value, else (`default` is ABSENT) the field reads as `absent` without a check.
    `missing`'s message is a template: `{what}` and `{key}` are filled in.
    `fatal`: when the check fails, the rest of the mapping is not read.
    """

    key: str
    check: Check = _accept
    default: Any = ABSENT
    absent: Any = None
    missing: Problem | None = None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Shape:
    """A mapping's fields, in the order they are checked, and the keys it allows.

    `allowed` defaults to the fields' keys; it may be wider (keys only described) or narrower
    (fields read for every kind of entry but allowed only for some). `keys_first` reports
    unknown keys before the fields, else after; `stop_at_first` stops at the first failed field.
    """

    fields: tuple[Field, ...]
    allowed: Collection[str] | None = None
    keys_first: bool = True
    stop_at_first: bool = False

    def allowed_keys(self) -> Collection[str]:
        return self.allowed if self.allowed is not None else {f.key for f in self.fields}


@dataclass(slots=True)
class Fields:
    """The values `read_map` read (None for a failed field), whether all passed, and the map."""

    values: dict[str, Any]
    ok: bool
    map: YMap

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def report(
    sink: DiagnosticSink, m: YMap, key: str, problem: Problem, anchor: Position | None = None
) -> None:
    """The one mapper: put `problem`, raised by field `key` of `m`, at its YAML node."""
    field_key = problem.key if problem.key is not None else key
    if problem.where == "key":
        pos = m.key_at(field_key)
    elif problem.where == "anchor":
        pos = anchor if anchor is not None else m.pos
    else:
        pos = m.at(field_key)
    sink.error(problem.code, problem.message, pos, value=problem.value, hint=problem.hint)


def read_map(
    value: Any,
    pos: Position,
    what: str,
    sink: DiagnosticSink,
    shape: Shape,
    *,
    anchor: Position | None = None,
) -> Fields | None:
    """Read `value` (found at `pos`) as a mapping of `shape`; None if it is not a mapping.

    Every problem is reported to `sink`; failed fields read as None and make `ok` false.
    """
    m = as_map(value, pos, what, sink)
    if m is None:
        return None
    if shape.keys_first:
        check_keys(m, shape.allowed_keys(), what, sink)
    where = anchor if anchor is not None else m.pos
    values: dict[str, Any] = {}
    ok = True
    for field in shape.fields:
        result = _read_field(m, field, what, where, sink)
        if result is FAILED:
            ok = False
            values[field.key] = None
            if field.fatal or shape.stop_at_first:
                break
        else:
            values[field.key] = result
    if not shape.keys_first:
        check_keys(m, shape.allowed_keys(), what, sink)
    return Fields(values, ok, m)


def _read_field(m: YMap, field: Field, what: str, anchor: Position, sink: DiagnosticSink) -> Any:
    if field.key in m:
        raw = m[field.key]
    elif field.missing is not None:
        message = field.missing.message.format(what=what, key=field.key)
        report(sink, m, field.key, replace(field.missing, message=message), anchor)
        return FAILED
    elif field.default is ABSENT:
        return field.absent
    else:
        raw = field.default
    ctx = FieldContext(what, field.key, m, anchor, sink)
    result = field.check(raw, ctx)
    if isinstance(result, Problem):
        ctx.report(result)
        return FAILED
    return result
