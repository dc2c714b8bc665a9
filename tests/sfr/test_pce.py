"""Path computation on the sandpit topology: shortest paths (SFR-4), geo-constrained routing
(SFR-5), policy routing (SFR-6), link failure and topology changes (SFR-13), errors.

Sandpit latencies (ms)::

    sr-ue-1 -1- sw-west -4- sw-east -1- sr-ue-2        (sw-west—sw-east: class metro)
                   \\12       /10                      (both: class core)
                    sr-metro -1- sr-platform

edge-bristol is at sr-ue-1, edge-bath at sr-ue-2, metro-london at sr-metro.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from flame.common.errors import UserError
from flame.sfr.graph import TopologyError
from flame.sfr.models import (
    AddNode,
    Endpoint,
    ForwardingTable,
    LinkCost,
    LinkLatency,
    LinkState,
    Metric,
    RemoveNode,
    Route,
    RoutingPolicy,
)
from flame.sfr.pce import PathComputer, PolicyError, RouteTable
from flame.topology.geo import Area, GeoPoint
from flame.topology.loader import load_topology
from flame.topology.model import Link, Node, NodeKind, Topology
from flame.topology.model import LinkState as Status

SANDPIT = Path(__file__).resolve().parents[2] / "examples" / "topology" / "sandpit.yaml"
FQDN = "vod.example.org"
ALL_SRS = frozenset({"sr-ue-1", "sr-ue-2", "sr-metro", "sr-platform"})


def ep(sfe: str, cluster: str, fqdn: str = FQDN) -> Endpoint:
    return Endpoint(sfe, fqdn, cluster, "127.0.0.1", 8080)


BRISTOL, BATH, LONDON = (
    ep("e-bristol", "edge-bristol"),
    ep("e-bath", "edge-bath"),
    ep("e-london", "metro-london"),
)
ENDPOINTS = (BRISTOL, BATH, LONDON)


@pytest.fixture(scope="module")
def sandpit() -> Topology:
    return load_topology(SANDPIT)


@pytest.fixture
def pce(sandpit: Topology) -> PathComputer:
    return PathComputer(sandpit)


def summary(routes: tuple[Route, ...]) -> list[tuple[str, float, tuple[str, ...]]]:
    return [(r.endpoint.sfe, r.cost, r.path) for r in routes]


# -- SFR-4: shortest path by latency ----------------------------------------------------------


def test_routes_from_sr_ue_1_ranked_by_latency(pce: PathComputer) -> None:
    routes = pce.routes("sr-ue-1", ENDPOINTS)
    assert summary(routes) == [
        ("e-bristol", 0.0, ("sr-ue-1",)),
        ("e-bath", 6.0, ("sr-ue-1", "sw-west", "sw-east", "sr-ue-2")),
        ("e-london", 13.0, ("sr-ue-1", "sw-west", "sr-metro")),
    ]
    assert [r.egress_sr for r in routes] == ["sr-ue-1", "sr-ue-2", "sr-metro"]
    assert [r.latency_ms for r in routes] == [0.0, 6.0, 13.0]


def test_user_equipment_enters_at_its_sr(pce: PathComputer) -> None:
    assert pce.ingress("ue-bath") == "sr-ue-2"
    assert pce.ingress("sr-metro") == "sr-metro"
    assert pce.routes("ue-bath", ENDPOINTS) == pce.routes("sr-ue-2", ENDPOINTS)


def test_endpoints_on_unknown_clusters_are_not_routable(pce: PathComputer) -> None:
    routes = pce.routes("sr-ue-1", (*ENDPOINTS, ep("ghost", "edge-nowhere"), ep("sw", "sw-west")))
    assert [r.endpoint.sfe for r in routes] == ["e-bristol", "e-bath", "e-london"]


def test_ties_are_broken_by_endpoint_id_whatever_the_input_order(pce: PathComputer) -> None:
    twins = (ep("b-2", "edge-bath"), ep("b-1", "edge-bath"), ep("a-9", "edge-bristol"))
    routes = pce.routes("sr-metro", twins)
    assert [(r.endpoint.sfe, r.cost) for r in routes] == [
        ("b-1", 11.0),
        ("b-2", 11.0),
        ("a-9", 13.0),
    ]
    assert pce.routes("sr-metro", twins[::-1]) == routes


def test_no_endpoints_no_routes(pce: PathComputer) -> None:
    assert pce.routes("sr-ue-1", ()) == ()


# -- SFR-4: other metrics ---------------------------------------------------------------------


def test_hops_metric_counts_links_and_reports_latency(pce: PathComputer) -> None:
    routes = pce.routes("sr-ue-2", ENDPOINTS, RoutingPolicy(FQDN, metric=Metric.HOPS))
    assert [(r.endpoint.sfe, r.cost, r.latency_ms) for r in routes] == [
        ("e-bath", 0.0, 0.0),
        ("e-london", 2.0, 11.0),  # 2 links, although 11 ms > 6 ms to Bristol (3 links)
        ("e-bristol", 3.0, 6.0),
    ]


def test_cost_metric_uses_link_cost_or_latency(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, metric=Metric.COST)
    assert [r.cost for r in pce.routes("sr-ue-1", (LONDON,), policy)] == [13.0]  # no costs: latency
    affected = pce.apply(LinkCost("sw-east", "sr-metro", 1.0))
    # Only the cost tree rooted at London's egress (sr-metro) changes: the latency trees ignore
    # costs. sr-ue-1 and sr-ue-2 now reach sr-metro through sw-east.
    assert affected == {"sr-ue-1", "sr-ue-2"}
    (route,) = pce.routes("sr-ue-1", (LONDON,), policy)
    assert route.cost == 6.0  # 1 + 4 + cost 1, beats 1 + 12
    assert route.latency_ms == 15.0
    assert route.path == ("sr-ue-1", "sw-west", "sw-east", "sr-metro")
    # back to no cost: the link counts its latency again
    assert "sr-ue-1" in pce.apply(LinkCost("sw-east", "sr-metro", None))
    assert pce.routes("sr-ue-1", (LONDON,), policy)[0].cost == 13.0


def test_cost_change_with_no_cost_trees_in_use_touches_nothing(pce: PathComputer) -> None:
    assert pce.apply(LinkCost("sw-west", "sw-east", 50.0)) == frozenset()


# -- SFR-5: geo-constrained routing -----------------------------------------------------------


BATH_POINT = GeoPoint(51.3811, -2.3590)


def test_area_circle_keeps_only_endpoints_inside(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, area=Area(centre=BATH_POINT, radius_km=10))
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-1", ENDPOINTS, policy)] == ["e-bath"]


def test_area_polygon(pce: PathComputer) -> None:
    london_box = (
        GeoPoint(51.3, -0.5),
        GeoPoint(51.7, -0.5),
        GeoPoint(51.7, 0.3),
        GeoPoint(51.3, 0.3),
    )
    policy = RoutingPolicy(FQDN, area=Area(polygon=london_box))
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-1", ENDPOINTS, policy)] == ["e-london"]


def test_area_named_location_matches_by_name_or_radius(pce: PathComputer) -> None:
    by_name = RoutingPolicy(FQDN, area=Area(location="london"))
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-2", ENDPOINTS, by_name)] == ["e-london"]
    around = RoutingPolicy(FQDN, area=Area(location="bristol-centre", radius_km=5))
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-2", ENDPOINTS, around)] == ["e-bristol"]


def test_paths_in_area_keep_every_path_node_inside(pce: PathComputer) -> None:
    west = Area(centre=GeoPoint(51.45, -2.59), radius_km=40)  # Bristol and Bath, not London
    pce.apply(LinkState("sw-west", "sw-east", up=False))
    anywhere = RoutingPolicy(FQDN, area=west)
    (detour,) = pce.routes("sr-ue-1", (BATH,), anywhere)
    assert detour.path == ("sr-ue-1", "sw-west", "sr-metro", "sw-east", "sr-ue-2")  # via London
    inside = RoutingPolicy(FQDN, area=west, paths_in_area=True)
    assert pce.routes("sr-ue-1", ENDPOINTS, inside) == (
        pce.routes("sr-ue-1", (BRISTOL,), inside)
    )  # Bath only via London: not routable inside the area
    affected = pce.apply(LinkState("sw-west", "sw-east", up=True))
    assert "sr-ue-1" in affected
    (direct,) = pce.routes("sr-ue-1", (BATH,), inside)
    assert direct.path == ("sr-ue-1", "sw-west", "sw-east", "sr-ue-2")


def test_paths_in_area_from_an_sr_outside_the_area_route_nothing(pce: PathComputer) -> None:
    west = Area(centre=GeoPoint(51.45, -2.59), radius_km=40)
    assert (
        pce.routes("sr-metro", ENDPOINTS, RoutingPolicy(FQDN, area=west, paths_in_area=True)) == ()
    )


# -- SFR-6: policy routing --------------------------------------------------------------------


def sfes(pce: PathComputer, policy: RoutingPolicy, sr: str = "sr-ue-1") -> list[str]:
    return [r.endpoint.sfe for r in pce.routes(sr, ENDPOINTS, policy)]


def test_exclude_link_classes_routes_around_them(pce: PathComputer) -> None:
    (route,) = pce.routes("sr-ue-1", (BATH,), RoutingPolicy(FQDN, exclude_link_classes=("metro",)))
    assert route.path == ("sr-ue-1", "sw-west", "sr-metro", "sw-east", "sr-ue-2")
    assert route.cost == 24.0
    no_core = RoutingPolicy(FQDN, exclude_link_classes=("core", "no-such-class"))
    assert sfes(pce, no_core) == ["e-bristol", "e-bath"]  # London only over core links


def test_exclude_clusters(pce: PathComputer) -> None:
    assert sfes(pce, RoutingPolicy(FQDN, exclude_clusters=("edge-bristol",))) == [
        "e-bath",
        "e-london",
    ]


def test_max_latency_drops_slower_routes(pce: PathComputer) -> None:
    assert sfes(pce, RoutingPolicy(FQDN, max_latency_ms=6.0)) == ["e-bristol", "e-bath"]
    assert sfes(pce, RoutingPolicy(FQDN, max_latency_ms=5.9)) == ["e-bristol"]


def test_prefer_clusters_in_order_before_all_others(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, prefer_clusters=("metro-london", "edge-bath"))
    assert sfes(pce, policy) == ["e-london", "e-bath", "e-bristol"]


def test_prefer_locations_after_preferred_clusters(pce: PathComputer) -> None:
    assert sfes(pce, RoutingPolicy(FQDN, prefer_locations=("london",))) == [
        "e-london",
        "e-bristol",
        "e-bath",
    ]
    both = RoutingPolicy(FQDN, prefer_clusters=("edge-bath",), prefer_locations=("london",))
    assert sfes(pce, both) == ["e-bath", "e-london", "e-bristol"]


def test_avoided_clusters_and_locations_rank_last(pce: PathComputer) -> None:
    assert sfes(pce, RoutingPolicy(FQDN, avoid_clusters=("edge-bristol",))) == [
        "e-bath",
        "e-london",
        "e-bristol",
    ]
    assert sfes(pce, RoutingPolicy(FQDN, avoid_locations=("bath",))) == [
        "e-bristol",
        "e-london",
        "e-bath",
    ]


def test_preferred_but_unroutable_is_still_omitted(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, prefer_clusters=("metro-london",), max_latency_ms=10)
    assert sfes(pce, policy) == ["e-bristol", "e-bath"]


def test_check_policy_names_unknown_things_with_a_hint(pce: PathComputer) -> None:
    pce.check_policy(
        RoutingPolicy(
            FQDN,
            prefer_clusters=("edge-bath",),
            avoid_locations=("london",),
            exclude_link_classes=("core",),
            area=Area(location="bath"),
        )
    )
    with pytest.raises(
        PolicyError, match=r"unknown cluster 'edge-bristl' \(did you mean 'edge-bristol'\?\)"
    ):
        pce.check_policy(RoutingPolicy(FQDN, avoid_clusters=("edge-bristl",)))
    with pytest.raises(PolicyError, match="unknown location 'paris'; known: bath, bristol-centre"):
        pce.check_policy(RoutingPolicy(FQDN, prefer_locations=("paris",)))
    with pytest.raises(PolicyError, match="unknown link class 'satelite'"):
        pce.check_policy(RoutingPolicy(FQDN, exclude_link_classes=("satelite",)))
    with pytest.raises(PolicyError) as info:
        pce.check_policy(RoutingPolicy(FQDN, area=Area(location="londn")))
    assert isinstance(info.value, UserError)
    assert info.value.as_dict()["error"] == "policy_error"
    assert info.value.as_dict()["name"] == "londn"


# -- tables -----------------------------------------------------------------------------------


def test_tables_for_every_sr_and_fqdn(pce: PathComputer) -> None:
    live = ep("live-1", "metro-london", "live.example.org")
    policies = {
        "live.example.org": RoutingPolicy("live.example.org", max_latency_ms=5),
        "idle.example.org": RoutingPolicy("idle.example.org"),
    }
    tables = pce.tables((*ENDPOINTS, live), policies)
    assert set(tables) == ALL_SRS
    for sr, table in tables.items():
        assert isinstance(table, RouteTable)
        assert table.sr == sr
        assert set(table) == {FQDN, "live.example.org", "idle.example.org"}
        assert len(table) == 3
        assert table[FQDN] == pce.routes(sr, ENDPOINTS)
        assert table["idle.example.org"] == ()  # known FQDN, nothing connected: 503, not 502
    assert [r.endpoint.sfe for r in tables["sr-platform"]["live.example.org"]] == ["live-1"]
    assert tables["sr-ue-1"]["live.example.org"] == ()  # 13 ms > 5 ms
    assert "nope" not in tables["sr-ue-1"]
    with pytest.raises(KeyError):
        tables["sr-ue-1"]["nope"]


def test_tables_fit_forwarding_tables(pce: PathComputer) -> None:
    table = pce.tables(ENDPOINTS, {})["sr-ue-2"]
    forwarding = ForwardingTable("sr-ue-2", 1, table)
    again = ForwardingTable.from_dict(forwarding.to_dict())
    assert again.routes == dict(table)


def test_routes_carry_the_egress_sr_address(pce: PathComputer) -> None:
    """SFR-10: each route names its egress SR's data-plane address (the topology node's)."""
    expected = {"e-bristol": "127.0.1.1", "e-bath": "127.0.1.2", "e-london": "127.0.1.3"}
    routes = pce.routes("sr-ue-1", ENDPOINTS)
    assert {r.endpoint.sfe: (r.egress_sr, r.egress_address) for r in routes} == {
        "e-bristol": ("sr-ue-1", "127.0.1.1"),
        "e-bath": ("sr-ue-2", "127.0.1.2"),
        "e-london": ("sr-metro", "127.0.1.3"),
    }
    for sr, table in pce.tables(ENDPOINTS, {}).items():
        assert {r.endpoint.sfe: r.egress_address for r in table[FQDN]} == expected, sr
    # An SR without an address in the topology: its routes say so (the ingress goes direct).
    pce.apply(AddNode(Node("sr-new", NodeKind.SERVICE_ROUTER), (Link("sr-new", "sw-east"),)))
    pce.apply(AddNode(Node("edge-new", NodeKind.CLUSTER, sr="sr-new")))
    (new,) = pce.routes("sr-ue-2", (ep("e-new", "edge-new"),))
    assert (new.egress_sr, new.egress_address) == ("sr-new", None)


def test_route_round_trip_with_and_without_egress_address() -> None:
    """SFR-10: `egress_address` crosses to the SRs; a table from before it loads as None."""
    route = Route(BATH, "sr-ue-2", 6.0, 6.0, ("sr-ue-1", "sr-ue-2"), "127.0.1.2")
    data = route.to_dict()
    assert data["egress_address"] == "127.0.1.2"
    assert Route.from_dict(data) == route
    old = {k: v for k, v in data.items() if k != "egress_address"}
    assert Route.from_dict(old) == replace(route, egress_address=None)
    assert Route.from_dict({**data, "egress_address": None}).egress_address is None
    table = ForwardingTable("sr-ue-1", 3, {FQDN: (route, replace(route, egress_address=None))})
    assert ForwardingTable.from_dict(table.to_dict()) == table


def test_tables_for_some_srs(pce: PathComputer) -> None:
    tables = pce.tables(ENDPOINTS, {}, srs=["sr-metro"])
    assert list(tables) == ["sr-metro"]
    assert pce.tables(ENDPOINTS, {}, srs=[]) == {}


def test_tables_are_snapshots_unaffected_by_later_changes(pce: PathComputer) -> None:
    before = pce.tables(ENDPOINTS, {})
    pce.apply(LinkState("sw-west", "sr-metro", up=False))
    after = pce.tables(ENDPOINTS, {})
    assert before["sr-ue-1"][FQDN][2].path == ("sr-ue-1", "sw-west", "sr-metro")
    assert after["sr-ue-1"][FQDN][2].path == ("sr-ue-1", "sw-west", "sw-east", "sr-metro")


# -- SFR-13: link failure and changes ---------------------------------------------------------


def test_link_down_reroutes_via_sw_east_and_reports_the_trees_it_touched(pce: PathComputer) -> None:
    affected = pce.apply(LinkState("sw-west", "sr-metro", up=False))
    # sr-ue-2 reaches everything through sw-east: the change is outside its tree
    assert affected == {"sr-ue-1", "sr-metro", "sr-platform"}
    (route,) = pce.routes("sr-ue-1", (LONDON,))
    assert route.path == ("sr-ue-1", "sw-west", "sw-east", "sr-metro")
    assert route.cost == 15.0
    assert pce.routes("sr-ue-2", ENDPOINTS) == PathComputer(pce.topology).routes(
        "sr-ue-2", ENDPOINTS
    )
    assert pce.apply(LinkState("sw-west", "sr-metro", up=False)) == frozenset()  # already down
    assert pce.apply(LinkState("sr-metro", "sw-west", up=True)) == affected  # either order
    assert pce.routes("sr-ue-1", (LONDON,))[0].path == ("sr-ue-1", "sw-west", "sr-metro")


def test_only_recomputed_srs_change(pce: PathComputer) -> None:
    before = pce.tables(ENDPOINTS, {})
    affected = pce.apply(LinkState("sw-west", "sr-metro", up=False))
    after = pce.tables(ENDPOINTS, {}, srs=affected)
    full = pce.tables(ENDPOINTS, {})
    for sr in ALL_SRS - affected:
        assert dict(full[sr]) == dict(before[sr])
    for sr in affected:
        assert dict(after[sr]) == dict(full[sr])


def test_link_failure_that_partitions_the_graph(pce: PathComputer) -> None:
    affected = pce.apply(LinkState("sr-metro", "sr-platform", up=False))
    # Trees are rooted at egresses (SRs with a cluster) and sr-platform has none: only its own
    # paths crossed the link; nobody else's routes change.
    assert affected == {"sr-platform"}
    assert [r.endpoint.sfe for r in pce.routes("sr-platform", ENDPOINTS)] == []
    assert pce.tables(ENDPOINTS, {})["sr-platform"][FQDN] == ()


def test_latency_changes(pce: PathComputer) -> None:
    assert pce.apply(LinkLatency("sw-west", "sw-east", 3.0)) == {"sr-ue-1", "sr-ue-2"}
    assert pce.routes("sr-ue-1", (BATH,))[0].cost == 5.0
    assert pce.apply(LinkLatency("sr-metro", "sr-platform", 2.0)) == {"sr-platform"}  # no egress
    assert pce.routes("sr-platform", (LONDON,))[0].cost == 2.0
    # raising a link no tree uses changes nothing
    assert pce.apply(LinkLatency("sw-west", "sr-metro", 50.0)) == {
        "sr-ue-1",
        "sr-metro",
        "sr-platform",
    }
    assert pce.apply(LinkLatency("sw-west", "sr-metro", 60.0)) == frozenset()


def test_topology_reflects_changes(pce: PathComputer) -> None:
    pce.apply(LinkState("sw-west", "sr-metro", up=False))
    pce.apply(LinkLatency("sw-west", "sw-east", 7.5))
    pce.apply(LinkCost("sr-metro", "sr-platform", 3.0))
    links = {(k.a, k.b): k for k in pce.topology.links}
    assert links["sw-west", "sr-metro"].state is Status.DOWN
    assert links["sw-west", "sw-east"].latency_ms == 7.5
    assert links["sw-west", "sw-east"].link_class == "metro"
    assert links["sr-metro", "sr-platform"].cost == 3.0
    assert links["sr-ue-1", "sw-west"].bandwidth_bps == 10e9


# -- node add / remove ------------------------------------------------------------------------


def test_add_and_remove_a_switch_with_a_shortcut(pce: PathComputer) -> None:
    shortcut = AddNode(
        Node("sw-x", NodeKind.SWITCH),
        (Link("sw-x", "sr-ue-1", latency_ms=0.5), Link("sr-metro", "sw-x", latency_ms=0.5)),
    )
    assert pce.apply(shortcut) == ALL_SRS
    (route,) = pce.routes("sr-ue-1", (LONDON,))
    assert (route.cost, route.path) == (1.0, ("sr-ue-1", "sw-x", "sr-metro"))
    assert pce.apply(RemoveNode("sw-x")) == ALL_SRS
    assert pce.routes("sr-ue-1", (LONDON,))[0].path == ("sr-ue-1", "sw-west", "sr-metro")


def test_a_leaf_switch_touches_no_route(pce: PathComputer) -> None:
    leaf = AddNode(Node("sw-leaf", NodeKind.SWITCH), (Link("sw-leaf", "sr-metro"),))
    assert pce.apply(leaf) == frozenset()
    assert pce.apply(RemoveNode("sw-leaf")) == frozenset()


def test_add_an_sr_and_its_cluster(pce: PathComputer) -> None:
    assert pce.apply(AddNode(Node("sr-new", NodeKind.SERVICE_ROUTER))) == {"sr-new"}
    assert "sr-new" in pce.service_routers
    cluster = Node("edge-new", NodeKind.CLUSTER, sr="sr-new")
    assert pce.apply(AddNode(cluster)) == {"sr-new"}  # nobody else reaches sr-new yet
    new = ep("e-new", "edge-new")
    assert summary(pce.routes("sr-new", (*ENDPOINTS, new))) == [("e-new", 0.0, ("sr-new",))]
    assert "e-new" not in [r.endpoint.sfe for r in pce.routes("sr-ue-1", (*ENDPOINTS, new))]
    link = AddNode(
        Node("sw-new", NodeKind.SWITCH), (Link("sw-new", "sr-new", 2), Link("sw-new", "sw-east", 2))
    )
    assert pce.apply(link) == ALL_SRS | {"sr-new"}
    assert pce.routes("sr-ue-2", (new,))[0].path == ("sr-ue-2", "sw-east", "sw-new", "sr-new")


def test_cluster_changes_report_every_sr_reaching_it(pce: PathComputer) -> None:
    assert pce.apply(AddNode(Node("edge-bath-2", NodeKind.CLUSTER, sr="sr-ue-2"))) == ALL_SRS
    assert pce.apply(RemoveNode("edge-bath")) == ALL_SRS
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-1", ENDPOINTS)] == ["e-bristol", "e-london"]


def test_user_equipment_changes_touch_nothing(pce: PathComputer) -> None:
    assert pce.apply(AddNode(Node("ue-2", NodeKind.USER_EQUIPMENT, sr="sr-metro"))) == frozenset()
    assert pce.ingress("ue-2") == "sr-metro"
    assert pce.apply(RemoveNode("ue-2")) == frozenset()


def test_remove_an_sr(pce: PathComputer) -> None:
    affected = pce.apply(RemoveNode("sr-ue-2"))
    assert affected == ALL_SRS - {"sr-ue-2"}
    assert "sr-ue-2" not in pce.service_routers
    assert [r.endpoint.sfe for r in pce.routes("sr-ue-1", ENDPOINTS)] == ["e-bristol", "e-london"]
    with pytest.raises(TopologyError, match="unknown service router 'sr-ue-2'"):
        pce.routes("sr-ue-2", ENDPOINTS)
    with pytest.raises(TopologyError, match="'ue-bath' is a user equipment, not"):
        pce.ingress("ue-bath")  # its SR is gone


def test_filtered_trees_survive_node_changes(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, exclude_link_classes=("metro",), metric=Metric.HOPS)
    before = pce.routes("sr-ue-1", ENDPOINTS, policy)
    shortcut = AddNode(
        Node("sw-x", NodeKind.SWITCH), (Link("sw-x", "sr-ue-1"), Link("sw-x", "sr-ue-2"))
    )
    assert "sr-ue-1" in pce.apply(shortcut)
    (bath,) = pce.routes("sr-ue-1", (BATH,), policy)
    assert bath.path == ("sr-ue-1", "sw-x", "sr-ue-2")
    pce.apply(RemoveNode("sw-x"))
    assert pce.routes("sr-ue-1", ENDPOINTS, policy) == before


def test_removing_the_last_link_of_an_excluded_class(pce: PathComputer) -> None:
    policy = RoutingPolicy(FQDN, exclude_link_classes=("core",))
    assert sfes(pce, policy, "sr-ue-2") == ["e-bath", "e-bristol"]
    assert pce.apply(RemoveNode("sr-metro")) == {"sr-ue-1", "sr-ue-2", "sr-platform"}
    assert sfes(pce, policy, "sr-ue-2") == ["e-bath", "e-bristol"]


# -- errors -----------------------------------------------------------------------------------


def test_unknown_node_in_a_change_names_the_closest(pce: PathComputer) -> None:
    with pytest.raises(
        TopologyError, match=r"unknown node 'sw-wst' \(did you mean 'sw-west'\?\)"
    ) as info:
        pce.apply(LinkState("sw-wst", "sr-metro", up=False))
    assert isinstance(info.value, UserError)
    assert info.value.http_status == 400
    assert info.value.as_dict() == {
        "error": "topology_error",
        "message": info.value.message,
        "node": "sw-wst",
    }


def test_no_link_between_names_the_neighbours(pce: PathComputer) -> None:
    with pytest.raises(
        TopologyError, match="no link between 'sr-ue-1' and 'sr-ue-2'; 'sr-ue-1' links to 'sw-west'"
    ):
        pce.apply(LinkLatency("sr-ue-1", "sr-ue-2", 1.0))


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_latency_or_cost_is_refused_and_changes_nothing(
    pce: PathComputer, value: float
) -> None:
    with pytest.raises(TopologyError, match="must be a finite, non-negative number"):
        pce.apply(LinkLatency("sw-west", "sw-east", value))
    with pytest.raises(TopologyError, match="cost must be"):
        pce.apply(LinkCost("sw-west", "sw-east", value))
    assert pce.routes("sr-ue-1", (BATH,))[0].cost == 6.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Link("sw-west", "sw-wset"), r"unknown node 'sw-wset' \(did you mean 'sw-west'\?\)"),
        (Link("sw-west", "sw-west"), "link sw-west—sw-west connects a node to itself"),
        (Link("sw-west", "sw-east", latency_ms=math.inf), "latency_ms must be a finite"),
        (Link("sw-west", "sw-east", cost=math.nan), "cost must be a finite"),  # NaN is not None
        (Link("sw-west", "sw-east", cost=-1.0), "cost must be a finite"),
    ],
)
def test_bad_links_in_a_topology_are_refused_first_in_link_order(
    sandpit: Topology, bad: Link, message: str
) -> None:
    """SFR-4: the graph checks links with numpy; a bad one still gets its own message."""
    links = (*sandpit.links[:2], bad, *sandpit.links[2:])
    later = Link("sw-east", "sw-nope")  # also bad, but after: the first bad link is reported
    for topology_links in (links, (*links, later)):
        with pytest.raises(TopologyError, match=message):
            PathComputer(replace(sandpit, links=topology_links))


def test_routes_from_a_node_that_is_not_an_ingress(pce: PathComputer) -> None:
    with pytest.raises(
        TopologyError, match="'edge-bath' is a cluster, not a service router or user equipment"
    ):
        pce.routes("edge-bath", ENDPOINTS)
    with pytest.raises(
        TopologyError, match=r"unknown service router 'sr-ue-3' \(did you mean 'sr-ue-[12]'\?\)"
    ):
        pce.routes("sr-ue-3", ENDPOINTS)
    with pytest.raises(TopologyError, match="'ue-bath' is a user equipment, not a service router"):
        pce.tables(ENDPOINTS, {}, srs=["ue-bath"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (AddNode(Node("sw-west", NodeKind.SWITCH)), "node 'sw-west' already exists"),
        (
            AddNode(Node("edge-x", NodeKind.CLUSTER)),
            "cluster 'edge-x' must name its service router",
        ),
        (
            AddNode(Node("edge-x", NodeKind.CLUSTER, sr="sw-east")),
            "'sw-east' is a switch, not a service router",
        ),
        (
            AddNode(Node("ue-x", NodeKind.USER_EQUIPMENT, sr="sr-nope")),
            "unknown service router 'sr-nope'",
        ),
        (
            AddNode(Node("sw-x", NodeKind.SWITCH), (Link("sw-west", "sw-east"),)),
            "link sw-west—sw-east does not connect the new node 'sw-x'",
        ),
        (
            AddNode(Node("sw-x", NodeKind.SWITCH), (Link("sw-x", "sw-eats"),)),
            r"link sw-x—sw-eats: unknown node 'sw-eats' \(did you mean 'sw-east'\?\)",
        ),
        (
            AddNode(Node("sw-x", NodeKind.SWITCH), (Link("sw-x", "sw-x"),)),
            "connects a node to itself",
        ),
        (
            AddNode(Node("sw-x", NodeKind.SWITCH), (Link("sw-x", "sw-east", latency_ms=-2),)),
            "latency_ms must be a finite, non-negative number",
        ),
        (RemoveNode("sr-nope"), "unknown node 'sr-nope'"),
    ],
)
def test_bad_node_changes_are_refused_and_change_nothing(
    pce: PathComputer, change: AddNode | RemoveNode, message: str
) -> None:
    before = pce.tables(ENDPOINTS, {})
    with pytest.raises(TopologyError, match=message):
        pce.apply(change)
    assert pce.service_routers == ("sr-ue-1", "sr-ue-2", "sr-metro", "sr-platform")
    after = pce.tables(ENDPOINTS, {})
    assert {sr: dict(t) for sr, t in after.items()} == {sr: dict(t) for sr, t in before.items()}


def test_not_a_change(pce: PathComputer) -> None:
    with pytest.raises(TypeError, match="not a topology change"):
        pce.apply("link down")  # type: ignore[arg-type]


def test_filtered_tree_sets_beyond_the_cache_size_are_recomputed(sandpit: Topology) -> None:
    small = PathComputer(sandpit, max_filtered_trees=1)
    policies = {
        "a.example": RoutingPolicy("a.example", metric=Metric.HOPS),
        "b.example": RoutingPolicy("b.example", exclude_link_classes=("metro",)),
        "c.example": RoutingPolicy("c.example", metric=Metric.COST),
    }
    endpoints = [ep(f"{f[0]}-{c}", c, f) for f in policies for c in ("edge-bath", "metro-london")]
    want = PathComputer(sandpit).tables(endpoints, policies)
    for _ in range(2):
        small.apply(LinkLatency("sw-west", "sw-east", 4.0))
        got = small.tables(endpoints, policies)
        assert {sr: dict(t) for sr, t in got.items()} == {sr: dict(t) for sr, t in want.items()}


def test_topology_follows_node_changes(pce: PathComputer) -> None:
    pce.apply(AddNode(Node("sw-x", NodeKind.SWITCH), (Link("sw-x", "sr-ue-1", latency_ms=3),)))
    pce.apply(RemoveNode("edge-bath"))
    topology = pce.topology
    assert "sw-x" in topology.nodes
    assert "edge-bath" not in topology.nodes
    assert ("sw-x", "sr-ue-1") in {(k.a, k.b) for k in topology.links}
    assert topology.locations["bath"] == BATH_POINT
    assert PathComputer(topology).routes("sr-ue-1", ENDPOINTS) == pce.routes("sr-ue-1", ENDPOINTS)
