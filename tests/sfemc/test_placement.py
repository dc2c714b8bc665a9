"""Placement: capacity minus the reserved share, policy areas, and every reason given."""

from __future__ import annotations

from flame.sfemc.placement import Demand, PlacementFailed, PlacementRequest, Placer
from flame.topology.geo import Area, GeoPoint
from flame.topology.model import Node, NodeKind, Resources, Topology

GB = 1_000_000_000


def topology() -> Topology:
    def cluster(name: str, lat: float, lon: float, cpus: float, mem: int, disk: int) -> Node:
        return Node(
            name,
            NodeKind.CLUSTER,
            GeoPoint(lat, lon),
            name,
            "sr-1",
            capacity=Resources(cpus, mem * GB, disk * GB),
        )

    nodes = {
        "edge-bristol": cluster("edge-bristol", 51.45, -2.6, 4, 8, 50),
        "edge-bath": cluster("edge-bath", 51.38, -2.36, 2, 4, 20),
        "metro-london": cluster("metro-london", 51.5, -0.13, 16, 64, 1000),
        "sr-1": Node("sr-1", NodeKind.SERVICE_ROUTER),
    }
    return Topology("t", "t.yaml", nodes)


def test_reserved_share_is_not_offered() -> None:
    placer = Placer(topology())
    # edge-bath: 2 cpus - 1 reserved = 1 usable
    assert placer.usable("edge-bath") == Demand(1.0, 3 * GB, int(18.5 * GB))
    ok = placer.check([PlacementRequest("cache", "edge-bath", Demand(1.0, GB, GB))], {})
    assert ok == []
    problems = placer.check([PlacementRequest("cache", "edge-bath", Demand(1.5, GB, GB))], {})
    assert [str(p) for p in problems] == [
        "cache on edge-bath: capacity exhausted (needs 1.5 cpus, 1 free of 1 usable, after the reserved share)"
    ]


def test_allocations_and_several_requests_add_up() -> None:
    placer = Placer(topology())
    reqs = [PlacementRequest(sf, "edge-bristol", Demand(1.0, 2 * GB, GB)) for sf in ("a", "b")]
    assert placer.check(reqs, {"edge-bristol": Demand(1.0, 0, 0)}) == []
    problems = placer.check(reqs, {"edge-bristol": Demand(2.0, 4 * GB, 0)})
    assert len(problems) == 1
    assert problems[0].sf == "a,b"
    assert "needs 2 cpus, 1 free of 3 usable" in problems[0].reason
    assert "needs 4.00 GB memory, 3.00 GB free of 7.00 GB usable" in problems[0].reason


def test_area_and_unknown_cluster_reasons() -> None:
    placer = Placer(topology())
    area = Area(centre=GeoPoint(51.45, -2.6), radius_km=50)
    problems = placer.check(
        [
            PlacementRequest("cache", "metro-london", Demand(), area),
            PlacementRequest("cache", "edge-bristl", Demand()),
            PlacementRequest("cache", "sr-1", Demand()),
            PlacementRequest("cache", "edge-bath", Demand(), area),
        ],
        {},
    )
    reasons = {p.cluster: p.reason for p in problems}
    assert reasons["metro-london"].startswith(
        "outside the policy's area: 171 km from its centre, radius 50 km"
    )
    assert (
        "no cluster 'edge-bristl' in topology 't' (did you mean 'edge-bristol'?)"
        in reasons["edge-bristl"]
    )
    assert "no cluster 'sr-1'" in reasons["sr-1"]
    assert "edge-bath" not in reasons


def test_candidates_rank_by_free_cpus_and_explain_the_rest() -> None:
    placer = Placer(topology())
    ok, why = placer.candidates(Demand(2.0, GB, GB), None, {"metro-london": Demand(14.0, 0, 0)})
    assert ok == ["edge-bristol"]
    assert set(why) == {"edge-bath", "metro-london"}
    assert "capacity exhausted" in why["metro-london"]


def test_failure_carries_every_problem_as_data() -> None:
    exc = PlacementFailed(
        "vod",
        Placer(topology()).check([PlacementRequest("cache", "edge-bath", Demand(5.0, 0, 0))], {}),
    )
    body = exc.as_dict()
    assert body["error"] == "placement_failed"
    assert exc.http_status == 409
    assert body["problems"] == [
        {"sf": "cache", "cluster": "edge-bath", "reason": exc.problems[0].reason}
    ]
    assert "Nothing was changed" in exc.message
