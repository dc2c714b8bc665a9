"""What the FLAME profile checks share: the templates, the infrastructure, and what was found.

The profile is checked in stages (service functions, endpoint states, alerts, state changes),
each in its own module; a later stage reads what an earlier one recorded here, and uses it not
to cascade from an error already reported.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.yamlshape import did_you_mean
from flame.topology.model import Topology as Infrastructure
from flame.tosca import codes
from flame.tosca.entities import NodeTemplate, PolicyTemplate, Topology
from flame.tosca.model import EndpointState
from flame.tosca.values import function_call

SF_TYPE = "eu.ict-flame.nodes.ServiceFunction"
INITIAL_POLICY = "eu.ict-flame.policies.InitialPolicy"
STATE_CHANGE = "eu.ict-flame.policies.StateChange"
ALERT_POLICY = "eu.ict-flame.policies.Alert"
SFEMC_HANDLER = "flame_sfemc"
ALERT_REF = "clmc::"

# Runtimes with a VIM driver on this platform; others are recognised but refused.
DEFAULT_RUNTIMES = frozenset({"process", "kubernetes"})
KNOWN_RUNTIMES = ("process", "kubernetes", "lxd", "kvm")


def is_number(value: Any) -> TypeGuard[int | float]:
    """A YAML number: an int or a float, but not a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(slots=True)
class ProfileContext:
    topologies: list[Topology]
    sink: DiagnosticSink
    infra: Infrastructure | None
    runtimes: Collection[str]
    inputs: Mapping[str, Any]
    sfs: dict[str, NodeTemplate] = field(default_factory=dict)
    initial: dict[tuple[str, str], tuple[EndpointState, Position]] = field(default_factory=dict)
    # (cluster, SF) pairs named by an initial policy, valid or not: later checks must not
    # cascade from an error already reported there.
    mentioned: set[tuple[str, str]] = field(default_factory=set)
    fqdns: set[str] = field(default_factory=set)  # FQDNs the chain serves
    broken_alerts: set[str] = field(default_factory=set)  # alerts with errors already reported

    def policies(self, type_name: str) -> list[PolicyTemplate]:
        return [
            p
            for t in self.topologies
            for p in t.policies
            if p.type is not None and p.type.is_a(type_name)
        ]

    def resolve(
        self, value: Any, node: NodeTemplate, seen: frozenset[tuple[str, str]] = frozenset()
    ) -> Any:
        """Resolve what can be known before deployment: inputs, own properties, concat.

        None when it cannot be known; `seen` breaks get_property cycles (a -> b -> a).
        """
        call = function_call(value)
        if call is None:
            return value
        name, args = call
        if name == "get_input":
            return self._input(args)
        if name == "concat" and isinstance(args, list):
            parts = [self.resolve(a, node, seen) for a in args]
            if all(isinstance(p, str | int | float) for p in parts):
                return "".join(str(p) for p in parts)
            return None
        if name == "get_property" and isinstance(args, list) and len(args) == 2:
            entity, prop = args
            target = (
                node
                if entity == "SELF"
                else next((t.nodes[entity] for t in self.topologies if entity in t.nodes), None)
            )
            if target is not None and prop in target.properties:
                key = (target.name, str(prop))
                if key in seen:
                    return None  # a cycle: reported as an unresolvable value by the caller
                return self.resolve(target.properties[prop], target, seen | {key})
        return None

    def _input(self, args: Any) -> Any:
        key = args[0] if isinstance(args, list) and args else args
        if not isinstance(key, str):
            return None  # reported by the template checker (E600)
        if key in self.inputs:
            return self.inputs[key]
        for topo in self.topologies:
            pdef = topo.inputs.get(str(key))
            if pdef is not None and pdef.has_default:
                return pdef.default
        return None

    def prop(self, node: NodeTemplate, name: str, default: Any = None) -> Any:
        if name in node.properties:
            return self.resolve(node.properties[name], node)
        pdef = node.type.properties.get(name)
        if pdef is not None and pdef.has_default:
            return pdef.default
        return default

    def cluster_known(self, cluster: str, pos: Position) -> bool:
        infra = self.infra
        if infra is None:
            return True
        clusters = infra.clusters
        if cluster in clusters:
            return True
        self.sink.error(
            codes.UNKNOWN_CLUSTER,
            f"cluster '{cluster}' is not in topology '{infra.name}'",
            pos,
            value=cluster,
            hint=did_you_mean(cluster, clusters)
            or f"clusters: {', '.join(sorted(clusters)) or 'none'}",
        )
        return False

    def target_names(self, policy: PolicyTemplate) -> set[str]:
        """A policy's target SFs, with groups expanded to their members."""
        names: set[str] = set()
        for name, _ in policy.targets:
            members = next((t.groups[name] for t in self.topologies if name in t.groups), None)
            names.update(members if members is not None else [name])
        return names
