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
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import repeat
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
        self.n = len(self.ids)
        self._links: list[Link] = list(links)  # kept in step with the arrays below
        self._link_arrays(self._links)
        self._pairs()
        self._csr()
        self._attachments()

    def _link_arrays(self, links: list[Link]) -> None:
        """Per link: ends, latency, cost, up, class code; raises for a bad link."""
        columns = _link_columns if _COMPILED_COLUMNS is None else _compiled_link_columns
        self.link_a, self.link_b, self.latency, self.cost, has_cost, self.up, codes, names = (
            columns(links, self.index)
        )
        # Checked with numpy; only a topology with a bad link goes through `_check_link`.
        bad = (self.link_a < 0) | (self.link_b < 0) | (self.link_a == self.link_b)
        bad |= ~(np.isfinite(self.latency) & (self.latency >= 0))
        bad |= has_cost & ~(np.isfinite(self.cost) & (self.cost >= 0))
        if bad.any():
            for link in links:
                self._check_link(link)  # raises for the first bad link, in link order
        # Class codes in name order, whatever order the columns numbered them in.
        by_name = sorted(range(len(names)), key=names.__getitem__)
        self.classes: tuple[str, ...] = tuple(names[i] for i in by_name)
        renumber = np.empty(len(names) + 1, dtype=np.int32)
        renumber[by_name] = np.arange(len(names), dtype=np.int32)
        renumber[-1] = -1  # no class stays -1
        self.link_class: IntArray = renumber[codes]

    def _pairs(self) -> None:
        """Pairs: unordered (u < v), numbered in key order, links grouped by pair (one sort)."""
        n, m = self.n, len(self.link_a)
        lo = np.minimum(self.link_a, self.link_b).astype(np.int64)
        hi = np.maximum(self.link_a, self.link_b).astype(np.int64)
        key = lo * n + hi
        order = np.argsort(key, kind="stable")  # links of a pair stay in link order
        sorted_key = key[order]
        first = np.ones(m, dtype=np.bool_)
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        self.pair_key: npt.NDArray[np.int64] = sorted_key[first]
        self.pairs = len(self.pair_key)
        self.link_pair: IntArray = np.empty(m, dtype=np.int32)
        self.link_pair[order] = np.cumsum(first) - 1
        self.pair_u: IntArray = (self.pair_key // max(n, 1)).astype(np.int32)
        self.pair_v: IntArray = (self.pair_key % max(n, 1)).astype(np.int32)
        self._pair_links_order: IntArray = order.astype(np.int32)
        self._pair_links_start: IntArray = np.append(np.flatnonzero(first), m).astype(np.int32)

    def _csr(self) -> None:
        """Symmetric CSR structure: each pair stored in both directions, rows sorted by column."""
        n, pairs = self.n, self.pairs
        rows = np.concatenate([self.pair_u, self.pair_v]).astype(np.int64)
        cols = np.concatenate([self.pair_v, self.pair_u]).astype(np.int64)
        key = rows * n + cols
        by_key = np.argsort(key)  # keys are distinct: any sort gives the same order
        self.slot_key: npt.NDArray[np.int64] = key[by_key]
        self.slot_pair: IntArray = (by_key % max(pairs, 1)).astype(np.int32)
        self.indices: IntArray = cols[by_key].astype(np.int32)
        self.indptr: IntArray = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=self.indptr[1:])
        self.slots = len(self.slot_key)
        # The two slots (u -> v, v -> u) of every pair, to rewrite a pair's weight in place:
        # where `by_key` put entry p (u -> v) and entry pairs + p (v -> u).
        slot_of_entry = np.empty(2 * pairs, dtype=np.int32)
        slot_of_entry[by_key] = np.arange(2 * pairs, dtype=np.int32)
        self.pair_slots: IntArray = slot_of_entry.reshape(2, pairs).T.copy()

    def _attachments(self) -> None:
        """SRs get rows (in node order); every node finds its SR; SRs with a cluster are egresses.

        A node's SR (`attached_sr`) is itself for an SR, `node.sr` for clusters and user
        equipment when that names an SR, else NO_NODE. The PCE roots its shortest-path trees at
        the egresses, fewer than or as many as the SRs (links are undirected).
        """
        n, nodes = self.n, self.nodes
        kinds = [node.kind for node in nodes]
        is_sr = np.fromiter(map(operator.is_, kinds, repeat(NodeKind.SERVICE_ROUTER)), bool, n)
        self.srs: IntArray = np.flatnonzero(is_sr).astype(np.int32)
        self.sr_ids: tuple[str, ...] = tuple(self.ids[i] for i in self.srs.tolist())
        self.sr_row: dict[str, int] = {sr: row for row, sr in enumerate(self.sr_ids)}
        self.row_of_node: IntArray = np.full(n, -1, dtype=np.int32)
        self.row_of_node[self.srs] = np.arange(len(self.srs), dtype=np.int32)
        named = _indices(self.index, [node.sr for node in nodes])  # -1: none or unknown
        named_sr = (named >= 0) & is_sr[np.maximum(named, 0)]
        self.attached_sr: IntArray = np.where(
            is_sr, np.arange(n, dtype=np.int32), np.where(named_sr, named, NO_NODE)
        ).astype(np.int32)
        is_cluster = np.fromiter(map(operator.is_, kinds, repeat(NodeKind.CLUSTER)), bool, n)
        # Per node: the SR where a cluster's endpoints are reached, else -1 (a list: the PCE
        # reads it per endpoint, and a numpy scalar costs more than the look-up).
        self.cluster_egress: list[int] = np.where(is_cluster, self.attached_sr, -1).tolist()
        at = self.attached_sr[is_cluster]
        self.egress: IntArray = np.unique(at[at >= 0]).astype(np.int32)
        self.egress_row: IntArray = np.full(n, -1, dtype=np.int32)
        self.egress_row[self.egress] = np.arange(len(self.egress), dtype=np.int32)

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
        best: npt.NDArray[np.integer]
        if self.pairs == len(weight):  # no parallel links (usual): each pair's only link
            best = self._pair_links_order
        else:
            order = np.lexsort((self.latency, weight, self.link_pair))
            best = order[np.searchsorted(self.link_pair[order], np.arange(self.pairs))]
        return weight[best], self.latency[best]

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


def _indices(index: Mapping[str, int], ids: Sequence[str | None]) -> IntArray:
    """The node index of each id, -1 for None or an unknown id."""
    return np.fromiter(map(index.get, ids, repeat(-1)), np.int32, len(ids))  # type: ignore[arg-type]


LinkColumns = tuple[
    IntArray, IntArray, FloatArray, FloatArray, BoolArray, BoolArray, IntArray, list[str]
]


def _link_columns(links: list[Link], index: dict[str, int]) -> LinkColumns:
    """Per link: ends (-1: unknown), latency, cost (NaN: none), has a cost, is up, class code
    (-1: none; codes number `names`, in any order). A list comprehension per field and C-level
    maps: faster than one Python loop doing everything, slower than the compiled pass."""
    m = len(links)
    costs = [k.cost for k in links]
    has_cost = np.fromiter(map(operator.is_not, costs, repeat(None)), np.bool_, m)
    cost = np.full(m, math.nan)
    cost[has_cost] = [c for c in costs if c is not None]
    states = [k.state for k in links]
    up = np.fromiter(map(operator.is_, states, repeat(LinkState.UP)), np.bool_, m)
    classes = [k.link_class for k in links]
    names = sorted({c for c in set(classes) if c is not None})
    code: dict[str | None, int] = {name: i for i, name in enumerate(names)}
    code[None] = -1
    return (
        _indices(index, [k.a for k in links]),
        _indices(index, [k.b for k in links]),
        np.array([k.latency_ms for k in links], dtype=np.float64),
        cost,
        has_cost,
        up,
        np.fromiter(map(code.__getitem__, classes), np.int32, m),
        names,
    )


def _compiled_link_columns(links: list[Link], index: dict[str, int]) -> LinkColumns:
    """`_link_columns` in one compiled pass (flame.sfr._sssp.link_columns)."""
    assert _COMPILED_COLUMNS is not None
    m = len(links)
    a, b = np.empty(m, dtype=np.int32), np.empty(m, dtype=np.int32)
    latency, cost = np.empty(m), np.empty(m)
    has_cost, up = np.empty(m, dtype=np.bool_), np.empty(m, dtype=np.bool_)
    codes = np.empty(m, dtype=np.int32)
    names = _COMPILED_COLUMNS(
        links,
        index,
        LinkState.UP,
        a,
        b,
        latency,
        cost,
        has_cost.view(np.uint8),
        up.view(np.uint8),
        codes,
    )
    return a, b, latency, cost, has_cost, up, codes, names


def _load_columns() -> Callable[..., list[str]] | None:
    """The compiled `_link_columns` (tools/compile_pce.py), or None when not built."""
    try:
        from flame.sfr._sssp import link_columns  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return None
    return link_columns


_COMPILED_COLUMNS = _load_columns()
