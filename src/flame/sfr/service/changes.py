"""Run-time topology changes (SFR-7, SFR-13): links up, down, re-weighted; nodes joining and
leaving.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from flame.common.errors import UserError
from flame.sfr.models import AddNode, LinkCost, LinkLatency, LinkState, RemoveNode, TopologyChange
from flame.sfr.registry import Conflict
from flame.sfr.service.core import ChangeResult, _Core
from flame.sfr.store import COMPACT_AFTER, Writer
from flame.topology.model import Link, Node, NodeKind, Topology
from flame.topology.model import LinkState as LinkUpDown

log = logging.getLogger("flame.sfr.service")


class _Changes(_Core):
    """Topology changes: apply, recompute the affected SRs' tables, persist, publish."""

    # -- topology (SFR-7, SFR-13) ---------------------------------------------------------------

    def topology(self) -> Topology:
        """The topology as it is now: the file with every run-time change applied."""
        return self._active().topology

    def set_link_state(self, a: str, b: str, up: bool) -> ChangeResult:
        """Take a link down or bring it back up (SFR-13); a no-op if it already is."""
        links = self._links(a, b)
        wanted = LinkUpDown.UP if up else LinkUpDown.DOWN
        if all(k.state is wanted for k in links):
            return ChangeResult(changed=False)
        return self.apply_changes([LinkState(a, b, up)])

    def update_link(
        self,
        a: str,
        b: str,
        *,
        latency_ms: float | None = None,
        cost: float | None = None,
        set_cost: bool = False,
    ) -> ChangeResult:
        """Change a link's latency and/or cost (`set_cost` with `cost=None` clears the cost);
        both in one step, so a table gets at most one new version."""
        if latency_ms is None and not set_cost:
            raise UserError("give latency_ms, cost or both", link=[a, b])
        for what, value in (("latency_ms", latency_ms), ("cost", cost)):
            if value is not None and not 0 <= value < math.inf:
                raise UserError(
                    f"link {a}—{b}: {what} must be a finite, non-negative number, got {value}",
                    link=[a, b],
                )
        links = self._links(a, b)
        changes: list[TopologyChange] = []
        if latency_ms is not None and any(k.latency_ms != latency_ms for k in links):
            changes.append(LinkLatency(a, b, latency_ms))
        if set_cost and any(k.cost != cost for k in links):
            changes.append(LinkCost(a, b, cost))
        return self.apply_changes(changes) if changes else ChangeResult(changed=False)

    def add_node(self, node: Node, links: Sequence[Link] = ()) -> ChangeResult:
        """A node joins with its links (SFR-7); SRs that now reach it get new tables."""
        state = self._active()
        if node.id in state.topology.nodes:
            raise Conflict(f"node '{node.id}' exists; remove it first", node=node.id)
        return self.apply_changes([AddNode(node, tuple(links))])

    def remove_node(self, node_id: str) -> ChangeResult:
        """A node leaves with its links; an SR only once nothing attaches to it."""
        state = self._active()
        node = self._node(state, node_id)
        if node.kind is NodeKind.SERVICE_ROUTER:
            attached = sorted(k for k, n in state.topology.nodes.items() if n.sr == node_id)
            if attached:
                raise Conflict(
                    f"service router '{node_id}' still serves {', '.join(attached)}; remove "
                    "those first",
                    node=node_id,
                    attached=attached,
                )
        return self.apply_changes([RemoveNode(node_id)])

    def apply_changes(self, changes: Sequence[TopologyChange]) -> ChangeResult:
        """Apply, recompute only the affected SRs' tables, persist, publish (SFR-13)."""
        state = self._active()
        if not changes:
            return ChangeResult(changed=False)
        for change in changes:
            if isinstance(change, LinkState | LinkLatency | LinkCost):
                self._links(change.a, change.b)
        before = set(state.topology.service_routers)
        # The engine checks a change before it alters anything: the first is safe outside.
        affected = set(state.engine.apply(changes[0]))
        with self._committing():
            for change in changes[1:]:
                affected |= state.engine.apply(change)
            state.refresh_topology()
            after = set(state.topology.service_routers)
            removed = before - after
            for sr in removed:
                state.tables.pop(sr, None)
            updates = self._recompute(state, affected | (after - before), None)

            def persist(w: Writer) -> None:
                logged = 0
                for change in changes:
                    logged = w.add_change(change)
                if logged >= COMPACT_AFTER:
                    w.snapshot(state.topology)

            self._commit(state, persist, updates)
        for sr in removed:
            event = self._waiters.pop(sr, None)
            if event is not None:
                event.set()
        log.info(
            "topology change (%s): %d SR tree(s) changed, %d new table version(s)",
            ", ".join(type(c).__name__ for c in changes),
            len(affected),
            len(updates),
        )
        return ChangeResult(
            changed=True,
            affected_srs=tuple(sorted(affected)),
            versions={sr: t.table.version for sr, t in sorted(updates.items())},
            removed_srs=tuple(sorted(removed)),
        )
