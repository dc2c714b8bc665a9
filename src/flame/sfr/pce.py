"""The path computation element: ranked routes per ingress SR and FQDN (SFR-4, 5, 6, 13).

Shortest-path trees rooted at every egress, i.e. every service router with a cluster (distances
and predecessors, one multi-source Dijkstra over the `Graph`'s CSR structure: the compiled
kernel `flame.sfr._sssp` on two threads when built, else scipy.sparse.csgraph), are kept for
the default metric (latency) and, on demand, for each (metric, excluded link classes, path
area) a policy asks for. Links are undirected, so the tree of an egress gives every SR its
distance and a shortest path to that egress; there are at most as many egresses as SRs, so this
is the cheaper side to run Dijkstra from. A link change rewrites one weight per tree set and
updates only the trees it can affect: a raised or failed link, the subtrees below it in the trees
that use it (SFR-13); a lowered or restored link, the distances it shortens. It reports the SRs
whose distance or path to some egress may have changed. Tables rank the endpoints of every FQDN
for many SRs at once (numpy gathers the distances, the compiled kernel or numpy's stable sorts
order them) and build `Route` objects only when a table is read.

Errors (both `UserError`): `TopologyError` (graph.py) for unknown nodes and links or bad values;
`PolicyError` from `check_policy` for policies naming unknown clusters, locations, link classes.
A `PathComputer` is not thread-safe: one caller (or a lock) at a time.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
from scipy.sparse.csgraph import dijkstra  # type: ignore[import-untyped]

from flame.common.errors import FlameError, UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.graph import (
    NO_NODE,
    BoolArray,
    FloatArray,
    Graph,
    IntArray,
    TopologyError,
    check_weight,
)
from flame.sfr.models import (
    AddNode,
    Endpoint,
    LinkCost,
    LinkLatency,
    LinkState,
    Metric,
    RemoveNode,
    Route,
    RoutingPolicy,
    TopologyChange,
)
from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Link, Node, NodeKind, Topology

__all__ = [
    "PathComputer",
    "PolicyError",
    "RouteTable",
    "TopologyError",
    "TreeKey",
    "shortest_paths_compiled",
    "shortest_paths_status",
]

ROUND_DIGITS = 9  # costs and latencies are compared and reported to 1e-9 (ms, cost units)
REPAIR_SHARE = 0.25  # a tree losing a subtree larger than this share of nodes is recomputed whole


# -- whole shortest-path trees: the compiled kernel, else scipy ------------------------------

Kernel = Callable[[IntArray, IntArray, FloatArray, IntArray, FloatArray, IntArray], None]
Ranker = Callable[
    [
        FloatArray,
        FloatArray,
        IntArray,
        FloatArray,
        npt.NDArray[np.uint8],
        npt.NDArray[np.uint8],
        npt.NDArray[np.intp],
        IntArray,
    ],
    None,
]


def _load_kernel() -> Kernel | None:
    """The compiled multi-source Dijkstra (tools/compile_pce.py), or None when not built."""
    try:
        from flame.sfr._sssp import shortest_path_trees  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return None
    return shortest_path_trees


def _load_ranker() -> Ranker | None:
    """The compiled ranking of candidates (same module), or None: numpy sorts then."""
    try:
        from flame.sfr._sssp import rank_candidates  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return None
    return rank_candidates


_KERNEL = _load_kernel()
_RANKER = _load_ranker()
# The kernels release the GIL: two threads share the sources (rows to rank), `_split`. Below
# this much work (sources x (nodes + CSR slots); candidates to rank) a second thread costs more
# than it saves: on the benchmark's graph (22,500 per source) 2 trees took 0.36 ms on one
# thread, 0.64 ms on two; 4 trees 0.74 ms and 0.62 ms; 303 trees 62 ms and 32 ms (heap).
_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
SPLIT_WORK = 100_000
SPLIT_PARTS = 12  # at most; each part costs one kernel call (its checks: O(nodes + slots))
_POOL = (  # its one worker thread starts on first use
    ThreadPoolExecutor(max_workers=_THREADS - 1, thread_name_prefix="pce-sssp")
    if _KERNEL is not None and _THREADS > 1
    else None
)


def shortest_paths_compiled() -> bool:
    """Are whole shortest-path trees computed by the compiled kernel (else by scipy)?"""
    return _KERNEL is not None


def shortest_paths_status() -> str:
    """One line for the start-up log: which Dijkstra the PCE uses, and a stale build."""
    if _KERNEL is None:
        return (
            "shortest paths: scipy's Dijkstra (run `make build` to compile the PCE's kernel "
            "with Cython)"
        )
    threads = f"{_THREADS} threads" if _THREADS > 1 else "1 thread"
    import flame.sfr._sssp as module  # noqa: PLC0415 - loaded already

    built = Path(module.__file__ or "")
    source = built.parent / "_sssp.pyx"
    if source.exists() and built.exists() and source.stat().st_mtime > built.stat().st_mtime:
        return (
            f"shortest paths: compiled kernel ({threads}) older than its source {source.name}; "
            "run `make build` to recompile"
        )
    return f"shortest paths: compiled kernel (Cython, {threads})"


def _shortest_path_trees(matrix: csr_matrix, sources: IntArray) -> tuple[FloatArray, IntArray]:
    """Dist and pred [len(sources), n] of the trees from these sources (scipy's conventions:
    inf and NO_NODE for unreachable nodes, NO_NODE for the roots' predecessors)."""
    sources = np.ascontiguousarray(sources, dtype=np.int32)
    if _KERNEL is None:
        dist, pred = dijkstra(matrix, directed=True, indices=sources, return_predecessors=True)
        return dist, pred.astype(np.int32, copy=False)
    n, k, kernel = matrix.shape[0], len(sources), _KERNEL
    indptr = np.ascontiguousarray(matrix.indptr, dtype=np.int32)
    indices = np.ascontiguousarray(matrix.indices, dtype=np.int32)
    data = np.ascontiguousarray(matrix.data, dtype=np.float64)
    dist = np.empty((k, n))
    pred = np.empty((k, n), dtype=np.int32)
    _split(
        k,
        k * (n + len(indices)),
        lambda part: kernel(indptr, indices, data, sources[part], dist[part], pred[part]),
    )
    return dist, pred


def _split(rows: int, work: int, run: Callable[[slice], None]) -> None:
    """run(rows) for a compiled kernel (GIL released): on two threads when the work is worth a
    second thread (`SPLIT_WORK`), else at once.

    In `SPLIT_PARTS` parts that this thread and the pool's take in turn rather than in halves:
    when another process takes a core for a while, the other thread does more of the parts.
    """
    if _POOL is None or rows < 2 or work < SPLIT_WORK:
        run(slice(0, rows))
        return
    size = -(-rows // min(SPLIT_PARTS, rows))  # rows per part, rounded up
    parts = iter([slice(start, start + size) for start in range(0, rows, size)])

    def drain() -> None:
        for part in parts:  # shared by both threads: next() on it is atomic under the GIL
            run(part)

    other = _POOL.submit(drain)
    drain()
    other.result()


class PolicyError(UserError):
    """A routing policy names a cluster, location or link class the topology does not have."""

    code: ClassVar[str] = "policy_error"


@dataclass(frozen=True, slots=True)
class TreeKey:
    """What a set of shortest-path trees is computed over: a metric on a filtered graph."""

    metric: Metric = Metric.LATENCY
    exclude_link_classes: frozenset[str] = frozenset()
    area: Area | None = None  # every node with coordinates on a path must lie inside (SFR-5)


DEFAULT_KEY = TreeKey()


class _Trees:
    """Shortest-path trees rooted at every egress for one `TreeKey`, rows computed on demand.

    Rooted at the egresses (SRs with a cluster, `Graph.egress`) rather than at every SR: there
    are at most as many, and links are undirected (one weight per pair, both directions), so the
    tree of egress e gives every SR s its distance to e and a shortest path s, pred[s], ..., e.
    `dist`/`pred` have one row per egress and one column per node; `computed` says which rows
    are valid (they are kept valid through changes). For metrics other than latency, `latency`
    holds the latency of each tree path, recomputed lazily (pointer doubling over predecessors).
    """

    def __init__(self, graph: Graph, key: TreeKey, node_ok: BoolArray | None) -> None:
        self.graph, self.key, self.node_ok = graph, key, node_ok
        self.repair_share = REPAIR_SHARE
        excluded = [i for i, c in enumerate(graph.classes) if c in key.exclude_link_classes]
        usable = ~np.isin(graph.link_class, excluded)
        if node_ok is not None:
            usable &= node_ok[graph.link_a] & node_ok[graph.link_b]
        self.usable: BoolArray = usable
        self.pair_w, self.pair_lat = graph.pair_weights(key.metric, usable)
        self.matrix = csr_matrix(
            (graph.csr_data(self.pair_w), graph.indices, graph.indptr), shape=(graph.n, graph.n)
        )
        rows = len(graph.egress)
        # Rows not computed are never read (`computed` masks them): zeros cost nothing until
        # written, and a first Dijkstra over every row replaces both arrays without a copy.
        self.dist: FloatArray = np.zeros((rows, graph.n))
        self.pred: IntArray = np.zeros((rows, graph.n), dtype=np.int32)
        self.computed: BoolArray = np.zeros(rows, dtype=np.bool_)
        self.pred_shared = False  # a ranking holds self.pred: copy before writing
        self._latency: FloatArray | None = None
        self._latency_fresh: BoolArray = np.zeros(rows, dtype=np.bool_)

    def computed_rows(self) -> list[int]:
        return np.flatnonzero(self.computed).tolist()

    def ensure(self, rows: IntArray) -> None:
        """Compute the trees of these egress rows that are not computed yet."""
        self._dijkstra(rows[~self.computed[rows]])

    def ensure_all(self) -> None:
        self.ensure(np.arange(len(self.computed), dtype=np.int32))

    def _dijkstra(self, rows: IntArray) -> None:
        """Whole trees from these egress rows, in one call (the compiled kernel or scipy)."""
        if rows.size == 0:
            return
        rows = np.unique(rows)
        dist, pred = _shortest_path_trees(self.matrix, self.graph.egress[rows])
        if rows.size == self.computed.size and not self.computed.any():
            self.dist, self.pred = dist, pred
            self.pred_shared = False  # a new array: rankings keep the old one
        else:
            self._own_pred()
            self.dist[rows] = dist
            self.pred[rows] = pred
        self.computed[rows] = True
        self._latency_fresh[rows] = False

    # -- a link changed (SFR-13) -----------------------------------------------------------

    def change_pair(self, pair: int) -> BoolArray:
        """Rewrite one pair's weight after its links changed; update the trees it touches.

        A raised or failed link only touches trees that use it, and in them only the subtree
        below it: that subtree is repaired from its unchanged surroundings (`_repair`). A lowered
        or restored link touches the trees in which it shortens a distance (`_improve`).
        Returns, per node, whether its distance or path to some egress may have changed.
        """
        g = self.graph
        w_new, lat_new = g.pair_weight(self.key.metric, pair, self.usable)
        w_old, lat_old = float(self.pair_w[pair]), float(self.pair_lat[pair])
        self.pair_w[pair], self.pair_lat[pair] = w_new, lat_new
        self.matrix.data[g.pair_slots[pair]] = w_new
        u, v = int(g.pair_u[pair]), int(g.pair_v[pair])
        uses: BoolArray = self.computed & ((self.pred[:, v] == u) | (self.pred[:, u] == v))
        changed = np.zeros(g.n, dtype=np.bool_)
        touched: BoolArray
        if w_new > w_old:
            touched = uses
            changed |= self._repair(np.flatnonzero(touched).astype(np.int32), u, v)
        elif w_new < w_old:
            du, dv = self.dist[:, u], self.dist[:, v]
            touched = self.computed & ((du + w_new < dv) | (dv + w_new < du))
            changed |= self._improve(np.flatnonzero(touched).astype(np.int32), u, v, w_new)
        else:
            touched = np.zeros_like(uses)
        if self.key.metric is not Metric.LATENCY and lat_new != lat_old:
            # Same paths, other latencies: every node whose path crosses the link (now).
            now = self.computed & ((self.pred[:, v] == u) | (self.pred[:, u] == v))
            rows = np.flatnonzero(now).astype(np.int32)
            if rows.size:
                cut = np.where(self.pred[rows, v] == u, v, u).astype(np.int32)
                changed[self._subtrees(rows, cut)[1]] = True
            touched = touched | uses | now
        self._latency_fresh[touched] = False
        return changed

    def _repair(self, rows: IntArray, u: int, v: int) -> BoolArray:
        """Recompute only the subtrees below the raised link (u, v) in these trees.

        Nodes outside a subtree keep their distance. Inside, a node's distance is the best of
        (outside neighbour's distance + link) continued within the subtree: one multi-source
        Dijkstra over all the subtrees at once, each fed by its own virtual source whose links
        carry those entry distances (min_only, so the subtrees never mix). Work is proportional
        to the subtrees' links, not to the graph; a tree losing a large part is recomputed whole.
        Returns the nodes whose distance or path may have changed.
        """
        g, n = self.graph, self.graph.n
        changed = np.zeros(n, dtype=np.bool_)
        if rows.size == 0:
            return changed
        cut = np.where(self.pred[rows, v] == u, v, u).astype(np.int32)  # the child end
        local, node = self._subtrees(rows, cut)
        changed[node] = True  # only these nodes' paths crossed the link; the rest stay
        sizes = np.bincount(local, minlength=len(rows))
        whole = sizes > self.repair_share * n
        if whole.any():
            old_dist, old_pred = self.dist[rows[whole]], self.pred[rows[whole]].copy()
            self._dijkstra(rows[whole])
            # A whole recomputation may pick other equal-cost paths outside the subtree too.
            for i, row in enumerate(rows[whole].tolist()):
                differs = (old_dist[i] != self.dist[row]) | (old_pred[i] != self.pred[row])
                changed |= _below(self.pred[row], differs)
            keep = ~whole[local]
            renumber = np.cumsum(~whole) - 1
            rows, local, node = rows[~whole], renumber[local[keep]], node[keep]
        m, t_count = len(rows), len(node)
        if m == 0:
            return changed
        self._own_pred()
        # Members t = 0..T-1 are (tree, node) pairs; find them again by key = tree * n + node.
        key = local.astype(np.int64) * n + node
        by_key = np.argsort(key)
        sorted_key = key[by_key]
        # Every member's links: to members (inner links) or from the outside (entries).
        owner, slot = g.adjacent(node)
        other, weight = g.indices[slot], self.matrix.data[slot]
        query = local[owner].astype(np.int64) * n + other
        at = np.minimum(np.searchsorted(sorted_key, query), t_count - 1)
        inner = sorted_key[at] == query
        other_member = by_key[at]
        entry = ~inner & np.isfinite(weight)
        entry_t, entry_from = owner[entry], other[entry]
        entry_dist = self.dist[rows[local[entry_t]], entry_from] + weight[entry]
        order = np.lexsort((entry_dist, entry_t))
        best_t, first = np.unique(entry_t[order], return_index=True)
        best_dist, best_from = entry_dist[order][first], entry_from[order][first]
        # Graph: members 0..T-1, then one virtual source per tree (T + local index).
        src = np.concatenate([owner[inner], t_count + local[best_t]])
        dst = np.concatenate([other_member[inner], best_t])
        wgt = np.concatenate([weight[inner], best_dist])
        by_src = np.argsort(src, kind="stable")
        size = t_count + m
        indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=size))])
        block = csr_matrix((wgt[by_src], dst[by_src], indptr), shape=(size, size))
        dist, bpred, _ = dijkstra(
            block,
            directed=True,
            indices=np.arange(t_count, size),
            return_predecessors=True,
            min_only=True,
        )
        entered_from = np.full(t_count, NO_NODE, dtype=np.int32)
        entered_from[best_t] = best_from
        bpred = bpred[:t_count]
        new_pred = np.where(
            bpred >= t_count,
            entered_from,
            np.where(bpred >= 0, node[np.clip(bpred, 0, t_count - 1)], NO_NODE),
        )
        self.dist[rows[local], node] = dist[:t_count]
        self.pred[rows[local], node] = new_pred
        return changed

    def _subtrees(self, rows: IntArray, top: IntArray) -> tuple[IntArray, IntArray]:
        """Members of the subtree of top[i] in tree rows[i], as (i, node) pairs.

        Top-down, level by level: a node's children are its neighbours whose predecessor it is,
        so the work follows the subtrees' links rather than the whole predecessor matrix.
        """
        g = self.graph
        level_local = np.arange(len(rows), dtype=np.int32)
        level_node = top
        locals_, nodes = [level_local], [level_node]
        while level_node.size:
            owner, slot = g.adjacent(level_node)
            child, parent_local = g.indices[slot], level_local[owner]
            is_child = self.pred[rows[parent_local], child] == level_node[owner]
            level_local, level_node = parent_local[is_child], child[is_child]
            locals_.append(level_local)
            nodes.append(level_node)
        return np.concatenate(locals_), np.concatenate(nodes)

    def _improve(self, rows: IntArray, u: int, v: int, weight: float) -> BoolArray:
        """Lower the distances that the lowered link (u, v) shortens in these trees.

        With one link lowered, a node's new distance is the old one or, through the link, the
        distance to its nearer end a plus the link plus the distance from its other end b (one
        Dijkstra from each end, on the new graph). Improved nodes take their predecessor from
        b's tree (b itself from a): a node improves only if its predecessor there does too.
        Returns the improved nodes (all nodes below an improved one improve too).
        """
        if rows.size == 0:
            return np.zeros(self.graph.n, dtype=np.bool_)
        self._own_pred()
        from_end, end_pred = _shortest_path_trees(self.matrix, np.array([u, v], dtype=np.int32))
        toward_v = self.dist[rows, u] + weight < self.dist[rows, v]  # else toward u
        near = np.where(toward_v, u, v)
        far_index = toward_v.astype(np.intp)  # row of `from_end` for the far end (v: 1)
        far = np.where(toward_v, v, u)
        through = (self.dist[rows, near] + weight)[:, None] + from_end[far_index]
        dist, pred = self.dist[rows], self.pred[rows]
        better = through < dist
        new_pred = end_pred[far_index]
        new_pred[np.arange(len(rows)), far] = near
        self.dist[rows] = np.where(better, through, dist)
        self.pred[rows] = np.where(better, new_pred, pred)
        changed: BoolArray = better.any(axis=0)
        return changed

    def _own_pred(self) -> None:
        """Copy-on-write: rankings handed out keep the predecessor matrix they were built on."""
        if self.pred_shared:
            self.pred = self.pred.copy()
            self.pred_shared = False

    def share_pred(self) -> IntArray:
        self.pred_shared = True
        return self.pred

    # -- path latencies for other metrics ---------------------------------------------------

    def latency(self, rows: IntArray) -> FloatArray:
        """Path latency from each egress of `rows` to every node, along the (computed) trees."""
        if self.key.metric is Metric.LATENCY:
            return self.dist
        if self._latency is None:
            self._latency = np.full(self.dist.shape, np.inf)
        need = rows[~self._latency_fresh[rows]]
        if need.size:
            need = np.unique(need)
            self._latency[need] = self._tree_latency(need)
            self._latency_fresh[need] = True
        return self._latency

    def _tree_latency(self, rows: IntArray) -> FloatArray:
        """Sum link latencies root-to-node by pointer doubling: log2(depth) numpy steps.

        Works on the rows flattened, with one extra column per row standing for "above the
        root": ancestors point into the same flat array, so each step is two `take`s.
        """
        g, pred = self.graph, self.pred[rows]
        m, n = pred.shape
        has = pred >= 0
        child = np.broadcast_to(np.arange(n, dtype=np.int32), pred.shape)
        acc = np.zeros((m, n + 1))
        acc[:, :n][has] = self.pair_lat[g.slot_pair[g.slots_of(pred[has], child[has])]]
        base = (np.arange(m, dtype=np.int64) * (n + 1))[:, None]
        anc = np.full((m, n + 1), n, dtype=np.int64)
        anc[:, :n] = np.where(has, pred, n)
        flat_anc, flat_acc = (anc + base).ravel(), acc.ravel()
        while True:
            flat_acc += flat_acc[flat_anc]
            step = flat_anc[flat_anc]
            if (step == flat_anc).all():
                break
            flat_anc = step
        out = flat_acc.reshape(m, n + 1)[:, :n]
        out[~has] = np.inf  # unreachable, and the roots (set back to 0 below)
        out[np.arange(m), g.egress[rows]] = 0.0
        return out


@dataclass(slots=True)
class _Paths:
    """The predecessor matrix a ranking was made on (copy-on-write in `_Trees`), for paths.

    The tree of an egress leads every node towards it, so the path from an SR to an egress is
    read from the SR up that tree (`_table_routes`, once per SR and egress).
    """

    sources: list[int]  # per ranking row: the SR's node index
    egress_row: IntArray  # per node: its row in `pred` (egresses only)
    pred: IntArray


@dataclass(slots=True)
class _Group:
    """FQDNs that share a tree set and a number of candidate endpoints, ranked for many SRs."""

    endpoints: list[list[Endpoint]]  # per FQDN, the candidates
    egress: IntArray  # (F, k) each candidate's egress SR (node index)
    order: npt.NDArray[np.intp]  # (R, F, k) candidate indices, best first
    count: IntArray  # (R, F) how many of them are routable
    cost: FloatArray  # (R, F, k) per candidate (not ranked)
    latency: FloatArray  # (R, F, k) per candidate (not ranked); `cost` itself for latency
    paths: _Paths


@dataclass(slots=True)
class _Ranking:
    """The result of one `tables` or `routes` call: where each FQDN's ranking is."""

    ids: tuple[str, ...]
    fqdns: dict[str, tuple[int, int] | None]  # fqdn -> (group, index in group); None: no routes
    groups: list[_Group]
    addresses: list[str | None]  # per node index: the egress SR's `address` for its routes

    def group_routes(
        self, i: int, g: int, paths: dict[int, list[tuple[str, ...] | None]]
    ) -> list[tuple[Route, ...]]:
        """The routes of every FQDN of group g for ranking row i, in one pass.

        `paths` holds the row's path to each egress per predecessor matrix (groups of a tree
        set share it), so each path is walked and built once per SR, not once per route.
        """
        group = self.groups[g]
        source = group.paths.sources[i]
        row_paths = paths.get(id(group.paths))
        if row_paths is None:
            row_paths = paths[id(group.paths)] = [None] * len(self.ids)
        try:
            return _table_routes(
                Route,
                group.order[i],
                group.count[i],
                group.cost[i],
                group.latency[i],
                group.egress,
                group.endpoints,
                group.paths.pred,
                group.paths.egress_row,
                source,
                self.ids,
                self.addresses,
                row_paths,
            )
        except ValueError as e:  # a broken tree (or bad shapes): a bug, not the caller's
            raise FlameError(str(e)) from e


def _table_routes_py(
    route: type[Route],
    order: npt.NDArray[np.intp],
    count: IntArray,
    cost: FloatArray,
    latency: FloatArray,
    egress: IntArray,
    endpoints: list[list[Endpoint]],
    pred: IntArray,
    egress_row: IntArray,
    source: int,
    ids: tuple[str, ...],
    addresses: list[str | None],
    paths: list[tuple[str, ...] | None],
) -> list[tuple[Route, ...]]:
    """`_sssp.table_routes` when it is not compiled: the same routes, in Python."""
    out: list[tuple[Route, ...]] = []
    costs, latencies = cost.tolist(), latency.tolist()
    for f, (ranked, n, cands, nodes) in enumerate(
        zip(order.tolist(), count.tolist(), endpoints, egress.tolist(), strict=True)
    ):
        routes = []
        for j in ranked[:n]:
            e = nodes[j]
            path = paths[e]
            if path is None:
                up, walk, node = pred[egress_row[e]], [source], source
                while node != e:
                    node = int(up[node])
                    walk.append(node)
                    if node < 0 or len(walk) > len(ids):  # a broken tree must not loop forever
                        raise ValueError(f"no tree path from {ids[source]} to {ids[e]}")
                path = paths[e] = tuple(ids[x] for x in walk)
            routes.append(route(cands[j], ids[e], costs[f][j], latencies[f][j], path, addresses[e]))
        out.append(tuple(routes))
    return out


def _load_table_routes() -> Callable[..., list[tuple[Route, ...]]]:
    try:
        from flame.sfr._sssp import table_routes  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return _table_routes_py
    return table_routes


_table_routes = _load_table_routes()


def _some(names: Iterable[str], limit: int = 10) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return (", ".join(ordered[:limit]) or "none") + more


def _by_source(matrix: FloatArray, tree_rows: IntArray, sources: IntArray) -> FloatArray:
    """matrix[tree_rows, sources] transposed, (sources, tree_rows), rounded to 1e-9.

    Different paths of the same length can sum to floats an ulp apart; rounding makes ties
    real ties (broken by endpoint id) and incremental results equal to recomputed ones.
    """
    picked = matrix[:, sources][tree_rows].T.copy()  # C order: groups gather along rows
    return np.round(picked, ROUND_DIGITS, out=picked)


def _order(
    cost: FloatArray,
    latency: FloatArray,
    rank: IntArray,
    max_latency: FloatArray,
    candidate_ok: BoolArray,
    row_ok: BoolArray,
) -> tuple[npt.NDArray[np.intp], IntArray]:
    """Rank (R, F, k) candidates: order (indices, best first) and count (R, F) of routable.

    Routable: finite cost, latency within the FQDN's maximum, candidate and row allowed.
    Best: preference rank, then cost, then latency, then index (candidates come in endpoint id
    order). Only order[..., :count] is meaningful. Compiled when built, rows over two threads:
    numpy's sorts along an axis of a few elements cost more per row than the sorting itself
    (7 ms against 2 for the benchmark's 93,500 rows of 5).
    """
    if _RANKER is not None:
        ranker, candidate_bytes, row_bytes = (
            _RANKER,
            candidate_ok.view(np.uint8),
            row_ok.view(np.uint8),
        )
        order = np.empty(cost.shape, dtype=np.intp)
        count = np.empty(cost.shape[:2], dtype=np.int32)
        _split(
            len(cost),
            cost.size,
            lambda part: ranker(
                cost[part],
                latency[part],
                rank,
                max_latency,
                candidate_bytes,
                row_bytes[part],
                order[part],
                count[part],
            ),
        )
        return order, count
    ok = np.isfinite(cost) & candidate_ok[None] & row_ok[:, None, None]
    if np.isfinite(max_latency).any():
        ok &= latency <= max_latency[None, :, None]
    # Stable sorts keep the index order for ties.
    keys: list[npt.NDArray[np.generic]] = []
    if latency is not cost:
        keys.append(latency)
    keys.append(np.where(ok, cost, np.inf))
    if rank.any():  # preferences first; unroutable ones still last
        keys.append(np.where(ok, rank[None], np.iinfo(np.int32).max))
    if len(keys) == 1:
        order = np.argsort(keys[0], axis=-1, kind="stable")
    else:
        order = np.lexsort(keys, axis=-1)
    return order, ok.sum(axis=-1, dtype=np.int32)


def _below(pred: IntArray, flags: BoolArray) -> BoolArray:
    """Nodes with a flagged node on their tree path to the root (themselves included).

    Pointer doubling over one predecessor row: log2(depth) numpy steps.
    """
    up = np.where(pred >= 0, pred, np.arange(len(pred)))  # roots and unreached: themselves
    out = flags.copy()
    while True:
        spread = out | out[up]
        step = up[up]
        if (step == up).all() and (spread == out).all():
            return out
        out, up = spread, step


class RouteTable(Mapping[str, tuple[Route, ...]]):
    """One SR's routes per FQDN, best first; `Route` objects are built when first read.

    Ranking is done for all SRs at once; building half a million Route objects is not, because an
    SR's table is only read when it is serialised for that SR. Reading one FQDN builds those of
    its whole group (`_Ranking.group_routes`): tables are read whole. Fits
    `ForwardingTable.routes`.
    """

    __slots__ = ("_groups", "_paths", "_ranking", "_row", "sr")

    def __init__(self, sr: str, ranking: _Ranking, row: int) -> None:
        self.sr = sr
        self._ranking, self._row = ranking, row
        self._groups: dict[int, list[tuple[Route, ...]]] = {}
        self._paths: dict[int, list[tuple[str, ...] | None]] = {}

    def __getitem__(self, fqdn: str) -> tuple[Route, ...]:
        where = self._ranking.fqdns[fqdn]  # KeyError for an FQDN not in the table
        if where is None:
            return ()
        g, j = where
        routes = self._groups.get(g)
        if routes is None:
            routes = self._groups[g] = self._ranking.group_routes(self._row, g, self._paths)
            if len(self._groups) == len(self._ranking.groups):
                self._paths.clear()  # every route built: the per-egress paths are not needed
        return routes[j]

    def __contains__(self, fqdn: object) -> bool:
        return fqdn in self._ranking.fqdns

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranking.fqdns)

    def __len__(self) -> int:
        return len(self._ranking.fqdns)

    def __repr__(self) -> str:
        return f"RouteTable(sr={self.sr!r}, fqdns={len(self)})"


@dataclass(slots=True)
class _Candidates:
    """The endpoints of one FQDN that a policy allows, with their static ranking keys."""

    fqdn: str
    key: TreeKey
    endpoints: list[Endpoint]
    egress: list[int]
    rank: list[int]  # preference class: preferred (in order), normal, avoided
    max_latency: float


class PathComputer:
    """Shortest-path routes from every SR to the endpoints of every FQDN (SFR-4, 5, 6, 13).

    Links are undirected; a link that is down is not used. Clusters and user equipment attach to
    their SR (`node.sr`): a cluster's endpoints are reached at its SR (the egress), a UE's
    requests enter at its SR (the ingress).
    """

    def __init__(self, topology: Topology, *, max_filtered_trees: int = 16) -> None:
        self._name, self._source = topology.name, topology.source
        self._locations: dict[str, GeoPoint] = dict(topology.locations)
        self._registrations = topology.registrations
        self._nodes: dict[str, Node] = dict(topology.nodes)
        self._max_filtered = max_filtered_trees
        self._install(Graph(self._nodes, topology.links))
        self._default.ensure_all()

    def _install(self, graph: Graph) -> None:
        self.graph = graph
        self._addresses: list[str | None] | None = None  # per node; made on first ranking
        self._default = self._make_trees(DEFAULT_KEY)
        self._filtered: OrderedDict[TreeKey, _Trees] = OrderedDict()

    def _all_rows(self) -> IntArray:
        return np.arange(len(self.graph.srs), dtype=np.int32)

    # -- the topology ----------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        """The topology as it is now, with every change applied."""
        return Topology(
            name=self._name,
            source=self._source,
            nodes=dict(self._nodes),
            links=self.graph.links(),
            locations=dict(self._locations),
            registrations=self._registrations,
        )

    @property
    def service_routers(self) -> tuple[str, ...]:
        return self.graph.sr_ids

    def ingress(self, node_id: str) -> str:
        """The SR where requests from a node enter: an SR itself or a UE's SR."""
        return self.graph.sr_ids[self.graph.sr_row_of(node_id, ingress=True)]

    # -- changes (SFR-7, SFR-13) -------------------------------------------------------------

    def apply(self, change: TopologyChange) -> frozenset[str]:
        """Apply one change; return the SRs whose tables it may change: they need recomputing.

        Those are the SRs whose distance or path to some egress (in any tree set in use) the
        change may alter. The touched trees are updated before this returns (a failed link
        repairs only the subtrees below it). Adding or removing a cluster or SR also reports
        every SR that reaches its SR, because routes to its endpoints appear or disappear. A
        removed SR is not reported: it has no table any more.
        """
        g = self.graph
        match change:
            case LinkState(a=a, b=b, up=up):
                pair = g.pair(a, b)
                g.set_up(pair, up)
            case LinkLatency(a=a, b=b, latency_ms=latency):
                pair = g.pair(a, b)
                check_weight(latency, "latency_ms", a, b)
                g.set_latency(pair, latency)
            case LinkCost(a=a, b=b, cost=cost):
                pair = g.pair(a, b)
                if cost is not None:
                    check_weight(cost, "cost", a, b)
                g.set_cost(pair, cost)
            case AddNode():
                return self._add(change)
            case RemoveNode(node=node_id):
                return self._remove(node_id)
            case _:
                raise TypeError(f"not a topology change: {change!r}")
        changed = np.zeros(g.n, dtype=np.bool_)
        for trees in self._tree_sets():
            changed |= trees.change_pair(pair)
        return frozenset(g.sr_ids[i] for i in np.flatnonzero(changed[g.srs]).tolist())

    def _tree_sets(self) -> list[_Trees]:
        return [self._default, *self._filtered.values()]

    def _add(self, change: AddNode) -> frozenset[str]:
        node, g = change.node, self.graph
        if node.id in self._nodes:
            raise TopologyError(f"node '{node.id}' already exists; remove it first", node=node.id)
        if node.kind in (NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT):
            if node.sr is None:
                raise TopologyError(
                    f"{node.kind.value.replace('_', ' ')} '{node.id}' must name its service router"
                    " (sr)",
                    node=node.id,
                )
            g.sr_row_of(node.sr)
        for link in change.links:
            if node.id not in (link.a, link.b):
                raise TopologyError(
                    f"link {link.a}—{link.b} does not connect the new node '{node.id}'",
                    node=node.id,
                )
        nodes = {**self._nodes, node.id: node}
        return self._rebuild(nodes, (*g.links(), *change.links), node, added=True)

    def _remove(self, node_id: str) -> frozenset[str]:
        g = self.graph
        i = g.node_index(node_id)
        nodes = {k: v for k, v in self._nodes.items() if k != node_id}
        links = tuple(k for k in g.links() if node_id not in (k.a, k.b))
        return self._rebuild(nodes, links, g.nodes[i], added=False)

    def _rebuild(
        self, nodes: dict[str, Node], links: Sequence[Link], node: Node, *, added: bool
    ) -> frozenset[str]:
        """Node changes rebuild the graph and recompute what was fresh; report what differs."""
        old, old_sets = self.graph, self._tree_sets()
        graph = Graph(nodes, links)  # raises before anything changes
        self._nodes = nodes
        self._install(graph)
        self._default.ensure_all()
        changed: set[str] = set()
        if added and node.kind is NodeKind.SERVICE_ROUTER:
            changed.add(node.id)
        old_ids = np.array([graph.index.get(i, -1) for i in old.ids], dtype=np.int64)
        common_old = np.flatnonzero(old_ids >= 0)
        common_new = old_ids[common_old]
        remap = np.append(old_ids, -1)  # old index (or -1 for "none") -> new index
        for old_trees in old_sets:
            new_trees = self._default if old_trees.key == DEFAULT_KEY else None
            if new_trees is None:
                new_trees = self._make_trees(old_trees.key)
                self._filtered[old_trees.key] = new_trees
            # Egress trees in both graphs: compare them on the nodes in both.
            rows_old = np.array(old_trees.computed_rows(), dtype=np.int32)
            at_new = old_ids[old.egress[rows_old]]  # the egress in the new graph; -1: removed
            rows_new = np.where(at_new >= 0, graph.egress_row[np.maximum(at_new, 0)], -1)
            keep = rows_new >= 0
            rows_old, rows_new = rows_old[keep], rows_new[keep].astype(np.int32)
            new_trees.ensure(rows_new)
            d_old = old_trees.dist[np.ix_(rows_old, common_old)]
            d_new = new_trees.dist[np.ix_(rows_new, common_new)]
            p_old = old_trees.pred[np.ix_(rows_old, common_old)]
            p_old = np.where(p_old >= 0, remap[np.maximum(p_old, -1)], NO_NODE)
            p_new = new_trees.pred[np.ix_(rows_new, common_new)]
            differs = (d_old != d_new) | (p_old != p_new)
            for i, row in enumerate(rows_new.tolist()):
                if differs[i].any():  # a node's path changes if any node on it changed
                    flags = np.zeros(graph.n, dtype=np.bool_)
                    flags[common_new[differs[i]]] = True
                    hit = _below(new_trees.pred[row], flags)[graph.srs]
                    changed.update(graph.sr_ids[r] for r in np.flatnonzero(hit).tolist())
        if node.kind in (NodeKind.CLUSTER, NodeKind.SERVICE_ROUTER):
            # Routes to the endpoints behind this node appear or disappear wherever it is reached.
            g = graph if added else old
            trees = self._default if added else old_sets[0]
            at = int(g.attached_sr[g.index[node.id]])
            row = int(g.egress_row[at]) if at >= 0 else -1
            if row >= 0 and trees.computed[row]:
                reach = np.flatnonzero(np.isfinite(trees.dist[row, g.srs]))
                changed.update(g.sr_ids[r] for r in reach.tolist())
        return frozenset(sr for sr in changed if sr in graph.sr_row)

    # -- tree sets ---------------------------------------------------------------------------

    def _make_trees(self, key: TreeKey) -> _Trees:
        node_ok = None
        if key.area is not None:
            area = key.area
            node_ok = np.array(
                [
                    (n.location is None and n.location_name is None) or self._inside(area, n)
                    for n in self.graph.nodes
                ],
                dtype=np.bool_,
            )
        return _Trees(self.graph, key, node_ok)

    def _trees(self, key: TreeKey) -> _Trees:
        if key == DEFAULT_KEY:
            return self._default
        trees = self._filtered.get(key)
        if trees is None:
            trees = self._filtered[key] = self._make_trees(key)
            while len(self._filtered) > self._max_filtered:
                self._filtered.popitem(last=False)
        else:
            self._filtered.move_to_end(key)
        return trees

    def _key(self, policy: RoutingPolicy) -> TreeKey:
        area = policy.area if policy.paths_in_area else None
        if policy.metric is Metric.LATENCY and area is None and not policy.exclude_link_classes:
            return DEFAULT_KEY  # most FQDNs: no new key to build and hash
        classes = frozenset(c for c in policy.exclude_link_classes if c in self.graph.classes)
        return TreeKey(policy.metric, classes, area)

    def _inside(self, area: Area, node: Node) -> bool:
        """Is a node inside an area? A bare named location matches by name (SFR-5)."""
        if area.centre is None and not area.polygon and area.location is not None:
            point = self._locations.get(area.location)
            if area.radius_km is not None and point is not None:
                return (
                    node.location is not None and point.distance_km(node.location) <= area.radius_km
                )
            return node.location_name == area.location
        return node.location is not None and area.contains(node.location, self._locations)

    # -- policies (SFR-5, SFR-6) -------------------------------------------------------------

    def check_policy(self, policy: RoutingPolicy) -> None:
        """Raise PolicyError if a policy names clusters, locations or link classes not known."""
        clusters = [k for k, n in self._nodes.items() if n.kind is NodeKind.CLUSTER]
        named = {
            "cluster": (
                (*policy.prefer_clusters, *policy.avoid_clusters, *policy.exclude_clusters),
                clusters,
            ),
            "location": (
                (
                    *policy.prefer_locations,
                    *policy.avoid_locations,
                    *((policy.area.location,) if policy.area and policy.area.location else ()),
                ),
                list(self._locations),
            ),
            "link class": (policy.exclude_link_classes, list(self.graph.classes)),
        }
        for what, (names, known) in named.items():
            for name in names:
                if name not in known:
                    hint = did_you_mean(name, known, dotted=False)
                    raise PolicyError(
                        f"policy for '{policy.fqdn}': unknown {what} '{name}'"
                        + (f" ({hint})" if hint else f"; known: {_some(known)}"),
                        fqdn=policy.fqdn,
                        name=name,
                    )

    def _candidates(
        self, fqdn: str, policy: RoutingPolicy, endpoints: Iterable[Endpoint]
    ) -> _Candidates:
        """Filter an FQDN's endpoints by policy (area, exclusions) and give each its preference."""
        g = self.graph
        prefer = {c: i for i, c in enumerate(policy.prefer_clusters)}
        prefer_at = {loc: len(prefer) + i for i, loc in enumerate(policy.prefer_locations)}
        normal = len(prefer) + len(prefer_at)
        excluded, avoided = set(policy.exclude_clusters), set(policy.avoid_clusters)
        avoided_at = set(policy.avoid_locations)
        area = policy.area
        max_latency = math.inf if policy.max_latency_ms is None else policy.max_latency_ms
        found: list[tuple[str, Endpoint, int, int]] = []  # (id, endpoint, egress, rank)
        for endpoint in endpoints:
            cluster = endpoint.cluster
            i = g.index.get(cluster)
            if i is None or cluster in excluded:
                continue
            egress = g.cluster_egress[i]
            if egress < 0:
                continue  # endpoints live on clusters reached at their SR
            node = g.nodes[i]
            if area is not None and not self._inside(area, node):
                continue
            rank = prefer.get(cluster)
            if rank is None and node.location_name is not None:
                rank = prefer_at.get(node.location_name)
            if rank is None:
                rank = normal + (cluster in avoided or node.location_name in avoided_at)
            found.append((endpoint.sfe, endpoint, egress, rank))
        # By endpoint id: ties then need no key of their own (the sorts in `_rank` are stable).
        found.sort(key=itemgetter(0))
        return _Candidates(
            fqdn,
            self._key(policy),
            [x[1] for x in found],
            [x[2] for x in found],
            [x[3] for x in found],
            max_latency,
        )

    # -- routes and tables (SFR-4) -----------------------------------------------------------

    def routes(
        self, sr: str, endpoints: Sequence[Endpoint], policy: RoutingPolicy | None = None
    ) -> tuple[Route, ...]:
        """The ranked routes (best first) from one ingress SR (or UE) to an FQDN's endpoints."""
        row = self.graph.sr_row_of(sr, ingress=True)
        fqdn = policy.fqdn if policy else (endpoints[0].fqdn if endpoints else "")
        policy = policy or RoutingPolicy(fqdn=fqdn)
        ranking = self._rank(
            [self._candidates(fqdn, policy, endpoints)], np.array([row], dtype=np.int32)
        )
        return RouteTable(self.graph.sr_ids[row], ranking, 0)[fqdn]

    def tables(
        self,
        endpoints: Iterable[Endpoint],
        policies: Mapping[str, RoutingPolicy],
        srs: Iterable[str] | None = None,
    ) -> dict[str, RouteTable]:
        """Forwarding tables, sr -> fqdn -> routes, for every SR or the given ones.

        Every FQDN with an endpoint or a policy has an entry, empty when nothing is routable
        (the SR answers 503, not 502). FQDNs without a policy use the default one (latency).
        """
        g = self.graph
        if srs is None:
            rows = self._all_rows()
        else:
            rows = np.array([g.sr_row_of(sr) for sr in srs], dtype=np.int32)
        by_fqdn: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            by_fqdn.setdefault(endpoint.fqdn, []).append(endpoint)
        for fqdn in policies:
            by_fqdn.setdefault(fqdn, [])
        candidates = [
            self._candidates(fqdn, policies.get(fqdn) or RoutingPolicy(fqdn=fqdn), eps)
            for fqdn, eps in by_fqdn.items()
        ]
        ranking = self._rank(candidates, rows)
        return {
            g.sr_ids[r]: RouteTable(g.sr_ids[r], ranking, i) for i, r in enumerate(rows.tolist())
        }

    def _rank(self, candidates: Sequence[_Candidates], rows: IntArray) -> _Ranking:
        """Rank every FQDN's candidates for every SR row, in groups of equal shape (numpy)."""
        g = self.graph
        fqdns: dict[str, tuple[int, int] | None] = {}
        shapes: dict[tuple[TreeKey, int], list[_Candidates]] = {}
        for c in candidates:
            if c.endpoints:
                shapes.setdefault((c.key, len(c.endpoints)), []).append(c)
            else:
                fqdns[c.fqdn] = None
        groups: list[_Group] = []
        paths: dict[TreeKey, _Paths] = {}
        sources = g.srs[rows]
        needed: dict[TreeKey, list[int]] = {}
        for (key, _k), members in shapes.items():
            needed.setdefault(key, []).extend(e for c in members for e in c.egress)
        sets: dict[TreeKey, _Trees] = {}  # held here: the LRU cache may drop one meanwhile
        by_cost: dict[TreeKey, tuple[IntArray, FloatArray]] = {}  # (tree rows, [source, row])
        by_latency: dict[TreeKey, FloatArray] = {}
        for key, egress in needed.items():  # every tree of a key before its paths are shared
            trees = sets[key] = self._trees(key)
            tree_rows = g.egress_row[np.unique(np.array(egress, dtype=np.int32))]
            trees.ensure(tree_rows)
            paths[key] = _Paths(sources.tolist(), g.egress_row, trees.share_pred())
            # Gathered once per key, not per group: groups of a key share most egresses.
            by_cost[key] = (tree_rows, _by_source(trees.dist, tree_rows, sources))
            if key.metric is not Metric.LATENCY:
                by_latency[key] = _by_source(trees.latency(tree_rows), tree_rows, sources)
        for (key, k), members in shapes.items():
            trees = sets[key]
            cols = np.array([c.egress for c in members], dtype=np.int32)  # (F, k)
            tree_rows, table = by_cost[key]
            at = np.searchsorted(tree_rows, g.egress_row[cols.ravel()])
            shape = (len(rows), len(members), k)
            cost = table.take(at, axis=1).reshape(shape)  # C order (`table[:, at]` is not)
            latency = by_latency[key].take(at, axis=1).reshape(shape) if key in by_latency else cost
            if trees.node_ok is None:
                candidate_ok, row_ok = np.ones(cols.shape, np.bool_), np.ones(len(rows), np.bool_)
            else:
                candidate_ok, row_ok = trees.node_ok[cols], trees.node_ok[sources]
            order, count = _order(
                cost,
                latency,
                np.array([c.rank for c in members], dtype=np.int32),
                np.array([c.max_latency for c in members], dtype=np.float64),
                candidate_ok,
                row_ok,
            )
            for j, c in enumerate(members):
                fqdns[c.fqdn] = (len(groups), j)
            groups.append(
                _Group(
                    endpoints=[c.endpoints for c in members],
                    egress=cols,
                    # C order: `_table_routes` reads one row's [F, k] block as it is.
                    order=np.ascontiguousarray(order),
                    count=np.ascontiguousarray(count),
                    cost=cost,
                    latency=latency,
                    paths=paths[key],
                )
            )
        if self._addresses is None:  # rankings share it: never mutated
            self._addresses = [node.address for node in g.nodes]
        return _Ranking(g.ids, fqdns, groups, self._addresses)
