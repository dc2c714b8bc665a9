"""Typed values shared by the path computation element, the registry and the service routers.

They cross process boundaries as JSON (`to_dict` / `from_dict`), so the data plane never imports
the control plane and the control plane never imports the data plane (SFR-4, 10, 11, 14).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Link, Node


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A connected service function endpoint (SFE) serving an FQDN on a cluster."""

    sfe: str  # unique endpoint id, e.g. "vod-1.cache.edge-bristol"
    fqdn: str
    cluster: str
    host: str  # IP address the endpoint listens on (loopback here)
    port: int
    sfc: str | None = None
    tenant: str | None = None
    weight: float = 1.0  # share among equally good endpoints
    # The endpoint serves TLS with a platform-issued certificate: SRs reach it over mutual
    # TLS (hop-by-hop TLS, SFR-19; docs/tls.md). Only in the JSON when set.
    tls: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sfe": self.sfe,
            "fqdn": self.fqdn,
            "cluster": self.cluster,
            "host": self.host,
            "port": self.port,
            "sfc": self.sfc,
            "tenant": self.tenant,
            "weight": self.weight,
        }
        if self.tls:
            data["tls"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Endpoint:
        return cls(
            sfe=str(data["sfe"]),
            fqdn=str(data["fqdn"]),
            cluster=str(data["cluster"]),
            host=str(data["host"]),
            port=int(data["port"]),
            sfc=data.get("sfc"),
            tenant=data.get("tenant"),
            weight=float(data.get("weight", 1.0)),
            tls=data.get("tls") is True,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """One way to serve an FQDN from an ingress SR: the endpoint, its egress SR and the path."""

    endpoint: Endpoint
    egress_sr: str
    cost: float  # under the policy's metric (latency in ms by default)
    latency_ms: float  # sum of link latencies along the path
    path: tuple[str, ...]  # node ids from the ingress SR to the egress SR, both included
    # The egress SR's data-plane address (its topology node's `address`): where an ingress SR
    # running with the egress hop sends the request (router/forward.py). None: not known.
    egress_address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.to_dict(),
            "egress_sr": self.egress_sr,
            "cost": self.cost,
            "latency_ms": self.latency_ms,
            "path": list(self.path),
            "egress_address": self.egress_address,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Route:
        return cls(
            endpoint=Endpoint.from_dict(data["endpoint"]),
            egress_sr=str(data["egress_sr"]),
            cost=float(data["cost"]),
            latency_ms=float(data["latency_ms"]),
            path=tuple(str(n) for n in data["path"]),
            egress_address=(
                None if data.get("egress_address") is None else str(data["egress_address"])
            ),
        )


@dataclass(frozen=True, slots=True)
class ForwardingTable:
    """What one SR needs to route: FQDN -> routes ranked best first.

    Versions only grow; an SR never applies a table older than the one it has (SFR-11).
    Routes of equal best cost share the load by their endpoints' weights.
    """

    sr: str
    version: int
    routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sr": self.sr,
            "version": self.version,
            "routes": {fqdn: [r.to_dict() for r in rs] for fqdn, rs in self.routes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ForwardingTable:
        return cls(
            sr=str(data["sr"]),
            version=int(data["version"]),
            routes={
                str(fqdn): tuple(Route.from_dict(r) for r in rs)
                for fqdn, rs in dict(data.get("routes", {})).items()
            },
        )


class Metric(enum.StrEnum):
    LATENCY = "latency"  # sum of link latencies (ms)
    COST = "cost"  # sum of operator-set link costs (a link without cost counts its latency)
    HOPS = "hops"


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Per-FQDN routing rules (SFR-5 geo-constrained, SFR-6/13 policy routing)."""

    fqdn: str
    metric: Metric = Metric.LATENCY
    area: Area | None = None  # only endpoints on clusters inside
    paths_in_area: bool = False  # also every node of the path inside the area
    prefer_clusters: tuple[str, ...] = ()  # ranked before all others, in this order
    avoid_clusters: tuple[str, ...] = ()  # ranked after all others
    exclude_clusters: tuple[str, ...] = ()  # never used
    prefer_locations: tuple[str, ...] = ()  # named locations of the topology
    avoid_locations: tuple[str, ...] = ()
    exclude_link_classes: tuple[str, ...] = ()  # e.g. "satellite": such links are not used
    max_latency_ms: float | None = None  # routes above are dropped

    def to_dict(self) -> dict[str, Any]:
        area = None
        if self.area is not None:
            area = {
                "centre": (
                    {"latitude": self.area.centre.latitude, "longitude": self.area.centre.longitude}
                    if self.area.centre
                    else None
                ),
                "radius_km": self.area.radius_km,
                "polygon": [
                    {"latitude": p.latitude, "longitude": p.longitude} for p in self.area.polygon
                ],
                "location": self.area.location,
            }
        return {
            "fqdn": self.fqdn,
            "metric": self.metric.value,
            "area": area,
            "paths_in_area": self.paths_in_area,
            "prefer_clusters": list(self.prefer_clusters),
            "avoid_clusters": list(self.avoid_clusters),
            "exclude_clusters": list(self.exclude_clusters),
            "prefer_locations": list(self.prefer_locations),
            "avoid_locations": list(self.avoid_locations),
            "exclude_link_classes": list(self.exclude_link_classes),
            "max_latency_ms": self.max_latency_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingPolicy:
        raw_area = data.get("area")
        area = None
        if raw_area:
            centre = raw_area.get("centre")
            area = Area(
                centre=GeoPoint(float(centre["latitude"]), float(centre["longitude"]))
                if centre
                else None,
                radius_km=float(raw_area["radius_km"])
                if raw_area.get("radius_km") is not None
                else None,
                polygon=tuple(
                    GeoPoint(float(p["latitude"]), float(p["longitude"]))
                    for p in raw_area.get("polygon") or ()
                ),
                location=raw_area.get("location"),
            )
        max_latency = data.get("max_latency_ms")
        return cls(
            fqdn=str(data["fqdn"]),
            metric=Metric(data.get("metric", "latency")),
            area=area,
            paths_in_area=bool(data.get("paths_in_area", False)),
            prefer_clusters=tuple(data.get("prefer_clusters") or ()),
            avoid_clusters=tuple(data.get("avoid_clusters") or ()),
            exclude_clusters=tuple(data.get("exclude_clusters") or ()),
            prefer_locations=tuple(data.get("prefer_locations") or ()),
            avoid_locations=tuple(data.get("avoid_locations") or ()),
            exclude_link_classes=tuple(data.get("exclude_link_classes") or ()),
            max_latency_ms=float(max_latency) if max_latency is not None else None,
        )


# -- run-time topology changes (SFR-7, SFR-20) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkState:
    a: str
    b: str
    up: bool


@dataclass(frozen=True, slots=True)
class LinkLatency:
    a: str
    b: str
    latency_ms: float


@dataclass(frozen=True, slots=True)
class LinkCost:
    a: str
    b: str
    cost: float | None


@dataclass(frozen=True, slots=True)
class AddNode:
    """A node joins with its links (a new cluster, SR or switch)."""

    node: Node
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveNode:
    """A node leaves with all its links."""

    node: str


TopologyChange = LinkState | LinkLatency | LinkCost | AddNode | RemoveNode
