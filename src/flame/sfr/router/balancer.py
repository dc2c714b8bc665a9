"""Endpoint choice for one FQDN (SFR-1, SFR-4, SFR-6): the PCE's order, weights within a tier.

The PCE ranks an FQDN's routes best first: by path cost, or under a routing policy by
preference class first (preferred clusters and locations, then the others, then avoided ones),
then cost (pce.py). The SR keeps that order: consecutive routes whose costs are equal within
`COST_EPSILON` form one tier, and tiers serve in the PCE's order, so a later route never jumps
ahead, even a cheaper one (a preferred cluster is used although an unpreferred one is nearer).
Without a policy the PCE's order is by cost, so this is the cheapest tier first. Within a tier, endpoints share requests in proportion to their
weights by smooth weighted round robin (nginx's algorithm: the sequence for weights 5,1,1 is
a a b a c a a, never a burst of five a's). Endpoints the caller says to skip (ejected by
outlier detection, or already tried for this request) are left out of the round; when a whole
tier is skipped the next tier serves. Pure: no clock, no I/O.

For the egress hop (forward.py) `FqdnRoutes` also knows which endpoints are local to this SR
(their route's egress SR is this SR: an `X-Flame-Endpoint` may name only those) and, for the
others, the address of their egress SR (`EgressHop`, built on first use). The endpoint's own
address stays known, so a request can go direct when its egress SR is down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from flame.sfr.models import Endpoint, Route

__all__ = ["COST_EPSILON", "EgressHop", "FqdnRoutes", "Tier"]

COST_EPSILON: Final = 1e-9
EGRESS_HEADER: Final = b"X-Flame-Endpoint: "  # names the endpoint to the egress SR


class EgressHop:
    """How an ingress SR reaches one endpoint through its egress SR."""

    __slots__ = ("egress_sr", "header", "key", "target")

    def __init__(
        self, endpoint: Endpoint, egress_sr: str, address: str, port: int, tls: bool = False
    ) -> None:
        self.egress_sr = egress_sr
        # The egress SR's address as its hop health is kept (forward.py): one per SR address.
        self.key = f"{address}:{port}"
        # What the pool connects to (pooled by address: every endpoint behind that SR shares
        # the connections); its sfe names both in connect errors.
        self.target = Endpoint(
            sfe=f"{endpoint.sfe} via SR {egress_sr}",
            fqdn=endpoint.fqdn,
            cluster=endpoint.cluster,
            host=address,
            port=port,
            sfc=endpoint.sfc,
            tenant=endpoint.tenant,
            weight=endpoint.weight,
            tls=tls,  # mutual TLS to the egress SR's hop listener (upstream_tls.py)
        )
        # The header line added to the request head for the egress SR.
        self.header = EGRESS_HEADER + endpoint.sfe.encode("ascii") + b"\r\n"


class Tier:
    """Endpoints of one equal cost, with the smooth weighted round-robin state."""

    __slots__ = ("cost", "current", "endpoints", "weights")

    def __init__(self, cost: float, endpoints: Iterable[Endpoint]) -> None:
        self.cost = cost
        self.endpoints = tuple(endpoints)
        # A weight that is not a positive number only serves when no positive weight can.
        self.weights = tuple(
            e.weight if math.isfinite(e.weight) and e.weight > 0 else 0.0 for e in self.endpoints
        )
        self.current = [0.0] * len(self.endpoints)

    def pick(self, skip: Callable[[str], bool] | None) -> Endpoint | None:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            only = endpoints[0]
            return None if skip is not None and skip(only.sfe) else only
        if skip is None:
            usable = list(range(len(endpoints)))
        else:
            usable = [i for i, e in enumerate(endpoints) if not skip(e.sfe)]
        if not usable:
            return None
        if len(usable) == 1:
            return endpoints[usable[0]]
        weights = self.weights
        if not any(weights[i] for i in usable):
            weights = tuple(1.0 for _ in endpoints)
        current = self.current
        total = 0.0
        best = -1
        for i in usable:
            w = weights[i]
            if w <= 0:
                continue
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        return endpoints[best]


class FqdnRoutes:
    """The compiled routes of one FQDN in one forwarding table version."""

    __slots__ = ("_hops", "egress", "fqdn", "latency_ms", "local", "tiers")

    def __init__(self, fqdn: str, routes: Iterable[Route], *, sr_id: str = "") -> None:
        self.fqdn = fqdn
        self.latency_ms: dict[str, float] = {}  # sfe -> one-way path latency of its route
        self.local: dict[str, Endpoint] = {}  # sfe -> endpoint whose egress SR is `sr_id`
        # sfe -> (egress SR, its address) of the endpoints behind another SR with an address
        self.egress: dict[str, tuple[str, str]] = {}
        self._hops: dict[str, EgressHop] = {}
        # The PCE's order, as it is (never re-sorted by cost): see the module notes.
        tiers: list[Tier] = []
        seen: set[str] = set()
        group: list[Endpoint] = []
        group_cost = 0.0
        for route in routes:
            if route.endpoint.sfe in seen:
                continue  # an endpoint listed twice keeps its first (the PCE's best) route
            seen.add(route.endpoint.sfe)
            self.latency_ms[route.endpoint.sfe] = route.latency_ms
            if route.egress_sr == sr_id:
                self.local[route.endpoint.sfe] = route.endpoint
            elif route.egress_address and _header_safe(route.endpoint.sfe):
                self.egress[route.endpoint.sfe] = (route.egress_sr, route.egress_address)
            if group and abs(route.cost - group_cost) > COST_EPSILON:
                tiers.append(Tier(group_cost, group))
                group = []
            if not group:
                group_cost = route.cost
            group.append(route.endpoint)
        if group:
            tiers.append(Tier(group_cost, group))
        self.tiers = tuple(tiers)

    def choose(self, skip: Callable[[str], bool] | None) -> Endpoint | None:
        """The endpoint for the next request, or None if every endpoint is skipped (`skip`
        None: none is, as on a first attempt with nothing ejected)."""
        for tier in self.tiers:
            endpoint = tier.pick(skip)
            if endpoint is not None:
                return endpoint
        return None

    def best(self) -> frozenset[str]:
        """The sfe ids of the best tier (a change of this set is a switch, SFR-14)."""
        return frozenset(e.sfe for e in self.tiers[0].endpoints) if self.tiers else frozenset()

    def endpoints(self) -> Iterable[Endpoint]:
        for tier in self.tiers:
            yield from tier.endpoints

    def hop(self, endpoint: Endpoint, port: int, tls: bool = False) -> EgressHop | None:
        """The way to `endpoint` through its egress SR (listening on `port`, with TLS if
        `tls`); None: go direct."""
        hop = self._hops.get(endpoint.sfe)
        if hop is not None and hop.target.port == port and hop.target.tls == tls:
            return hop
        found = self.egress.get(endpoint.sfe)
        if found is None:
            return None
        hop = self._hops[endpoint.sfe] = EgressHop(endpoint, found[0], found[1], port, tls)
        return hop


def _header_safe(sfe: str) -> bool:
    """Whether an endpoint id can go into a header value as it is (else: forwarded direct)."""
    return sfe.isascii() and sfe.isprintable() and sfe == sfe.strip() and bool(sfe)
