"""Shortest-path trees rooted at every egress for one metric on a filtered graph, kept valid
through link changes (SFR-13).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
from scipy.sparse.csgraph import dijkstra  # type: ignore[import-untyped]

from flame.sfr.graph import NO_NODE, BoolArray, FloatArray, Graph, IntArray
from flame.sfr.models import Metric
from flame.sfr.pce.kernel import _below, _shortest_path_trees
from flame.topology.geo import Area

REPAIR_SHARE = 0.25  # a tree losing a subtree larger than this share of nodes is recomputed whole


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
