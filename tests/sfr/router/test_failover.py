"""Failover (SFR-1): retry once on the next endpoint, eject failing endpoints, recover.

A killed endpoint's requests go to the next one without the client noticing; the dead one is
ejected, then tried again when its back-off ends and used again once it answers. A 5xx is
retried elsewhere for idempotent requests only; a stale pooled connection is retried on a
fresh one without blaming the endpoint.
"""

from __future__ import annotations

import asyncio

import pytest

from .helpers import (
    Client,
    RawUpstream,
    UpRequest,
    Upstream,
    endpoint,
    read_head,
    request_bytes,
    table,
)

pytestmark = pytest.mark.asyncio


async def test_killed_endpoint_fails_over_then_recovers(upstreams, make_router) -> None:
    a = await upstreams("a")
    b = await upstreams("b")
    port_a = a.port
    r = await make_router(table(1, {"vod.example": [(a.endpoint(), 1.0), (b.endpoint(), 2.0)]}))
    c = await Client.connect(r.port)
    assert (await c.get("/1")).json()["upstream"] == "a"
    await a.close()  # the endpoint dies, its pooled connection with it
    for i in range(5):
        resp = await c.get(f"/after-kill/{i}")
        assert resp.status == 200
        assert resp.json()["upstream"] == "b"
    status = r.stats()
    assert "a" in status["ejected"]
    assert status["ejections"] == 1
    assert status["endpoints"]["vod.example/a"]["ejections"] == 1
    # The endpoint comes back on the same address; after the 1 s ejection it is used again.
    revived = await Upstream("a").start(port=port_a)
    try:
        await asyncio.sleep(1.05)
        resp = await c.get("/recovered")
        assert resp.json()["upstream"] == "a"
        assert "a" not in r.stats()["ejected"]
    finally:
        await c.close()
        await revived.close()


async def test_failed_probe_doubles_the_ejection(upstreams, make_router) -> None:
    b = await upstreams("b")
    dead = endpoint("dead", 1)  # nothing listens on port 1
    r = await make_router(table(1, {"vod.example": [(dead, 1.0), (b.endpoint(), 2.0)]}))
    c = await Client.connect(r.port)
    assert (await c.get("/x")).json()["upstream"] == "b"
    assert 0.5 < r.stats()["ejected"]["dead"] <= 1.0
    await asyncio.sleep(1.05)
    assert (await c.get("/y")).json()["upstream"] == "b"  # probed, failed again
    assert 1.5 < r.stats()["ejected"]["dead"] <= 2.0  # doubled
    await c.close()


async def test_all_endpoints_down_is_a_503_with_retry_after(make_router) -> None:
    """Issue 14: no endpoint up is a 503 with Retry-After, not a 502, from the first request
    (both endpoints refused the connection) to the next (both ejected)."""
    r = await make_router(
        table(1, {"vod.example": [(endpoint("x", 1), 1.0), (endpoint("y", 2), 1.0)]})
    )
    c = await Client.connect(r.port)
    first = await c.get("/")
    assert first.status == 503
    assert first.header("retry-after") == "1"  # when the first ejection ends
    assert first.json()["error"] == "upstream_unreachable"
    second = await c.get("/")
    assert second.status == 503
    assert second.header("retry-after") == "1"
    assert second.json()["error"] == "no_endpoint"
    await c.close()


async def test_5xx_is_retried_for_idempotent_requests_only(upstreams, make_router) -> None:
    async def failing(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        return True

    a = await upstreams("a", failing)
    b = await upstreams("b")
    r = await make_router(table(1, {"vod.example": [(a.endpoint(), 1.0), (b.endpoint(), 2.0)]}))
    c = await Client.connect(r.port)
    await c.send(request_bytes("POST", "/order", body=b"item=1"))
    post = await c.response()
    assert (post.status, post.body) == (503, b"busy")  # not idempotent: the 5xx goes back
    assert "a" not in r.stats()["ejected"]  # with no retry the endpoint is not blamed
    await c.send(request_bytes("PUT", "/doc", body=b"v=2"))
    put = await c.response()
    assert put.status == 200
    assert put.json()["upstream"] == "b"
    assert put.json()["body_len"] == 3
    assert b.requests[-1].body == b"v=2"  # the body was replayed
    assert "a" in r.stats()["ejected"]
    await c.close()


async def test_only_endpoint_answering_5xx_is_passed_through(upstreams, make_router) -> None:
    async def failing(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nerr")
        return True

    a = await upstreams("a", failing)
    r = await make_router(table(1, {"vod.example": [(a.endpoint(), 1.0)]}))
    c = await Client.connect(r.port)
    for _ in range(2):
        resp = await c.get("/")
        assert (resp.status, resp.body) == (500, b"err")
    assert r.stats()["ejected"] == {}
    await c.close()


async def test_reset_before_the_response_is_retried_on_the_next_endpoint(
    upstreams, make_router
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)  # reads the request, then closes without answering

    a = await RawUpstream(hang_up).start()
    b = await upstreams("b")
    try:
        r = await make_router(
            table(1, {"vod.example": [(endpoint("a", a.port), 1.0), (b.endpoint(), 2.0)]})
        )
        c = await Client.connect(r.port)
        resp = await c.get("/")
        assert resp.status == 200
        assert resp.json()["upstream"] == "b"
        await asyncio.sleep(1.05)  # a's ejection ends: the next request goes there again
        await c.send(request_bytes("POST", "/p", body=b"x"))
        post = await c.response()
        # The POST reached a: resending it could apply it twice, so the client gets the error.
        assert post.status == 502
        assert post.json()["error"] == "upstream_reset"
        await c.close()
    finally:
        await a.close()


async def test_stale_pooled_connection_is_retried_without_blame(make_router) -> None:
    served = 0

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal served
        await read_head(reader)
        served += 1
        # Keep-alive announced, then the endpoint closes the idle connection (as servers do
        # after their own idle time-out), racing the router's next request.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)

    a = await RawUpstream(one_per_connection).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("a", a.port), 1.0)]}))
        c = await Client.connect(r.port)
        for i in range(3):
            resp = await c.get(f"/{i}")
            assert (resp.status, resp.body) == (200, b"ok")
            await asyncio.sleep(0.1)  # the pooled connection is closed by now
        assert served == 3
        assert r.stats()["ejected"] == {}
        await c.close()
    finally:
        await a.close()


async def test_stale_connection_race_on_send(make_router) -> None:
    """The close arrives after the router reused the connection: retried on a fresh one."""
    count = 0

    async def close_after_response(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal count
        await read_head(reader)
        count += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % (count % 10))
        await writer.drain()
        try:
            await asyncio.wait_for(read_head(reader), 1.0)  # the next request arrives...
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        # ...and is dropped unanswered.

    a = await RawUpstream(close_after_response).start()
    try:
        r = await make_router(table(1, {"vod.example": [(endpoint("a", a.port), 1.0)]}))
        c = await Client.connect(r.port)
        assert (await c.get("/1")).status == 200
        resp = await c.get("/2")
        assert resp.status == 200  # retried on a fresh connection
        assert r.stats()["ejected"] == {}
        await c.close()
    finally:
        await a.close()
