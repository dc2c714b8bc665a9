"""Requirements of node templates: assignments, their targets and capabilities, node filters.

A requirement is satisfied by a node template named in it or, when it names only a node type,
a capability or a node_filter, by the first node template of the topology that fits.
"""

from __future__ import annotations

from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import as_list, as_map, check_keys, did_you_mean, entries
from flame.common.yamlsrc import YMap, YSeq
from flame.tosca import codes
from flame.tosca.entities import NodeTemplate, RequirementAssignment, Topology
from flame.tosca.schemas import Constraint, PropertyDef, Schema, parse_constraints
from flame.tosca.types import CapabilityDef, Registry, RequirementDef, TypeDef
from flame.tosca.values import ValueChecker

REQUIREMENT_KEYS = {
    "node",
    "capability",
    "relationship",
    "node_filter",
    "occurrences",
    "description",
}

# A flattened node_filter: (capability or None for the node's own, property, constraints).
NodeFilter = list[tuple[str | None, str, list[Constraint]]]


def full_name(registry: Registry, kind: str, name: str) -> str:
    found = registry.find(kind, name)
    return found.name if found is not None else name


class RequirementChecker:
    def __init__(self, topology: Topology, registry: Registry, sink: DiagnosticSink) -> None:
        self.topology = topology
        self.registry = registry
        self.sink = sink

    def check(self, node: NodeTemplate, m: YMap, rel_templates: dict[str, TypeDef]) -> None:
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
        if sources and not any(
            node.type.is_a(full_name(self.registry, "node_types", s)) for s in sources
        ):
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
            if targets and not any(
                ctype.is_a(full_name(self.registry, "capability_types", t)) for t in targets
            ):
                self.sink.error(
                    codes.BAD_RELATIONSHIP,
                    f"{what}: relationship {relationship.name} can only target {', '.join(targets)}, "
                    f"not capability {ctype.name}",
                    pos,
                    value=relationship.name,
                )
                return False
        return True

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
        filters: NodeFilter | None,
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

    def _parse_node_filter(self, nf: YMap) -> NodeFilter:
        """Flatten a node_filter into (capability or None, property, constraints) triples."""
        check_keys(nf, {"properties", "capabilities"}, "node_filter", self.sink)
        result: NodeFilter = []

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

    def _matches_filter(self, target: NodeTemplate, filters: NodeFilter) -> bool:
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
