"""FLIPS coincidental multicast honours `Vary` and credentials, end to end over real sockets.

Concurrent GETs for one URL share an upstream fetch only when they would get the same answer:
an origin that varies on Client Hints (`Save-Data`, `Downlink`, as the LOD SF does) gives each
variant to the clients that asked for it, identical requests still make one upstream request,
different `Authorization` values never share, `Vary: *` never shares, and the table of learnt
`Vary` values is bounded. The hypothesis property (test_coalesce_vary_property.py): for any two
header sets sent together, each client gets what it would have got alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from eventually import eventually_async
from flame.sfr.router import Limits, Router
from flame.sfr.router.coalesce import MAX_PATH
from flame.sfr.router.multicast import Coalescer

from .helpers import Client, RawUpstream, UpRequest, Upstream, endpoint, read_head, table
from .test_multicast import two_workers

pytestmark = pytest.mark.asyncio

# What the LOD SF (flame.media.lod) answers: it varies on every Client Hint it reads.
LOD_VARY = "Downlink, ECT, RTT, Save-Data, Device-Memory, Sec-CH-Viewport-Width, Sec-CH-DPR"
FIELDS = ("Save-Data", "Downlink", "Accept-Language")  # what a `Vary: *` answer depends on
FQDN = "lod.example"

Headers = dict[str, str]


def variant(path: str, vary: str, get: Callable[[str], str | None]) -> bytes:
    """The origin's answer: it depends on what it says it varies on, and is personal."""
    names = FIELDS if vary == "*" else [n.strip() for n in vary.split(",") if n.strip()]
    doc = {
        "path": path,
        "fields": {n.lower(): get(n) for n in names},
        "authorization": get("Authorization"),
        "cookie": get("Cookie"),
    }
    return json.dumps(doc, sort_keys=True).encode()


def alone(path: str, vary: str, headers: Headers) -> bytes:
    """What a client sending `headers` gets when it is the only one asking."""
    lower = {k.lower(): v for k, v in headers.items()}
    return variant(path, vary, lambda n: lower.get(n.lower()))


class VaryOrigin:
    """Answers once `gate` is set, with `Vary` per path (`vary_for`)."""

    def __init__(self, vary_for: Callable[[str], str]) -> None:
        self.vary_for = vary_for
        self.gate = asyncio.Event()

    async def handler(self, up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        await self.gate.wait()
        vary = self.vary_for(req.target)
        body = variant(req.target, vary, req.header)
        extra = f"Vary: {vary}\r\n".encode() if vary else b""
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body)
        return True


def coalescer(router: Router) -> Coalescer:
    c = router.context.coalescer
    assert c is not None, "coalescing is on in these tests"
    return c


def waiters(routers: list[Router]) -> int:
    return sum(f.waiters for r in routers for f in list(coalescer(r).inflight.values()))


def fetches(routers: list[Router]) -> int:
    return sum(coalescer(r).fetches for r in routers)


async def until(check: Callable[[], bool]) -> None:
    await eventually_async(check, every=0.005, what="the requests to reach the router")


async def get(port: int, path: str, headers: Headers) -> bytes:
    c = await Client.connect(port)
    try:
        resp = await c.get(path, host=FQDN, headers=headers)
        assert resp.status == 200
        assert resp.complete
        return resp.body
    finally:
        await c.close()


async def together(
    ports: list[int],
    routers: list[Router],
    up: Upstream,
    origin: VaryOrigin,
    path: str,
    sets: list[Headers],
) -> list[bytes]:
    """Send the requests one after the other while the origin holds its answers, each once
    those before are in, then let the origin answer.

    A request is in when it waits on a shared fetch or, sent on its own, reached the origin;
    every shared fetch's own request must have reached the origin too.
    """
    origin.gate.clear()
    seen0, waiting0, fetches0 = len(up.requests), waiters(routers), fetches(routers)

    def settled(n: int) -> bool:
        seen, started = len(up.requests) - seen0, fetches(routers) - fetches0
        return seen >= started and waiters(routers) - waiting0 + seen - started >= n

    tasks = []
    for i, headers in enumerate(sets):
        tasks.append(asyncio.create_task(get(ports[i % len(ports)], path, headers)))
        await until(functools.partial(settled, i + 1))
    origin.gate.set()
    return list(await asyncio.gather(*tasks))


def multicast(r: Router) -> dict[str, Any]:
    stats: dict[str, Any] = r.stats()["multicast"]
    return stats


def lod_table(up: Upstream) -> Any:
    return table(1, {FQDN: [(endpoint("origin", up.port, fqdn=FQDN), 1.0)]})


# -- Client Hints (the LOD SF's case) ------------------------------------------------------------------


async def test_sfr_vary_hints_that_differ_get_their_own_variant(make_router, upstreams) -> None:
    """Nothing learnt yet: the two share a fetch, the first response (Vary: Save-Data,
    Downlink) decides, and the one whose hints differ is fetched again on its own."""
    origin = VaryOrigin(lambda path: "Save-Data, Downlink")
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up))
    a, b = {"Save-Data": "on"}, {"Save-Data": "on", "Downlink": "10"}
    bodies = await together([r.port], [r], up, origin, "/m.glb", [a, b])
    assert bodies == [alone("/m.glb", "Save-Data, Downlink", h) for h in (a, b)]
    assert len(up.requests) == 2
    assert multicast(r)["regrouped"] == 1
    assert multicast(r)["coalesced"] == 0
    assert multicast(r)["vary_learnt"] == 1
    # Learnt: two more that differ in Downlink now go their own ways from the start.
    c, d = {"Downlink": "1.5"}, {"Downlink": "10"}
    bodies = await together([r.port], [r], up, origin, "/m.glb?v=2", [c, d])
    assert bodies == [alone("/m.glb?v=2", "Save-Data, Downlink", h) for h in (c, d)]
    assert len(up.requests) == 4
    assert multicast(r)["regrouped"] == 1  # no shared fetch had to be split this time


async def test_sfr_vary_identical_hints_still_share_one_fetch(make_router, upstreams) -> None:
    origin = VaryOrigin(lambda path: LOD_VARY)
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up))
    hints = {"Save-Data": "on", "Downlink": "1.5", "ECT": "3g"}
    for round_ in (1, 2):  # before anything is learnt, then with the learnt Vary in the key
        bodies = await together([r.port], [r], up, origin, "/m.glb", [hints] * 3)
        assert bodies == [alone("/m.glb", LOD_VARY, hints)] * 3
        assert len(up.requests) == round_  # one upstream request for the three
        assert multicast(r)["coalesced"] == 2 * round_
    assert multicast(r)["regrouped"] == 0


@pytest.mark.parametrize(
    "path", ["/m.glb", "/" + "l" * (MAX_PATH + 10)], ids=["learnt", "path-too-long-to-learn"]
)
async def test_sfr_vary_a_late_joiner_gets_its_own_variant(make_router, path: str) -> None:
    """After the head (Vary: Save-Data) arrived, a request with the leader's value joins the
    fetch in flight (filed under the learnt key, or checked against the leader's request when
    nothing could be learnt); one with another value does not."""
    more = asyncio.Event()
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            seen.append(head)
            save = b"on" if b"save-data: on" in head.lower() else b"off"
            body = save * 20000
            writer.write(
                b"HTTP/1.1 200 OK\r\nVary: Save-Data\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            writer.write(body[:1000])
            await writer.drain()
            if len(seen) == 1:
                await more.wait()
            writer.write(body[1000:])
            await writer.drain()

    up = await RawUpstream(handler).start()
    first = None
    try:
        r = await make_router(table(1, {FQDN: [(endpoint("origin", up.port, fqdn=FQDN), 1.0)]}))
        first = await Client.connect(r.port)
        await first.send(
            b"GET %s HTTP/1.1\r\nHost: lod.example\r\nSave-Data: on\r\n\r\n" % path.encode()
        )
        assert (await read_head(first.reader)).startswith(b"HTTP/1.1 200")
        assert await first.reader.readexactly(1000) == b"on" * 500
        same = asyncio.create_task(get(r.port, path, {"Save-Data": "on"}))
        await until(lambda: waiters([r]) == 2)
        other = await get(r.port, path, {"Save-Data": "off"})
        assert other == b"off" * 20000
        assert len(seen) == 2  # the first fetch, and the other variant's own
        more.set()
        assert await first.reader.readexactly(39000) == b"on" * 19500
        assert await same == b"on" * 20000
        assert multicast(r)["coalesced"] == 1
    finally:
        more.set()
        if first is not None:
            await first.close()
        await up.close()


async def test_sfr_vary_across_workers(upstreams) -> None:
    """A request relayed to the worker whose fetch is in flight is checked there too."""
    origin = VaryOrigin(lambda path: "Save-Data")
    up = await upstreams("origin", origin.handler)
    routers = await two_workers(tempfile.mkdtemp(prefix="sr-"), lod_table(up))
    try:
        a, b = {"Save-Data": "on"}, {"Save-Data": "off"}
        ports = [r.port for r in routers]
        bodies = await together(ports, routers, up, origin, "/m.glb", [a, b])
        assert bodies == [alone("/m.glb", "Save-Data", h) for h in (a, b)]
        assert len(up.requests) == 2
        assert sum(multicast(r)["relayed_to_siblings"] for r in routers) == 1
        assert multicast(routers[0])["regrouped"] == 1  # split where the fetch was
    finally:
        for r in routers:
            await r.shutdown(grace=0.5)


# -- credentials and Vary: * ----------------------------------------------------------------------------


async def test_sfr_vary_authorization_a_and_b_never_share(make_router, upstreams) -> None:
    origin = VaryOrigin(lambda path: "")  # it does not even say that it varies
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up))
    a, b = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
    bodies = await together([r.port], [r], up, origin, "/me", [a, b])
    assert bodies == [alone("/me", "", a), alone("/me", "", b)]
    assert len(up.requests) == 2
    assert multicast(r)["coalesced"] == 0
    c1, c2 = {"Cookie": "session=1"}, {"Cookie": "session=2"}
    bodies = await together([r.port], [r], up, origin, "/me", [c1, c2])
    assert bodies == [alone("/me", "", c1), alone("/me", "", c2)]
    assert len(up.requests) == 4
    # The same credentials twice: the same answer, one upstream request.
    bodies = await together([r.port], [r], up, origin, "/me", [a, a])
    assert bodies == [alone("/me", "", a)] * 2
    assert len(up.requests) == 5
    assert multicast(r)["coalesced"] == 1


async def test_sfr_vary_star_never_shares(make_router, upstreams) -> None:
    origin = VaryOrigin(lambda path: "*")
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up))
    hints = {"Save-Data": "on"}
    bodies = await together([r.port], [r], up, origin, "/x", [hints, hints])
    assert bodies == [alone("/x", "*", hints)] * 2
    assert len(up.requests) == 2  # the second was sent on to fetch its own
    origin.gate.clear()
    tasks = [asyncio.create_task(get(r.port, "/x", hints)) for _ in range(3)]
    await until(lambda: len(up.requests) == 5)  # learnt: each goes upstream at once
    origin.gate.set()
    assert await asyncio.gather(*tasks) == [alone("/x", "*", hints)] * 3
    assert multicast(r)["coalesced"] == 0


async def test_sfr_vary_learnt_table_is_bounded(make_router, upstreams) -> None:
    origin = VaryOrigin(lambda path: "Save-Data")
    origin.gate.set()
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up), limits=Limits(coalesce_vary_resources=4))
    for i in range(12):
        assert await get(r.port, f"/r{i}", {}) == alone(f"/r{i}", "Save-Data", {})
    assert multicast(r)["vary_learnt"] == 4
    assert r.context.coalescer.vary.evicted == 8


async def test_sfr_vary_a_resource_that_stops_varying_is_shared_again(
    make_router, upstreams
) -> None:
    vary = {"now": "Save-Data"}
    origin = VaryOrigin(lambda path: vary["now"])
    origin.gate.set()
    up = await upstreams("origin", origin.handler)
    r = await make_router(lod_table(up))
    on = {"Save-Data": "on"}
    assert await get(r.port, "/m", on) == alone("/m", "Save-Data", on)
    assert multicast(r)["vary_learnt"] == 1
    vary["now"] = ""  # a new release of the SF no longer negotiates
    assert await get(r.port, "/m", {}) == alone("/m", "", {})
    assert multicast(r)["vary_learnt"] == 0
    bodies = await together([r.port], [r], up, origin, "/m", [on, {}])
    assert bodies == [alone("/m", "", {})] * 2
    assert len(up.requests) == 3  # the two shared one fetch
