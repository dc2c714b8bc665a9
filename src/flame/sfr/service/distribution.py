"""Tables and routes as SRs and operators read them: the long poll (SFR-4, SFR-11)."""

from __future__ import annotations

import asyncio

from flame.common.auth import Principal, require_router
from flame.common.errors import UserError
from flame.sfr.models import ForwardingTable
from flame.sfr.registry import NotFound, normalise_fqdn
from flame.sfr.service.core import MAX_WAIT_S, _Core
from flame.sfr.service.published import PublishedTable
from flame.topology.model import NodeKind


class _Distribution(_Core):
    """Reading tables (the SRs' long poll) and one FQDN's routes."""

    # -- tables and routes (SFR-4, SFR-11) ------------------------------------------------------

    def table(self, principal: Principal, sr: str) -> PublishedTable:
        """An SR's current table (SRs and operators only: it names every tenant's endpoints)."""
        require_router(principal)
        return self._table(self._active(), sr)

    async def wait_table(
        self, principal: Principal, sr: str, since: int, timeout: float
    ) -> PublishedTable | None:
        """The SR's table once its version exceeds `since`; None after `timeout` seconds."""
        require_router(principal)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout, 0.0), MAX_WAIT_S)
        while True:
            table = self._table(self._active(), sr)
            if table.table.version > since:
                return table
            remaining = deadline - loop.time()
            if remaining <= 0 or self._draining:
                return None
            event = self._waiters.setdefault(sr, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    def routes(
        self, principal: Principal, fqdn: str, from_node: str | None = None
    ) -> list[ForwardingTable]:
        """The ranked routes for one FQDN, per SR (or from one SR, or a UE's or cluster's SR),
        as tables holding that FQDN only."""
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, "read the routes of")
        if from_node is None:
            srs = sorted(state.tables)
        else:
            node = self._node(state, from_node)
            sr = from_node if node.kind is NodeKind.SERVICE_ROUTER else node.sr
            if sr is None:
                raise UserError(
                    f"'{from_node}' is a {node.kind.value.replace('_', ' ')}; requests enter "
                    "at a service router (or a user equipment's or cluster's SR)",
                    node=from_node,
                )
            srs = [sr]
        found = [
            ForwardingTable(sr, table.table.version, {fqdn: table.table.routes[fqdn]})
            for sr in srs
            if (table := state.tables.get(sr)) is not None and fqdn in table.table.routes
        ]
        if not found:
            raise NotFound(
                f"no routes for '{fqdn}': no endpoint is registered for it and it has no policy",
                fqdn=fqdn,
            )
        return found
