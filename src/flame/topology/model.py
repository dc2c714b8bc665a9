"""The infrastructure topology shared by the SFEMC (clusters) and the SFR (routers, links).

One schema, one loader: placement and routing never disagree about what a cluster is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flame.topology.geo import GeoPoint


class NodeKind(enum.StrEnum):
    SERVICE_ROUTER = "service_router"
    CLUSTER = "cluster"
    SWITCH = "switch"
    USER_EQUIPMENT = "user_equipment"


class Vim(enum.StrEnum):
    PROCESS = "process"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float
    memory_bytes: int
    disk_bytes: int


# The seed's sandbucket keeps this much of every cluster for the cluster's own system.
DEFAULT_RESERVED = Resources(cpus=1.0, memory_bytes=1_000_000_000, disk_bytes=1_500_000_000)


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: NodeKind
    location: GeoPoint | None = None
    location_name: str | None = None
    sr: str | None = None  # clusters and user equipment attach to a service router
    # Service routers: the address they listen on; clusters: the address of the host their
    # SFEs listen on and are registered with. Loopback on one machine; None: 127.0.0.1.
    address: str | None = None
    capacity: Resources | None = None  # clusters only
    reserved: Resources | None = None
    vim: Vim | None = None


class LinkState(enum.StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Link:
    a: str
    b: str
    latency_ms: float = 1.0
    bandwidth_bps: float | None = None
    cost: float | None = None
    state: LinkState = LinkState.UP
    link_class: str | None = None
    loss_pct: float = 0.0  # packet loss, per direction: only `flame up --netns` makes it real


@dataclass(frozen=True, slots=True)
class StaticRegistration:
    """An FQDN served by a fixed endpoint, configured in the topology file (SFR-10)."""

    fqdn: str
    cluster: str
    host: str
    port: int
    sfe: str


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    source: str
    nodes: dict[str, Node] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    locations: dict[str, GeoPoint] = field(default_factory=dict)
    registrations: tuple[StaticRegistration, ...] = ()

    def of_kind(self, kind: NodeKind) -> dict[str, Node]:
        return {k: v for k, v in self.nodes.items() if v.kind is kind}

    @property
    def clusters(self) -> dict[str, Node]:
        return self.of_kind(NodeKind.CLUSTER)

    @property
    def service_routers(self) -> dict[str, Node]:
        return self.of_kind(NodeKind.SERVICE_ROUTER)
