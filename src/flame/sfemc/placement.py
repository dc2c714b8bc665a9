"""Placement: may these endpoints go on these clusters? (ORCH-6, SFEMC-5)

A cluster offers its capacity minus its reserved share (the seed's sandbucket keeps 1 core,
1 GB RAM and 1.5 GB disk for the cluster's own system). Every endpoint whose desired state is
not `unplaced` holds its SF's resources on its cluster, from admission on, so two services
cannot both be promised the last core. An initial policy's area must contain the cluster.

Nothing here does I/O: `check` returns every problem, each naming the SF, the cluster and why,
and `PlacementFailed` carries them all, so a provider fixes the template once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from flame.common.errors import UserError
from flame.topology.geo import Area
from flame.topology.model import DEFAULT_RESERVED, NodeKind, Topology

__all__ = [
    "Demand",
    "PlacementFailed",
    "PlacementProblem",
    "PlacementRequest",
    "Placer",
]


@dataclass(frozen=True, slots=True)
class Demand:
    cpus: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(
            self.cpus + other.cpus,
            self.memory_bytes + other.memory_bytes,
            self.disk_bytes + other.disk_bytes,
        )

    def __sub__(self, other: Demand) -> Demand:
        return Demand(
            self.cpus - other.cpus,
            self.memory_bytes - other.memory_bytes,
            self.disk_bytes - other.disk_bytes,
        )


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    sf: str
    cluster: str
    demand: Demand
    area: Area | None = None
    sfe: str | None = None


@dataclass(frozen=True, slots=True)
class PlacementProblem:
    sf: str
    cluster: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"sf": self.sf, "cluster": self.cluster, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.sf} on {self.cluster}: {self.reason}"


class PlacementFailed(UserError):
    """The service cannot be placed as asked; nothing was changed."""

    code: ClassVar[str] = "placement_failed"
    http_status: ClassVar[int] = 409

    def __init__(self, sfc: str, problems: Sequence[PlacementProblem]) -> None:
        lines = "; ".join(str(p) for p in problems)
        super().__init__(
            f"service '{sfc}' cannot be placed: {lines}. Nothing was changed: pick other "
            "clusters, lower the SFs' resource needs, or free capacity by undeploying.",
            sfc=sfc,
            problems=[p.to_dict() for p in problems],
        )
        self.problems = tuple(problems)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


class Placer:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def usable(self, cluster: str) -> Demand | None:
        """Capacity minus the reserved share; None if the cluster declares no capacity."""
        node = self.topology.nodes[cluster]
        if node.capacity is None:
            return None
        reserved = node.reserved or DEFAULT_RESERVED
        return Demand(
            max(0.0, node.capacity.cpus - reserved.cpus),
            max(0, node.capacity.memory_bytes - reserved.memory_bytes),
            max(0, node.capacity.disk_bytes - reserved.disk_bytes),
        )

    def check(
        self, requests: Iterable[PlacementRequest], allocated: Mapping[str, Demand]
    ) -> list[PlacementProblem]:
        """Every reason why `requests` cannot all be placed given what is `allocated` per
        cluster (by other endpoints); empty if they can."""
        wanted = list(requests)
        problems: list[PlacementProblem] = []
        totals: dict[str, Demand] = {}
        for req in wanted:
            problem = self._where(req)
            if problem is not None:
                problems.append(PlacementProblem(req.sf, req.cluster, problem))
                continue
            totals[req.cluster] = totals.get(req.cluster, Demand()) + req.demand
        for cluster, need in sorted(totals.items()):
            problem = self._fits(cluster, need, allocated.get(cluster, Demand()))
            if problem is not None:
                sfs = sorted({r.sf for r in wanted if r.cluster == cluster})
                problems.append(PlacementProblem(",".join(sfs), cluster, problem))
        return problems

    def _where(self, req: PlacementRequest) -> str | None:
        node = self.topology.nodes.get(req.cluster)
        if node is None or node.kind is not NodeKind.CLUSTER:
            names = list(self.topology.clusters)
            close = difflib.get_close_matches(req.cluster, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"no cluster '{req.cluster}' in topology '{self.topology.name}'{hint}; clusters: {', '.join(sorted(names)) or 'none'}"
        area = req.area
        if area is None:
            return None
        if area.location is not None:
            if node.location_name != area.location:
                return f"outside the policy's area: the cluster is at '{node.location_name}', the area is location '{area.location}'"
            return None
        if node.location is None:
            return "the policy has an area but the cluster has no location in the topology"
        if not area.contains(node.location):
            if area.centre is not None and area.radius_km is not None:
                km = area.centre.distance_km(node.location)
                return f"outside the policy's area: {km:.0f} km from its centre, radius {area.radius_km:g} km"
            return "outside the policy's area (polygon)"
        return None

    def _fits(self, cluster: str, need: Demand, allocated: Demand) -> str | None:
        usable = self.usable(cluster)
        if usable is None:
            return None
        free = usable - allocated
        short: list[str] = []
        if need.cpus > free.cpus + 1e-9:
            short.append(
                f"needs {need.cpus:g} cpus, {max(0.0, free.cpus):g} free of {usable.cpus:g} usable"
            )
        if need.memory_bytes > free.memory_bytes:
            short.append(
                f"needs {_gb(need.memory_bytes)} memory, {_gb(max(0, free.memory_bytes))} free of {_gb(usable.memory_bytes)} usable"
            )
        if need.disk_bytes > free.disk_bytes:
            short.append(
                f"needs {_gb(need.disk_bytes)} disk, {_gb(max(0, free.disk_bytes))} free of {_gb(usable.disk_bytes)} usable"
            )
        if not short:
            return None
        return "capacity exhausted (" + "; ".join(short) + ", after the reserved share)"

    def candidates(
        self, demand: Demand, area: Area | None, allocated: Mapping[str, Demand]
    ) -> tuple[list[str], dict[str, str]]:
        """Clusters that could take one more endpoint needing `demand`, most free cpus first,
        and why each other cluster cannot."""
        ok: list[tuple[float, str]] = []
        reasons: dict[str, str] = {}
        for cluster in sorted(self.topology.clusters):
            req = PlacementRequest("?", cluster, demand, area)
            problem = self._where(req) or self._fits(
                cluster, demand, allocated.get(cluster, Demand())
            )
            if problem is not None:
                reasons[cluster] = problem
                continue
            usable = self.usable(cluster)
            free = (usable - allocated.get(cluster, Demand())).cpus if usable else float("inf")
            ok.append((-free, cluster))
        return [c for _, c in sorted(ok)], reasons
