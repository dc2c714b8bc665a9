"""The router at the byte level (SFR-1): real sockets on 127.0.0.1, raw requests, asyncio peers.

Routing by Host, the router's own answers (502/503/4xx with JSON bodies), header rewriting,
body framing both ways, streaming without buffering, HEAD/204/304, pipelining, limits,
`Expect: 100-continue`, time-outs and misbehaving endpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from typing import cast

import pytest

from flame.sfr.router import Limits, Timeouts

from .helpers import (
    SR,
    Client,
    RawUpstream,
    Response,
    UpRequest,
    Upstream,
    close,
    raw_exchange,
    read_head,
    request_bytes,
    table,
)

pytestmark = pytest.mark.asyncio


async def routed(upstreams, make_router, *names: str, **settings):
    ups = [await upstreams(n) for n in names]
    fqdns = {
        f"{n}.example": [(u.endpoint(fqdn=f"{n}.example"), 1.0)]
        for n, u in zip(names, ups, strict=True)
    }
    return ups, await make_router(table(1, fqdns), **settings)


# -- routing -------------------------------------------------------------------------------------


async def test_routes_by_host_and_reuses_upstream_connections(upstreams, make_router) -> None:
    (a, b), r = await routed(upstreams, make_router, "a", "b")
    c = await Client.connect(r.port)
    for host, name in [
        ("a.example", "a"),
        ("B.Example:8080", "b"),
        ("a.example.", "a"),
        ("b.example", "b"),
    ]:
        resp = await c.get("/x", host=host)
        assert resp.status == 200
        assert resp.json()["upstream"] == name
    assert a.connections == 1
    assert b.connections == 1
    assert len(a.requests) == 2
    await c.close()


async def test_unknown_fqdn_is_a_404_naming_it(upstreams, make_router) -> None:
    """Issue 14: an FQDN the SR has no route for is a 404 saying so (it was a 502)."""
    _, r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    resp = await c.get("/", host="nowhere.example")
    assert resp.status == 404
    assert resp.header("x-flame-not-forwarded") == "route"
    body = resp.json()
    assert body["error"] == "unknown_fqdn"
    assert body["fqdn"] == "nowhere.example"
    assert body["message"]
    assert resp.header("content-type") == "application/json"
    assert (await c.get("/", host="a.example")).status == 200  # same connection still usable
    await c.close()


async def test_known_fqdn_without_endpoint_is_a_503_with_retry_after(make_router) -> None:
    r = await make_router(table(1, {"empty.example": []}))
    c = await Client.connect(r.port)
    resp = await c.get("/", host="empty.example")
    assert resp.status == 503
    assert resp.header("retry-after") == "5"
    assert resp.header("x-flame-not-forwarded") == "route"
    assert resp.json()["error"] == "no_endpoint"
    assert resp.json()["fqdn"] == "empty.example"
    await c.close()


async def test_status_endpoint(upstreams, make_router) -> None:
    _, r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    await c.get("/", host="a.example")
    status = (await c.get("/.flame/status", host="_flame")).json()
    assert status["sr"] == "sr-test"
    assert status["table_version"] == 1
    assert status["fqdns"]["a.example"]["requests"] == 1
    assert (await c.get("/.flame/health", host="SR-TEST:80")).json()["status"] == "ok"
    assert (await c.get("/.flame/table", host="_flame")).json()["version"] == 1
    assert (await c.get("/nope", host="_flame")).status == 404
    await c.close()


async def test_status_and_table_need_the_routers_token_health_does_not(
    upstreams, make_router
) -> None:
    """Issue 11: the data port faces the public; the status and the table name every tenant's
    endpoints, so an SR with a token answers them only to a caller that has it."""
    token = "flm_" + "r" * 43
    _, r = await routed(upstreams, make_router, "a", token=token)
    c = await Client.connect(r.port)
    for path in ("/.flame/status", "/.flame/table"):
        for headers in (None, {"Authorization": "Bearer flm_" + "x" * 43}):
            denied = await c.get(path, host="_flame", headers=headers)
            assert denied.status == 401
            assert denied.json()["error"] == "unauthorized"
            assert "a.example" not in denied.body.decode()
        allowed = await c.get(path, host="_flame", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status == 200
    assert (await c.get("/.flame/health", host="_flame")).status == 200  # load balancers
    await c.close()


# -- headers ---------------------------------------------------------------------------------------


async def test_hop_by_hop_via_and_forwarded_headers_both_ways(upstreams, make_router) -> None:
    async def answer(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        body = json.dumps(req.headers).encode()
        w.write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Hop\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Authenticate: Basic\r\nVia: 1.1 origin-cache\r\nX-End: kept\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body
        )
        return True

    up = await upstreams("a", answer)
    r = await make_router(table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    c = await Client.connect(r.port)
    resp = await c.get(
        "/p",
        headers={
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "Keep-Alive": "timeout=9",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "X-Forwarded-For": "203.0.113.9",
            "Via": "1.0 user-proxy",
            "X-Custom": "yes",
            "X-Flame-Relay-Client": "6.6.6.6",  # trusted from sibling workers only
        },
    )
    seen = {k.lower(): v for k, v in resp.json()}
    for gone in ("connection", "x-client-hop", "keep-alive", "proxy-authorization", "te"):
        assert gone not in seen, gone
    assert seen["x-custom"] == "yes"
    assert seen["via"] == "1.0 user-proxy, 1.1 sr-test"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert "x-flame-relay-client" not in seen
    assert seen["x-forwarded-host"] == "vod.example"
    assert seen["x-forwarded-proto"] == "http"
    names = {n.lower() for n, _ in resp.headers}
    assert not names & {"connection", "x-up-hop", "keep-alive", "proxy-authenticate"}
    assert resp.header("via") == "1.1 origin-cache, 1.1 sr-test"
    assert resp.header("x-end") == "kept"
    await c.close()


async def test_request_through_this_sr_again_is_a_loop(upstreams, make_router) -> None:
    _, r = await routed(upstreams, make_router, "a")
    data = await raw_exchange(
        r.port, request_bytes("GET", "/", "a.example", {"Via": "1.1 other, 1.1 sr-test"})
    )
    assert data.startswith(b"HTTP/1.1 508 ")
    assert b'"error":"loop_detected"' in data


# -- bodies ----------------------------------------------------------------------------------------


async def test_chunked_request_body_is_streamed_rechunked(upstreams, make_router) -> None:
    (a,), r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    await c.send(
        b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    resp = await c.response()
    assert resp.status == 200
    assert resp.json()["body_len"] == 11
    assert a.requests[-1].body == b"hello world"
    assert a.requests[-1].header("transfer-encoding") == "chunked"
    assert (await c.get("/after", host="a.example")).status == 200
    await c.close()


async def test_chunked_and_close_delimited_responses(make_router) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"GET /chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"2\r\nde\r\n0\r\n\r\n")
            await writer.drain()
            await read_head(reader)  # keep-alive: the router may send another
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-the-end")
            await writer.drain()

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(
            table(1, {"vod.example": [(Upstream("raw").endpoint if False else _ep(up.port), 1.0)]})
        )
        c = await Client.connect(r.port)
        resp = await c.get("/chunked")
        assert resp.status == 200
        assert resp.body == b"abcde"
        assert resp.header("transfer-encoding") == "chunked"
        resp = await c.get("/close")
        assert resp.body == b"until-the-end"
        assert resp.header("transfer-encoding") == "chunked"
        await c.close()
        # An HTTP/1.0 client gets the close-delimited body and a closed connection.
        data = await raw_exchange(r.port, b"GET /close HTTP/1.0\r\nHost: vod.example\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Transfer-Encoding" not in head
        assert body == b"until-the-end"
    finally:
        await up.close()


def _ep(port: int):
    from .helpers import endpoint

    return endpoint("raw", port)


async def test_fifty_megabytes_stream_through_without_being_buffered(make_router) -> None:
    size = 50 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB
    first_bytes_seen = asyncio.Event()
    digest = hashlib.sha256()
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while sent < size:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
            if sent == 1024 * 1024:
                # The rest is sent only once the client has the first megabyte: a router that
                # waited for the whole body would never deliver it.
                await asyncio.wait_for(first_bytes_seen.wait(), 10)
        # A graceful close: drain() returns with up to its high-water mark still buffered,
        # which RawUpstream's abort() would throw away, cutting the body short for reasons
        # that are the test endpoint's, not the router's.
        writer.close()
        await writer.wait_closed()

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(_ep(up.port), 1.0)]}))
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(request_bytes("GET", "/big", headers={"Connection": "close"}))
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Content-Length: %d" % size in head
        received = 0
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if received >= 1024 * 1024 and not first_bytes_seen.is_set():
                assert sent < size
                first_bytes_seen.set()
        await close(writer)
        assert received == size
        expected = hashlib.sha256()
        for _ in range(size // len(piece)):
            expected.update(piece)
        assert digest.digest() == expected.digest()
    finally:
        await up.close()


async def test_large_upload_is_streamed_to_the_endpoint(make_router) -> None:
    size = 20 * 1024 * 1024
    upstream_got = 0
    halfway = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal upstream_got
        head = await read_head(reader)
        assert b"Content-Length: %d" % size in head
        while upstream_got < size:
            upstream_got += len(await reader.read(1 << 20))
            if upstream_got >= 1024 * 1024:
                halfway.set()
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(_ep(up.port), 1.0)]}))
        c = await Client.connect(r.port)
        await c.send(request_bytes("PUT", "/obj", headers={"Content-Length": str(size)}))
        block = b"u" * (1024 * 1024)
        await c.send(block * 2)
        await asyncio.wait_for(halfway.wait(), 5)  # the endpoint reads while the client sends
        for _ in range(size // len(block) - 2):
            await c.send(block)
        resp = await c.response()
        assert resp.status == 201
        assert resp.body == b"ok"
        assert upstream_got == size
        await c.close()
    finally:
        await up.close()


async def test_head_204_304_have_no_body_and_keep_the_connection(upstreams, make_router) -> None:
    async def answer(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        if req.target == "/204":
            w.write(b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n")
        elif req.target == "/304":
            w.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        elif req.method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        return True

    up = await upstreams("a", answer)
    r = await make_router(table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(request_bytes("HEAD", "/h"))
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 1234\r\n" in head
    writer.write(
        request_bytes("GET", "/204")
        + request_bytes("GET", "/304", headers={"If-None-Match": '"v1"'})
    )
    head204 = await read_head(reader)
    head304 = await read_head(reader)
    assert head204.startswith(b"HTTP/1.1 204")
    assert b"Content-Length" not in head204
    assert head304.startswith(b"HTTP/1.1 304")
    assert b'ETag: "v1"' in head304
    writer.write(request_bytes("GET", "/last"))
    last = await read_head(reader)
    assert last.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(4) == b"body"
    await close(writer)


async def test_pipelined_requests_are_answered_in_order(upstreams, make_router) -> None:
    async def answer(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        if req.target == "/slow":
            await asyncio.sleep(0.2)
        body = req.target.encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    slow = await upstreams("slow", answer)
    fast = await upstreams("fast", answer)
    r = await make_router(
        table(
            1,
            {
                "slow.example": [(slow.endpoint(fqdn="slow.example"), 1.0)],
                "fast.example": [(fast.endpoint(fqdn="fast.example"), 1.0)],
            },
        )
    )
    c = await Client.connect(r.port)
    await c.send(
        request_bytes("GET", "/slow", "slow.example")
        + request_bytes("POST", "/fast-post", "fast.example", body=b"12345")
        + request_bytes("GET", "/fast", "fast.example")
        + request_bytes("GET", "/gone", "nowhere.example")
        + request_bytes("GET", "/fast2", "fast.example")
    )
    bodies = [(await c.response()) for _ in range(5)]
    assert [b.status for b in bodies] == [200, 200, 200, 404, 200]
    assert [b.body for b in bodies[:3]] == [b"/slow", b"/fast-post", b"/fast"]
    assert fast.requests[0].body == b"12345"
    await c.close()


# -- limits and malformed requests ---------------------------------------------------------------------


async def test_oversized_head_is_a_431(upstreams, make_router) -> None:
    _, r = await routed(upstreams, make_router, "a", limits=Limits(max_head_bytes=2048))
    data = await raw_exchange(r.port, request_bytes("GET", "/", "a.example", {"X-Big": "x" * 3000}))
    assert data.startswith(b"HTTP/1.1 431 ")
    assert b"Connection: close" in data
    data = await raw_exchange(
        r.port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a.example\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 431 ")
    # A header that never ends is refused before it is all in memory.
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Endless: ")
    for _ in range(10):
        writer.write(b"y" * 1024)
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 431 ")
    await close(writer)


async def test_oversized_body_is_a_413(upstreams, make_router) -> None:
    (a,), r = await routed(upstreams, make_router, "a", limits=Limits(max_body_bytes=1000))
    data = await raw_exchange(
        r.port, request_bytes("POST", "/", "a.example", {"Content-Length": "5000"})
    )
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"payload_too_large"' in data
    chunked = (
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"200\r\n"
        + b"z" * 512
        + b"\r\n"
    )
    data = await raw_exchange(r.port, chunked * 1 + b"200\r\n" + b"z" * 512 + b"\r\n0\r\n\r\n")
    assert b" 413 " in data.split(b"\r\n", 1)[0]
    assert all(len(req.body) <= 1000 for req in a.requests)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET \x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
async def test_malformed_requests_are_a_400_and_the_router_lives_on(
    upstreams, make_router, raw: bytes
) -> None:
    _, r = await routed(upstreams, make_router, "a")
    data = await raw_exchange(r.port, raw)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data[:200]
    assert b"Traceback" not in data
    assert b'"error":"bad_request"' in data
    c = await Client.connect(r.port)
    assert (await c.get("/", host="a.example")).status == 200
    await c.close()


async def test_connect_is_refused_and_upgrade_is_plain_http(upstreams, make_router) -> None:
    # (WebSocket upgrades are relayed: test_websocket.py; other upgrades stay plain HTTP.)
    (a,), r = await routed(upstreams, make_router, "a")
    data = await raw_exchange(
        r.port, b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 405 ")
    c = await Client.connect(r.port)
    resp = await c.get("/ws", host="a.example", headers={"Connection": "Upgrade", "Upgrade": "h2c"})
    assert resp.status == 200
    assert a.requests[-1].header("upgrade") is None
    assert a.requests[-1].header("connection") is None
    assert (await c.get("/next", host="a.example")).status == 200
    await c.close()


async def test_expect_100_continue(upstreams, make_router) -> None:
    (a,), r = await routed(upstreams, make_router, "a")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(
        b"PUT /f HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(read_head(reader), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abcde")
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 200")
    assert a.requests[-1].body == b"abcde"
    assert a.requests[-1].header("expect") is None
    await close(writer)


async def test_http10_keep_alive(upstreams, make_router) -> None:
    _, r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    await c.send(b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
    resp = await c.response()
    assert resp.status == 200
    assert resp.header("connection") == "keep-alive"
    await c.send(b"GET / HTTP/1.0\r\nHost: a.example\r\n\r\n")
    resp = await c.response()
    assert resp.header("connection") == "close"
    assert await c.closed()
    await c.close()


async def test_request_version_is_read_whole_split_or_pipelined(upstreams, make_router) -> None:
    """SFR-1: the HTTP version of each request decides its Via entry, whatever the chunking.

    The router reads it from the request line when that line starts a chunk; a head split over
    chunks, or a request that follows another in its chunk, goes through the parser instead.
    """
    (a,), r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    await c.send(
        b"GET /1 HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: a.example\r\n\r\n"
    )
    assert (await c.response()).status == 200
    assert (await c.response()).status == 200
    await c.send(b"GET /3 HTTP/1.1\r\nHost: a.example\r\n")
    await asyncio.sleep(0.05)  # a chunk of its own: the next one starts with a header line
    await c.send(b"X-Note: looks like HTTP/1.0\r\n\r\n")
    assert (await c.response()).status == 200
    await c.send(b"GET /4 HTTP/1.0\r\nHost: a.example\r\n\r\n")
    assert (await c.response()).header("connection") == "close"
    await c.close()
    vias = {req.target: req.header("via") for req in a.requests}
    assert vias == {
        "/1": f"1.0 {SR}",
        "/2": f"1.1 {SR}",
        "/3": f"1.1 {SR}",
        "/4": f"1.0 {SR}",
    }


# -- time-outs and slow peers -------------------------------------------------------------------------------


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


async def test_slow_head_gets_a_408_and_idle_connections_close(upstreams, make_router) -> None:
    _, r = await routed(upstreams, make_router, "a", timeouts=Timeouts(header=0.3, keepalive=0.3))
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Collect, "127.0.0.1", r.port)
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: 1234567890"  # drip-fed: >= 1 s
    sent = 0
    for byte in head:
        if proto.closed.done():
            break
        transport.write(bytes([byte]))
        sent += 1
        await asyncio.sleep(0.02)
    await asyncio.wait_for(proto.closed, 5)
    # The deadline (0.3 s) was fixed at the first byte: dripping did not extend it, so the
    # router answered while bytes were still coming.
    assert proto.data.startswith(b"HTTP/1.1 408 ")
    assert sent < len(head)
    transport.close()
    c = await Client.connect(r.port)
    assert (await c.get("/", host="a.example")).status == 200
    assert await c.closed(timeout=3)  # idle keep-alive time-out
    await c.close()


async def test_slow_reader_holds_the_endpoint_back(make_router) -> None:
    size = 64 * 1024 * 1024
    written = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"s" * 65536
        while written < size:
            writer.write(block)
            written += len(block)
            await writer.drain()

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(_ep(up.port), 1.0)]}))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no kernel autotuning
        sock.connect(("127.0.0.1", r.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=65536)
        transport = cast(asyncio.ReadTransport, writer.transport)
        transport.pause_reading()  # a client that reads nothing for a while
        writer.write(request_bytes("GET", "/big"))
        await asyncio.sleep(0.5)
        # The router holds at most about its high-water mark for the client and has
        # stopped reading the endpoint (whatever the kernel buffers hold meanwhile).
        (conn,) = r.context.connections
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 1024 * 1024
        (upstream_conn,) = [c for c in r.context.pool._conns]
        assert upstream_conn.flow is not None
        assert upstream_conn.flow.reading_paused
        assert written < size
        transport.resume_reading()
        await read_head(reader)
        got = 0
        while got < size:
            got += len(await reader.read(1 << 20))
        assert got == size
        await close(writer)
    finally:
        await up.close()


async def test_endpoint_closing_mid_body_cuts_the_client_not_the_router(make_router) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await writer.drain()
            await asyncio.sleep(0.05)
            return  # closes mid-body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(_ep(up.port), 1.0)]}))
        c = await Client.connect(r.port)
        resp = await c.get("/cut")
        assert resp.status == 200
        assert not resp.complete
        assert len(resp.body) == 100
        assert c.eof  # the client saw the connection close
        await c.close()
        c2 = await Client.connect(r.port)
        resp2 = await c2.get("/fine")
        assert (resp2.status, resp2.body) == (200, b"ok")
        await c2.close()
    finally:
        await up.close()


async def test_garbage_and_silence_from_the_endpoint(make_router) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/garbage" in head:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(1)
        else:
            await asyncio.sleep(5)  # never answers

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(
            table(1, {"vod.example": [(_ep(up.port), 1.0)]}),
            timeouts=Timeouts(upstream_response=0.3),
        )
        c = await Client.connect(r.port)
        resp: Response = await c.get("/garbage")
        assert resp.status == 502
        assert resp.json()["error"] == "bad_upstream_response"
        resp = await c.get("/silence")
        # The endpoint is ejected after the garbage, so this may be a 503 or a 504.
        assert resp.status in (503, 504)
        await asyncio.sleep(1.1)  # the 1 s ejection ends
        resp = await c.get("/silence2")
        assert resp.status == 504
        assert resp.json()["error"] == "upstream_timeout"
        await c.close()
    finally:
        await up.close()


async def test_a_long_pipeline_of_immediate_answers_does_not_recurse(
    upstreams, make_router
) -> None:
    _, r = await routed(upstreams, make_router, "a")
    c = await Client.connect(r.port)
    n = 2000
    await c.send(
        b"".join(
            request_bytes("GET", f"/{i}", "nowhere.example" if i % 2 else "_flame")
            for i in range(n)
        )
    )
    statuses = [(await c.response()).status for _ in range(n)]
    assert statuses == [404] * n  # the status endpoint's unknown path, an unknown FQDN
    assert (await c.get("/", host="a.example")).status == 200
    await c.close()


async def test_garbage_after_a_complete_response_keeps_the_response(make_router) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)

    up = await RawUpstream(handler).start()
    try:
        r = await make_router(table(1, {"vod.example": [(_ep(up.port), 1.0)]}))
        c = await Client.connect(r.port)
        resp = await c.get("/")
        assert (resp.status, resp.body, resp.complete) == (200, b"ok", True)
        assert r.stats()["ejected"] == {}
        await c.close()
    finally:
        await up.close()
