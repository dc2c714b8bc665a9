"""Checking a topology_template: node templates, requirements, functions, groups, policies.

The checker makes one pass to collect every template (so that references may point forward),
then a second pass to resolve requirements and functions against the whole topology.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, entries, kind_of
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.definitions import check_schema
from flame.tosca.loader import Document
from flame.tosca.types import (
    CapabilityDef,
    Constraint,
    PropertyDef,
    Registry,
    RequirementDef,
    Schema,
    TypeDef,
    parse_constraints,
    parse_property_defs,
)
from flame.tosca.values import ValueChecker, function_call

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
REQUIREMENT_KEYS = {
    "node",
    "capability",
    "relationship",
    "node_filter",
    "occurrences",
    "description",
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


@dataclass(slots=True)
class RequirementAssignment:
    name: str
    pos: Position
    target: str | None = None
    target_pos: Position | None = None  # where the target is written; None if matched implicitly


@dataclass(slots=True)
class NodeTemplate:
    name: str
    type: TypeDef
    pos: Position
    raw: YMap
    properties: YMap
    requirements: list[RequirementAssignment] = field(default_factory=list)


@dataclass(slots=True)
class PolicyTemplate:
    name: str
    type: TypeDef | None
    pos: Position
    raw: YMap
    targets: list[tuple[str, Position]]
    properties: YMap
    triggers: YMap | None


@dataclass(slots=True)
class Topology:
    doc: Document
    nodes: dict[str, NodeTemplate] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    policies: list[PolicyTemplate] = field(default_factory=list)
    inputs: dict[str, PropertyDef] = field(default_factory=dict)
    # Node templates declared but unusable (say, of an unknown type): their error is reported
    # once, and references to them stay quiet instead of cascading.
    broken: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Context:
    """Where a function appears: which entity SELF, SOURCE and TARGET mean."""

    node: str | None = None
    relationship: TypeDef | None = None


@dataclass(slots=True)
class _PendingFunction:
    name: str
    args: Any
    pos: Position
    ctx: _Context


class TopologyChecker:
    def __init__(self, doc: Document, registry: Registry, sink: DiagnosticSink) -> None:
        self.doc = doc
        self.registry = registry
        self.sink = sink
        self.topology = Topology(doc)
        self._ctx = _Context()
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
        if nodes is not None:
            for name, body in nodes.items():
                parsed = self._node(name, body, nodes)
                if parsed is not None:
                    raw_nodes.append(parsed)
                else:
                    self.topology.broken.add(name)
        relationship_templates = self._relationship_templates(tt)
        for node, body in raw_nodes:
            self._ctx = _Context(node=node.name)
            self._requirements(node, body, relationship_templates)
        if "groups" in tt:
            self._groups(tt)
        if "policies" in tt:
            self._policies(tt)
        if "outputs" in tt:
            self._outputs(tt)
        for pending in self._pending:
            self._check_function(pending.name, pending.args, pending.pos, pending.ctx)
        return self.topology

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
        self._ctx = _Context()
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

    def _node(self, name: str, body: Any, nodes: YMap) -> tuple[NodeTemplate, YMap] | None:
        what = f"node template '{name}'"
        m = as_map(body, nodes.at(name), what, self.sink)
        if m is None:
            return None
        check_keys(m, NODE_KEYS, what, self.sink)
        if "type" not in m:
            self.sink.error(
                codes.MISSING_KEY,
                f"{what} has no 'type'",
                nodes.key_at(name),
                hint="add 'type: <node type>', e.g. eu.ict-flame.nodes.ServiceFunction",
            )
            return None
        ntype = self.registry.lookup("node_types", m["type"], m.at("type"), self.sink, what)
        if ntype is None:
            return None
        props = as_map(m.get("properties"), m.at("properties"), f"properties of {what}", self.sink)
        node = NodeTemplate(
            name, ntype, nodes.key_at(name), m, props if props is not None else YMap(m.pos)
        )
        self.topology.nodes[name] = node
        self._ctx = _Context(node=name)
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

    # -- requirements ------------------------------------------------------------------------

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
        for name, body in (rts or {}).items():
            what = f"relationship template '{name}'"
            m = as_map(body, rts.at(name) if rts is not None else tt.pos, what, self.sink)
            if m is None:
                continue
            check_keys(m, RELATIONSHIP_KEYS, what, self.sink)
            if "type" not in m:
                self.sink.error(
                    codes.MISSING_KEY,
                    f"{what} has no 'type'",
                    rts.key_at(name) if rts is not None else m.pos,
                    hint="e.g. type: tosca.relationships.ConnectsTo",
                )
                continue
            rtype = self.registry.lookup(
                "relationship_types", m["type"], m.at("type"), self.sink, what
            )
            if rtype is None:
                continue
            found[name] = rtype
            self._ctx = _Context(relationship=rtype)
            props = as_map(
                m.get("properties"), m.at("properties"), f"properties of {what}", self.sink
            )
            self.values.check_properties(
                props, rtype.properties, what, rts.key_at(name) if rts is not None else m.pos
            )
        return found

    def _requirements(self, node: NodeTemplate, m: YMap, rel_templates: dict[str, TypeDef]) -> None:
        what = f"node template '{node.name}'"
        defs = node.type.requirements
        counts: dict[str, int] = {}
        if "requirements" in m:
            reqs = as_list(
                m["requirements"], m.at("requirements"), f"requirements of {what}", self.sink
            )
            for index, item in enumerate(reqs or []):
                pos = reqs.at(index) if reqs is not None else m.pos
                if not isinstance(item, YMap) or len(item) != 1:
                    self.sink.error(
                        codes.WRONG_SHAPE,
                        f"each requirement of {what} must be a one-key mapping '- name: target'",
                        pos,
                    )
                    continue
                name = next(iter(item))
                rdef = defs.get(name)
                if rdef is None:
                    self.sink.error(
                        codes.UNKNOWN_REQUIREMENT,
                        f"{what}: type {node.type.name} has no requirement '{name}'",
                        item.key_at(name),
                        value=name,
                        hint=did_you_mean(name, defs)
                        or f"its requirements: {', '.join(sorted(defs)) or 'none'}",
                    )
                    continue
                counts[name] = counts.get(name, 0) + 1
                upper = rdef.occurrences[1]
                if upper is not None and counts[name] > upper:
                    self.sink.error(
                        codes.OCCURRENCES,
                        f"{what}: requirement '{name}' is assigned {counts[name]} times, at most {upper} allowed",
                        item.key_at(name),
                        value=name,
                        hint="remove the extra assignment",
                    )
                    continue
                target = self._assign(
                    node, rdef, item[name], item.at(name), item.key_at(name), rel_templates
                )
                written = item[name]
                target_pos = (
                    written.at("node")
                    if isinstance(written, YMap) and "node" in written
                    else item.at(name)
                )
                node.requirements.append(
                    RequirementAssignment(name, item.key_at(name), target, target_pos)
                )
        for name, rdef in defs.items():
            if counts.get(name, 0) >= rdef.occurrences[0]:
                continue
            candidates = self._candidates(node, rdef, rdef.node, rdef.capability, None)
            if not candidates:
                self.sink.error(
                    codes.UNSATISFIABLE_REQUIREMENT,
                    f"{what}: requirement '{name}' needs a node with capability {rdef.capability}"
                    + (f" of type {rdef.node}" if rdef.node else "")
                    + " and none in the template provides it",
                    node.pos,
                    value=name,
                    hint=f"add a node template that provides it and assign it: requirements: [{{{name}: <node>}}]",
                )
            else:
                node.requirements.append(RequirementAssignment(name, node.pos, candidates[0].name))

    def _assign(
        self,
        node: NodeTemplate,
        rdef: RequirementDef,
        value: Any,
        pos: Position,
        key_pos: Position,
        rel_templates: dict[str, TypeDef],
    ) -> str | None:
        what = f"requirement '{rdef.name}' of node template '{node.name}'"
        target_name: Any = None
        capability: Any = None
        node_filter: YMap | None = None
        target_pos = pos
        relationship: TypeDef | None = None
        if isinstance(value, str):
            target_name = value
        else:
            m = as_map(value, pos, what, self.sink)
            if m is None:
                return None
            check_keys(m, REQUIREMENT_KEYS, what, self.sink)
            target_name = m.get("node")
            target_pos = m.at("node")
            capability = m.get("capability")
            if "node_filter" in m:
                node_filter = as_map(
                    m["node_filter"], m.at("node_filter"), f"node_filter of {what}", self.sink
                )
            if "relationship" in m:
                relationship = self._relationship(
                    m["relationship"], m.at("relationship"), what, rel_templates
                )
        if relationship is None and rdef.relationship is not None:
            relationship = self.registry.find("relationship_types", rdef.relationship)
        filters = self._parse_node_filter(node_filter) if node_filter is not None else None
        required_node_type = rdef.node
        if target_name is not None and not isinstance(target_name, str):
            self.sink.error(
                codes.WRONG_SHAPE, f"{what}: 'node' must name a node template or type", target_pos
            )
            return None
        if target_name in self.topology.broken:
            return None
        if isinstance(target_name, str) and target_name in self.topology.nodes:
            target = self.topology.nodes[target_name]
            if not self._compatible(node, rdef, target, capability, relationship, target_pos, what):
                return None
            if filters is not None and not self._matches_filter(target, filters):
                self.sink.error(
                    codes.NODE_FILTER,
                    f"{what}: node '{target_name}' does not satisfy the node_filter",
                    target_pos,
                    value=target_name,
                    hint="change the target or relax the node_filter",
                )
                return None
            return target_name
        if isinstance(target_name, str):
            if self.registry.find("node_types", target_name) is None:
                self.sink.error(
                    codes.UNKNOWN_TARGET,
                    f"{what} names '{target_name}', which is neither a node template nor a node type",
                    target_pos,
                    value=target_name,
                    hint=did_you_mean(target_name, [*self.topology.nodes, *self.topology.broken])
                    or f"node templates: {', '.join(sorted(self.topology.nodes)) or 'none'}",
                )
                return None
            required_node_type = target_name
        cap_type = (
            capability
            if isinstance(capability, str) and self.registry.find("capability_types", capability)
            else None
        )
        candidates = self._candidates(
            node, rdef, required_node_type, cap_type or rdef.capability, filters
        )
        if not candidates and target_name is None:
            # Written as abstract (capability or node_filter only): TOSCA leaves it to the
            # orchestrator's inventory, which FLAME does not have; deployment would fail.
            self.sink.warning(
                codes.ABSTRACT_REQUIREMENT,
                f"{what}: abstract requirement (capability {cap_type or rdef.capability}) matches no node "
                "template; FLAME has no inventory to fulfil it",
                key_pos,
                hint="add a node template that provides it or name one with 'node:'",
            )
            return None
        if not candidates:
            self.sink.error(
                codes.UNSATISFIABLE_REQUIREMENT,
                f"{what}: no node template is a {required_node_type or 'node'} with capability "
                f"{cap_type or rdef.capability}" + (" matching the node_filter" if filters else ""),
                key_pos,
                value=target_name,
                hint="add a matching node template or name one explicitly with 'node:'",
            )
            return None
        return candidates[0].name

    def _relationship(
        self, value: Any, pos: Position, what: str, rel_templates: dict[str, TypeDef]
    ) -> TypeDef | None:
        name = value.get("type") if isinstance(value, YMap) else value
        if not isinstance(name, str):
            self.sink.error(
                codes.BAD_RELATIONSHIP, f"{what}: relationship must name a type or a template", pos
            )
            return None
        if name in rel_templates:
            return rel_templates[name]
        found = self.registry.find("relationship_types", name)
        if found is None:
            self.sink.error(
                codes.BAD_RELATIONSHIP,
                f"{what}: '{name}' is neither a relationship type nor a relationship template",
                pos,
                value=name,
                hint=did_you_mean(
                    name, [*self.registry.names("relationship_types"), *rel_templates]
                ),
            )
        return found

    def _capability_of(
        self, target: NodeTemplate, cap_ref: Any, required: str
    ) -> CapabilityDef | None:
        """The target's capability satisfying the requirement: by name, by type, or any of `required`."""
        caps = target.type.capabilities
        if isinstance(cap_ref, str) and cap_ref in caps:
            return caps[cap_ref]
        want = (
            cap_ref
            if isinstance(cap_ref, str) and self.registry.find("capability_types", cap_ref)
            else required
        )
        for cap in caps.values():
            ctype = self.registry.find("capability_types", cap.type)
            wanted = self.registry.find("capability_types", want)
            if ctype is not None and wanted is not None and ctype.is_a(wanted.name):
                return cap
        return None

    def _compatible(
        self,
        node: NodeTemplate,
        rdef: RequirementDef,
        target: NodeTemplate,
        cap_ref: Any,
        relationship: TypeDef | None,
        pos: Position,
        what: str,
    ) -> bool:
        if rdef.node is not None:
            wanted = self.registry.find("node_types", rdef.node)
            if wanted is not None and not target.type.is_a(wanted.name):
                self.sink.error(
                    codes.INCOMPATIBLE_TARGET,
                    f"{what}: '{target.name}' is a {target.type.name}, but the requirement needs a {wanted.name}",
                    pos,
                    value=target.name,
                    hint=self._hint_nodes(rdef.node, rdef.capability),
                )
                return False
        cap = self._capability_of(target, cap_ref, rdef.capability)
        if cap is None:
            wanted_cap = cap_ref if isinstance(cap_ref, str) else rdef.capability
            self.sink.error(
                codes.INCOMPATIBLE_TARGET,
                f"{what}: '{target.name}' ({target.type.name}) has no capability {wanted_cap}",
                pos,
                value=target.name,
                hint=self._hint_nodes(rdef.node, rdef.capability),
            )
            return False
        ctype = self.registry.find("capability_types", cap.type)
        if (
            ctype is not None
            and rdef.capability
            and not ctype.is_a(
                getattr(
                    self.registry.find("capability_types", rdef.capability), "name", rdef.capability
                )
            )
        ):
            self.sink.error(
                codes.INCOMPATIBLE_TARGET,
                f"{what}: capability '{cap.name}' of '{target.name}' is a {cap.type}, not a {rdef.capability}",
                pos,
                value=target.name,
            )
            return False
        sources = cap.valid_source_types or (
            ctype.inherited_valid_types if ctype is not None else ()
        )
        if sources and not any(node.type.is_a(self._full("node_types", s)) for s in sources):
            self.sink.error(
                codes.INCOMPATIBLE_TARGET,
                f"{what}: capability '{cap.name}' of '{target.name}' accepts only {', '.join(sources)} as source, "
                f"not {node.type.name}",
                pos,
                value=target.name,
            )
            return False
        if relationship is not None and ctype is not None:
            targets = relationship.inherited_valid_types
            if targets and not any(ctype.is_a(self._full("capability_types", t)) for t in targets):
                self.sink.error(
                    codes.BAD_RELATIONSHIP,
                    f"{what}: relationship {relationship.name} can only target {', '.join(targets)}, "
                    f"not capability {ctype.name}",
                    pos,
                    value=relationship.name,
                )
                return False
        return True

    def _full(self, kind: str, name: str) -> str:
        found = self.registry.find(kind, name)
        return found.name if found is not None else name

    def _hint_nodes(self, node_type: str | None, cap_type: str) -> str | None:
        fits = self._candidates(None, None, node_type, cap_type, None)
        if fits:
            return f"candidates: {', '.join(n.name for n in fits[:5])}"
        return None

    def _candidates(
        self,
        source: NodeTemplate | None,
        rdef: RequirementDef | None,
        node_type: str | None,
        cap_type: str,
        filters: list[tuple[str | None, str, list[Constraint]]] | None,
    ) -> list[NodeTemplate]:
        wanted_node = self.registry.find("node_types", node_type) if node_type else None
        wanted_cap = self.registry.find("capability_types", cap_type)
        if wanted_cap is None or (node_type and wanted_node is None):
            return []
        found: list[NodeTemplate] = []
        for target in self.topology.nodes.values():
            if source is not None and target is source:
                continue
            if wanted_node is not None and not target.type.is_a(wanted_node.name):
                continue
            if self._capability_of(target, None, wanted_cap.name) is None:
                continue
            if filters is not None and not self._matches_filter(target, filters):
                continue
            found.append(target)
        return found

    # -- node filters ------------------------------------------------------------------------

    def _parse_node_filter(self, nf: YMap) -> list[tuple[str | None, str, list[Constraint]]]:
        """Flatten a node_filter into (capability or None, property, constraints) triples."""
        check_keys(nf, {"properties", "capabilities"}, "node_filter", self.sink)
        result: list[tuple[str | None, str, list[Constraint]]] = []

        def props(value: Any, pos: Position, capability: str | None) -> None:
            seq = entries(value, pos, "node_filter properties", self.sink)
            for prop, written in (seq or {}).items():
                cpos = seq.at(prop) if seq is not None else pos
                constraints: Any = written
                if isinstance(written, YMap):  # the single-constraint form
                    constraints = YSeq(cpos)
                    constraints.append(written)
                    constraints.item_pos.append(cpos)
                result.append((capability, prop, parse_constraints(constraints, cpos, self.sink)))

        if "properties" in nf:
            props(nf["properties"], nf.at("properties"), None)
        if "capabilities" in nf:
            caps = entries(
                nf["capabilities"], nf.at("capabilities"), "node_filter capabilities", self.sink
            )
            for cap, body in (caps or {}).items():
                cm = as_map(
                    body,
                    caps.at(cap) if caps is not None else nf.pos,
                    f"node_filter capability '{cap}'",
                    self.sink,
                )
                if cm is not None and "properties" in cm:
                    props(cm["properties"], cm.at("properties"), cap)
        return result

    def _matches_filter(
        self, target: NodeTemplate, filters: list[tuple[str | None, str, list[Constraint]]]
    ) -> bool:
        for capability, prop, constraints in filters:
            schema_defs: dict[str, PropertyDef]
            if capability is None:
                values: Any = target.properties
                schema_defs = target.type.properties
            else:
                cap = self._capability_of(target, capability, capability)
                if cap is None:
                    return False
                caps = target.raw.get("capabilities")
                cap_body = caps.get(cap.name) if isinstance(caps, dict) else None
                values = cap_body.get("properties") if isinstance(cap_body, dict) else None
                ctype = self.registry.find("capability_types", cap.type)
                schema_defs = ctype.properties if ctype is not None else {}
            value = values.get(prop) if isinstance(values, dict) else None
            if value is None:
                pdef = schema_defs.get(prop)
                value = pdef.default if pdef is not None else None
            if value is None:
                return False
            pdef = schema_defs.get(prop)
            type_name = pdef.schema.type if pdef is not None else "any"
            probe = DiagnosticSink()
            checker = ValueChecker(self.registry, probe, lambda *_: None)
            checker.check(value, Schema(type_name, target.pos, constraints), target.pos, prop)
            if probe.has_errors():
                return False
        return True

    # -- groups and policies -----------------------------------------------------------------

    def _groups(self, tt: YMap) -> None:
        groups = as_map(tt["groups"], tt.at("groups"), "groups", self.sink)
        for name, body in (groups or {}).items():
            what = f"group '{name}'"
            m = as_map(body, groups.at(name) if groups is not None else tt.pos, what, self.sink)
            if m is None:
                continue
            check_keys(m, GROUP_KEYS, what, self.sink)
            if "type" not in m:
                self.sink.error(
                    codes.MISSING_KEY,
                    f"{what} has no 'type'",
                    groups.key_at(name) if groups is not None else m.pos,
                    hint="e.g. type: tosca.groups.Root",
                )
                continue
            gtype = self.registry.lookup("group_types", m["type"], m.at("type"), self.sink, what)
            members = [n for n, _ in self._targets(m, "members", what, gtype, groups_allowed=False)]
            self.topology.groups[name] = members
            if gtype is not None:
                self._ctx = _Context()
                props = as_map(
                    m.get("properties"), m.at("properties"), f"properties of {what}", self.sink
                )
                self.values.check_properties(
                    props,
                    gtype.properties,
                    what,
                    groups.key_at(name) if groups is not None else m.pos,
                )

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
                if fits and not any(node.type.is_a(self._full("node_types", a)) for a in fits):
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
        for name, body in (policies or {}).items():
            what = f"policy '{name}'"
            m = as_map(body, policies.at(name) if policies is not None else tt.pos, what, self.sink)
            if m is None:
                continue
            check_keys(m, POLICY_KEYS, what, self.sink)
            if "type" not in m:
                self.sink.error(
                    codes.MISSING_KEY,
                    f"{what} has no 'type'",
                    policies.key_at(name) if policies is not None else m.pos,
                    hint="e.g. type: eu.ict-flame.policies.InitialPolicy",
                )
                continue
            ptype = self.registry.lookup("policy_types", m["type"], m.at("type"), self.sink, what)
            targets = self._targets(m, "targets", what, ptype, groups_allowed=True)
            props = as_map(
                m.get("properties"), m.at("properties"), f"properties of {what}", self.sink
            )
            if ptype is not None:
                self._ctx = _Context()
                self.values.check_properties(
                    props,
                    ptype.properties,
                    what,
                    policies.key_at(name) if policies is not None else m.pos,
                )
            triggers = (
                as_map(m["triggers"], m.at("triggers"), f"triggers of {what}", self.sink)
                if "triggers" in m
                else None
            )
            self.topology.policies.append(
                PolicyTemplate(
                    name,
                    ptype,
                    policies.key_at(name) if policies is not None else m.pos,
                    m,
                    targets,
                    props if props is not None else YMap(m.pos),
                    triggers,
                )
            )

    # -- functions ---------------------------------------------------------------------------

    def _check_function(self, name: str, args: Any, pos: Position, ctx: _Context) -> None:
        if name == "get_input":
            self._get_input(args, pos)
        elif name in ("get_property", "get_attribute"):
            self._get_value(name, args, pos, ctx)
        elif name == "concat":
            if not isinstance(args, list) or not args:
                self._bad_function(name, "a list of values to join", pos, "concat: [a, '-', b]")
                return
            self._nested(args, pos, ctx)
        elif name == "join":
            if (
                not isinstance(args, list)
                or not 1 <= len(args) <= 2
                or not isinstance(args[0], list)
            ):
                self._bad_function(name, "[[values...], delimiter]", pos, "join: [[a, b], ',']")
                return
            self._nested(args[0], pos, ctx)
        elif name == "token":
            if not isinstance(args, list) or len(args) != 3 or not isinstance(args[2], int):
                self._bad_function(
                    name, "[string, separator characters, index]", pos, "token: [s, ':', 1]"
                )
                return
            self._nested(args[:1], pos, ctx)
        elif name == "get_operation_output" and (not isinstance(args, list) or len(args) != 4):
            self._bad_function(name, "[entity, interface, operation, output]", pos, None)
        elif name == "get_nodes_of_type" and not isinstance(args, str):
            self._bad_function(name, "a node type name", pos, None)
        elif name == "get_nodes_of_type":
            self.registry.lookup("node_types", args, pos, self.sink, "get_nodes_of_type")
        elif name == "get_artifact" and (not isinstance(args, list) or not 2 <= len(args) <= 4):
            self._bad_function(name, "[entity, artifact, location?, remove?]", pos, None)

    def _nested(self, args: list[Any], pos: Position, ctx: _Context) -> None:
        for item in args:
            call = function_call(item)
            if call is not None:
                self._check_function(call[0], call[1], pos, ctx)

    def _bad_function(self, name: str, expected: str, pos: Position, example: str | None) -> None:
        self.sink.error(
            codes.BAD_FUNCTION,
            f"{name} expects {expected}",
            pos,
            hint=f"for example {{ {example} }}" if example else None,
        )

    def _get_input(self, args: Any, pos: Position) -> None:
        name = args[0] if isinstance(args, list) and args else args
        if not isinstance(name, str):
            self._bad_function("get_input", "the name of an input", pos, "get_input: port")
            return
        if name not in self.topology.inputs:
            self.sink.error(
                codes.UNKNOWN_INPUT,
                f"get_input refers to undefined input '{name}'",
                pos,
                value=name,
                hint=did_you_mean(name, self.topology.inputs)
                or "declare it under topology_template.inputs",
            )

    def _get_value(self, func: str, args: Any, pos: Position, ctx: _Context) -> None:
        if (
            not isinstance(args, list)
            or len(args) < 2
            or not all(isinstance(a, str | int) for a in args)
        ):
            self._bad_function(
                func,
                "[entity, (capability or requirement,) name, ...]",
                pos,
                f"{func}: [SELF, port]",
            )
            return
        entity = args[0]
        code = (
            codes.BAD_PROPERTY_REFERENCE
            if func == "get_property"
            else codes.BAD_ATTRIBUTE_REFERENCE
        )
        node_type: TypeDef | None = None
        if entity in ("SOURCE", "TARGET"):
            if ctx.relationship is None and ctx.node is None:
                self.sink.error(
                    code,
                    f"{func}: {entity} is only meaningful inside a relationship",
                    pos,
                    value=entity,
                )
            return  # the endpoints of a relationship are known only at deployment
        if entity in ("SELF", "HOST"):
            if ctx.relationship is not None:
                node_type = None
                props = {**ctx.relationship.properties, **ctx.relationship.attributes}
                if args[1] not in props and func == "get_property":
                    self.sink.error(
                        code,
                        f"{func}: relationship {ctx.relationship.name} has no property '{args[1]}'",
                        pos,
                        value=args[1],
                        hint=did_you_mean(args[1], props),
                    )
                return
            if ctx.node is None:
                self.sink.error(
                    code,
                    f"{func}: {entity} has no meaning here (not inside a node template)",
                    pos,
                    value=entity,
                    hint="name the node template instead",
                )
                return
            if entity == "HOST":
                return  # resolved along HostedOn at deployment
            node_type = self.topology.nodes[ctx.node].type
            node_name = ctx.node
        elif entity in self.topology.broken:
            return
        else:
            target = self.topology.nodes.get(str(entity))
            if target is None:
                self.sink.error(
                    code,
                    f"{func}: no node template named '{entity}'",
                    pos,
                    value=entity,
                    hint=did_you_mean(str(entity), self.topology.nodes)
                    or "use SELF or a node template name",
                )
                return
            node_type = target.type
            node_name = target.name
        self._member(func, code, node_name, node_type, [str(a) for a in args[1:]], pos)

    def _member(
        self,
        func: str,
        code: str,
        node_name: str,
        node_type: TypeDef,
        path: list[str],
        pos: Position,
    ) -> None:
        names: dict[str, Any] = dict(node_type.properties)
        if func == "get_attribute":
            names.update(node_type.attributes)
        first = path[0]
        if first in names:
            return
        cap = node_type.capabilities.get(first)
        if cap is not None and len(path) >= 2:
            ctype = self.registry.find("capability_types", cap.type)
            if ctype is None:
                return
            cap_names: dict[str, Any] = {**ctype.properties, **cap.properties}
            if func == "get_attribute":
                cap_names.update(ctype.attributes)
            if path[1] not in cap_names:
                self.sink.error(
                    code,
                    f"{func}: capability '{first}' of '{node_name}' has no {func[4:]} '{path[1]}'",
                    pos,
                    value=path[1],
                    hint=did_you_mean(path[1], cap_names),
                )
            return
        if first in node_type.requirements and len(path) >= 2:
            return  # resolved against the requirement's target at deployment
        self.sink.error(
            code,
            f"{func}: '{node_name}' ({node_type.name}) has no {func[4:]}, capability or requirement '{first}'",
            pos,
            value=first,
            hint=did_you_mean(first, [*names, *node_type.capabilities, *node_type.requirements]),
        )
