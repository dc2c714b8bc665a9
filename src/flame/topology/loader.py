"""Loading a topology file (YAML) with every error located, like FLAME-TOSCA errors.

flame_topology: 1
name: sandbox
locations: {bristol: {latitude: 51.45, longitude: -2.59}}
service_routers: {sr-ue: {location: bristol, address: 127.0.1.1}}
clusters: {edge-1: {sr: sr-ue, location: bristol, capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}}}
switches: {sw-1: {}}
user_equipment: {ue-1: {sr: sr-ue}}
links: [{between: [sr-ue, sw-1], latency: 2 ms, bandwidth: 1 Gbps}]
registrations: [{fqdn: www.example.org, cluster: edge-1, host: 127.0.0.1, port: 8080}]

Addresses (an SR's `address`, a cluster's `address`, a registration's `host`) are IP addresses a
node listens on and others connect to: loopback ones (127.0.0.0/8, ::1) when FLAME runs on one
machine, the hosts' routable ones when it spans several. The unspecified (0.0.0.0, ::), multicast
and broadcast addresses are refused: nothing can connect to them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flame.common.diagnostics import DiagnosticSink, Position, ValidationFailed
from flame.common.yamlfields import Fields, Problem, read_map, report
from flame.common.yamlshape import WRONG_SHAPE, as_list, as_map, check_keys, did_you_mean, kind_of
from flame.common.yamlsrc import YMap, load_yaml
from flame.topology.fields import (
    BAD_VALUE,
    BAD_VERSION,
    DUPLICATE_ID,
    LINK,
    UNKNOWN_REFERENCE,
    address_problem,
    fqdn_problem,
    link_ends_problems,
    node_shape,
    read_point,
    registration_shape,
    sfe_id_problem,
)
from flame.topology.geo import GeoPoint
from flame.topology.model import Link, Node, NodeKind, StaticRegistration, Topology

# The checks of one value live in flame.topology.fields; these names stay importable from here.
__all__ = [
    "BAD_VALUE",
    "BAD_VERSION",
    "DUPLICATE_ID",
    "UNKNOWN_REFERENCE",
    "address_problem",
    "fqdn_problem",
    "load_topology",
    "parse_topology",
    "sfe_id_problem",
]

_SECTIONS = {
    "service_routers": NodeKind.SERVICE_ROUTER,
    "clusters": NodeKind.CLUSTER,
    "switches": NodeKind.SWITCH,
    "user_equipment": NodeKind.USER_EQUIPMENT,
}
_TOP_KEYS = {
    "flame_topology",
    "name",
    "description",
    "locations",
    "links",
    "registrations",
    *_SECTIONS,
}
_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _links(root: YMap, nodes: dict[str, Node], sink: DiagnosticSink) -> list[Link]:
    links: list[Link] = []
    seq = as_list(root.get("links"), root.at("links"), "links", sink)
    for index, item in enumerate(seq or []):
        pos = seq.at(index) if seq is not None else root.pos
        what = f"link #{index + 1}"
        fields = read_map(item, pos, what, sink, LINK)
        if fields is None or fields["between"] is None:
            continue
        problems = link_ends_problems(fields["between"], what, nodes)
        for problem in problems:
            report(sink, fields.map, "between", problem)
        if problems or not fields.ok:
            continue
        a, b = fields["between"]
        links.append(
            Link(
                a=a,
                b=b,
                latency_ms=fields["latency"],
                bandwidth_bps=fields["bandwidth"],
                cost=fields["cost"],
                state=fields["state"],
                link_class=fields["class"],
                loss_pct=fields["loss"] or 0.0,
            )
        )
    return links


def _registrations(
    root: YMap, nodes: dict[str, Node], sink: DiagnosticSink
) -> list[StaticRegistration]:
    """Static FQDN registrations (SFR-10): endpoints that exist without the SFEMC.

    The operator owns them. An entry without `sfe:` gets the id `<fqdn>@<cluster>`, so two
    entries for one FQDN on one cluster must name their endpoints.
    """
    found: list[StaticRegistration] = []
    first_at: dict[str, Position] = {}
    shape = registration_shape(nodes)
    seq = as_list(root.get("registrations"), root.at("registrations"), "registrations", sink)
    for index, item in enumerate(seq or []):
        pos = seq.at(index) if seq is not None else root.pos
        what = f"registration #{index + 1}"
        fields = read_map(item, pos, what, sink, shape, anchor=pos)
        if fields is None or not fields.ok:
            continue
        sfe = fields["sfe"] or f"{fields['fqdn']}@{fields['cluster']}"
        sfe_pos = fields.map.at("sfe") if "sfe" in fields.map else pos
        if sfe in first_at:
            sink.error(
                DUPLICATE_ID,
                f"{what}: endpoint id '{sfe}' is used twice (first at line {first_at[sfe].line})",
                sfe_pos,
                value=sfe,
                hint="give each registration its own 'sfe:' id",
            )
            continue
        first_at[sfe] = sfe_pos
        found.append(
            StaticRegistration(
                fqdn=str(fields["fqdn"]),
                cluster=str(fields["cluster"]),
                host=str(fields["host"]),
                port=int(str(fields["port"])),
                sfe=str(sfe),
            )
        )
    return found


# -- the file ---------------------------------------------------------------------------------------


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; raise ValidationFailed listing every problem."""
    sink = DiagnosticSink()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sink.error("E102", f"cannot read topology file: {exc}", Position(str(p)))
        raise ValidationFailed(sink.items) from None
    topology = parse_topology(text, str(p), sink)
    if sink.has_errors() or topology is None:
        raise ValidationFailed(sink.items)
    return topology


def parse_topology(text: str, name: str, sink: DiagnosticSink) -> Topology | None:
    """Check a topology file's text; every problem goes to `sink` (None: not a mapping)."""
    root = load_yaml(text, name, sink)
    if not isinstance(root, YMap):
        if root is not None or not sink.has_errors():
            sink.error(WRONG_SHAPE, "a topology file must be a mapping", Position(name, 1, 1))
        return None
    check_keys(root, _TOP_KEYS, "a topology file", sink)
    _check_version(root, sink)
    locations = _locations(root, sink)
    nodes = _Nodes(locations, sink)
    for section, kind in _SECTIONS.items():
        if section in root:
            nodes.read_section(root, section, kind)
    nodes.check_references()
    links = _links(root, nodes.nodes, sink)
    registrations = _registrations(root, nodes.nodes, sink)
    return Topology(
        name=_name(root, name, sink),
        source=name,
        nodes=nodes.nodes,
        links=tuple(links),
        locations=locations,
        registrations=tuple(registrations),
    )


def _check_version(root: YMap, sink: DiagnosticSink) -> None:
    version = root.get("flame_topology")
    if isinstance(version, bool) or version != 1:
        sink.error(
            BAD_VERSION,
            f"flame_topology must be 1, got {kind_of(version)}",
            root.at("flame_topology"),
            hint="start the file with 'flame_topology: 1'",
        )


def _locations(root: YMap, sink: DiagnosticSink) -> dict[str, GeoPoint]:
    locations: dict[str, GeoPoint] = {}
    section = as_map(root.get("locations"), root.at("locations"), "locations", sink)
    for loc_name, body in (section or {}).items():
        pos = section.at(loc_name) if section is not None else root.pos
        point = read_point(body, pos, f"location '{loc_name}'", sink)
        if point is not None:
            locations[loc_name] = point
    return locations


class _Nodes:
    """The nodes of every section, with their positions and the `sr:` references to check."""

    def __init__(self, locations: dict[str, GeoPoint], sink: DiagnosticSink) -> None:
        self.sink = sink
        self.shapes = {kind: node_shape(kind, locations) for kind in _SECTIONS.values()}
        self.nodes: dict[str, Node] = {}
        self.positions: dict[str, Position] = {}
        self.references: list[tuple[str, Position, str]] = []  # (sr, where, what)

    def read_section(self, root: YMap, section: str, kind: NodeKind) -> None:
        entries = as_map(root[section], root.at(section), section, self.sink)
        for node_id, body in (entries or {}).items():
            key_pos = entries.key_at(node_id) if entries is not None else root.pos
            value_pos = entries.at(node_id) if entries is not None else key_pos
            self._read_node(node_id, body, kind, key_pos, value_pos)

    def _read_node(
        self, node_id: str, body: Any, kind: NodeKind, key_pos: Position, value_pos: Position
    ) -> None:
        what = f"{kind.value.replace('_', ' ')} '{node_id}'"
        if not _ID.match(node_id):
            self.sink.error(
                BAD_VALUE,
                f"{what}: ids must be lowercase letters, digits and '-' (max 63)",
                key_pos,
                value=node_id,
            )
        if node_id in self.nodes:
            self.sink.error(
                DUPLICATE_ID,
                f"id '{node_id}' is used twice (first at line {self.positions[node_id].line})",
                key_pos,
                value=node_id,
                hint="every node id must be unique across all sections",
            )
            return
        fields = read_map(body, value_pos, what, self.sink, self.shapes[kind], anchor=key_pos)
        if fields is None:
            return
        values = fields.values
        if kind is NodeKind.CLUSTER:
            self._check_reserved(fields, what)
        sr = values["sr"]
        if kind in (NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT) and sr is not None:
            self.references.append((sr, fields.map.at("sr"), what))
        loc = fields.map.get("location")
        self.nodes[node_id] = Node(
            id=node_id,
            kind=kind,
            location=values["location"],
            location_name=loc if isinstance(loc, str) else None,
            sr=sr,
            address=values["address"],
            capacity=values.get("capacity"),
            reserved=values.get("reserved"),
            vim=values.get("vim"),
        )
        self.positions[node_id] = key_pos

    def _check_reserved(self, fields: Fields, what: str) -> None:
        capacity, reserved = fields["capacity"], fields["reserved"]
        if capacity is None or reserved is None:
            return
        if (
            reserved.cpus >= capacity.cpus
            or reserved.memory_bytes >= capacity.memory_bytes
            or reserved.disk_bytes >= capacity.disk_bytes
        ):
            problem = Problem(
                BAD_VALUE,
                f"{what}: the reserved share leaves nothing of its capacity for endpoints",
                hint="raise the capacity or lower 'reserved' (default: 1 cpu, 1 GB, 1.5 GB)",
                where="key",
            )
            key = "reserved" if "reserved" in fields.map else "capacity"
            report(self.sink, fields.map, key, problem)

    def check_references(self) -> None:
        want = NodeKind.SERVICE_ROUTER
        for ref, pos, what in self.references:
            target = self.nodes.get(ref)
            if target is None or target.kind is not want:
                pool = [n for n, v in self.nodes.items() if v.kind is want]
                self.sink.error(
                    UNKNOWN_REFERENCE,
                    f"{what}: '{ref}' is not a {want.value.replace('_', ' ')}",
                    pos,
                    value=ref,
                    hint=did_you_mean(ref, pool) or f"service routers: {', '.join(pool) or 'none'}",
                )


def _name(root: YMap, source: str, sink: DiagnosticSink) -> str:
    name = root.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        sink.error(BAD_VALUE, f"name must be a string, got {kind_of(name)}", root.at("name"))
        return Path(source).stem
    return name
