"""The topology as arrays, for the path computation element (SFR-4, SFR-8).

Nodes get integer indices; links live in parallel numpy arrays; every unordered node pair joined
by at least one link is one *pair*, and the symmetric CSR structure scipy.sparse.csgraph walks has
one slot per pair and direction. A change to a link rewrites a few array cells and never the
structure, so the PCE can update a weight in place and re-run Dijkstra only where it matters.
Adding or removing a node builds a new `Graph` (rare, and simpler than patching the structure).

Exception tree (a `UserError` is the caller's mistake, HTTP 400, exit 1)::

    UserError
    └── TopologyError   a change or query names an unknown node or link, or a bad value
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from flame.common.errors import UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.models import Metric
from flame.topology.model import Link, LinkState, Node, NodeKind

__all__ = ["Graph", "TopologyError"]

IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

NO_NODE = -9999  # scipy's "no predecessor" marker, used for "no SR" too


class TopologyError(UserError):
    """A topology change or route query that names an unknown node or link, or a bad value."""

    code: ClassVar[str] = "topology_error"


class Graph:
    """Nodes and undirected links of a topology as numpy arrays, on a fixed structure.

    Per link: ends, latency, cost (NaN: none), up, class code, pair. Per pair: its ends (u < v),
    its links and its two CSR slots. Per CSR slot: its pair. Per node: the SR it attaches to
    (itself for an SR, `node.sr` for clusters and user equipment), for SRs a row number and, for
    egresses (SRs with a cluster), an egress row number.
    """

    def __init__(self, nodes: Mapping[str, Node], links: Iterable[Link]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes.values())
        self.ids: tuple[str, ...] = tuple(nodes)
        self.index: dict[str, int] = {node_id: i for i, node_id in enumerate(self.ids)}
        self.n = n = len(self.ids)

        links = tuple(links)
        self._links: list[Link] = list(links)  # kept in step with the arrays below
        # Checked with numpy (a loop of Python checks costs more than the rest of the graph);
        # only a topology with a bad link goes through `_check_link`, for its error message.
        index = self.index
        self.link_a: IntArray = np.array([index.get(k.a, -1) for k in links], dtype=np.int32)
        self.link_b: IntArray = np.array([index.get(k.b, -1) for k in links], dtype=np.int32)
        self.latency: FloatArray = np.array([k.latency_ms for k in links], dtype=np.float64)
        has_cost = np.array([k.cost is not None for k in links], dtype=np.bool_)
        self.cost: FloatArray = np.array(
            [math.nan if k.cost is None else k.cost for k in links], dtype=np.float64
        )
        bad = (self.link_a < 0) | (self.link_b < 0) | (self.link_a == self.link_b)
        bad |= ~(np.isfinite(self.latency) & (self.latency >= 0))
        bad |= has_cost & ~(np.isfinite(self.cost) & (self.cost >= 0))
        if bad.any():
            for link in links:
                self._check_link(link)  # raises for the first bad link, in link order
        self.up: BoolArray = np.array([k.state is LinkState.UP for k in links], dtype=np.bool_)
        self.classes: tuple[str, ...] = tuple(
            sorted({k.link_class for k in links if k.link_class is not None})
        )
        class_code = {name: i for i, name in enumerate(self.classes)}
        self.link_class: IntArray = np.array(
            [-1 if k.link_class is None else class_code[k.link_class] for k in links],
            dtype=np.int32,
        )

        # Pairs: unordered (u < v), one id per distinct pair, links grouped by pair.
        lo = np.minimum(self.link_a, self.link_b).astype(np.int64)
        hi = np.maximum(self.link_a, self.link_b).astype(np.int64)
        pair_key, link_pair = np.unique(lo * n + hi, return_inverse=True)
        self.pair_key: npt.NDArray[np.int64] = pair_key.astype(np.int64)
        self.link_pair: IntArray = link_pair.astype(np.int32).reshape(-1)
        self.pair_u: IntArray = (pair_key // max(n, 1)).astype(np.int32)
        self.pair_v: IntArray = (pair_key % max(n, 1)).astype(np.int32)
        self.pairs = len(pair_key)
        order = np.argsort(self.link_pair, kind="stable")
        self._pair_links_order: IntArray = order.astype(np.int32)
        self._pair_links_start: IntArray = np.searchsorted(
            self.link_pair[order], np.arange(self.pairs + 1)
        ).astype(np.int32)

        # Symmetric CSR structure: each pair stored in both directions, rows sorted by column.
        rows = np.concatenate([self.pair_u, self.pair_v]).astype(np.int64)
        cols = np.concatenate([self.pair_v, self.pair_u]).astype(np.int64)
        slot_pair = np.concatenate([np.arange(self.pairs), np.arange(self.pairs)])
        key = rows * n + cols
        by_key = np.argsort(key, kind="stable")
        self.slot_key: npt.NDArray[np.int64] = key[by_key]
        self.slot_pair: IntArray = slot_pair[by_key].astype(np.int32)
        self.indices: IntArray = cols[by_key].astype(np.int32)
        self.indptr: IntArray = np.searchsorted(self.slot_key, np.arange(n + 1) * n).astype(
            np.int32
        )
        self.slots = len(self.slot_key)
        # The two slots (u -> v, v -> u) of every pair, to rewrite a pair's weight in place.
        self.pair_slots: IntArray = np.stack(
            [self.slots_of(self.pair_u, self.pair_v), self.slots_of(self.pair_v, self.pair_u)],
            axis=1,
        )

        # Nodes: SRs get rows (in node order); everything else finds its SR.
        self.srs: IntArray = np.array(
            [i for i, node in enumerate(self.nodes) if node.kind is NodeKind.SERVICE_ROUTER],
            dtype=np.int32,
        )
        self.sr_ids: tuple[str, ...] = tuple(self.ids[i] for i in self.srs)
        self.sr_row: dict[str, int] = {sr: row for row, sr in enumerate(self.sr_ids)}
        self.row_of_node: IntArray = np.full(n, -1, dtype=np.int32)
        self.row_of_node[self.srs] = np.arange(len(self.srs), dtype=np.int32)
        self.attached_sr: IntArray = np.array(
            [self._attached(node) for node in self.nodes], dtype=np.int32
        )
        # Egresses: the SRs with a cluster (where endpoints are reached), fewer than or as many as
        # the SRs. The PCE roots its shortest-path trees at them (links are undirected).
        kinds = np.array([node.kind is NodeKind.CLUSTER for node in self.nodes], dtype=np.bool_)
        at = self.attached_sr[kinds]
        self.egress: IntArray = np.unique(at[at >= 0]).astype(np.int32)
        self.egress_row: IntArray = np.full(n, -1, dtype=np.int32)
        self.egress_row[self.egress] = np.arange(len(self.egress), dtype=np.int32)

    def _attached(self, node: Node) -> int:
        """The SR where a cluster's endpoints are reached or a UE enters; an SR is its own."""
        if node.kind is NodeKind.SERVICE_ROUTER:
            return self.index[node.id]
        if node.sr is None:
            return NO_NODE
        i = self.index.get(node.sr, NO_NODE)
        if i == NO_NODE or self.kind_of(i) is not NodeKind.SERVICE_ROUTER:
            return NO_NODE
        return i

    def kind_of(self, i: int) -> NodeKind:
        return self.nodes[i].kind

    def _check_link(self, link: Link) -> None:
        for end in (link.a, link.b):
            self.node_index(end, prefix=f"link {link.a}—{link.b}: ")
        if link.a == link.b:
            raise TopologyError(f"link {link.a}—{link.b} connects a node to itself", node=link.a)
        check_weight(link.latency_ms, "latency_ms", link.a, link.b)
        if link.cost is not None:
            check_weight(link.cost, "cost", link.a, link.b)

    # -- look-ups that explain a mistake -----------------------------------------------------

    def node_index(self, node_id: str, *, what: str = "node", prefix: str = "") -> int:
        """The index of a node id, or a TopologyError naming the closest id."""
        i = self.index.get(node_id)
        if i is None:
            hint = did_you_mean(node_id, self.ids, dotted=False)
            raise TopologyError(
                f"{prefix}unknown {what} '{node_id}'" + (f" ({hint})" if hint else ""),
                node=node_id,
            )
        return i

    def sr_row_of(self, node_id: str, *, ingress: bool = False) -> int:
        """The SR row of a service router, or with `ingress` also of a UE (its SR)."""
        i = self.node_index(node_id, what="service router")
        kinds = (NodeKind.SERVICE_ROUTER, NodeKind.USER_EQUIPMENT) if ingress else ()
        attached = int(self.attached_sr[i])
        if self.kind_of(i) is NodeKind.SERVICE_ROUTER or (
            self.kind_of(i) in kinds and attached >= 0
        ):
            return int(self.row_of_node[attached])
        hint = did_you_mean(node_id, self.sr_ids, dotted=False)
        wanted = "service router or user equipment" if ingress else "service router"
        raise TopologyError(
            f"'{node_id}' is a {self.kind_of(i).value.replace('_', ' ')}, not a {wanted}"
            + (" attached to one" if ingress else "")
            + (f" ({hint})" if hint else ""),
            node=node_id,
        )

    def pair(self, a: str, b: str) -> int:
        """The pair id of the link(s) between two nodes, or a TopologyError."""
        i, j = self.node_index(a), self.node_index(b)
        lo, hi = min(i, j), max(i, j)
        p = int(np.searchsorted(self.pair_key, lo * self.n + hi))
        if p < self.pairs and self.pair_u[p] == lo and self.pair_v[p] == hi:
            return p
        neighbours = sorted(self.ids[k] for k in self.neighbours(i))
        shown = ", ".join(f"'{x}'" for x in neighbours[:10]) or "nothing"
        raise TopologyError(
            f"there is no link between '{a}' and '{b}'; '{a}' links to {shown}"
            + (f" and {len(neighbours) - 10} more" if len(neighbours) > 10 else ""),
            a=a,
            b=b,
        )

    def neighbours(self, i: int) -> IntArray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def adjacent(self, nodes: IntArray) -> tuple[npt.NDArray[np.intp], IntArray]:
        """All CSR slots of these nodes: (position in `nodes`, slot), vectorised."""
        start = self.indptr[nodes]
        degree = self.indptr[nodes + 1] - start
        owner = np.repeat(np.arange(len(nodes)), degree)
        first = np.cumsum(degree) - degree
        slot = start[owner] + (np.arange(len(owner)) - first[owner])
        return owner, slot.astype(np.int32)

    def links_of_pair(self, pair: int) -> IntArray:
        start, end = self._pair_links_start[pair], self._pair_links_start[pair + 1]
        return self._pair_links_order[start:end]

    def slots_of(self, u: npt.NDArray[np.integer], v: npt.NDArray[np.integer]) -> IntArray:
        """The CSR slots of directed node pairs (u -> v); the pairs must be linked."""
        key = u.astype(np.int64) * self.n + v
        return np.searchsorted(self.slot_key, key).astype(np.int32)

    # -- weights -----------------------------------------------------------------------------

    def link_weight(self, metric: Metric, links: IntArray | slice = slice(None)) -> FloatArray:
        """Weight of links under a metric: latency, cost (latency where none) or 1 per hop."""
        lat = self.latency[links]
        if metric is Metric.LATENCY:
            return lat
        if metric is Metric.COST:
            cost = self.cost[links]
            return np.where(np.isnan(cost), lat, cost)
        return np.ones_like(lat)

    def pair_weights(self, metric: Metric, usable: BoolArray) -> tuple[FloatArray, FloatArray]:
        """For every pair: the least weight of its usable links (inf: none) and that link's latency.

        Parallel links count as the best of them under the metric, lower latency breaking ties.
        """
        weight = np.where(usable & self.up, self.link_weight(metric), np.inf)
        order = np.lexsort((self.latency, weight, self.link_pair))
        first = np.searchsorted(self.link_pair[order], np.arange(self.pairs))
        best = order[first]
        return weight[best], self.latency[best].copy()

    def pair_weight(self, metric: Metric, pair: int, usable: BoolArray) -> tuple[float, float]:
        """`pair_weights` for one pair (after a change to its links)."""
        links = self.links_of_pair(pair)
        weight = np.where(usable[links] & self.up[links], self.link_weight(metric, links), np.inf)
        best = int(np.lexsort((self.latency[links], weight))[0])
        return float(weight[best]), float(self.latency[links[best]])

    def csr_data(self, pair_weight: FloatArray) -> FloatArray:
        return pair_weight[self.slot_pair].astype(np.float64)

    # -- changes to links (the structure stays) -------------------------------------------

    def set_up(self, pair: int, up: bool) -> None:
        self._set(pair, state=LinkState.UP if up else LinkState.DOWN)
        self.up[self.links_of_pair(pair)] = up

    def set_latency(self, pair: int, latency_ms: float) -> None:
        self._set(pair, latency_ms=latency_ms)
        self.latency[self.links_of_pair(pair)] = latency_ms

    def set_cost(self, pair: int, cost: float | None) -> None:
        self._set(pair, cost=cost)
        self.cost[self.links_of_pair(pair)] = math.nan if cost is None else cost

    def _set(self, pair: int, **values: object) -> None:
        for k in self.links_of_pair(pair).tolist():
            self._links[k] = replace(self._links[k], **values)

    # -- back to model objects ---------------------------------------------------------------

    def links(self) -> tuple[Link, ...]:
        """The links with their current state, latency and cost."""
        return tuple(self._links)


def check_weight(value: float, what: str, a: str, b: str) -> None:
    """Latencies and costs are finite and non-negative (Dijkstra needs it)."""
    if not math.isfinite(value) or value < 0:
        raise TopologyError(
            f"link {a}—{b}: {what} must be a finite, non-negative number, got {value!r}",
            a=a,
            b=b,
        )
