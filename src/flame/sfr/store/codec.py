"""JSON codecs for topology values: the store's rows, and the wire format of
`POST /v1/topology/nodes` answers and `GET /v1/topology`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flame.sfr.models import AddNode, LinkCost, LinkLatency, LinkState, RemoveNode, TopologyChange
from flame.topology.geo import GeoPoint
from flame.topology.model import Link, Node, NodeKind, Resources, Topology, Vim
from flame.topology.model import LinkState as LinkUpDown


def dumps(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _point(data: Mapping[str, Any] | None) -> GeoPoint | None:
    return None if data is None else GeoPoint(float(data["latitude"]), float(data["longitude"]))


def _resources(data: Mapping[str, Any] | None) -> Resources | None:
    if data is None:
        return None
    return Resources(float(data["cpus"]), int(data["memory_bytes"]), int(data["disk_bytes"]))


def _resources_dict(r: Resources | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"cpus": r.cpus, "memory_bytes": r.memory_bytes, "disk_bytes": r.disk_bytes}


def encode_node(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "kind": node.kind.value,
        "location": (
            None
            if node.location is None
            else {"latitude": node.location.latitude, "longitude": node.location.longitude}
        ),
        "location_name": node.location_name,
        "sr": node.sr,
        "address": node.address,
        "capacity": _resources_dict(node.capacity),
        "reserved": _resources_dict(node.reserved),
        "vim": None if node.vim is None else node.vim.value,
    }


def decode_node(data: Mapping[str, Any]) -> Node:
    return Node(
        id=str(data["id"]),
        kind=NodeKind(data["kind"]),
        location=_point(data.get("location")),
        location_name=data.get("location_name"),
        sr=data.get("sr"),
        address=data.get("address"),
        capacity=_resources(data.get("capacity")),
        reserved=_resources(data.get("reserved")),
        vim=None if data.get("vim") is None else Vim(data["vim"]),
    )


def encode_link(link: Link) -> dict[str, Any]:
    return {
        "a": link.a,
        "b": link.b,
        "latency_ms": link.latency_ms,
        "bandwidth_bps": link.bandwidth_bps,
        "cost": link.cost,
        "state": link.state.value,
        "class": link.link_class,
    }


def decode_link(data: Mapping[str, Any]) -> Link:
    bandwidth, cost = data.get("bandwidth_bps"), data.get("cost")
    return Link(
        a=str(data["a"]),
        b=str(data["b"]),
        latency_ms=float(data.get("latency_ms", 1.0)),
        bandwidth_bps=None if bandwidth is None else float(bandwidth),
        cost=None if cost is None else float(cost),
        state=LinkUpDown(data.get("state", "up")),
        link_class=data.get("class"),
    )


def encode_change(change: TopologyChange) -> dict[str, Any]:
    match change:
        case LinkState(a=a, b=b, up=up):
            return {"type": "link_state", "a": a, "b": b, "up": up}
        case LinkLatency(a=a, b=b, latency_ms=latency):
            return {"type": "link_latency", "a": a, "b": b, "latency_ms": latency}
        case LinkCost(a=a, b=b, cost=cost):
            return {"type": "link_cost", "a": a, "b": b, "cost": cost}
        case AddNode(node=node, links=links):
            return {
                "type": "add_node",
                "node": encode_node(node),
                "links": [encode_link(k) for k in links],
            }
        case RemoveNode(node=node_id):
            return {"type": "remove_node", "node": node_id}
    raise TypeError(f"not a topology change: {change!r}")


def decode_change(data: Mapping[str, Any]) -> TopologyChange:
    kind = data.get("type")
    if kind == "link_state":
        return LinkState(str(data["a"]), str(data["b"]), bool(data["up"]))
    if kind == "link_latency":
        return LinkLatency(str(data["a"]), str(data["b"]), float(data["latency_ms"]))
    if kind == "link_cost":
        cost = data.get("cost")
        return LinkCost(str(data["a"]), str(data["b"]), None if cost is None else float(cost))
    if kind == "add_node":
        return AddNode(decode_node(data["node"]), tuple(decode_link(k) for k in data["links"]))
    if kind == "remove_node":
        return RemoveNode(str(data["node"]))
    raise ValueError(f"unknown topology change type {kind!r}")


def decode_snapshot(text: str) -> tuple[tuple[Node, ...], tuple[Link, ...]]:
    data = json.loads(text)
    return (
        tuple(decode_node(n) for n in data["nodes"]),
        tuple(decode_link(k) for k in data["links"]),
    )


def topology_digest(topology: Topology) -> str:
    """A digest of what routing depends on in a topology file (not its comments or layout)."""
    doc = {
        "nodes": [encode_node(n) for n in topology.nodes.values()],
        "links": [encode_link(k) for k in topology.links],
        "locations": {
            name: [p.latitude, p.longitude] for name, p in sorted(topology.locations.items())
        },
    }
    return hashlib.sha256(dumps(doc).encode("utf-8")).hexdigest()
