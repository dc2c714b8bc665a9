"""A connect the network refuses is not an endpoint failure (SFR-1 failover, issue 13).

When a kernel route vanished for a moment (a link went down, the routes had not moved yet), a
new SR->endpoint connection failed with ENETUNREACH and the SR ejected its only endpoint for
1 s: a second of 503s for a 200 ms gap. Here the SR runs in a network namespace whose one route
to the far endpoint the test drops and restores (no route: ENETUNREACH; an `unreachable`
route: EHOSTUNREACH), and nothing is ejected, no hop bypassed, no request fails that the path
came back for.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from eventually import eventually_async
from flame.sfr.models import Endpoint, ForwardingTable, Route
from flame.sfr.router import Router, RouterConfig, StaticTableSource
from flame.sfr.router.config import Timeouts

from .helpers import Client, Upstream, request_bytes
from .nsnet import FAR_IP, NsPair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

FQDN = "vod.example"
A, B = "sr-a", "sr-b"
# The delayed retry, long here so that the test restores the route before it fires (it polls
# every millisecond; a stall of this long between the refusal and the poll would break it).
RETRY_S = 2.0


@pytest.fixture
def ns() -> Any:
    pair = NsPair(str(os.getpid())[-6:]).create()
    try:
        yield pair
    finally:
        pair.close()


def route(e: Endpoint, cost: float, *, egress: str = A, address: str | None = None) -> Route:
    return Route(e, egress_sr=egress, cost=cost, latency_ms=cost, path=(A,), egress_address=address)


def table(sr: str, *routes: Route) -> ForwardingTable:
    return ForwardingTable(sr=sr, version=1, routes={FQDN: routes})


class Scene:
    """What one scenario started (in the near namespace), stopped in reverse order."""

    def __init__(self, ns: NsPair) -> None:
        self.ns = ns
        self.routers: list[Router] = []
        self.upstreams: list[Upstream] = []

    async def far_upstream(self, name: str) -> Upstream:
        sock = self.ns.far_socket()
        up = await Upstream(name).start(sock=sock)
        self.upstreams.append(up)
        return up

    async def near_upstream(self, name: str) -> Upstream:
        up = await Upstream(name).start()
        self.upstreams.append(up)
        return up

    async def router(self, tbl: ForwardingTable, *, sock: Any = None, **settings: Any) -> Router:
        config = RouterConfig(sr_id=tbl.sr, port=0, **settings)
        router = Router(config, source=StaticTableSource(tbl))
        await router.start(sock)
        self.routers.append(router)
        return router

    async def close(self) -> None:
        for router in reversed(self.routers):
            await router.shutdown(grace=0.5)
        for up in self.upstreams:
            await up.close()


def run(ns: NsPair, scenario: Callable[[Scene], Awaitable[None]]) -> None:
    async def main() -> None:
        scene = Scene(ns)
        try:
            await scenario(scene)
        finally:
            await scene.close()

    ns.run_near(main)


async def restore_after_first_refusal(ns: NsPair, router: Router) -> None:
    """Wait (on the router's loop) for its first refused connect, then bring the route back
    before the delayed retry can fire: the loop is blocked while `ip` runs."""
    forwarder = router.context.forwarder
    await eventually_async(
        lambda: forwarder.network_refusals >= 1, every=0.001, what="a refused connect"
    )
    assert forwarder.network_refusals == 1  # the retry has not run yet
    ns.restore_route()


def far_endpoint(up: Upstream) -> Endpoint:
    return Endpoint(sfe=up.name, fqdn=FQDN, cluster="c-far", host=FAR_IP, port=up.port)


@pytest.mark.parametrize("gap", ["none", "unreachable"], ids=["ENETUNREACH", "EHOSTUNREACH"])
def test_a_route_gap_fails_no_request_and_ejects_nothing(ns: NsPair, gap: str) -> None:
    """SFR-1: the only endpoint's route is gone when the SR connects; the SR tries again after
    `timeouts.network_retry` and the request is answered; nothing is ejected."""

    async def scenario(scene: Scene) -> None:
        far = await scene.far_upstream("far")
        r = await scene.router(
            table(A, route(far_endpoint(far), 1.0)), timeouts=Timeouts(network_retry=RETRY_S)
        )
        c = await Client.connect(r.port)
        try:
            ns.drop_route(gap)
            await c.send(request_bytes("GET", "/during-the-gap"))
            await restore_after_first_refusal(ns, r)
            resp = await c.response(timeout=30)
            assert resp.status == 200, resp.body
            assert resp.json()["upstream"] == "far"
            again = await c.get("/after")  # no ejection: served at once
            assert again.status == 200
        finally:
            await c.close()
        status = r.stats()
        assert status["ejections"] == 0
        assert status["ejected"] == {}
        assert status["network_refusals"] == 1
        assert len(far.requests) == 2

    run(ns, scenario)


def test_a_lasting_gap_fails_over_then_uses_the_endpoint_again_at_once(ns: NsPair) -> None:
    """SFR-1: the route stays gone past the retry: the request goes to the next endpoint, and
    the far one, never ejected, takes the first request after the route is back."""

    async def scenario(scene: Scene) -> None:
        far = await scene.far_upstream("far")
        near = await scene.near_upstream("near")
        r = await scene.router(
            table(A, route(far_endpoint(far), 1.0), route(near.endpoint(fqdn=FQDN), 2.0))
        )
        c = await Client.connect(r.port)
        try:
            ns.drop_route()
            resp = await c.get("/gap")
            assert (resp.status, resp.json()["upstream"]) == (200, "near")
            assert r.stats()["network_refusals"] == 2  # the first try and the delayed one
            ns.restore_route()
            assert (await c.get("/back")).json()["upstream"] == "far"
        finally:
            await c.close()
        assert r.stats()["ejections"] == 0

    run(ns, scenario)


def test_no_path_to_the_only_endpoint_is_a_503_naming_the_network(ns: NsPair) -> None:
    """SFR-1: a POST (nothing was sent, so it may be tried again) to an endpoint without a
    route: 503 `upstream_unreachable`, `X-Flame-Not-Forwarded: network`, `Retry-After: 1`; the
    endpoint is not ejected, so the next POST after the route is back is answered."""

    async def scenario(scene: Scene) -> None:
        far = await scene.far_upstream("far")
        r = await scene.router(table(A, route(far_endpoint(far), 1.0)))
        c = await Client.connect(r.port)
        try:
            ns.drop_route()
            await c.send(request_bytes("POST", "/upload", body=b"x" * 100))
            resp = await c.response()
            assert resp.status == 503
            assert resp.json()["error"] == "upstream_unreachable"
            assert resp.header("x-flame-not-forwarded") == "network"
            assert resp.header("retry-after") == "1"
            ns.restore_route()
            await c.send(request_bytes("POST", "/upload", body=b"y" * 100))
            assert (await c.response()).status == 200
        finally:
            await c.close()
        assert len(far.requests) == 1
        assert r.stats()["ejections"] == 0
        assert r.stats()["network_refusals"] == 2

    run(ns, scenario)


def test_a_route_gap_to_the_egress_sr_bypasses_no_hop(ns: NsPair) -> None:
    """SFR-1/SFR-10: the ingress SR's route to the egress SR is gone for a moment: the request
    still goes through the egress SR (no 1 s bypass), and no endpoint is ejected."""

    async def scenario(scene: Scene) -> None:
        e1 = await scene.near_upstream("e1")
        endpoint = e1.endpoint(fqdn=FQDN)
        sock_b = scene.ns.far_socket()  # the egress SR listens at FAR_IP in the far namespace
        b = await scene.router(table(B, route(endpoint, 0.0, egress=B)), sock=sock_b)
        a = await scene.router(
            table(A, route(endpoint, 5.0, egress=B, address=FAR_IP)),
            egress_hop=True,
            egress_port=b.port,
            timeouts=Timeouts(network_retry=RETRY_S),
        )
        c = await Client.connect(a.port)
        try:
            ns.drop_route()
            await c.send(request_bytes("GET", "/movie"))
            await restore_after_first_refusal(ns, a)
            resp = await c.response(timeout=30)
        finally:
            await c.close()
        assert resp.status == 200
        assert resp.header("via") == f"1.1 {B}, 1.1 {A}"  # through the egress SR
        hops = a.stats()["egress_hops"]
        assert (hops["bypassed"], hops["failures"], hops["fallbacks"]) == ({}, 0, 0)
        assert a.stats()["ejections"] == 0

    run(ns, scenario)


def test_an_egress_sr_without_a_path_says_network_and_the_ingress_ejects_nothing(
    ns: NsPair,
) -> None:
    """SFR-1/SFR-10: the egress SR cannot reach its endpoint for want of a route: it answers
    503 `X-Flame-Not-Forwarded: network`, the ingress sends the request to its next endpoint,
    and neither SR ejects the far one, which takes the first request after the route is back."""

    async def scenario(scene: Scene) -> None:
        far = await scene.far_upstream("far")
        near = await scene.near_upstream("near")
        far_ep = far_endpoint(far)
        b = await scene.router(table(B, route(far_ep, 0.0, egress=B)))
        a = await scene.router(
            table(
                A,
                route(far_ep, 1.0, egress=B, address="127.0.0.1"),
                route(near.endpoint(fqdn=FQDN), 2.0),
            ),
            egress_hop=True,
            egress_port=b.port,
        )
        c = await Client.connect(a.port)
        try:
            ns.drop_route()
            resp = await c.get("/gap")
            assert (resp.status, resp.json()["upstream"]) == (200, "near")
            assert b.stats()["network_refusals"] == 2  # the egress SR's try and its retry
            ns.restore_route()
            back = await c.get("/back")
            assert (back.status, back.json()["upstream"]) == (200, "far")
            assert back.header("via") == f"1.1 {B}, 1.1 {A}"
        finally:
            await c.close()
        assert a.stats()["ejections"] == b.stats()["ejections"] == 0
        assert a.stats()["egress_hops"]["failures"] == 0

    run(ns, scenario)
