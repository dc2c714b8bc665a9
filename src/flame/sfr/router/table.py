"""The SR's current forwarding table and what replacing it changes (SFR-11, SFR-14).

`RoutingState.set_table` applies a table only if it is for this SR and newer than the one in
use (versions only grow, SFR-11), compiles it into per-FQDN `FqdnRoutes`, and reports what the
change means: the FQDNs whose best endpoints moved (switches) and the endpoint addresses no
longer used (to drain their pooled connections). Each request looks its FQDN up when it
starts, so the next request on any connection follows the new table while requests in flight
finish where they are (in-session switching). No I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from flame.sfr.models import Endpoint, ForwardingTable
from flame.sfr.router.balancer import FqdnRoutes

__all__ = ["TLS_KEY_PREFIX", "Address", "RoutingState", "TableChange", "pool_key"]

log = logging.getLogger(__name__)

Address = tuple[str, int]  # (host, port) of an endpoint: what connections are pooled by
# A TLS endpoint's connections are pooled under ("tls:" + host, port): a plain and a TLS
# connection to one address never mix (hop-by-hop TLS, upstream_tls.py).
TLS_KEY_PREFIX: Final = "tls:"


def pool_key(endpoint: Endpoint) -> Address:
    if endpoint.tls:
        return (TLS_KEY_PREFIX + endpoint.host, endpoint.port)
    return (endpoint.host, endpoint.port)


@dataclass(frozen=True, slots=True)
class TableChange:
    """The effect of one applied table."""

    old_version: int | None
    version: int
    switched: tuple[str, ...]  # FQDNs whose best endpoint set changed
    removed: frozenset[Address]  # endpoint (and egress SR) addresses no longer in the table
    addresses: frozenset[Address]  # all endpoint (and egress SR) addresses of the new table


class RoutingState:
    """The table in use by one worker."""

    __slots__ = ("_routes", "egress_port", "egress_tls", "sr_id", "table")

    def __init__(self, sr_id: str) -> None:
        self.sr_id = sr_id
        self.table: ForwardingTable | None = None
        self._routes: dict[str, FqdnRoutes] = {}  # a dict: compiled, .get is a C call
        # The egress hop: the port egress SRs listen on; 0: off (always straight to endpoints).
        # Set by the router; the egress SRs' addresses are then pooled (and drained) as well.
        self.egress_port = 0
        self.egress_tls = False  # egress hops over mutual TLS (to `egress_port`, upstream_tls.py)

    @property
    def version(self) -> int | None:
        return None if self.table is None else self.table.version

    def lookup(self, fqdn: str) -> FqdnRoutes | None:
        """The routes for `fqdn` in the current table; None if the FQDN is unknown."""
        return self._routes.get(fqdn)

    def fqdns(self) -> list[str]:
        return sorted(self._routes)

    def set_table(self, table: ForwardingTable, *, force: bool = False) -> TableChange | None:
        """Use `table` from the next request on; None (and no change) if it is not newer.

        `force` applies an older version too: only for a PCE whose database was replaced,
        where versions restart (the subscriber sees a new PCE generation).
        """
        if table.sr != self.sr_id:
            log.warning(
                "ignoring forwarding table for SR %r: this is SR %r; check the PCE's SR names",
                table.sr,
                self.sr_id,
            )
            return None
        old = self.table
        if old is not None and table.version <= old.version and not force:
            log.debug("ignoring table version %d: version %d is in use", table.version, old.version)
            return None
        routes = {
            fqdn.lower().removesuffix("."): FqdnRoutes(fqdn, rs, sr_id=self.sr_id)
            for fqdn, rs in table.routes.items()
        }
        old_routes = self._routes
        switched = tuple(
            sorted(
                fqdn
                for fqdn, r in routes.items()
                if fqdn in old_routes and old_routes[fqdn].best() != r.best()
            )
        )
        addresses = frozenset(_addresses(routes, self.egress_port, self.egress_tls))
        removed = frozenset(_addresses(old_routes, self.egress_port, self.egress_tls)) - addresses
        self.table = table
        self._routes = routes
        return TableChange(
            old_version=None if old is None else old.version,
            version=table.version,
            switched=switched,
            removed=removed,
            addresses=addresses,
        )


def _addresses(routes: Mapping[str, FqdnRoutes], egress_port: int, tls: bool) -> set[Address]:
    found = {pool_key(e) for r in routes.values() for e in r.endpoints()}
    if egress_port:
        prefix = TLS_KEY_PREFIX if tls else ""
        found.update(
            (prefix + address, egress_port)
            for r in routes.values()
            for _, address in r.egress.values()
        )
    return found
