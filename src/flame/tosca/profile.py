"""The FLAME profile's own rules, and building the service model from checked templates.

Generic TOSCA checks (types, properties, requirements) have already run; this module adds what
only FLAME knows: runtimes, FQDNs, endpoint states per cluster, alert triggers and the links
between a resource specification and an alert specification (SFEMC-1, SFEMC-2, CLMC-19).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlparse

from flame.common.diagnostics import DiagnosticSink, Position
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlshape import as_map, check_keys, did_you_mean, kind_of, missing_position
from flame.common.yamlsrc import YMap, YSeq
from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Topology as Infrastructure
from flame.tosca import codes
from flame.tosca.model import (
    INITIAL_STATES,
    AlertRule,
    ChainEdge,
    Comparison,
    EndpointState,
    EndpointTarget,
    EventType,
    HealthCheck,
    InitialPolicy,
    Port,
    Resources,
    ServiceFunction,
    ServiceModel,
    StateChangePolicy,
)
from flame.tosca.templates import NodeTemplate, PolicyTemplate, Topology
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

TRIGGER_KEYS = {"description", "event_type", "metric", "condition", "action"}
# An alert's condition; a StateChange trigger carrying its own alert may also give a period.
CONDITION_KEYS = {
    "threshold",
    "warning_threshold",
    "granularity",
    "aggregation_method",
    "resource_type",
    "comparison_operator",
}
# A StateChange trigger that refers to an alert of an alert specification.
REFERENCE_TRIGGER_KEYS = {"description", "condition", "action"}
REFERENCE_CONDITION_KEYS = {"constraint", "period"}
AGGREGATIONS = (
    "mean",
    "median",
    "min",
    "max",
    "sum",
    "count",
    "first",
    "last",
    "spread",
    "stddev",
    "mode",
)
# Names other monitoring tools use, mapped to ours for the hint.
_AGGREGATION_ALIASES = {
    "avg": "did you mean 'mean'?",
    "average": "did you mean 'mean'?",
    "p50": "did you mean 'median'?",
    "p95": "did you mean 'percentile_95'?",
    "p99": "did you mean 'percentile_99'?",
    "std": "did you mean 'stddev'?",
    "total": "did you mean 'sum'?",
}
_PERCENTILE = re.compile(r"^percentile_(\d{1,2})$")
TAG_KEYS = ("sfc", "sfci", "sf", "sfe", "server", "location", "cluster", "fqdn", "sr", "host", "ue")
_METRIC = re.compile(r"^[A-Za-z_][\w-]*\.[A-Za-z_][\w-]*$")
_FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SFC_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")


@dataclass(slots=True)
class _Alert:
    rule: AlertRule
    pos: Position
    doc: str
    referenced: bool = False


@dataclass(slots=True)
class _StateEntry:
    target: EndpointTarget
    cluster_pos: Position
    sf_pos: Position
    state_pos: Position


@dataclass(slots=True)
class _Context:
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


def _aggregation_ok(value: str) -> bool:
    if value in AGGREGATIONS:
        return True
    match = _PERCENTILE.match(value)
    return match is not None and 1 <= int(match.group(1)) <= 99


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ProfileChecker:
    def __init__(
        self,
        topologies: list[Topology],
        sink: DiagnosticSink,
        *,
        infra: Infrastructure | None = None,
        runtimes: Collection[str] = DEFAULT_RUNTIMES,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.topologies = topologies
        self.ctx = _Context(sink, infra, runtimes, inputs or {})
        self.sink = sink

    # -- entry point -------------------------------------------------------------------------

    def build(self) -> ServiceModel | None:
        sfc, sfci = self._chain_identity()
        functions = self._service_functions()
        initial = self._initial_policies()
        alerts = self._alerts()
        changes = self._state_changes(alerts)
        for alert in alerts.values():
            if alert.rule.notify_sfemc and not alert.referenced:
                self.sink.warning(
                    codes.UNUSED_ALERT,
                    f"alert '{alert.rule.name}' notifies the SFEMC but no StateChange policy refers to it",
                    alert.pos,
                    value=alert.rule.name,
                    hint="add a StateChange trigger with "
                    f"'condition: {{constraint: {ALERT_REF}{alert.rule.name}}}'",
                )
        if self.sink.has_errors() or sfc is None:
            return None
        chain = tuple(ChainEdge(sf.name, up) for sf in functions for up in sf.upstream)
        description = ""
        for topo in self.topologies:
            text = topo.doc.root.get("description")
            if isinstance(text, str):
                description = text.strip()
                break
        return ServiceModel(
            sfc=sfc,
            sfci=sfci or sfc,
            description=description,
            service_functions=tuple(functions),
            chain=chain,
            initial_policies=tuple(initial),
            state_change_policies=tuple(changes),
            alert_rules=tuple(a.rule for a in alerts.values()),
            sources=tuple(t.doc.name for t in self.topologies),
        )

    # -- sfc / sfci --------------------------------------------------------------------------

    def _chain_identity(self) -> tuple[str | None, str | None]:
        sfc: tuple[str, Position] | None = None
        sfci: tuple[str, Position] | None = None
        for topo in self.topologies:
            root = topo.doc.root
            meta = root.get("metadata")
            needs = any(n.type.is_a(SF_TYPE) for n in topo.nodes.values()) or any(
                p.type is not None and p.type.name.startswith("eu.ict-flame.")
                for p in topo.policies
            )
            found_sfc = found_sfci = None
            if isinstance(meta, YMap):
                found_sfc = self._metadata_name(meta, ("servicefunctionchain", "sfc"))
                found_sfci = self._metadata_name(meta, ("sfc_instance", "sfci"))
            if found_sfc is None:
                if needs and (meta is None or isinstance(meta, YMap)):  # else E201 was reported
                    self.sink.error(
                        codes.MISSING_SFC,
                        "the template does not name its service function chain",
                        missing_position(root, "metadata")
                        if "metadata" in root
                        else Position(topo.doc.name, 1, 1),
                        hint="add 'metadata: {servicefunctionchain: <name>}'",
                    )
                continue
            for label, found, current in (
                ("servicefunctionchain", found_sfc, sfc),
                ("sfc_instance", found_sfci, sfci),
            ):
                if found is None:
                    continue
                value, pos = found
                if not isinstance(value, str) or not _SFC_NAME.match(value):
                    self.sink.error(
                        codes.BAD_NAME,
                        f"{label} must be a name of letters, digits, '.', '_' or '-', got {kind_of(value)}",
                        pos,
                        value=value if isinstance(value, str | int | float) else None,
                    )
                    continue
                if current is not None and current[0] != value:
                    self.sink.error(
                        codes.SFC_MISMATCH,
                        f"{label} '{value}' differs from '{current[0]}' at {current[1]}",
                        pos,
                        value=value,
                        hint="a resource specification and its alert specification must name the same chain",
                    )
                    continue
                if label == "servicefunctionchain":
                    sfc = (value, pos)
                else:
                    sfci = (value, pos)
        return (sfc[0] if sfc else None, sfci[0] if sfci else None)

    def _metadata_name(self, meta: YMap, keys: tuple[str, str]) -> tuple[Any, Position] | None:
        """The value under a metadata key or its short alias; both, if they differ, is E807."""
        present = [(meta[k], meta.at(k), k) for k in keys if k in meta]
        if len(present) == 2 and present[0][0] != present[1][0]:
            self.sink.error(
                codes.SFC_MISMATCH,
                f"metadata gives {keys[0]} '{present[0][0]}' and {keys[1]} '{present[1][0]}'",
                present[1][1],
                value=present[1][0] if isinstance(present[1][0], str) else None,
                hint=f"'{keys[1]}' is a short name for '{keys[0]}'; keep one of them",
            )
        return (present[0][0], present[0][1]) if present else None

    # -- service functions -------------------------------------------------------------------

    def _resolve(
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
            key = args[0] if isinstance(args, list) and args else args
            if not isinstance(key, str):
                return None  # reported by the template checker (E600)
            if key in self.ctx.inputs:
                return self.ctx.inputs[key]
            for topo in self.topologies:
                pdef = topo.inputs.get(str(key))
                if pdef is not None and pdef.has_default:
                    return pdef.default
            return None
        if name == "concat" and isinstance(args, list):
            parts = [self._resolve(a, node, seen) for a in args]
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
                return self._resolve(target.properties[prop], target, seen | {key})
        return None

    def _prop(self, node: NodeTemplate, name: str, default: Any = None) -> Any:
        if name in node.properties:
            return self._resolve(node.properties[name], node)
        pdef = node.type.properties.get(name)
        if pdef is not None and pdef.has_default:
            return pdef.default
        return default

    def _service_functions(self) -> list[ServiceFunction]:
        result: list[ServiceFunction] = []
        fqdns: dict[str, tuple[str, Position]] = {}
        for topo in self.topologies:
            for node in topo.nodes.values():
                if not node.type.is_a(SF_TYPE):
                    continue
                if node.name in self.ctx.sfs:
                    self.sink.error(
                        codes.DUPLICATE_NAME,
                        f"service function '{node.name}' is defined in two documents",
                        node.pos,
                        value=node.name,
                    )
                    continue
                self.ctx.sfs[node.name] = node
                sf = self._service_function(node, fqdns)
                if sf is not None:
                    result.append(sf)
        return result

    def _service_function(
        self, node: NodeTemplate, fqdns: dict[str, tuple[str, Position]]
    ) -> ServiceFunction | None:
        props = node.properties
        what = f"service function '{node.name}'"
        runtime = self._prop(node, "runtime", "process")
        if (
            isinstance(runtime, str)
            and runtime in KNOWN_RUNTIMES
            and runtime not in self.ctx.runtimes
        ):
            self.sink.error(
                codes.UNSUPPORTED_RUNTIME,
                f"{what}: runtime '{runtime}' has no such VIM on this platform",
                props.at("runtime"),
                value=runtime,
                hint=f"use one of: {', '.join(sorted(self.ctx.runtimes))}",
            )
        fqdn = self._prop(node, "fqdn")
        fqdn_pos = props.at("fqdn")
        if isinstance(fqdn, str):
            problem = _fqdn_problem(fqdn)
            if problem:
                self.sink.error(
                    codes.BAD_FQDN,
                    f"{what}: fqdn '{fqdn}' {problem}",
                    fqdn_pos,
                    value=fqdn,
                    hint="use lowercase DNS labels separated by dots, e.g. video.example.flame",
                )
            elif fqdn in fqdns:
                other, other_pos = fqdns[fqdn]
                self.sink.error(
                    codes.DUPLICATE_FQDN,
                    f"{what}: fqdn '{fqdn}' is already served by '{other}' ({other_pos})",
                    fqdn_pos,
                    value=fqdn,
                    hint="each service function needs its own FQDN; routers choose endpoints by it",
                )
            else:
                fqdns[fqdn] = (node.name, fqdn_pos)
                self.ctx.fqdns.add(fqdn)
        elif (
            "fqdn" in props
            and fqdn is None
            and function_call(props["fqdn"]) is not None
            and not self.sink.reported_at(fqdn_pos)  # E601 already said why
        ):
            self.sink.error(
                codes.BAD_FUNCTION,
                f"{what}: fqdn must be known before deployment; this function cannot be resolved",
                fqdn_pos,
                hint="give the input a default or pass its value",
            )
        ports = self._ports(node)
        health = self._health(node, ports)
        resources = self._resources(node)
        environment = self._environment(node)
        image = self._prop(node, "image")
        upstream = tuple(
            r.target for r in node.requirements if r.name == "upstream" and r.target is not None
        )
        for req in node.requirements:
            if req.name == "upstream" and req.target == node.name:
                self.sink.error(
                    codes.INCOMPATIBLE_TARGET,
                    f"{what} lists itself as upstream",
                    req.target_pos or req.pos,
                    hint="an SF cannot send requests to itself through the chain",
                    value=node.name,
                )
        if not isinstance(image, str) or not isinstance(fqdn, str) or not isinstance(runtime, str):
            return None
        return ServiceFunction(
            name=node.name,
            image=image,
            fqdn=fqdn,
            runtime=runtime,
            ports=ports,
            environment=environment,
            health_check=health,
            resources=resources,
            upstream=upstream,
            source=str(node.pos),
        )

    def _environment(self, node: NodeTemplate) -> tuple[tuple[str, str], ...]:
        raw = node.properties.get("environment")
        if not isinstance(raw, dict):
            return ()
        result: list[tuple[str, str]] = []
        for key, value in raw.items():
            resolved = self._resolve(value, node)
            if resolved is None or isinstance(resolved, dict | list):
                value_pos = raw.at(key) if isinstance(raw, YMap) else node.pos
                if function_call(value) is not None and not self.sink.reported_at(value_pos):
                    self.sink.error(
                        codes.BAD_FUNCTION,
                        f"service function '{node.name}': environment variable '{key}' must be known "
                        "before deployment, and this function cannot be resolved then",
                        value_pos,
                        hint="use get_input (with a default), get_property or concat of those",
                    )
                continue
            result.append(
                (str(key), str(resolved).lower() if isinstance(resolved, bool) else str(resolved))
            )
        return tuple(result)

    def _ports(self, node: NodeTemplate) -> tuple[Port, ...]:
        raw = self._prop(node, "ports")
        if not isinstance(raw, list):
            return ()
        ports: list[Port] = []
        seen: dict[tuple[int, str], int] = {}
        names: set[str] = set()
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                continue
            number = self._resolve(item.get("port"), node)
            if not isinstance(number, int) or isinstance(number, bool):
                continue
            pos = raw.at(index) if isinstance(raw, YSeq) else node.pos
            name = item.get("name")
            protocol = item.get("protocol", "http")
            family = "udp" if protocol == "udp" else "tcp"  # http and https ride on tcp
            if (number, family) in seen:
                self.sink.error(
                    codes.DUPLICATE_PORT,
                    f"service function '{node.name}': port {number} is listed twice",
                    pos,
                    value=number,
                    hint="each port may appear once",
                )
                continue
            if isinstance(name, str):
                if name in names:
                    self.sink.error(
                        codes.DUPLICATE_PORT,
                        f"service function '{node.name}': port name '{name}' is used twice",
                        pos,
                        value=name,
                    )
                names.add(name)
            seen[(number, family)] = index
            ports.append(
                Port(
                    number,
                    protocol if isinstance(protocol, str) else "http",
                    name if isinstance(name, str) else None,
                )
            )
        return tuple(ports)

    def _health(self, node: NodeTemplate, ports: tuple[Port, ...]) -> HealthCheck | None:
        raw = self._prop(node, "health_check")
        if not isinstance(raw, dict):
            return None
        port = raw.get("port")
        if isinstance(port, str) and port not in {p.name for p in ports}:
            pos = raw.at("port") if isinstance(raw, YMap) else node.pos
            self.sink.error(
                codes.NOT_A_TARGET,
                f"service function '{node.name}': health_check port '{port}' names no port of this SF",
                pos,
                value=port,
                hint=did_you_mean(port, [p.name for p in ports if p.name])
                or "give the port a 'name:' and use it here",
            )

        def seconds(key: str, default: float) -> float:
            value = raw.get(key)
            try:
                return parse_scalar(value, "scalar-unit.time") if value is not None else default
            except ScalarError:
                return default

        retries = raw.get("retries", 3)
        return HealthCheck(
            path=str(raw.get("path", "/health")),
            port=port if isinstance(port, str) else None,
            interval_s=seconds("interval", 2.0),
            timeout_s=seconds("timeout", 1.0),
            retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else 3,
        )

    def _resources(self, node: NodeTemplate) -> Resources:
        caps = node.raw.get("capabilities")
        host = caps.get("host") if isinstance(caps, dict) else None
        props = host.get("properties") if isinstance(host, dict) else None
        if not isinstance(props, dict):
            return Resources()

        def size(key: str) -> int | None:
            value = self._resolve(props.get(key), node)
            try:
                return int(parse_scalar(value, "scalar-unit.size")) if value is not None else None
            except ScalarError:
                return None

        cpus = self._resolve(props.get("num_cpus"), node)
        return Resources(
            cpus=float(cpus) if _number(cpus) else None,
            memory_bytes=size("mem_size"),
            disk_bytes=size("disk_size"),
        )

    # -- endpoint states ---------------------------------------------------------------------

    def _policies(self, type_name: str) -> list[PolicyTemplate]:
        return [
            p
            for t in self.topologies
            for p in t.policies
            if p.type is not None and p.type.is_a(type_name)
        ]

    def _state(
        self, value: Any, pos: Position, allowed: tuple[EndpointState, ...], what: str
    ) -> EndpointState | None:
        names = [s.value for s in allowed]
        if isinstance(value, str) and value in names:
            return EndpointState(value)
        self.sink.error(
            codes.BAD_STATE,
            f"{what}: '{value}' is not an endpoint state",
            pos,
            value=value if isinstance(value, str | int | float | bool) else None,
            hint=did_you_mean(str(value), names) or f"use one of: {', '.join(names)}",
        )
        return None

    def _cluster_known(self, cluster: str, pos: Position) -> bool:
        infra = self.ctx.infra
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

    def _target_names(self, policy: PolicyTemplate) -> set[str]:
        """A policy's target SFs, with groups expanded to their members."""
        names: set[str] = set()
        for name, _ in policy.targets:
            members = next((t.groups[name] for t in self.topologies if name in t.groups), None)
            names.update(members if members is not None else [name])
        return names

    def _state_map(
        self,
        value: Any,
        pos: Position,
        policy: PolicyTemplate,
        allowed: tuple[EndpointState, ...],
        what: str,
    ) -> list[_StateEntry]:
        """Read 'cluster -> {SF -> state}' maps used by both policy kinds."""
        clusters = as_map(value, pos, what, self.sink)
        targets = self._target_names(policy)
        found: list[_StateEntry] = []
        if allowed is INITIAL_STATES:
            for cluster_name, body in (clusters or {}).items():
                for sf in body if isinstance(body, dict) else ():
                    self.ctx.mentioned.add((str(cluster_name), str(sf)))
        for cluster, body in (clusters or {}).items():
            cpos = clusters.key_at(cluster) if clusters is not None else pos
            known = self._cluster_known(cluster, cpos)
            states = as_map(
                body,
                clusters.at(cluster) if clusters is not None else pos,
                f"{what} of cluster '{cluster}'",
                self.sink,
            )
            for sf, state_name in (states or {}).items():
                spos = states.key_at(sf) if states is not None else cpos
                vpos = states.at(sf) if states is not None else cpos
                if sf not in self.ctx.sfs and any(sf in t.broken for t in self.topologies):
                    continue
                if sf not in self.ctx.sfs:
                    self.sink.error(
                        codes.NOT_A_TARGET,
                        f"{what}: '{sf}' is not a service function",
                        spos,
                        value=sf,
                        hint=did_you_mean(sf, self.ctx.sfs)
                        or f"service functions: {', '.join(sorted(self.ctx.sfs))}",
                    )
                    continue
                if targets and sf not in targets:
                    self.sink.error(
                        codes.NOT_A_TARGET,
                        f"{what}: '{sf}' is not among the targets of policy '{policy.name}'",
                        spos,
                        value=sf,
                        hint=f"add '{sf}' to the policy's targets",
                    )
                    continue
                if self.sink.reported_at(vpos):
                    continue  # the typed 'clusters' map already rejected this value (E402)
                state = self._state(state_name, vpos, allowed, f"{what}, '{sf}' on '{cluster}'")
                if state is not None and known:
                    found.append(_StateEntry(EndpointTarget(cluster, sf, state), cpos, spos, vpos))
        return found

    def _initial_policies(self) -> list[InitialPolicy]:
        policies = self._policies(INITIAL_POLICY)
        if self.ctx.sfs and not policies:
            first = next(iter(self.ctx.sfs.values()))
            self.sink.error(
                codes.NO_INITIAL_POLICY,
                "the service has service functions but no eu.ict-flame.policies.InitialPolicy, so nothing "
                "would be deployed",
                first.pos,
                hint="add a policy of type eu.ict-flame.policies.InitialPolicy with per-cluster states",
            )
        result: list[InitialPolicy] = []
        for policy in policies:
            what = f"initial policy '{policy.name}'"
            area = self._area(policy)
            states: list[EndpointTarget] = []
            checked_clusters: set[str] = set()
            for entry in self._state_map(
                policy.properties.get("clusters"),
                policy.properties.at("clusters"),
                policy,
                INITIAL_STATES,
                what,
            ):
                target = entry.target
                key = (target.cluster, target.sf)
                if key in self.ctx.initial:
                    self.sink.error(
                        codes.DUPLICATE_NAME,
                        f"{what}: '{target.sf}' on '{target.cluster}' already has an initial state "
                        f"(at {self.ctx.initial[key][1]})",
                        entry.sf_pos,
                        value=target.sf,
                        hint="give each SF one initial state per cluster",
                    )
                    continue
                if target.cluster not in checked_clusters:
                    checked_clusters.add(target.cluster)
                    self._check_in_area(area, target.cluster, entry.cluster_pos, what)
                self.ctx.initial[key] = (target.state, entry.state_pos)
                states.append(target)
            result.append(
                InitialPolicy(policy.name, tuple(n for n, _ in policy.targets), tuple(states), area)
            )
        for name, node in self.ctx.sfs.items():
            if all(sf != name for _, sf in self.ctx.mentioned) and policies:
                self.sink.warning(
                    codes.SF_NEVER_DEPLOYED,
                    f"service function '{name}' has no initial state on any cluster and will never be deployed",
                    node.pos,
                    value=name,
                    hint="give it a state in an InitialPolicy's clusters",
                )
        return result

    def _area(self, policy: PolicyTemplate) -> Area | None:
        raw = policy.properties.get("area")
        if not isinstance(raw, YMap):
            return None
        pos = missing_position(policy.properties, "area")
        what = f"area of policy '{policy.name}'"
        centre = raw.get("centre")
        radius = raw.get("radius_km")
        polygon = raw.get("polygon")
        location = raw.get("location")
        forms = [
            name
            for name, present in (
                ("circle", centre is not None or radius is not None),
                ("polygon", polygon is not None),
                ("location", location is not None),
            )
            if present
        ]
        if len(forms) != 1:
            self.sink.error(
                codes.BAD_AREA,
                f"{what} must be exactly one of a circle (centre + radius_km), a polygon or a location"
                + (f"; it gives {' and '.join(forms)}" if forms else ""),
                pos,
                hint="for example 'area: {centre: {latitude: 51.45, longitude: -2.59}, radius_km: 25}'",
            )
            return None
        if forms == ["circle"]:
            if not isinstance(centre, dict) or not _number(radius):
                self.sink.error(
                    codes.BAD_AREA,
                    f"{what}: a circle needs both 'centre' and 'radius_km'",
                    pos,
                    hint="add the missing one",
                )
                return None
            lat, lon = centre.get("latitude"), centre.get("longitude")
            if not (_number(lat) and _number(lon)):
                return None
            return Area(centre=GeoPoint(float(lat), float(lon)), radius_km=float(radius))
        if forms == ["polygon"]:
            points: list[GeoPoint] = []
            for item in polygon if isinstance(polygon, list) else []:
                if (
                    isinstance(item, dict)
                    and _number(item.get("latitude"))
                    and _number(item.get("longitude"))
                ):
                    points.append(GeoPoint(float(item["latitude"]), float(item["longitude"])))
            if len(points) < 3:
                self.sink.error(
                    codes.BAD_AREA,
                    f"{what}: a polygon needs at least 3 points, got {len(points)}",
                    raw.at("polygon"),
                )
                return None
            return Area(polygon=tuple(points))
        if not isinstance(location, str):
            return None
        infra = self.ctx.infra
        if infra is not None and location not in infra.locations:
            self.sink.error(
                codes.UNKNOWN_LOCATION,
                f"{what}: location '{location}' is not defined in topology '{infra.name}'",
                raw.at("location"),
                value=location,
                hint=did_you_mean(location, infra.locations)
                or f"locations: {', '.join(sorted(infra.locations))}",
            )
            return None  # which clusters lie inside an unknown location cannot be decided
        return Area(location=location)

    def _check_in_area(self, area: Area | None, cluster: str, pos: Position, what: str) -> None:
        infra = self.ctx.infra
        if area is None or infra is None or cluster not in infra.clusters:
            return
        node = infra.clusters[cluster]
        if area.location is not None:
            inside = node.location_name == area.location
        elif node.location is None:
            return  # a cluster without coordinates cannot be checked against a circle
        else:
            inside = area.contains(node.location)
        if not inside:
            where = f"location '{area.location}'" if area.location else "the policy's area"
            self.sink.error(
                codes.CLUSTER_OUTSIDE_AREA,
                f"{what}: cluster '{cluster}' lies outside {where}",
                pos,
                value=cluster,
                hint="choose a cluster inside the area or widen the area",
            )

    # -- alerts and state changes ----------------------------------------------------------

    def _trigger_map(self, policy: PolicyTemplate) -> YMap:
        if policy.triggers is None:
            return YMap(policy.pos)
        return policy.triggers

    def _alerts(self) -> dict[str, _Alert]:
        alerts: dict[str, _Alert] = {}
        sources = [(p, False) for p in self._policies(ALERT_POLICY)]
        sources += [(p, True) for p in self._policies(STATE_CHANGE)]
        sources.sort(key=lambda source: source[0].pos)  # a duplicate is the later one
        for policy, inline in sources:
            triggers = self._trigger_map(policy)
            for name, body in triggers.items():
                trigger = as_map(
                    body,
                    triggers.at(name),
                    f"trigger '{name}' of policy '{policy.name}'",
                    self.sink,
                )
                if trigger is None:
                    continue
                condition = trigger.get("condition")
                if inline and isinstance(condition, dict) and "constraint" in condition:
                    continue  # a reference to an alert of an alert specification
                rule = self._alert_rule(policy, name, trigger, triggers.key_at(name), inline)
                if rule is None:
                    self.ctx.broken_alerts.add(name)
                    continue
                if name in alerts:
                    self.sink.error(
                        codes.DUPLICATE_TRIGGER,
                        f"trigger name '{name}' is already used at {alerts[name].pos}",
                        triggers.key_at(name),
                        value=name,
                        hint="trigger names identify alerts in the CLMC; make them unique",
                    )
                    continue
                alerts[name] = _Alert(
                    rule, triggers.key_at(name), policy.pos.file, referenced=inline
                )
        return alerts

    def _alert_rule(
        self, policy: PolicyTemplate, name: str, trigger: YMap, pos: Position, inline: bool
    ) -> AlertRule | None:
        what = f"trigger '{name}' of policy '{policy.name}'"
        check_keys(trigger, TRIGGER_KEYS, what, self.sink)
        ok = True
        event_raw = trigger.get("event_type")
        event: EventType | None = None
        if event_raw is None:
            self.sink.error(
                codes.BAD_TRIGGER,
                f"{what} has no event_type",
                pos,
                hint="add 'event_type: threshold' (or relative, deadman)",
            )
            ok = False
        else:
            try:
                event = EventType(event_raw)
            except ValueError:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"{what}: unknown event_type '{event_raw}'",
                    trigger.at("event_type"),
                    value=event_raw,
                    hint=did_you_mean(event_raw, [e.value for e in EventType])
                    or "use threshold, relative or deadman",
                )
                ok = False
        metric = trigger.get("metric")
        measurement = field_name = ""
        if not isinstance(metric, str) or not _METRIC.match(metric):
            self.sink.error(
                codes.BAD_METRIC,
                f"{what}: metric must be '<measurement>.<field>', got {kind_of(metric)}",
                trigger.at("metric") if "metric" in trigger else pos,
                value=metric if isinstance(metric, str) else None,
                hint="for example 'metric: sr_requests.response_time'",
            )
            ok = False
        else:
            measurement, field_name = metric.split(".", 1)
        condition = as_map(
            trigger.get("condition"), trigger.at("condition"), f"condition of {what}", self.sink
        )
        if condition is None or "condition" not in trigger:
            if condition is not None:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"{what} has no condition",
                    pos,
                    hint="add 'condition: {...}'",
                )
            return None
        allowed_condition = CONDITION_KEYS | {"period"} if inline else CONDITION_KEYS
        check_keys(condition, allowed_condition, f"condition of {what}", self.sink)
        threshold = condition.get("threshold")
        if not _number(threshold):
            self.sink.error(
                codes.BAD_TRIGGER,
                f"{what}: condition.threshold must be a number, got {kind_of(threshold)}",
                condition.at("threshold")
                if "threshold" in condition
                else missing_position(trigger, "condition"),
                hint="for example 'threshold: 100'",
            )
            ok = False
        granularity = self._seconds(
            condition, "granularity", what, missing_position(trigger, "condition")
        )
        if granularity is None:
            ok = False
        aggregation = condition.get("aggregation_method", "mean")
        if not isinstance(aggregation, str) or not _aggregation_ok(aggregation):
            self.sink.error(
                codes.BAD_AGGREGATION,
                f"{what}: unknown aggregation_method {aggregation!r}",
                condition.at("aggregation_method"),
                value=aggregation if isinstance(aggregation, str) else None,
                hint=_AGGREGATION_ALIASES.get(str(aggregation).lower())
                or did_you_mean(aggregation, AGGREGATIONS)
                or f"use one of {', '.join(AGGREGATIONS)} or percentile_N",
            )
            ok = False
        comparison: Comparison | None = None
        op = condition.get("comparison_operator")
        if op is None:
            if event is not EventType.DEADMAN:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"{what}: condition needs a comparison_operator",
                    missing_position(trigger, "condition"),
                    hint="add 'comparison_operator: gt' (lt, gt, lte, gte, eq, neq)",
                )
                ok = False
        else:
            try:
                comparison = Comparison(op)
            except ValueError:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"{what}: unknown comparison_operator {op!r}",
                    condition.at("comparison_operator"),
                    value=op if isinstance(op, str) else None,
                    hint=did_you_mean(op, [c.value for c in Comparison])
                    or "use lt, gt, lte, gte, eq or neq",
                )
                ok = False
        warning = condition.get("warning_threshold")
        if warning is not None and (not _number(warning) or event is EventType.DEADMAN):
            self.sink.error(
                codes.BAD_TRIGGER,
                f"{what}: condition.warning_threshold must be a number, for a threshold or "
                f"relative alert; got {kind_of(warning)} for {event.value if event else '?'}",
                condition.at("warning_threshold"),
                hint="for example 'warning_threshold: 80' beside 'threshold: 100'; a deadman "
                "alert has one level",
            )
            ok = False
        tags = self._tags(condition, what)
        notify, hooks = self._handlers(trigger, what, inline)
        if not ok or event is None or granularity is None or not _number(threshold):
            return None
        description = trigger.get("description")
        return AlertRule(
            name=name,
            policy=policy.name,
            event_type=event,
            measurement=measurement,
            field=field_name,
            threshold=float(threshold),
            warning_threshold=float(warning) if _number(warning) else None,
            granularity_s=granularity,
            aggregation=str(aggregation),
            comparison=comparison,
            tags=tags,
            notify_sfemc=notify,
            webhooks=hooks,
            description=description.strip() if isinstance(description, str) else "",
        )

    def _seconds(
        self, m: YMap, key: str, what: str, missing_at: Position | None = None
    ) -> float | None:
        value = m.get(key)
        if _number(value) and value > 0:
            return float(value)
        if isinstance(value, str):
            try:
                seconds = parse_scalar(value, "scalar-unit.time")
                if seconds > 0:
                    return seconds
            except ScalarError:
                pass
        self.sink.error(
            codes.BAD_TRIGGER,
            f"{what}: {key} must be a positive number of seconds (or a time like '30 s'), got {kind_of(value)}",
            m.at(key) if key in m else (missing_at or m.pos),
            hint=f"for example '{key}: 10'",
        )
        return None

    def _tags(self, condition: YMap, what: str) -> tuple[tuple[str, str], ...]:
        raw = condition.get("resource_type")
        if raw is None:
            return ()
        tags = as_map(raw, condition.at("resource_type"), f"resource_type of {what}", self.sink)
        result: list[tuple[str, str]] = []
        for key, value in (tags or {}).items():
            tag = key[len("flame_") :] if key.startswith("flame_") else key
            pos = tags.key_at(key) if tags is not None else condition.pos
            if tag not in TAG_KEYS:
                self.sink.error(
                    codes.UNKNOWN_TAG,
                    f"{what}: resource_type filters on unknown tag '{key}'",
                    pos,
                    value=key,
                    hint=did_you_mean(tag, TAG_KEYS) or f"tags: {', '.join(TAG_KEYS)}",
                )
                continue
            if (
                tag == "sf"
                and isinstance(value, str)
                and self.ctx.sfs
                and value not in self.ctx.sfs
            ):
                self.sink.error(
                    codes.NOT_A_TARGET,
                    f"{what}: resource_type sf '{value}' is not a service function of this chain",
                    tags.at(key) if tags is not None else pos,
                    value=value,
                    hint=did_you_mean(value, self.ctx.sfs),
                )
                continue
            value_pos = tags.at(key) if tags is not None else pos
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                self.sink.error(
                    codes.UNKNOWN_TAG,
                    f"{what}: resource_type '{key}' must be a single value to match, got {kind_of(value)}",
                    value_pos,
                    hint="give one tag value; write one trigger per value to watch several",
                )
                continue
            if tag == "cluster" and isinstance(value, str):
                self._cluster_known(value, value_pos)
            if tag == "fqdn" and self.ctx.fqdns and value not in self.ctx.fqdns:
                self.sink.error(
                    codes.NOT_A_TARGET,
                    f"{what}: resource_type fqdn '{value}' is not served by this chain",
                    value_pos,
                    value=str(value),
                    hint=did_you_mean(str(value), self.ctx.fqdns)
                    or f"FQDNs of this chain: {', '.join(sorted(self.ctx.fqdns))}",
                )
                continue
            if tag == "sr" and self.ctx.infra is not None:
                routers = self.ctx.infra.service_routers
                if value not in routers:
                    self.sink.error(
                        codes.UNKNOWN_CLUSTER,
                        f"{what}: resource_type sr '{value}' is not a service router of topology "
                        f"'{self.ctx.infra.name}'",
                        value_pos,
                        value=str(value),
                        hint=did_you_mean(str(value), routers)
                        or f"service routers: {', '.join(sorted(routers))}",
                    )
                    continue
            result.append((tag, str(value)))
        return tuple(result)

    def _handlers(self, trigger: YMap, what: str, inline: bool) -> tuple[bool, tuple[str, ...]]:
        """Who an alert notifies: the SFEMC and/or webhooks.

        A StateChange trigger with states and no implementation notifies the SFEMC implicitly;
        one that lists handlers without flame_sfemc could never change a state, so it is an error.
        """
        action = trigger.get("action")
        if not isinstance(action, YMap):
            return (False, ())
        allowed = {"implementation", "states"} if inline else {"implementation"}
        check_keys(action, allowed, f"action of {what}", self.sink)
        changes_states = inline and "states" in action
        raw = action.get("implementation")
        if raw is None:
            return (changes_states, ())
        items = raw if isinstance(raw, list) else [raw]
        notify = False
        hooks: list[str] = []
        for index, item in enumerate(items):
            pos = raw.at(index) if isinstance(raw, YSeq) else action.at("implementation")
            if item == SFEMC_HANDLER:
                notify = True
                continue
            url = urlparse(item) if isinstance(item, str) else None
            if url is None or url.scheme not in ("http", "https") or not url.netloc:
                self.sink.error(
                    codes.BAD_WEBHOOK,
                    f"{what}: handler {item!r} is neither {SFEMC_HANDLER} nor an http(s) URL",
                    pos,
                    value=item if isinstance(item, str) else None,
                    hint=did_you_mean(item, [SFEMC_HANDLER])
                    or "for example https://hooks.example.com/alerts",
                )
                continue
            hooks.append(item)
        if changes_states and not notify:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what} changes endpoint states but its implementation does not include "
                f"{SFEMC_HANDLER}, so the SFEMC would never hear of it",
                action.at("implementation"),
                hint=f"add '{SFEMC_HANDLER}' to action.implementation",
            )
        return (notify, tuple(hooks))

    def _state_changes(self, alerts: dict[str, _Alert]) -> list[StateChangePolicy]:
        result: list[StateChangePolicy] = []
        allowed = (EndpointState.UNPLACED, *INITIAL_STATES)
        for policy in self._policies(STATE_CHANGE):
            triggers = self._trigger_map(policy)
            if not triggers:
                self.sink.error(
                    codes.BAD_TRIGGER,
                    f"state-change policy '{policy.name}' has no triggers",
                    policy.pos,
                    hint="add 'triggers: {name: {event_type: ..., metric: ..., condition: ..., action: ...}}'",
                )
            for name, body in triggers.items():
                if not isinstance(body, YMap):
                    continue
                what = f"trigger '{name}' of policy '{policy.name}'"
                condition = body.get("condition")
                period = None
                reference = isinstance(condition, YMap) and "constraint" in condition
                if isinstance(condition, YMap) and reference:
                    check_keys(body, REFERENCE_TRIGGER_KEYS, what, self.sink)
                    check_keys(
                        condition, REFERENCE_CONDITION_KEYS, f"condition of {what}", self.sink
                    )
                    alert_name = self._alert_reference(condition, alerts, what)
                else:
                    alert_name = name if name in alerts else None
                if isinstance(condition, YMap) and "period" in condition:
                    period = self._seconds(condition, "period", what)
                action = body.get("action")
                if not isinstance(action, YMap) or "states" not in action:
                    self.sink.error(
                        codes.BAD_TRIGGER,
                        f"{what}: the action names no endpoint states to change",
                        body.at("action") if "action" in body else body.pos,
                        hint="add 'action: {states: {<cluster>: {<sf>: connected}}}'",
                    )
                    continue
                if reference:
                    check_keys(action, {"states"}, f"action of {what}", self.sink)
                changes = self._state_map(
                    action["states"], action.at("states"), policy, allowed, what
                )
                valid: list[EndpointTarget] = []
                for entry in changes:
                    change, pos = entry.target, entry.state_pos
                    initial = self.ctx.initial.get((change.cluster, change.sf))
                    if initial is None and (change.cluster, change.sf) not in self.ctx.mentioned:
                        self.sink.error(
                            codes.ILLEGAL_TRANSITION,
                            f"{what}: '{change.sf}' has no endpoint on cluster '{change.cluster}' to move to "
                            f"'{change.state}'",
                            pos,
                            value=change.sf,
                            hint=f"add '{change.cluster}: {{{change.sf}: placed}}' to an initial policy so the "
                            "surrogate exists",
                        )
                    if initial is None:
                        continue
                    valid.append(change)
                if alert_name is not None and valid:
                    result.append(
                        StateChangePolicy(policy.name, name, alert_name, tuple(valid), period)
                    )
        return result

    def _alert_reference(self, condition: YMap, alerts: dict[str, _Alert], what: str) -> str | None:
        ref = condition.get("constraint")
        pos = condition.at("constraint")
        if not isinstance(ref, str) or not ref.startswith(ALERT_REF):
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: constraint must be '{ALERT_REF}<alert trigger>', got {kind_of(ref)}",
                pos,
                value=ref if isinstance(ref, str) else None,
                hint=f"for example 'constraint: {ALERT_REF}high_latency'",
            )
            return None
        name = ref[len(ALERT_REF) :]
        if name in self.ctx.broken_alerts:
            return None  # the alert's own errors are reported; do not call the reference broken
        alert = alerts.get(name)
        if alert is None:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: no alert trigger named '{name}' in the alert specification",
                pos,
                value=ref,
                hint=did_you_mean(name, alerts)
                or "validate the resource and alert specifications together: "
                "flame validate resources.yaml alerts.yaml",
            )
            return None
        alert.referenced = True
        if not alert.rule.notify_sfemc:
            self.sink.error(
                codes.UNRESOLVED_ALERT,
                f"{what}: alert '{name}' does not notify {SFEMC_HANDLER}, so this state change would never happen",
                pos,
                value=ref,
                hint=f"add '{SFEMC_HANDLER}' to the alert's action.implementation (at {alert.pos})",
            )
        return name


def _fqdn_problem(fqdn: str) -> str | None:
    if len(fqdn) > 253:
        return "is longer than 253 characters"
    labels = fqdn.split(".")
    if len(labels) < 2:
        return "needs at least two labels (a dot)"
    for label in labels:
        if not _FQDN_LABEL.match(label):
            return f"has an invalid label '{label}' (lowercase letters, digits and '-', max 63)"
    return None
