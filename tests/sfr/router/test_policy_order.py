"""Issue 14 (SFR-6): the SR's route order is the PCE's.

Tables are computed by the real PCE on the sandpit topology for sr-ue-1 (edge-bristol is at
sr-ue-1, 0 ms; edge-bath 6 ms; metro-london 13 ms), with and without a routing policy, and
served by a real SR to real endpoints. With `prefer_clusters: [metro-london]` (or
`avoid_clusters: [edge-bristol]`) the PCE ranks another cluster first although edge-bristol
is nearer; the SR must send the requests there, not re-sort by cost. Without a policy the
nearest serves, as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flame.sfr.models import Endpoint, ForwardingTable, RoutingPolicy
from flame.sfr.pce import PathComputer
from flame.topology.loader import load_topology

from .helpers import Client

pytestmark = pytest.mark.asyncio

SANDPIT = Path(__file__).resolve().parents[3] / "examples" / "topology" / "sandpit.yaml"
FQDN = "vod.example.org"
SR = "sr-ue-1"


@pytest.mark.parametrize(
    ("policy", "served", "second"),
    [
        pytest.param(None, "e-bristol", "e-bath", id="no-policy-nearest-first"),
        pytest.param(
            RoutingPolicy(FQDN, prefer_clusters=("metro-london",)),
            "e-london",
            "e-bristol",
            id="prefer-clusters",
        ),
        pytest.param(
            RoutingPolicy(FQDN, avoid_clusters=("edge-bristol",)),
            "e-bath",
            "e-london",
            id="avoid-clusters",
        ),
    ],
)
async def test_requests_follow_the_pce_ranking(
    upstreams, make_router, policy: RoutingPolicy | None, served: str, second: str
) -> None:
    ups = {name: await upstreams(name) for name in ("e-bristol", "e-bath", "e-london")}
    clusters = {"e-bristol": "edge-bristol", "e-bath": "edge-bath", "e-london": "metro-london"}
    endpoints = [
        Endpoint(name, FQDN, clusters[name], "127.0.0.1", up.port) for name, up in ups.items()
    ]
    routes = PathComputer(load_topology(SANDPIT)).routes(SR, endpoints, policy)
    assert routes[0].endpoint.sfe == served  # the PCE's ranking
    router = await make_router(ForwardingTable(sr=SR, version=1, routes={FQDN: routes}), sr_id=SR)
    c = await Client.connect(router.port)
    try:
        answered = [(await c.get(f"/seg/{i}", host=FQDN)).json()["upstream"] for i in range(20)]
        # The first choice down (ejected): the PCE's second serves, not the cheapest left.
        await ups[served].close()
        after = [(await c.get(f"/after/{i}", host=FQDN)).json()["upstream"] for i in range(5)]
    finally:
        await c.close()
    assert answered == [served] * 20
    assert after == [second] * 5
    assert router.stats()["routes"][FQDN][0][0]["sfe"] == served
