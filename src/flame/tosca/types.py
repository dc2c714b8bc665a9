"""TOSCA type definitions and the registry that resolves their derivation.

A `TypeDef` keeps its own declarations; what it inherits is merged on first use and cached. The
registry is layered: the normative types and the FLAME profile are parsed once per process and
every validation adds the user's own types to a cheap copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, entries
from flame.common.yamlsrc import YMap
from flame.tosca import codes
from flame.tosca.schemas import (
    Constraint,
    PropertyDef,
    Schema,
    parse_constraints,
    parse_property_defs,
    parse_schema,
)

PRIMITIVES = frozenset(
    {
        "string",
        "integer",
        "float",
        "boolean",
        "timestamp",
        "null",
        "version",
        "range",
        "list",
        "map",
        "scalar-unit.size",
        "scalar-unit.time",
        "scalar-unit.frequency",
        "scalar-unit.bitrate",
        "any",
    }
)

KINDS = (
    "artifact_types",
    "data_types",
    "capability_types",
    "interface_types",
    "relationship_types",
    "node_types",
    "group_types",
    "policy_types",
)
KIND_LABEL = {
    "artifact_types": "artifact type",
    "data_types": "data type",
    "capability_types": "capability type",
    "interface_types": "interface type",
    "relationship_types": "relationship type",
    "node_types": "node type",
    "group_types": "group type",
    "policy_types": "policy type",
}
# The TOSCA short-name category of each kind: tosca.<category>.X may be written as X or tosca:X.
_CATEGORY = {
    "artifact_types": "artifacts",
    "data_types": "datatypes",
    "capability_types": "capabilities",
    "interface_types": "interfaces",
    "relationship_types": "relationships",
    "node_types": "nodes",
    "group_types": "groups",
    "policy_types": "policies",
}

_COMMON_KEYS = {"derived_from", "version", "metadata", "description", "properties", "attributes"}
_KIND_KEYS: dict[str, set[str]] = {
    "artifact_types": _COMMON_KEYS | {"mime_type", "file_ext"},
    "data_types": _COMMON_KEYS | {"constraints", "key_schema", "entry_schema"},
    "capability_types": _COMMON_KEYS | {"valid_source_types"},
    "relationship_types": _COMMON_KEYS | {"interfaces", "valid_target_types", "credential"},
    "node_types": _COMMON_KEYS | {"requirements", "capabilities", "interfaces", "artifacts"},
    "group_types": _COMMON_KEYS | {"members", "requirements", "capabilities", "interfaces"},
    "policy_types": _COMMON_KEYS | {"targets", "triggers"},
}
CAPABILITY_DEF_KEYS = {
    "type",
    "description",
    "properties",
    "attributes",
    "valid_source_types",
    "occurrences",
}
REQUIREMENT_DEF_KEYS = {
    "capability",
    "node",
    "relationship",
    "occurrences",
    "description",
    "node_filter",
}


@dataclass(slots=True)
class CapabilityDef:
    name: str
    type: str
    pos: Position
    occurrences: tuple[int, int | None] = (1, None)
    valid_source_types: tuple[str, ...] = ()
    properties: dict[str, PropertyDef] = field(default_factory=dict)


@dataclass(slots=True)
class RequirementDef:
    name: str
    capability: str
    pos: Position
    node: str | None = None
    relationship: str | None = None
    occurrences: tuple[int, int | None] = (1, 1)


@dataclass(slots=True, eq=False)
class TypeDef:
    kind: str
    name: str
    pos: Position
    raw: YMap
    parent_name: str | None = None
    parent_pos: Position | None = None
    parent: TypeDef | None = None
    own_properties: dict[str, PropertyDef] = field(default_factory=dict)
    own_attributes: dict[str, PropertyDef] = field(default_factory=dict)
    own_capabilities: dict[str, CapabilityDef] = field(default_factory=dict)
    own_requirements: dict[str, RequirementDef] = field(default_factory=dict)
    own_interfaces: set[str] = field(default_factory=set)
    own_constraints: list[Constraint] = field(default_factory=list)
    own_entry_schema: Schema | None = None
    valid_types: tuple[str, ...] = ()  # valid_source/target types, members or policy targets
    _merged: dict[str, Any] = field(default_factory=dict)

    def ancestry(self) -> list[TypeDef]:
        chain: list[TypeDef] = []
        node: TypeDef | None = self
        while node is not None and node not in chain:
            chain.append(node)
            node = node.parent
        return chain

    def is_a(self, name: str) -> bool:
        return any(t.name == name for t in self.ancestry())

    def _merge(self, attr: str) -> dict[str, Any]:
        cached = self._merged.get(attr)
        if cached is None:
            cached = {}
            for t in reversed(self.ancestry()):
                cached.update(getattr(t, attr))
            self._merged[attr] = cached
        return cached

    @property
    def properties(self) -> dict[str, PropertyDef]:
        return self._merge("own_properties")

    @property
    def attributes(self) -> dict[str, PropertyDef]:
        return self._merge("own_attributes")

    @property
    def capabilities(self) -> dict[str, CapabilityDef]:
        return self._merge("own_capabilities")

    @property
    def requirements(self) -> dict[str, RequirementDef]:
        return self._merge("own_requirements")

    @property
    def interfaces(self) -> set[str]:
        found: set[str] = set()
        for t in self.ancestry():
            found |= t.own_interfaces
        return found

    @property
    def constraints(self) -> list[Constraint]:
        return [c for t in reversed(self.ancestry()) for c in t.own_constraints]

    @property
    def primitive(self) -> str | None:
        """For data types derived from a primitive (PortDef from integer): that primitive."""
        for t in self.ancestry():
            if t.parent is None and t.parent_name in PRIMITIVES:
                return t.parent_name
        return None

    @property
    def entry_schema(self) -> Schema | None:
        for t in self.ancestry():
            if t.own_entry_schema is not None:
                return t.own_entry_schema
        return None

    @property
    def inherited_valid_types(self) -> tuple[str, ...]:
        for t in self.ancestry():
            if t.valid_types:
                return t.valid_types
        return ()


def parse_occurrences(
    value: Any, pos: Position, sink: DiagnosticSink, default: tuple[int, int | None]
) -> tuple[int, int | None]:
    if value is None:
        return default
    if isinstance(value, list) and len(value) == 2:
        low, high = value
        if isinstance(low, int) and not isinstance(low, bool) and low >= 0:
            if high == "UNBOUNDED":
                return (low, None)
            if isinstance(high, int) and not isinstance(high, bool) and high >= max(low, 1):
                return (low, high)
    sink.error(
        codes.BAD_DEFINITION,
        f"occurrences must be [min, max] with 0 <= min <= max (max may be UNBOUNDED), got {value!r}",
        pos,
        value=value,
        hint="for example [1, 1] or [0, UNBOUNDED]",
    )
    return default


class Registry:
    """Every known type, per kind, with TOSCA short-name aliases."""

    def __init__(self) -> None:
        self.types: dict[str, dict[str, TypeDef]] = {kind: {} for kind in KINDS}
        self.aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}

    def copy(self) -> Registry:
        other = Registry()
        for kind in KINDS:
            other.types[kind] = dict(self.types[kind])
            other.aliases[kind] = dict(self.aliases[kind])
        return other

    def find(self, kind: str, name: object) -> TypeDef | None:
        if not isinstance(name, str):
            return None
        table = self.types[kind]
        found = table.get(name)
        if found is None:
            full = self.aliases[kind].get(name)
            if full is not None:
                found = table.get(full)
        return found

    def names(self, kind: str) -> list[str]:
        return list(self.types[kind])

    def lookup(
        self, kind: str, name: object, pos: Position, sink: DiagnosticSink, what: str = ""
    ) -> TypeDef | None:
        """Find a type or report E300 with a did-you-mean hint (E302 if it is another kind)."""
        found = self.find(kind, name)
        if found is not None:
            return found
        label = KIND_LABEL[kind]
        for other in KINDS:
            if other != kind and self.find(other, name) is not None:
                sink.error(
                    codes.WRONG_TYPE_KIND,
                    f"'{name}' is a {KIND_LABEL[other]}, but {what or 'this'} needs a {label}",
                    pos,
                    value=name,
                    hint=did_you_mean(name, self.names(kind)),
                )
                return None
        sink.error(
            codes.UNKNOWN_TYPE,
            f"unknown {label} '{name}'" + (f" in {what}" if what else ""),
            pos,
            value=name,
            hint=did_you_mean(name, self.names(kind) + list(self.aliases[kind]))
            or "define it under the matching *_types section or import the file that does",
        )
        return None

    def is_data_type(self, name: str) -> bool:
        return name in PRIMITIVES or self.find("data_types", name) is not None

    # -- adding definitions ---------------------------------------------------------------

    def add_definitions(self, doc: YMap, sink: DiagnosticSink) -> list[TypeDef]:
        """Parse every *_types section of one document; return the new types."""
        added: list[TypeDef] = []
        for kind in KINDS:
            if kind not in doc:
                continue
            section = as_map(doc[kind], doc.at(kind), kind, sink)
            if section is None:
                continue
            for name, body in section.items():
                pos = section.key_at(name)
                existing = self.types[kind].get(name)
                if existing is not None:
                    if existing.raw is body or existing.pos.file == pos.file:
                        continue  # imported twice through two paths
                    sink.error(
                        codes.DUPLICATE_NAME,
                        f"{KIND_LABEL[kind]} '{name}' is already defined at {existing.pos}",
                        pos,
                        value=name,
                        hint="rename one of them or remove the duplicate import",
                    )
                    continue
                raw = as_map(body, section.at(name), f"{KIND_LABEL[kind]} '{name}'", sink)
                if raw is None:
                    continue
                tdef = _parse_type(kind, name, pos, raw, sink)
                self.types[kind][name] = tdef
                added.append(tdef)
                for alias in _aliases(kind, name):
                    self.aliases[kind].setdefault(alias, name)
        return added

    def resolve(self, new: list[TypeDef], sink: DiagnosticSink) -> None:
        """Link each new type to its parent; report unknown parents and derivation cycles."""
        for tdef in new:
            if tdef.parent_name is None:
                continue
            if tdef.kind == "data_types" and tdef.parent_name in PRIMITIVES:
                continue
            parent = self.find(tdef.kind, tdef.parent_name)
            if parent is None:
                self.lookup(
                    tdef.kind,
                    tdef.parent_name,
                    tdef.parent_pos or tdef.pos,
                    sink,
                    f"derived_from of '{tdef.name}'",
                )
                continue
            tdef.parent = parent
        for tdef in new:
            seen: list[TypeDef] = []
            node: TypeDef | None = tdef
            while node is not None:
                if node in seen:
                    cycle = " -> ".join(t.name for t in [*seen[seen.index(node) :], node])
                    sink.error(
                        codes.CYCLIC_TYPE,
                        f"type derivation cycle: {cycle}",
                        tdef.parent_pos or tdef.pos,
                        value=tdef.name,
                        hint="a type cannot derive from itself; break the cycle",
                    )
                    tdef.parent = None  # cut so later walks terminate
                    break
                seen.append(node)
                node = node.parent


def _aliases(kind: str, name: str) -> list[str]:
    prefix = f"tosca.{_CATEGORY[kind]}."
    if not name.startswith(prefix):
        return []
    short = name[len(prefix) :]
    return [short, f"tosca:{short}"]


def _type_list(value: Any, pos: Position, what: str, sink: DiagnosticSink) -> tuple[str, ...]:
    seq = as_list(value, pos, what, sink)
    if seq is None:
        return ()
    names: list[str] = []
    for index, item in enumerate(seq):
        if isinstance(item, str):
            names.append(item)
        else:
            sink.error(codes.WRONG_SHAPE, f"entries of {what} must be type names", seq.at(index))
    return tuple(names)


def _parse_type(kind: str, name: str, pos: Position, raw: YMap, sink: DiagnosticSink) -> TypeDef:
    label = f"{KIND_LABEL[kind]} '{name}'"
    tdef = TypeDef(kind=kind, name=name, pos=pos, raw=raw)
    if kind != "interface_types":
        check_keys(raw, _KIND_KEYS[kind], label, sink)
    parent = raw.get("derived_from")
    if parent is not None:
        if isinstance(parent, str):
            tdef.parent_name = parent
            tdef.parent_pos = raw.at("derived_from")
        else:
            sink.error(
                codes.WRONG_SHAPE,
                f"derived_from of {label} must be a type name",
                raw.at("derived_from"),
            )
    if "properties" in raw:
        tdef.own_properties = parse_property_defs(
            raw["properties"], raw.at("properties"), label, sink
        )
    if "attributes" in raw:
        tdef.own_attributes = parse_property_defs(
            raw["attributes"], raw.at("attributes"), label, sink, attributes=True
        )
    if kind == "data_types":
        if "constraints" in raw:
            tdef.own_constraints = parse_constraints(
                raw["constraints"], raw.at("constraints"), sink
            )
        if "entry_schema" in raw:
            tdef.own_entry_schema = parse_schema(
                raw["entry_schema"], raw.at("entry_schema"), "entry_schema", sink
            )
    if kind == "interface_types":
        tdef.own_interfaces = {
            k for k in raw if k not in _COMMON_KEYS | {"inputs", "operations", "notifications"}
        }
        ops = raw.get("operations")
        if isinstance(ops, YMap):
            tdef.own_interfaces |= set(ops)
    if "capabilities" in raw:
        tdef.own_capabilities = _parse_capability_defs(
            raw["capabilities"], raw.at("capabilities"), label, sink
        )
    if "requirements" in raw:
        tdef.own_requirements = _parse_requirement_defs(
            raw["requirements"], raw.at("requirements"), label, sink
        )
    if "interfaces" in raw:
        ifaces = as_map(raw["interfaces"], raw.at("interfaces"), f"interfaces of {label}", sink)
        if ifaces is not None:
            tdef.own_interfaces = set(ifaces)
    for key in ("valid_source_types", "valid_target_types", "members", "targets"):
        if key in raw:
            tdef.valid_types = _type_list(raw[key], raw.at(key), f"{key} of {label}", sink)
    return tdef


def _parse_capability_defs(
    value: Any, pos: Position, owner: str, sink: DiagnosticSink
) -> dict[str, CapabilityDef]:
    section = as_map(value, pos, f"capabilities of {owner}", sink)
    result: dict[str, CapabilityDef] = {}
    if section is None:
        return result
    for name, body in section.items():
        what = f"capability '{name}' of {owner}"
        if isinstance(body, str):
            result[name] = CapabilityDef(name, body, section.at(name))
            continue
        m = as_map(body, section.at(name), what, sink)
        if m is None:
            continue
        check_keys(m, CAPABILITY_DEF_KEYS, what, sink)
        type_name = m.get("type")
        if not isinstance(type_name, str):
            sink.error(
                codes.MISSING_KEY,
                f"{what} needs a 'type'",
                m.pos,
                hint="e.g. 'type: tosca.capabilities.Node'",
            )
            continue
        cap = CapabilityDef(name, type_name, m.at("type"))
        cap.occurrences = parse_occurrences(
            m.get("occurrences"), m.at("occurrences"), sink, (1, None)
        )
        if "valid_source_types" in m:
            cap.valid_source_types = _type_list(
                m["valid_source_types"], m.at("valid_source_types"), what, sink
            )
        if "properties" in m:
            cap.properties = parse_property_defs(m["properties"], m.at("properties"), what, sink)
        result[name] = cap
    return result


def _parse_requirement_defs(
    value: Any, pos: Position, owner: str, sink: DiagnosticSink
) -> dict[str, RequirementDef]:
    section = entries(value, pos, f"requirements of {owner}", sink)
    result: dict[str, RequirementDef] = {}
    if section is None:
        return result
    for name, body in section.items():
        what = f"requirement '{name}' of {owner}"
        if isinstance(body, str):
            result[name] = RequirementDef(name, body, section.at(name))
            continue
        m = as_map(body, section.at(name), what, sink)
        if m is None:
            continue
        check_keys(m, REQUIREMENT_DEF_KEYS, what, sink)
        capability = m.get("capability")
        if not isinstance(capability, str):
            sink.error(codes.MISSING_KEY, f"{what} needs a 'capability' type", m.pos)
            continue
        relationship = m.get("relationship")
        if isinstance(relationship, YMap):
            relationship = relationship.get("type")
        node = m.get("node")
        result[name] = RequirementDef(
            name,
            capability,
            m.at("capability"),
            node=node if isinstance(node, str) else None,
            relationship=relationship if isinstance(relationship, str) else None,
            occurrences=parse_occurrences(m.get("occurrences"), m.at("occurrences"), sink, (1, 1)),
        )
    return result
