"""`PathComputer`: ranked routes per ingress SR and FQDN over a topology that changes at run
time (SFR-4, 5, 6, 7, 13); see `flame.sfr.pce`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import ClassVar

import numpy as np

from flame.common.errors import UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.graph import NO_NODE, FloatArray, Graph, IntArray, TopologyError, check_weight
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
from flame.sfr.pce.kernel import _below
from flame.sfr.pce.ranking import (
    RouteTable,
    _by_source,
    _Candidates,
    _Group,
    _order,
    _Paths,
    _Ranking,
)
from flame.sfr.pce.trees import DEFAULT_KEY, TreeKey, _Trees
from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Link, Node, NodeKind, Topology


class PolicyError(UserError):
    """A routing policy names a cluster, location or link class the topology does not have."""

    code: ClassVar[str] = "policy_error"


def _some(names: Iterable[str], limit: int = 10) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return (", ".join(ordered[:limit]) or "none") + more


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
