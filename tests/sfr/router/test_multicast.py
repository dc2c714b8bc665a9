"""FLIPS coincidental multicast end to end: identical concurrent GETs, one upstream fetch.

N clients asking for the same object while it is being fetched get the same bytes from one
upstream request, streamed as they arrive; answers meant for one user are not shared;
requests with credentials are never coalesced; upstream failures reach every waiter.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from .helpers import Client, RawUpstream, endpoint, read_head, request_bytes, table

pytestmark = pytest.mark.asyncio

SIZE = 4 * 1024 * 1024


async def wait_for_waiters(router, n: int) -> None:
    async with asyncio.timeout(10):
        while True:
            fetches = list(router.context.coalescer.inflight.values())
            if sum(f.waiters for f in fetches) >= n:
                return
            await asyncio.sleep(0.01)


def slow_object(go: asyncio.Event, *, headers: bytes = b"", size: int = SIZE, unique: bool = False):
    """An endpoint that answers once `go` is set and sends the body over ~0.4 s."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            seen.append(head)
            await go.wait()
            body_piece = (b"%06d" % len(seen) if unique else b"m") * (65536 // (6 if unique else 1))
            body_piece = body_piece[:65536]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (size, headers))
            sent = 0
            while sent < size:
                piece = body_piece[: size - sent]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
                await asyncio.sleep(0.4 * len(piece) / size)

    return handler, seen


async def fetch_body(
    port: int, path: str = "/obj", headers: dict[str, str] | None = None
) -> tuple[int, bytes, float]:
    loop = asyncio.get_running_loop()
    c = await Client.connect(port)
    try:
        start = loop.time()
        resp = await c.get(path, headers=headers)
        assert resp.complete
        return resp.status, resp.body, start
    finally:
        await c.close()


async def test_fifty_identical_gets_make_one_upstream_fetch(make_router) -> None:
    go = asyncio.Event()
    handler, seen = slow_object(go)
    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]}))
        clients = [asyncio.create_task(fetch_body(r.port)) for _ in range(50)]
        await wait_for_waiters(r, 50)
        go.set()
        results = await asyncio.gather(*clients)
        assert len(seen) == 1  # exactly one upstream request
        digests = {hashlib.sha256(body).hexdigest() for _, body, _ in results}
        assert len(digests) == 1
        assert all(status == 200 and len(body) == SIZE for status, body, _ in results)
        stats = r.stats()
        assert stats["multicast"]["coalesced"] == 49
        assert stats["fqdns"]["vod.example"]["coalesced"] == 49
        assert stats["fqdns"]["vod.example"]["fetches"] == 1
    finally:
        await up.close()


async def test_bytes_stream_to_waiters_as_they_arrive_and_late_joiners_replay(make_router) -> None:
    go = asyncio.Event()
    handler, seen = slow_object(go, size=SIZE)
    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]}))
        first = await Client.connect(r.port)
        await first.send(request_bytes("GET", "/obj"))
        await wait_for_waiters(r, 1)
        go.set()
        head = await read_head(first.reader)
        assert head.startswith(b"HTTP/1.1 200")
        early = await first.reader.readexactly(SIZE // 8)  # before the endpoint has finished
        (fetch,) = r.context.coalescer.inflight.values()
        assert not fetch.finished
        assert fetch.received < SIZE
        late = await fetch_body(r.port)  # joins mid-transfer, gets everything
        rest = await first.reader.readexactly(SIZE - len(early))
        assert late[1] == early + rest
        assert len(seen) == 1
        await first.close()
    finally:
        await up.close()


@pytest.mark.parametrize(
    "marker",
    [b"Cache-Control: private\r\n", b"Cache-Control: no-store\r\n", b"Set-Cookie: s=1\r\n"],
)
async def test_personal_answers_are_not_shared(make_router, marker: bytes) -> None:
    go = asyncio.Event()
    handler, seen = slow_object(go, headers=marker, size=65536 * 2, unique=True)
    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]}))
        clients = [asyncio.create_task(fetch_body(r.port)) for _ in range(5)]
        await wait_for_waiters(r, 5)
        go.set()
        results = await asyncio.gather(*clients)
        assert len(seen) == 5  # the first fetch, then each waiter's own
        assert len({body for _, body, _ in results}) == 5  # nobody got another's answer
    finally:
        await up.close()


async def test_requests_with_credentials_are_never_coalesced(make_router) -> None:
    go = asyncio.Event()
    handler, seen = slow_object(go, size=1000)
    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]}))
        clients = [
            asyncio.create_task(
                fetch_body(
                    r.port,
                    headers={"Cookie": f"user={i}"} if i % 2 else {"Authorization": f"Bearer {i}"},
                )
            )
            for i in range(4)
        ]
        async with asyncio.timeout(5):
            while len(seen) < 4:
                await asyncio.sleep(0.01)
        go.set()
        await asyncio.gather(*clients)
        assert len(seen) == 4
        assert r.stats()["multicast"]["coalesced"] == 0
    finally:
        await up.close()


async def test_upstream_errors_reach_every_waiter(make_router) -> None:
    go = asyncio.Event()
    mode = {"kind": "cut"}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await go.wait()
        if mode["kind"] == "cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 5000)
            await writer.drain()
            await asyncio.sleep(0.05)
        # "hangup": close without any answer

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]}))

        async def get() -> tuple[int, bool, int]:
            c = await Client.connect(r.port)
            try:
                resp = await c.get("/obj")
                return resp.status, resp.complete, len(resp.body)
            finally:
                await c.close()

        clients = [asyncio.create_task(get()) for _ in range(10)]
        await wait_for_waiters(r, 10)
        go.set()
        assert set(await asyncio.gather(*clients)) == {(200, False, 5000)}  # all cut
        go.clear()
        mode["kind"] = "hangup"
        clients = [asyncio.create_task(get()) for _ in range(10)]
        await wait_for_waiters(r, 10)
        go.set()
        results = await asyncio.gather(*clients)
        assert all(status == 502 and complete for status, complete, _ in results)
        assert r.stats()["multicast"]["fetches"] == 2  # one per burst
    finally:
        await up.close()


async def two_workers(tmp: str, table_, **settings):
    """Two routers of one SR sharing the claim table, as `serve` runs them in two processes."""
    from flame.sfr.router import Router, RouterConfig, StaticTableSource
    from flame.sfr.router.inflight import InflightTable
    from flame.sfr.router.relay import Siblings

    from .helpers import SR

    shared = InflightTable()
    sockets = (f"{tmp}/w0.sock", f"{tmp}/w1.sock")
    routers = []
    for i in range(2):
        config = RouterConfig(sr_id=SR, port=0, **settings)
        r = Router(
            config,
            worker=i,
            source=StaticTableSource(table_),
            siblings=Siblings(shared, i, sockets, ttl=10.0),
        )
        await r.start()
        routers.append(r)
    return routers


async def test_one_fetch_for_the_clients_of_every_worker(make_router, tmp_path_factory) -> None:
    import tempfile

    go = asyncio.Event()
    handler, seen = slow_object(go)
    up = await RawUpstream(handler).start()
    tmp = tempfile.mkdtemp(prefix="sr-")  # Unix socket paths must be short
    routers = await two_workers(
        tmp, table(1, {"vod.example": [(endpoint("origin", up.port), 1.0)]})
    )
    try:
        clients = [asyncio.create_task(fetch_body(routers[i % 2].port)) for i in range(40)]
        await wait_for_waiters(routers[0], 20)  # the first worker's own 20 (and relayed ones)
        async with asyncio.timeout(10):
            while (
                sum(len(f._slots) for r in routers for f in r.context.coalescer.inflight.values())
                < 40
            ):
                await asyncio.sleep(0.01)
        go.set()
        results = await asyncio.gather(*clients)
        assert len(seen) == 1  # one upstream fetch for both workers
        assert len({body for _, body, _ in results}) == 1
        relayed = sum(r.stats()["multicast"]["relayed_to_siblings"] for r in routers)
        assert relayed == 20  # the other worker's clients joined through its sibling
        assert (
            sum(r.stats()["fqdns"]["vod.example"]["requests"] for r in routers) == 40
        )  # counted once
        assert b"X-Flame-Relay-Client" not in seen[0]
    finally:
        for r in routers:
            await r.shutdown(grace=0.5)
        await up.close()


async def test_relay_falls_back_when_the_sibling_is_gone(upstreams) -> None:
    import tempfile

    from flame.sfr.router import Router, RouterConfig, StaticTableSource
    from flame.sfr.router.inflight import InflightTable, key_hash
    from flame.sfr.router.relay import Siblings

    from .helpers import SR

    a = await upstreams("a")
    tmp = tempfile.mkdtemp(prefix="sr-")
    shared = InflightTable()
    key = ("vod.example", b"/obj", None, None, None)
    assert shared.owner_or_claim(key_hash(key), 1, ttl=10.0) is None  # worker 1 claims, then dies
    r = Router(
        RouterConfig(sr_id=SR, port=0),
        worker=0,
        source=StaticTableSource(table(1, {"vod.example": [(a.endpoint(), 1.0)]})),
        siblings=Siblings(shared, 0, (f"{tmp}/w0.sock", f"{tmp}/w1.sock"), ttl=10.0),
    )
    await r.start()
    try:
        c = await Client.connect(r.port)
        resp = await c.get("/obj")
        assert resp.status == 200
        assert resp.json()["upstream"] == "a"
        assert r.stats()["multicast"]["relay_fallbacks"] == 1
        seen = {k.lower(): v for k, v in resp.json()["headers"]}
        assert seen["via"] == "1.1 sr-test"
        await c.close()
    finally:
        await r.shutdown(grace=0.5)
