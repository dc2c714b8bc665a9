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

import ipaddress
import math
import re
from pathlib import Path
from typing import Any, TypeGuard

from flame.common.diagnostics import DiagnosticSink, Position, ValidationFailed
from flame.common.units import ScalarError, parse_scalar
from flame.common.yamlshape import (
    MISSING_KEY,
    WRONG_SHAPE,
    as_list,
    as_map,
    check_keys,
    did_you_mean,
    kind_of,
)
from flame.common.yamlsrc import YMap, load_yaml
from flame.topology.geo import GeoPoint
from flame.topology.model import (
    DEFAULT_RESERVED,
    Link,
    LinkState,
    Node,
    NodeKind,
    Resources,
    StaticRegistration,
    Topology,
    Vim,
)

UNKNOWN_REFERENCE = "T103"
BAD_VALUE = "T104"
DUPLICATE_ID = "T105"
BAD_VERSION = "T106"

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
_NODE_KEYS = {
    NodeKind.SERVICE_ROUTER: {"location", "address", "description"},
    NodeKind.CLUSTER: {
        "location",
        "sr",
        "address",
        "capacity",
        "reserved",
        "vim",
        "description",
    },
    NodeKind.SWITCH: {"location", "description"},
    NodeKind.USER_EQUIPMENT: {"location", "sr", "description"},
}
_LINK_KEYS = {
    "between",
    "latency",
    "bandwidth",
    "loss",
    "cost",
    "state",
    "class",
    "description",
}
_REGISTRATION_KEYS = {"fqdn", "cluster", "host", "port", "sfe", "description"}
_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FQDN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,252}$")


def fqdn_problem(fqdn: str) -> str | None:
    """What is wrong with `fqdn` as a service name (None if nothing), worded to follow it.

    The same rule as FLAME-TOSCA's `fqdn` property, so a name that validates in a template can be
    registered (SFR-10, SFR-11): lowercase DNS labels, at least two, 253 characters at most.
    """
    if len(fqdn) > 253:
        return "is longer than 253 characters"
    labels = fqdn.split(".")
    if len(labels) < 2:
        return "needs at least two labels (a dot)"
    for label in labels:
        if not _FQDN_LABEL.match(label):
            return f"has an invalid label '{label}' (lowercase letters, digits and '-', max 63)"
    return None


def address_problem(address: object) -> str | None:
    """What is wrong with `address` as a node's address (None if nothing), worded to follow
    "address". Any IPv4 or IPv6 address a host can listen on and be connected to."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return (
            f"must be an IP address, got {address!r} (host names are not resolved: write "
            "the address, e.g. 127.0.1.1 on one machine or the host's own, e.g. 10.0.0.2)"
        )
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        return (
            f"must be one host's address, got {address!r} (not the unspecified, a multicast "
            "or the broadcast address)"
        )
    return None


def sfe_id_problem(sfe: str) -> str | None:
    """What is wrong with `sfe` as an endpoint id (None if nothing).

    Ids travel in URL paths (`DELETE /v1/registrations/{sfe}`), so no '/', spaces or '%'.
    """
    if not _SFE_ID.match(sfe):
        return (
            "must be 1-253 letters, digits, '.', '_', '@', ':' or '-', "
            "starting with a letter or digit"
        )
    return None


class _Reader:
    def __init__(self, sink: DiagnosticSink) -> None:
        self.sink = sink

    def point(self, value: Any, pos: Position, what: str) -> GeoPoint | None:
        m = as_map(value, pos, what, self.sink)
        if m is None:
            return None
        lat, lon = m.get("latitude"), m.get("longitude")
        ok = True
        for key, val, limit in (("latitude", lat, 90), ("longitude", lon, 180)):
            if (
                isinstance(val, bool)
                or not isinstance(val, int | float)
                or not -limit <= val <= limit
            ):
                self.sink.error(
                    BAD_VALUE,
                    f"{what}: {key} must be a number from -{limit} to {limit}, got {kind_of(val)}",
                    m.at(key),
                    value=val if not isinstance(val, dict | list) else None,
                )
                ok = False
        check_keys(m, {"latitude", "longitude"}, what, self.sink)
        if not ok or lat is None or lon is None:
            return None
        return GeoPoint(float(lat), float(lon))

    def scalar(self, value: Any, pos: Position, kind: str, what: str) -> float | None:
        try:
            return parse_scalar(value, kind)
        except ScalarError as exc:
            self.sink.error(BAD_VALUE, f"{what}: {exc}", pos, value=value, hint=exc.hint)
            return None

    def resources(
        self, value: Any, pos: Position, what: str, *, allow_zero: bool = False
    ) -> Resources | None:
        """Cpus, memory and disk: finite, positive (or zero where `allow_zero`, as reserved)."""
        m = as_map(value, pos, what, self.sink)
        if m is not None:
            check_keys(m, {"cpus", "memory", "disk"}, what, self.sink)
        if m is None:
            return None
        least = "non-negative" if allow_zero else "positive"
        cpus = m.get("cpus")
        if not _finite(cpus) or cpus < 0 or (cpus == 0 and not allow_zero):
            self.sink.error(
                BAD_VALUE,
                f"{what}: cpus must be a {least} number",
                m.at("cpus"),
                value=cpus if _finite(cpus) else str(cpus),
            )
            return None
        sizes: list[int] = []
        for key in ("memory", "disk"):
            size = self.scalar(m.get(key), m.at(key), "scalar-unit.size", f"{what} {key}")
            bad = size is not None and (
                not math.isfinite(size) or size < 0 or (size == 0 and not allow_zero)
            )
            if bad:
                self.sink.error(
                    BAD_VALUE,
                    f"{what}: {key} must be a {least} size",
                    m.at(key),
                    value=str(m.get(key)),
                )
            if size is None or bad:
                return None
            sizes.append(int(size))
        return Resources(float(cpus), sizes[0], sizes[1])


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


def parse_topology(text: str, name: str, sink: DiagnosticSink) -> Topology | None:  # noqa: C901 (issue 18: split it)
    root = load_yaml(text, name, sink)
    if not isinstance(root, YMap):
        if root is not None or not sink.has_errors():
            sink.error(WRONG_SHAPE, "a topology file must be a mapping", Position(name, 1, 1))
        return None
    r = _Reader(sink)
    check_keys(root, _TOP_KEYS, "a topology file", sink)
    version = root.get("flame_topology")
    if isinstance(version, bool) or version != 1:
        sink.error(
            BAD_VERSION,
            f"flame_topology must be 1, got {kind_of(root.get('flame_topology'))}",
            root.at("flame_topology"),
            hint="start the file with 'flame_topology: 1'",
        )
    locations: dict[str, GeoPoint] = {}
    loc_section = as_map(root.get("locations"), root.at("locations"), "locations", sink)
    for loc_name, body in (loc_section or {}).items():
        point = r.point(
            body, loc_section.at(loc_name) if loc_section else root.pos, f"location '{loc_name}'"
        )
        if point is not None:
            locations[loc_name] = point

    nodes: dict[str, Node] = {}
    node_pos: dict[str, Position] = {}
    references: list[tuple[str, str, Position, NodeKind, str]] = []
    for section, kind in _SECTIONS.items():
        if section not in root:
            continue
        entries_map = as_map(root[section], root.at(section), section, sink)
        for node_id, body in (entries_map or {}).items():
            key_pos = entries_map.key_at(node_id) if entries_map is not None else root.pos
            what = f"{kind.value.replace('_', ' ')} '{node_id}'"
            if not _ID.match(node_id):
                sink.error(
                    BAD_VALUE,
                    f"{what}: ids must be lowercase letters, digits and '-' (max 63)",
                    key_pos,
                    value=node_id,
                )
            if node_id in nodes:
                sink.error(
                    DUPLICATE_ID,
                    f"id '{node_id}' is used twice (first at line {node_pos[node_id].line})",
                    key_pos,
                    value=node_id,
                    hint="every node id must be unique across all sections",
                )
                continue
            m = as_map(
                body, entries_map.at(node_id) if entries_map is not None else key_pos, what, sink
            )
            if m is not None:
                check_keys(m, _NODE_KEYS[kind], what, sink)
            if m is None:
                continue
            location, location_name = None, None
            loc = m.get("location")
            if isinstance(loc, str):
                location_name = loc
                location = locations.get(loc)
                if location is None:
                    sink.error(
                        UNKNOWN_REFERENCE,
                        f"{what}: unknown location '{loc}'",
                        m.at("location"),
                        value=loc,
                        hint=did_you_mean(loc, locations) or "define it under 'locations:'",
                    )
            elif loc is not None:
                location = r.point(loc, m.at("location"), f"location of {what}")
            address = m.get("address")
            if address is not None and (problem := address_problem(address)) is not None:
                sink.error(
                    BAD_VALUE,
                    f"{what}: address {problem}",
                    m.at("address"),
                    value=str(address),
                )
                address = None
            capacity = reserved = None
            vim = None
            if kind is NodeKind.CLUSTER:
                if "capacity" not in m:
                    sink.error(
                        MISSING_KEY,
                        f"{what} has no capacity",
                        key_pos,
                        hint="add 'capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}'",
                    )
                else:
                    capacity = r.resources(m["capacity"], m.at("capacity"), f"capacity of {what}")
                reserved = (
                    r.resources(
                        m["reserved"], m.at("reserved"), f"reserved of {what}", allow_zero=True
                    )
                    if "reserved" in m
                    else DEFAULT_RESERVED
                )
                if (
                    capacity is not None
                    and reserved is not None
                    and (
                        reserved.cpus >= capacity.cpus
                        or reserved.memory_bytes >= capacity.memory_bytes
                        or reserved.disk_bytes >= capacity.disk_bytes
                    )
                ):
                    sink.error(
                        BAD_VALUE,
                        f"{what}: the reserved share leaves nothing of its capacity for endpoints",
                        m.key_at("reserved") if "reserved" in m else m.key_at("capacity"),
                        hint="raise the capacity or lower 'reserved' (default: 1 cpu, 1 GB, 1.5 GB)",
                    )
                vim_name = m.get("vim", "process")
                try:
                    vim = Vim(vim_name)
                except ValueError:
                    sink.error(
                        BAD_VALUE,
                        f"{what}: unknown vim '{vim_name}'",
                        m.at("vim"),
                        value=vim_name,
                        hint=did_you_mean(vim_name, [v.value for v in Vim])
                        or "use process or kubernetes",
                    )
            sr = m.get("sr")
            if kind in (NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT):
                if not isinstance(sr, str):
                    sink.error(
                        MISSING_KEY,
                        f"{what} must name the service router it attaches to ('sr:')",
                        key_pos,
                        hint="add 'sr: <service router id>'",
                    )
                else:
                    references.append((node_id, sr, m.at("sr"), NodeKind.SERVICE_ROUTER, what))
            nodes[node_id] = Node(
                id=node_id,
                kind=kind,
                location=location,
                location_name=location_name,
                sr=sr if isinstance(sr, str) else None,
                address=str(address) if address is not None else None,
                capacity=capacity,
                reserved=reserved,
                vim=vim,
            )
            node_pos[node_id] = key_pos
    for _node_id, ref, pos, want, what in references:
        target = nodes.get(ref)
        if target is None or target.kind is not want:
            pool = [n for n, v in nodes.items() if v.kind is want]
            sink.error(
                UNKNOWN_REFERENCE,
                f"{what}: '{ref}' is not a {want.value.replace('_', ' ')}",
                pos,
                value=ref,
                hint=did_you_mean(ref, pool) or f"service routers: {', '.join(pool) or 'none'}",
            )
    links = _links(root, nodes, r, sink)
    registrations = _registrations(root, nodes, sink)
    return Topology(
        name=_name(root, name, sink),
        source=name,
        nodes=nodes,
        links=tuple(links),
        locations=locations,
        registrations=tuple(registrations),
    )


def _links(root: YMap, nodes: dict[str, Node], r: _Reader, sink: DiagnosticSink) -> list[Link]:
    links: list[Link] = []
    seq = as_list(root.get("links"), root.at("links"), "links", sink)
    for index, item in enumerate(seq or []):
        pos = seq.at(index) if seq is not None else root.pos
        what = f"link #{index + 1}"
        m = as_map(item, pos, what, sink)
        if m is not None:
            check_keys(m, _LINK_KEYS, what, sink)
        if m is None:
            continue
        between = m.get("between")
        if not (
            isinstance(between, list)
            and len(between) == 2
            and all(isinstance(b, str) for b in between)
        ):
            sink.error(
                MISSING_KEY if between is None else WRONG_SHAPE,
                f"{what} needs 'between: [node, node]'",
                m.at("between"),
                hint="for example 'between: [sr-ue, sw-1]'",
            )
            continue
        ok = True
        for end in between:
            if end not in nodes:
                sink.error(
                    UNKNOWN_REFERENCE,
                    f"{what}: unknown node '{end}'",
                    m.at("between"),
                    value=end,
                    hint=did_you_mean(end, nodes),
                )
                ok = False
        if between[0] == between[1]:
            sink.error(BAD_VALUE, f"{what} connects '{between[0]}' to itself", m.at("between"))
            ok = False
        raw_latency = m.get("latency", 1)
        latency_ms: float | None
        if isinstance(raw_latency, int | float) and not isinstance(raw_latency, bool):
            latency_ms = float(raw_latency)  # a bare number means milliseconds
        else:
            seconds = r.scalar(raw_latency, m.at("latency"), "scalar-unit.time", f"{what} latency")
            # round away the binary noise of going through seconds (9 ms -> 9.000000000000002)
            latency_ms = None if seconds is None else round(seconds * 1000.0, 9)
        if latency_ms is None:
            ok = False
        elif not math.isfinite(latency_ms) or latency_ms < 0:
            sink.error(
                BAD_VALUE,
                f"{what}: latency must be a finite, non-negative time",
                m.at("latency"),
                value=str(raw_latency),
                hint="for example 'latency: 5 ms'",
            )
            ok = False
        bandwidth = (
            r.scalar(m["bandwidth"], m.at("bandwidth"), "scalar-unit.bitrate", f"{what} bandwidth")
            if "bandwidth" in m
            else None
        )
        if bandwidth is not None and (not math.isfinite(bandwidth) or bandwidth <= 0):
            sink.error(
                BAD_VALUE,
                f"{what}: bandwidth must be a positive rate",
                m.at("bandwidth"),
                value=str(m.get("bandwidth")),
                hint="for example 'bandwidth: 1 Gbps'",
            )
            ok = False
        cost = m.get("cost")
        if cost is not None and (
            isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0
        ):
            sink.error(
                BAD_VALUE, f"{what}: cost must be a non-negative number", m.at("cost"), value=cost
            )
            ok = False
        loss_pct = _loss(m.get("loss", 0))
        if loss_pct is None:
            sink.error(
                BAD_VALUE,
                f"{what}: loss must be a percentage from 0 to 100",
                m.at("loss"),
                value=str(m.get("loss")),
                hint="for example 'loss: 0.1 %' (used by flame up --netns)",
            )
            ok = False
        state_name = m.get("state", "up")
        try:
            state = LinkState(state_name)
        except ValueError:
            sink.error(
                BAD_VALUE, f"{what}: state must be up or down, got {state_name!r}", m.at("state")
            )
            ok = False
            state = LinkState.UP
        if ok and latency_ms is not None:
            links.append(
                Link(
                    a=between[0],
                    b=between[1],
                    latency_ms=latency_ms,
                    bandwidth_bps=bandwidth,
                    cost=float(cost) if cost is not None else None,
                    state=state,
                    link_class=str(m["class"]) if "class" in m else None,
                    loss_pct=loss_pct or 0.0,
                )
            )
    return links


def _loss(raw: object) -> float | None:
    """A link's packet loss in percent: a number, or a string like '0.5 %' (None: invalid)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        raw = raw.strip().removesuffix("%").strip()
        try:
            raw = float(raw)
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw) or not 0 <= raw <= 100:
        return None
    return float(raw)


def _registrations(
    root: YMap, nodes: dict[str, Node], sink: DiagnosticSink
) -> list[StaticRegistration]:
    """Static FQDN registrations (SFR-10): endpoints that exist without the SFEMC.

    The operator owns them. An entry without `sfe:` gets the id `<fqdn>@<cluster>`, so two
    entries for one FQDN on one cluster must name their endpoints.
    """
    found: list[StaticRegistration] = []
    first_at: dict[str, Position] = {}
    seq = as_list(root.get("registrations"), root.at("registrations"), "registrations", sink)
    clusters = [n for n, node in nodes.items() if node.kind is NodeKind.CLUSTER]
    for index, item in enumerate(seq or []):
        pos = seq.at(index) if seq is not None else root.pos
        what = f"registration #{index + 1}"
        m = as_map(item, pos, what, sink)
        if m is None:
            continue
        check_keys(m, _REGISTRATION_KEYS, what, sink)
        ok = True
        for key in ("fqdn", "cluster", "host", "port"):
            if key not in m:
                sink.error(
                    MISSING_KEY,
                    f"{what} has no '{key}'",
                    pos,
                    hint="write '{fqdn: www.example.org, cluster: <cluster id>, "
                    "host: 127.0.0.1, port: 8080}'",
                )
                ok = False
        fqdn: Any = m.get("fqdn")
        cluster: Any = m.get("cluster")
        host: Any = m.get("host")
        port: Any = m.get("port")
        if "fqdn" in m:
            problem = (
                fqdn_problem(fqdn)
                if isinstance(fqdn, str)
                else f"must be a string, got {kind_of(fqdn)}"
            )
            if problem:
                sink.error(BAD_VALUE, f"{what}: fqdn {problem}", m.at("fqdn"), value=str(fqdn))
                ok = False
        if "cluster" in m:
            node = nodes.get(cluster) if isinstance(cluster, str) else None
            if node is None or node.kind is not NodeKind.CLUSTER:
                sink.error(
                    UNKNOWN_REFERENCE,
                    f"{what}: '{cluster}' is not a cluster",
                    m.at("cluster"),
                    value=str(cluster),
                    hint=did_you_mean(cluster, clusters)
                    or f"clusters: {', '.join(clusters) or 'none'}",
                )
                ok = False
        if "host" in m and (problem := address_problem(host)) is not None:
            sink.error(BAD_VALUE, f"{what}: host {problem}", m.at("host"), value=str(host))
            ok = False
        if "port" in m and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            sink.error(
                BAD_VALUE,
                f"{what}: port must be an integer from 1 to 65535, got {kind_of(port)}",
                m.at("port"),
                value=str(port),
            )
            ok = False
        sfe = m.get("sfe", f"{fqdn}@{cluster}")
        sfe_pos = m.at("sfe") if "sfe" in m else pos
        if "sfe" in m:
            problem = (
                sfe_id_problem(sfe)
                if isinstance(sfe, str)
                else f"must be a string, got {kind_of(sfe)}"
            )
            if problem:
                sink.error(BAD_VALUE, f"{what}: sfe {problem}", sfe_pos, value=str(sfe))
                ok = False
        if not ok:
            continue
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
                fqdn=str(fqdn),
                cluster=str(cluster),
                host=str(host),
                port=int(str(port)),
                sfe=str(sfe),
            )
        )
    return found


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _name(root: YMap, source: str, sink: DiagnosticSink) -> str:
    name = root.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        sink.error(BAD_VALUE, f"name must be a string, got {kind_of(name)}", root.at("name"))
        return Path(source).stem
    return name
