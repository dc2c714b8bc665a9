"""Checks that type definitions only name types that exist and carry valid defaults."""

from __future__ import annotations

from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import did_you_mean
from flame.tosca import codes
from flame.tosca.schemas import PropertyDef, Schema
from flame.tosca.types import KIND_LABEL, PRIMITIVES, Registry, TypeDef
from flame.tosca.values import ValueChecker


def _no_functions(_name: str, _args: Any, _pos: Position) -> None:
    """Defaults may hold functions (evaluated at deployment); nothing to check here."""


def check_schema(
    schema: Schema | None, registry: Registry, sink: DiagnosticSink, what: str
) -> None:
    if schema is None:
        return
    if not registry.is_data_type(schema.type):
        sink.error(
            codes.UNKNOWN_TYPE,
            f"unknown data type '{schema.type}' for {what}",
            schema.pos,
            value=schema.type,
            hint=did_you_mean(schema.type, [*PRIMITIVES, *registry.names("data_types")])
            or "use a primitive (string, integer, float, boolean, list, map, scalar-unit.size ...) "
            "or define a data type",
        )
        return
    check_schema(schema.entry_schema, registry, sink, f"entries of {what}")
    check_schema(schema.key_schema, registry, sink, f"keys of {what}")


def _check_props(
    props: dict[str, PropertyDef],
    registry: Registry,
    sink: DiagnosticSink,
    owner: str,
    checker: ValueChecker,
) -> None:
    for pdef in props.values():
        what = f"'{pdef.name}' of {owner}"
        check_schema(pdef.schema, registry, sink, what)
        if (
            pdef.has_default
            and pdef.default is not None
            and registry.is_data_type(pdef.schema.type)
        ):
            checker.check(pdef.default, pdef.schema, pdef.default_pos, f"default of {what}")


def _ref(
    registry: Registry, kind: str, name: str | None, pos: Position, sink: DiagnosticSink, what: str
) -> TypeDef | None:
    if name is None:
        return None
    return registry.lookup(kind, name, pos, sink, what)


def check_definitions(new: list[TypeDef], registry: Registry, sink: DiagnosticSink) -> None:
    checker = ValueChecker(registry, sink, _no_functions)
    for tdef in new:
        owner = f"{KIND_LABEL[tdef.kind]} '{tdef.name}'"
        _check_props(tdef.own_properties, registry, sink, owner, checker)
        _check_props(tdef.own_attributes, registry, sink, owner, checker)
        if tdef.own_entry_schema is not None:
            check_schema(tdef.own_entry_schema, registry, sink, f"entries of {owner}")
        for cap in tdef.own_capabilities.values():
            what = f"capability '{cap.name}' of {owner}"
            _ref(registry, "capability_types", cap.type, cap.pos, sink, what)
            for source in cap.valid_source_types:
                _ref(registry, "node_types", source, cap.pos, sink, f"valid_source_types of {what}")
            _check_props(cap.properties, registry, sink, what, checker)
        for req in tdef.own_requirements.values():
            what = f"requirement '{req.name}' of {owner}"
            _ref(registry, "capability_types", req.capability, req.pos, sink, what)
            _ref(registry, "node_types", req.node, req.pos, sink, what)
            _ref(registry, "relationship_types", req.relationship, req.pos, sink, what)
        valid_kind = {
            "capability_types": "node_types",
            "relationship_types": "capability_types",
            "group_types": "node_types",
        }.get(tdef.kind)
        if tdef.kind == "policy_types":
            for name in tdef.valid_types:
                if (
                    registry.find("node_types", name) is None
                    and registry.find("group_types", name) is None
                ):
                    _ref(registry, "node_types", name, tdef.pos, sink, f"targets of {owner}")
        elif valid_kind is not None:
            for name in tdef.valid_types:
                _ref(registry, valid_kind, name, tdef.pos, sink, f"valid types of {owner}")
