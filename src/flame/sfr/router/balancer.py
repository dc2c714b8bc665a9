"""Endpoint choice for one FQDN (SFR-1, SFR-4): best cost tier first, weights within a tier.

Routes whose cost equals the best within `COST_EPSILON` form the first tier; the next distinct
cost the second, and so on. Within a tier, endpoints share requests in proportion to their
weights by smooth weighted round robin (nginx's algorithm: the sequence for weights 5,1,1 is
a a b a c a a, never a burst of five a's). Endpoints the caller says to skip (ejected by
outlier detection, or already tried for this request) are left out of the round; when a whole
tier is skipped the next tier serves. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from flame.sfr.models import Endpoint, Route

__all__ = ["COST_EPSILON", "FqdnRoutes", "Tier"]

COST_EPSILON: Final = 1e-9


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

    def pick(self, skip: Callable[[str], bool]) -> Endpoint | None:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            only = endpoints[0]
            return None if skip(only.sfe) else only
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

    __slots__ = ("fqdn", "latency_ms", "tiers")

    def __init__(self, fqdn: str, routes: Iterable[Route]) -> None:
        self.fqdn = fqdn
        self.latency_ms: dict[str, float] = {}  # sfe -> one-way path latency of its route
        ranked = sorted(routes, key=lambda r: r.cost)  # stable: the PCE's order breaks ties
        tiers: list[Tier] = []
        seen: set[str] = set()
        group: list[Endpoint] = []
        group_cost = 0.0
        for route in ranked:
            if route.endpoint.sfe in seen:
                continue  # an endpoint listed twice keeps its best route only
            seen.add(route.endpoint.sfe)
            self.latency_ms[route.endpoint.sfe] = route.latency_ms
            if group and abs(route.cost - group_cost) > COST_EPSILON:
                tiers.append(Tier(group_cost, group))
                group = []
            if not group:
                group_cost = route.cost
            group.append(route.endpoint)
        if group:
            tiers.append(Tier(group_cost, group))
        self.tiers = tuple(tiers)

    def choose(self, skip: Callable[[str], bool]) -> Endpoint | None:
        """The endpoint for the next request, or None if every endpoint is skipped."""
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
