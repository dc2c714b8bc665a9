"""TOSCA property definitions and schemas: types with constraints, entry and key schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, kind_of
from flame.common.yamlsrc import YMap
from flame.tosca import codes

PROPERTY_KEYS = {
    "type",
    "description",
    "required",
    "default",
    "value",
    "status",
    "constraints",
    "key_schema",
    "entry_schema",
    "external-schema",
    "metadata",
}
SCHEMA_KEYS = {"type", "description", "constraints", "key_schema", "entry_schema"}


@dataclass(slots=True)
class Constraint:
    operator: str
    argument: Any
    pos: Position


@dataclass(slots=True)
class Schema:
    """A type reference with constraints: property definitions, entry and key schemas."""

    type: str
    pos: Position
    constraints: list[Constraint] = field(default_factory=list)
    entry_schema: Schema | None = None
    key_schema: Schema | None = None


@dataclass(slots=True)
class PropertyDef:
    name: str
    schema: Schema
    required: bool
    has_default: bool
    default: Any
    pos: Position
    default_pos: Position


def parse_schema(
    value: Any, pos: Position, what: str, sink: DiagnosticSink, allowed: set[str] = SCHEMA_KEYS
) -> Schema | None:
    if isinstance(value, str):
        return Schema(value, pos)
    m = as_map(value, pos, what, sink)
    if m is None:
        return None
    check_keys(m, allowed, what, sink)
    type_name = m.get("type")
    if not isinstance(type_name, str):
        sink.error(
            codes.MISSING_KEY if type_name is None else codes.WRONG_SHAPE,
            f"{what} needs a 'type' naming a primitive or data type",
            m.at("type"),
            hint="for example 'type: string'",
        )
        return None
    schema = Schema(type_name, m.at("type"))
    if "constraints" in m:
        schema.constraints = parse_constraints(m["constraints"], m.at("constraints"), sink)
    if "entry_schema" in m:
        schema.entry_schema = parse_schema(
            m["entry_schema"], m.at("entry_schema"), "entry_schema", sink
        )
    if "key_schema" in m:
        schema.key_schema = parse_schema(m["key_schema"], m.at("key_schema"), "key_schema", sink)
    return schema


CONSTRAINT_OPERATORS = {
    "equal",
    "greater_than",
    "greater_or_equal",
    "less_than",
    "less_or_equal",
    "in_range",
    "valid_values",
    "length",
    "min_length",
    "max_length",
    "pattern",
    "schema",
}


def parse_constraints(value: Any, pos: Position, sink: DiagnosticSink) -> list[Constraint]:
    seq = as_list(value, pos, "constraints", sink)
    if seq is None:
        return []
    found: list[Constraint] = []
    for index, item in enumerate(seq):
        item_pos = seq.at(index)
        if not isinstance(item, YMap) or len(item) != 1:
            sink.error(
                codes.BAD_CONSTRAINT,
                "each constraint must be a mapping with one operator, e.g. '- greater_than: 0'",
                item_pos,
            )
            continue
        operator = next(iter(item))
        argument = item[operator]
        arg_pos = item.at(operator)
        if operator not in CONSTRAINT_OPERATORS:
            sink.error(
                codes.BAD_CONSTRAINT,
                f"unknown constraint operator '{operator}'",
                item.key_at(operator),
                value=operator,
                hint=did_you_mean(operator, CONSTRAINT_OPERATORS)
                or f"use one of {', '.join(sorted(CONSTRAINT_OPERATORS))}",
            )
            continue
        if operator in ("in_range",) and not (isinstance(argument, list) and len(argument) == 2):
            sink.error(
                codes.BAD_CONSTRAINT,
                f"in_range needs a list of two bounds, got {kind_of(argument)}",
                arg_pos,
                hint="for example 'in_range: [1, 10]'",
            )
            continue
        if operator == "valid_values" and not isinstance(argument, list):
            sink.error(
                codes.BAD_CONSTRAINT,
                f"valid_values needs a list, got {kind_of(argument)}",
                arg_pos,
                hint="for example 'valid_values: [a, b]'",
            )
            continue
        if operator in ("length", "min_length", "max_length") and (
            isinstance(argument, bool) or not isinstance(argument, int) or argument < 0
        ):
            sink.error(
                codes.BAD_CONSTRAINT,
                f"{operator} needs a non-negative integer, got {kind_of(argument)}",
                arg_pos,
            )
            continue
        if operator == "pattern":
            if not isinstance(argument, str):
                sink.error(
                    codes.BAD_CONSTRAINT, "pattern needs a regular expression string", arg_pos
                )
                continue
            try:
                re.compile(argument)
            except re.error as exc:
                sink.error(
                    codes.BAD_CONSTRAINT,
                    f"pattern is not a valid regular expression: {exc}",
                    arg_pos,
                    value=argument,
                )
                continue
        found.append(Constraint(operator, argument, arg_pos))
    return found


def parse_property_defs(
    value: Any, pos: Position, owner: str, sink: DiagnosticSink, attributes: bool = False
) -> dict[str, PropertyDef]:
    section = as_map(value, pos, f"{'attributes' if attributes else 'properties'} of {owner}", sink)
    result: dict[str, PropertyDef] = {}
    if section is None:
        return result
    for name, body in section.items():
        what = f"{'attribute' if attributes else 'property'} '{name}' of {owner}"
        schema = parse_schema(body, section.at(name), what, sink, PROPERTY_KEYS)
        if schema is None:
            continue
        m = body if isinstance(body, YMap) else None
        required = True
        if m is not None and "required" in m:
            if isinstance(m["required"], bool):
                required = m["required"]
            else:
                sink.error(
                    codes.WRONG_VALUE_TYPE,
                    f"'required' of {what} must be true or false",
                    m.at("required"),
                    value=m["required"],
                )
        has_default = m is not None and "default" in m
        result[name] = PropertyDef(
            name=name,
            schema=schema,
            required=required and not attributes,
            has_default=has_default,
            default=m["default"] if has_default and m is not None else None,
            pos=section.key_at(name),
            default_pos=m.at("default") if m is not None else section.at(name),
        )
    return result
