"""Checking a topology_template: node templates, relationship templates, groups, policies.

The checker makes one pass to collect every template (so that references may point forward),
then a second pass to resolve requirements (requirements.py) and functions (intrinsics.py)
against the whole topology. The four kinds of typed template share one reading of their common
shape, described by a `Section` each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, entries, kind_of
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.definitions import check_schema
from flame.tosca.entities import NodeTemplate, PolicyTemplate, Topology
from flame.tosca.intrinsics import FunctionChecker, FunctionScope
from flame.tosca.loader import Document
from flame.tosca.requirements import RequirementChecker, full_name
from flame.tosca.schemas import parse_property_defs
from flame.tosca.types import Registry, TypeDef
from flame.tosca.values import ValueChecker, function_call

# The templates a checker yields are defined in entities.py; re-exported for the validator.
__all__ = ["NodeTemplate", "PolicyTemplate", "Topology", "TopologyChecker"]

TOPOLOGY_KEYS = {
    "description",
    "inputs",
    "node_templates",
    "relationship_templates",
    "groups",
    "policies",
    "outputs",
    "substitution_mappings",
    "workflows",
}
NODE_KEYS = {
    "type",
    "description",
    "metadata",
    "directives",
    "properties",
    "attributes",
    "requirements",
    "capabilities",
    "interfaces",
    "artifacts",
    "node_filter",
    "copy",
}
RELATIONSHIP_KEYS = {
    "type",
    "description",
    "metadata",
    "properties",
    "attributes",
    "interfaces",
    "copy",
}
GROUP_KEYS = {
    "type",
    "description",
    "metadata",
    "properties",
    "members",
    "interfaces",
    "attributes",
}
POLICY_KEYS = {"type", "description", "metadata", "properties", "targets", "triggers"}
OUTPUT_KEYS = {"description", "value", "type", "required", "status", "entry_schema", "key_schema"}
ENTITY_KEYWORDS = ("SELF", "SOURCE", "TARGET", "HOST")


@dataclass(frozen=True, slots=True)
class Section:
    """A kind of typed template: its keys, where its type is defined, how to name it."""

    label: str
    keys: frozenset[str]
    types: str
    missing_type_hint: str


NODES = Section(
    "node template",
    frozenset(NODE_KEYS),
    "node_types",
    "add 'type: <node type>', e.g. eu.ict-flame.nodes.ServiceFunction",
)
RELATIONSHIPS = Section(
    "relationship template",
    frozenset(RELATIONSHIP_KEYS),
    "relationship_types",
    "e.g. type: tosca.relationships.ConnectsTo",
)
GROUPS = Section("group", frozenset(GROUP_KEYS), "group_types", "e.g. type: tosca.groups.Root")
POLICIES = Section(
    "policy",
    frozenset(POLICY_KEYS),
    "policy_types",
    "e.g. type: eu.ict-flame.policies.InitialPolicy",
)


@dataclass(slots=True)
class _PendingFunction:
    name: str
    args: Any
    pos: Position
    ctx: FunctionScope


class TopologyChecker:
    def __init__(self, doc: Document, registry: Registry, sink: DiagnosticSink) -> None:
        self.doc = doc
        self.registry = registry
        self.sink = sink
        self.topology = Topology(doc)
        self._ctx = FunctionScope()
        self._pending: list[_PendingFunction] = []
        self.values = ValueChecker(registry, sink, self._defer_function)

    def _defer_function(self, name: str, args: Any, pos: Position) -> None:
        self._pending.append(_PendingFunction(name, args, pos, self._ctx))

    def check(self) -> Topology:
        root = self.doc.root
        if "topology_template" not in root:
            return self.topology
        tt = as_map(
            root["topology_template"], root.at("topology_template"), "topology_template", self.sink
        )
        if tt is None:
            return self.topology
        check_keys(tt, TOPOLOGY_KEYS, "topology_template", self.sink)
        if "inputs" in tt:
            self._inputs(tt)
        nodes = as_map(
            tt.get("node_templates"), tt.at("node_templates"), "node_templates", self.sink
        )
        raw_nodes: list[tuple[NodeTemplate, YMap]] = []
        for name in nodes if nodes is not None else ():
            parsed = self._node(name, nodes) if nodes is not None else None
            if parsed is not None:
                raw_nodes.append(parsed)
            else:
                self.topology.broken.add(name)
        relationship_templates = self._relationship_templates(tt)
        requirements = RequirementChecker(self.topology, self.registry, self.sink)
        for node, body in raw_nodes:
            requirements.check(node, body, relationship_templates)
        if "groups" in tt:
            self._groups(tt)
        if "policies" in tt:
            self._policies(tt)
        if "outputs" in tt:
            self._outputs(tt)
        functions = FunctionChecker(self.topology, self.registry, self.sink)
        for pending in self._pending:
            functions.check(pending.name, pending.args, pending.pos, pending.ctx)
        return self.topology

    # -- typed templates ---------------------------------------------------------------------

    def _typed(
        self, section: Section, name: str, container: YMap
    ) -> tuple[YMap, TypeDef | None] | None:
        """A template's mapping and its type (None if unknown, reported); None if unusable."""
        what = f"{section.label} '{name}'"
        m = as_map(container[name], container.at(name), what, self.sink)
        if m is None:
            return None
        check_keys(m, section.keys, what, self.sink)
        if "type" not in m:
            self.sink.error(
                codes.MISSING_KEY,
                f"{what} has no 'type'",
                container.key_at(name),
                hint=section.missing_type_hint,
            )
            return None
        return m, self.registry.lookup(section.types, m["type"], m.at("type"), self.sink, what)

    def _properties(self, m: YMap, tdef: TypeDef | None, what: str, pos: Position) -> YMap | None:
        """A template's `properties:`, checked against its type's definitions when it is known."""
        props = as_map(m.get("properties"), m.at("properties"), f"properties of {what}", self.sink)
        if tdef is not None:
            self.values.check_properties(props, tdef.properties, what, pos)
        return props

    # -- inputs and outputs ------------------------------------------------------------------

    def _inputs(self, tt: YMap) -> None:
        defs = parse_property_defs(tt["inputs"], tt.at("inputs"), "inputs", self.sink)
        for pdef in defs.values():
            if not self.registry.is_data_type(pdef.schema.type):
                check_schema(pdef.schema, self.registry, self.sink, f"input '{pdef.name}'")
            elif pdef.has_default:
                self.values.check(
                    pdef.default, pdef.schema, pdef.default_pos, f"default of input '{pdef.name}'"
                )
        self.topology.inputs = defs

    def _outputs(self, tt: YMap) -> None:
        outputs = as_map(tt["outputs"], tt.at("outputs"), "outputs", self.sink)
        if outputs is None:
            return
        self._ctx = FunctionScope()
        for name, body in outputs.items():
            out = as_map(body, outputs.at(name), f"output '{name}'", self.sink)
            if out is None:
                continue
            check_keys(out, OUTPUT_KEYS, f"output '{name}'", self.sink)
            if "value" not in out:
                self.sink.error(
                    codes.MISSING_KEY,
                    f"output '{name}' has no 'value'",
                    outputs.key_at(name),
                    hint="add 'value: { get_attribute: [node, attribute] }'",
                )
                continue
            self._scan_functions(out["value"], out.at("value"))

    def _scan_functions(self, value: Any, pos: Position) -> None:
        """Queue every function inside a free-form value (outputs, untyped maps)."""
        call = function_call(value)
        if call is not None:
            self._defer_function(call[0], call[1], pos)
        elif isinstance(value, YMap):
            for key, item in value.items():
                self._scan_functions(item, value.at(key))
        elif isinstance(value, YSeq):
            for index, item in enumerate(value):
                self._scan_functions(item, value.at(index))

    # -- node templates ----------------------------------------------------------------------

    def _node(self, name: str, nodes: YMap) -> tuple[NodeTemplate, YMap] | None:
        typed = self._typed(NODES, name, nodes)
        if typed is None or typed[1] is None:
            return None
        m, ntype = typed[0], typed[1]
        what = f"node template '{name}'"
        self._ctx = FunctionScope(node=name)
        props = self._properties(m, ntype, what, nodes.key_at(name))
        node = NodeTemplate(
            name, ntype, nodes.key_at(name), m, props if props is not None else YMap(m.pos)
        )
        self.topology.nodes[name] = node
        self.values.check_properties(props, ntype.properties, what, nodes.key_at(name))
        if "attributes" in m:
            attrs = as_map(m["attributes"], m.at("attributes"), f"attributes of {what}", self.sink)
            if attrs is not None:
                self.values.check_properties(
                    attrs,
                    {**ntype.properties, **ntype.attributes},
                    what,
                    m.pos,
                    require=False,
                    kind="attribute",
                )
        if "capabilities" in m:
            self._capabilities(node, m)
        if "interfaces" in m:
            ifaces = as_map(m["interfaces"], m.at("interfaces"), f"interfaces of {what}", self.sink)
            for iface in ifaces or {}:
                if iface not in ntype.interfaces:
                    self.sink.error(
                        codes.UNKNOWN_INTERFACE,
                        f"{what}: its type {ntype.name} has no interface '{iface}'",
                        ifaces.key_at(iface) if ifaces is not None else m.pos,
                        value=iface,
                        hint=did_you_mean(iface, ntype.interfaces)
                        or "the normative interface is 'Standard'",
                    )
        return node, m

    def _capabilities(self, node: NodeTemplate, m: YMap) -> None:
        what = f"node template '{node.name}'"
        caps = as_map(m["capabilities"], m.at("capabilities"), f"capabilities of {what}", self.sink)
        if caps is None:
            return
        defs = node.type.capabilities
        for cap_name, body in caps.items():
            cdef = defs.get(cap_name)
            if cdef is None:
                self.sink.error(
                    codes.UNKNOWN_CAPABILITY,
                    f"{what}: type {node.type.name} has no capability '{cap_name}'",
                    caps.key_at(cap_name),
                    value=cap_name,
                    hint=did_you_mean(cap_name, defs)
                    or f"its capabilities: {', '.join(sorted(defs)) or 'none'}",
                )
                continue
            cm = as_map(body, caps.at(cap_name), f"capability '{cap_name}' of {what}", self.sink)
            if cm is None:
                continue
            check_keys(
                cm,
                {"properties", "attributes", "occurrences"},
                f"capability '{cap_name}' of {what}",
                self.sink,
            )
            ctype = self.registry.find("capability_types", cdef.type)
            if ctype is None:
                continue
            props = as_map(cm.get("properties"), cm.at("properties"), "properties", self.sink)
            if props is not None and "properties" in cm:
                self.values.check_properties(
                    props,
                    {**ctype.properties, **cdef.properties},
                    f"capability '{cap_name}' of {what}",
                    caps.key_at(cap_name),
                )

    # -- relationship templates, groups and policies -----------------------------------------

    def _relationship_templates(self, tt: YMap) -> dict[str, TypeDef]:
        found: dict[str, TypeDef] = {}
        if "relationship_templates" not in tt:
            return found
        rts = as_map(
            tt["relationship_templates"],
            tt.at("relationship_templates"),
            "relationship_templates",
            self.sink,
        )
        if rts is None:
            return found
        for name in rts:
            typed = self._typed(RELATIONSHIPS, name, rts)
            if typed is None or typed[1] is None:
                continue
            m, rtype = typed[0], typed[1]
            found[name] = rtype
            self._ctx = FunctionScope(relationship=rtype)
            self._properties(m, rtype, f"relationship template '{name}'", rts.key_at(name))
        return found

    def _groups(self, tt: YMap) -> None:
        groups = as_map(tt["groups"], tt.at("groups"), "groups", self.sink)
        if groups is None:
            return
        for name in groups:
            typed = self._typed(GROUPS, name, groups)
            if typed is None:
                continue
            m, gtype = typed
            what = f"group '{name}'"
            members = [n for n, _ in self._targets(m, "members", what, gtype, groups_allowed=False)]
            self.topology.groups[name] = members
            if gtype is not None:
                self._ctx = FunctionScope()
                self._properties(m, gtype, what, groups.key_at(name))

    def _targets(
        self, m: YMap, key: str, what: str, owner_type: TypeDef | None, *, groups_allowed: bool
    ) -> list[tuple[str, Position]]:
        if key not in m:
            return []
        seq = as_list(m[key], m.at(key), f"{key} of {what}", self.sink)
        allowed = owner_type.inherited_valid_types if owner_type is not None else ()
        found: list[tuple[str, Position]] = []
        for index, item in enumerate(seq or []):
            pos = seq.at(index) if seq is not None else m.pos
            if not isinstance(item, str):
                self.sink.error(
                    codes.WRONG_SHAPE, f"{key} of {what} must list names, got {kind_of(item)}", pos
                )
                continue
            if item in self.topology.broken:
                continue
            node = self.topology.nodes.get(item)
            is_group = groups_allowed and item in self.topology.groups
            if node is None and not is_group:
                pool = [*self.topology.nodes, *(self.topology.groups if groups_allowed else [])]
                self.sink.error(
                    codes.UNKNOWN_POLICY_TARGET,
                    f"{what}: {key[:-1] if key.endswith('s') else key} '{item}' is not a node template"
                    + (" or group" if groups_allowed else ""),
                    pos,
                    value=item,
                    hint=did_you_mean(item, pool) or f"known: {', '.join(sorted(pool)) or 'none'}",
                )
                continue
            if node is not None and allowed:
                fits = [a for a in allowed if self.registry.find("node_types", a) is not None]
                if fits and not any(
                    node.type.is_a(full_name(self.registry, "node_types", a)) for a in fits
                ):
                    self.sink.error(
                        codes.TARGET_NOT_ALLOWED,
                        f"{what}: '{item}' is a {node.type.name}; {owner_type.name if owner_type else ''} "
                        f"accepts only {', '.join(allowed)}",
                        pos,
                        value=item,
                    )
                    continue
            found.append((item, pos))
        return found

    def _policies(self, tt: YMap) -> None:
        policies = entries(tt["policies"], tt.at("policies"), "policies", self.sink)
        if policies is None:
            return
        for name in policies:
            typed = self._typed(POLICIES, name, policies)
            if typed is None:
                continue
            m, ptype = typed
            what = f"policy '{name}'"
            targets = self._targets(m, "targets", what, ptype, groups_allowed=True)
            if ptype is not None:
                self._ctx = FunctionScope()
            props = self._properties(m, ptype, what, policies.key_at(name))
            triggers = (
                as_map(m["triggers"], m.at("triggers"), f"triggers of {what}", self.sink)
                if "triggers" in m
                else None
            )
            self.topology.policies.append(
                PolicyTemplate(
                    name,
                    ptype,
                    policies.key_at(name),
                    m,
                    targets,
                    props if props is not None else YMap(m.pos),
                    triggers,
                )
            )
