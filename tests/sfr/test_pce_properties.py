"""The PCE against networkx (the oracle) on random topologies (SFR-4, 5, 6, 8, 13).

Hypothesis draws connected topologies of 10-60 nodes (parallel links, zero latencies, optional
costs, link classes, coordinates) and a sequence of link failures, restorations, latency and
cost changes applied incrementally. After every change:

- every route's cost is networkx's shortest-path length (latency, cost or hops), its path is a
  real path of up links of that cost and latency, and routes are ranked (cost, latency, id);
- the SRs a change did not report have exactly the tables they had before it;
- at the end, the incrementally updated PCE equals one built from scratch on the final topology.

A 10,000+ link topology checks the same against networkx for a sample of SRs.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from flame.sfr.pce import PathComputer
from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Link, Node, NodeKind, Topology
from flame.topology.model import LinkState as Status

TOLERANCE = 1e-6
CLASSES = (None, "metro", "core", "satellite")
LOCATIONS = {
    "north": GeoPoint(52.0, -1.0),
    "south": GeoPoint(50.5, -1.0),
    "west": GeoPoint(51.2, -3.0),
}
METRICS = (Metric.LATENCY, Metric.COST, Metric.HOPS)

latencies = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]),  # ties and zero-weight links
    st.floats(0.01, 100.0, allow_nan=False).map(lambda x: round(x, 3)),
)
costs = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 3.0]), st.floats(0.1, 50.0).map(round))


@dataclass(frozen=True, slots=True)
class Case:
    topology: Topology
    endpoints: tuple[Endpoint, ...]
    changes: tuple[TopologyChange, ...]


@st.composite
def cases(draw: st.DrawFn, min_nodes: int = 10, max_nodes: int = 60) -> Case:
    n = draw(st.integers(min_nodes, max_nodes))
    is_sr = [True, True, *draw(st.lists(st.booleans(), min_size=n - 2, max_size=n - 2))]
    nodes: dict[str, Node] = {}
    for i in range(n):
        located = draw(st.booleans()) or draw(st.booleans())  # most nodes have coordinates
        point = (
            GeoPoint(draw(st.floats(50.0, 53.0)), draw(st.floats(-4.0, 0.0))) if located else None
        )
        kind = NodeKind.SERVICE_ROUTER if is_sr[i] else NodeKind.SWITCH
        nodes[f"n{i}"] = Node(f"n{i}", kind, location=point)
    # a random spanning tree keeps it connected; extra links may repeat a pair (parallel links)
    ends = [(draw(st.integers(0, i - 1)), i) for i in range(1, n)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    ends += [(a, b) for a, b in extra if a != b]
    links = tuple(
        Link(
            f"n{a}",
            f"n{b}",
            latency_ms=draw(latencies),
            cost=draw(costs),
            link_class=draw(st.sampled_from(CLASSES)),
        )
        for a, b in ends
    )
    srs = [i for i in range(n) if is_sr[i]]
    clusters = draw(st.lists(st.sampled_from(srs), min_size=1, max_size=6))
    for k, sr in enumerate(clusters):
        name = draw(st.sampled_from(sorted(LOCATIONS)))
        nodes[f"cl-{k}"] = Node(
            f"cl-{k}", NodeKind.CLUSTER, location=LOCATIONS[name], location_name=name, sr=f"n{sr}"
        )
    endpoints = tuple(
        Endpoint(
            f"e{j}", draw(st.sampled_from(["a.example", "b.example"])), f"cl-{c}", "127.0.0.1", 80
        )
        for j, c in enumerate(
            draw(st.lists(st.integers(0, len(clusters) - 1), min_size=1, max_size=8))
        )
    )
    changes: list[TopologyChange] = []
    for index, what, value in draw(
        st.lists(
            st.tuples(
                st.integers(0, len(links) - 1),
                st.sampled_from(["down", "up", "latency", "cost"]),
                latencies,
            ),
            max_size=10,
        )
    ):
        link = links[index]
        if what in ("down", "up"):
            changes.append(LinkState(link.a, link.b, up=what == "up"))
        elif what == "latency":
            changes.append(LinkLatency(link.a, link.b, value))
        else:
            changes.append(LinkCost(link.a, link.b, None if value == 0.5 else value))
    topology = Topology("random", "<hypothesis>", nodes, links, dict(LOCATIONS))
    return Case(topology, endpoints, tuple(changes))


# -- the oracle -------------------------------------------------------------------------------


def oracle_graph(
    topology: Topology,
    metric: Metric,
    exclude: Iterable[str] = (),
    allowed: set[str] | None = None,
) -> nx.Graph:
    """networkx graph of the up links; parallel links merged to the best (weight, latency)."""
    graph = nx.Graph()
    graph.add_nodes_from(topology.nodes)
    excluded = set(exclude)
    for link in topology.links:
        if link.state is not Status.UP or link.link_class in excluded:
            continue
        if allowed is not None and not (link.a in allowed and link.b in allowed):
            continue
        weight = {
            Metric.LATENCY: link.latency_ms,
            Metric.COST: link.latency_ms if link.cost is None else link.cost,
            Metric.HOPS: 1.0,
        }[metric]
        old = graph.get_edge_data(link.a, link.b)
        if old is None or (weight, link.latency_ms) < (old["w"], old["lat"]):
            graph.add_edge(link.a, link.b, w=weight, lat=link.latency_ms)
    return graph


def check_routes(
    routes: Sequence[Route],
    sr: str,
    endpoints: Sequence[Endpoint],
    topology: Topology,
    graph: nx.Graph,
    *,
    max_latency: float = math.inf,
    dist: dict[str, float] | None = None,
) -> None:
    """Routes = the reachable endpoints, each at networkx's distance, along a valid path."""
    if dist is None:
        dist = nx.single_source_dijkstra_path_length(graph, sr, weight="w")
    want = set()
    for e in endpoints:
        egress = topology.nodes[e.cluster].sr
        if egress in dist:
            want.add(e.sfe)
    got = {r.endpoint.sfe: r for r in routes}
    assert len(got) == len(routes)
    for sfe, route in got.items():
        egress = topology.nodes[route.endpoint.cluster].sr
        assert route.egress_sr == egress
        assert abs(route.cost - dist[egress]) <= TOLERANCE, (sr, sfe, route.cost, dist[egress])
        assert route.path[0] == sr
        assert route.path[-1] == egress
        hops = list(itertools.pairwise(route.path))
        assert all(graph.has_edge(a, b) for a, b in hops), route.path
        assert abs(sum(graph[a][b]["w"] for a, b in hops) - route.cost) <= TOLERANCE
        assert abs(sum(graph[a][b]["lat"] for a, b in hops) - route.latency_ms) <= TOLERANCE
    assert all(r.latency_ms <= max_latency for r in routes)
    assert set(got) <= want
    for sfe in want - set(got):  # only routes above the latency limit may be missing
        assert _oracle_latency(graph, sr, topology, endpoints, sfe) > max_latency, (sr, sfe)
    keys = [(r.cost, r.latency_ms, r.endpoint.sfe) for r in routes]
    assert keys == sorted(keys)


def _oracle_latency(
    graph: nx.Graph, sr: str, topology: Topology, endpoints: Sequence[Endpoint], sfe: str
) -> float:
    endpoint = next(e for e in endpoints if e.sfe == sfe)
    path = nx.dijkstra_path(graph, sr, topology.nodes[endpoint.cluster].sr, weight="w")
    return float(sum(graph[a][b]["lat"] for a, b in itertools.pairwise(path)))


def by_fqdn(endpoints: Sequence[Endpoint]) -> dict[str, list[Endpoint]]:
    out: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        out.setdefault(e.fqdn, []).append(e)
    return out


def snapshot(
    pce: PathComputer, case: Case, policies: dict[str, RoutingPolicy]
) -> dict[str, dict[str, tuple[Route, ...]]]:
    return {sr: dict(t) for sr, t in pce.tables(case.endpoints, policies).items()}


# -- properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(case=cases(), metric=st.sampled_from(METRICS))
def test_routes_are_shortest_paths_after_every_change(case: Case, metric: Metric) -> None:
    """SFR-4 and SFR-13: every route is a networkx shortest path, before and after each change."""
    pce = PathComputer(case.topology)
    policies = {fqdn: RoutingPolicy(fqdn, metric=metric) for fqdn in ("a.example", "b.example")}
    before = snapshot(pce, case, policies)
    for change in (None, *case.changes):
        if change is not None:
            affected = pce.apply(change)
            after = snapshot(pce, case, policies)
            for sr in set(after) - affected:  # untouched SRs keep exactly their tables
                assert after[sr] == before[sr], (change, sr)
            before = after
        topology = pce.topology
        graph = oracle_graph(topology, metric)
        for sr in pce.service_routers:
            dist = nx.single_source_dijkstra_path_length(graph, sr, weight="w")
            for fqdn, eps in by_fqdn(case.endpoints).items():
                check_routes(before[sr][fqdn], sr, eps, topology, graph, dist=dist)


@SETTINGS
@given(case=cases(), share=st.sampled_from([0.0, 0.25, 1.0]))
def test_incremental_equals_from_scratch(case: Case, share: float) -> None:
    """After a sequence of changes, the same routes as a PCE built on the final topology.

    `share` moves the point where a failed link's subtree is recomputed whole instead of
    repaired (0: always whole, 1: always repaired).
    """
    pce = PathComputer(case.topology)
    pce._default.repair_share = share  # the default tree set only; the others keep 0.25
    policies = {
        "a.example": RoutingPolicy("a.example", metric=Metric.COST),
        "b.example": RoutingPolicy("b.example", metric=Metric.HOPS, exclude_link_classes=("core",)),
    }
    default = {"a.example": RoutingPolicy("a.example"), "b.example": RoutingPolicy("b.example")}
    pce.tables(case.endpoints, policies)  # the filtered tree sets are in use through the changes
    for change in case.changes:
        pce.apply(change)
    scratch = PathComputer(pce.topology)
    for chosen in (policies, default):
        ours, theirs = snapshot(pce, case, chosen), snapshot(scratch, case, chosen)
        assert set(ours) == set(theirs)
        for sr in ours:
            assert set(ours[sr]) == set(theirs[sr])
            for fqdn in ours[sr]:
                a = [(r.endpoint.sfe, r.cost) for r in ours[sr][fqdn]]
                b = [(r.endpoint.sfe, r.cost) for r in theirs[sr][fqdn]]
                if chosen is default:  # ranked by (latency, id): the same list, paths may tie
                    assert a == b
                else:  # equal costs may come with other latencies (another equally short path)
                    assert sorted(a, key=lambda x: (x[1], x[0])) == sorted(
                        b, key=lambda x: (x[1], x[0])
                    )


@SETTINGS
@given(case=cases(max_nodes=30), data=st.data(), metric=st.sampled_from(METRICS))
def test_node_changes_report_every_sr_whose_table_changes(
    case: Case, data: st.DataObject, metric: Metric
) -> None:
    """SFR-13: removing a node and adding it back with its links rebuilds the graph and the
    trees (rooted at the egresses, the SRs with a cluster); every SR whose table differs is
    reported, and the tables equal those of a PCE built from scratch."""
    pce = PathComputer(case.topology)
    policies = {"a.example": RoutingPolicy("a.example", metric=metric)}
    node = pce.topology.nodes[data.draw(st.sampled_from(sorted(case.topology.nodes)))]
    links = tuple(k for k in case.topology.links if node.id in (k.a, k.b))
    before = snapshot(pce, case, policies)
    for change in (RemoveNode(node.id), AddNode(node, links)):
        affected = pce.apply(change)
        after = snapshot(pce, case, policies)
        for sr in set(after) & set(before) - affected:
            assert after[sr] == before[sr], (change, sr)
        scratch = snapshot(PathComputer(pce.topology), case, policies)
        assert set(scratch) == set(after)
        for sr, table in after.items():
            for fqdn, routes in table.items():
                want = sorted((r.endpoint.sfe, r.cost) for r in scratch[sr][fqdn])
                assert sorted((r.endpoint.sfe, r.cost) for r in routes) == want, (change, sr)
        before = after


@SETTINGS
@given(
    case=cases(max_nodes=40),
    exclude=st.lists(st.sampled_from(["metro", "core", "satellite"]), max_size=2, unique=True),
    radius=st.one_of(st.none(), st.floats(50.0, 300.0)),
    paths_in_area=st.booleans(),
    max_latency=st.one_of(st.none(), st.floats(0.0, 100.0)),
    prefer=st.lists(st.sampled_from(["cl-0", "cl-1", "cl-2"]), max_size=2, unique=True),
    avoid=st.lists(st.sampled_from(["cl-1", "cl-3"]), max_size=1),
    prefer_at=st.lists(st.sampled_from(sorted(LOCATIONS)), max_size=1),
)
def test_policies_against_the_oracle(
    case: Case,
    exclude: list[str],
    radius: float | None,
    paths_in_area: bool,
    max_latency: float | None,
    prefer: list[str],
    avoid: list[str],
    prefer_at: list[str],
) -> None:
    """SFR-5/6: area (endpoints, and paths if asked), excluded classes, limits, preferences."""
    pce = PathComputer(case.topology)
    for change in case.changes[:3]:
        pce.apply(change)
    topology = pce.topology
    area = Area(centre=GeoPoint(51.5, -1.5), radius_km=radius) if radius is not None else None
    policy = RoutingPolicy(
        "a.example",
        area=area,
        paths_in_area=paths_in_area and area is not None,
        exclude_link_classes=tuple(exclude),
        max_latency_ms=max_latency,
        prefer_clusters=tuple(prefer),
        avoid_clusters=tuple(avoid),
        prefer_locations=tuple(prefer_at),
    )
    inside = {
        k
        for k, node in topology.nodes.items()
        if area is None or (node.location is not None and area.contains(node.location))
    }
    allowed = None
    if policy.paths_in_area:
        allowed = {k for k, node in topology.nodes.items() if node.location is None or k in inside}
    graph = oracle_graph(topology, Metric.LATENCY, exclude, allowed)
    clusters = {k for k, node in topology.nodes.items() if node.kind is NodeKind.CLUSTER}
    for sr in pce.service_routers:
        routes = pce.routes(sr, case.endpoints, policy)
        dist = (
            nx.single_source_dijkstra_path_length(graph, sr, weight="w")
            if allowed is None or sr in allowed
            else {}
        )
        expected = []
        for e in case.endpoints:
            node = topology.nodes[e.cluster]
            d = dist.get(node.sr or "")
            if d is None or e.cluster not in inside & clusters:
                continue
            if max_latency is not None and round(d, 9) > max_latency:
                continue
            if e.cluster in prefer:
                rank = prefer.index(e.cluster)
            elif node.location_name in prefer_at:
                rank = len(prefer)
            else:
                rank = len(prefer) + len(prefer_at) + (e.cluster in avoid)
            expected.append((rank, round(d, 9), e.sfe))
        expected.sort()
        got = [(r.endpoint.sfe, r.cost) for r in routes]
        assert [sfe for _, _, sfe in expected] == [sfe for sfe, _ in got], (sr, expected, got)
        assert all(abs(c - d) <= TOLERANCE for (_, d, _), (_, c) in zip(expected, got, strict=True))


# -- a large topology (SFR-8) -----------------------------------------------------------------


def large_topology(seed: int, routers: int = 2000, links: int = 10_500) -> Topology:
    """Random geometric-ish graph: a ring of chords plus random links, 1 SR in 6 routers."""
    rng = random.Random(seed)
    nodes = {
        f"r{i}": Node(f"r{i}", NodeKind.SERVICE_ROUTER if i % 6 == 0 else NodeKind.SWITCH)
        for i in range(routers)
    }
    pairs = {(i, (i + 1) % routers) for i in range(routers)}
    while len(pairs) < links:
        a, b = rng.sample(range(routers), 2)
        pairs.add((a, b))
    for k in range(200):
        nodes[f"cl-{k}"] = Node(
            f"cl-{k}", NodeKind.CLUSTER, sr=f"r{6 * rng.randrange(routers // 6)}"
        )
    return Topology(
        "large",
        "<generated>",
        nodes,
        tuple(
            Link(f"r{a}", f"r{b}", latency_ms=round(rng.uniform(0.1, 20.0), 3))
            for a, b in sorted(pairs)
        ),
    )


def test_large_topology_against_networkx_through_failures() -> None:
    topology = large_topology(7)
    assert len(topology.links) >= 10_000
    rng = random.Random(7)
    endpoints = tuple(
        Endpoint(f"e{j}", f"svc-{j % 40}.example", f"cl-{rng.randrange(200)}", "127.0.0.1", 80)
        for j in range(300)
    )
    pce = PathComputer(topology)
    links = list(topology.links)
    sample = rng.sample(list(pce.service_routers), 12)
    for step in range(4):
        tables = pce.tables(endpoints, {})
        current = pce.topology
        graph = oracle_graph(current, Metric.LATENCY)
        for sr in sample:
            dist = nx.single_source_dijkstra_path_length(graph, sr, weight="w")
            for fqdn, eps in by_fqdn(endpoints).items():
                check_routes(tables[sr][fqdn], sr, eps, current, graph, dist=dist)
        if step < 3:
            link = rng.choice(links)
            affected = pce.apply(LinkState(link.a, link.b, up=False))
            later = pce.tables(endpoints, {})
            untouched = sorted(set(later) - affected)
            for sr in rng.sample(untouched, min(10, len(untouched))):
                assert dict(later[sr]) == dict(tables[sr])
    scratch = PathComputer(pce.topology).tables(endpoints, {})
    final = pce.tables(endpoints, {})
    for sr in rng.sample(sorted(final), 40):
        for fqdn in final[sr]:
            ours = [(r.endpoint.sfe, r.cost) for r in final[sr][fqdn]]
            assert ours == [(r.endpoint.sfe, r.cost) for r in scratch[sr][fqdn]]
