"""WebSocket through the SR (issue 15 item 5, SFR-19 for the TLS listener): a real `websockets`
server as the endpoint and a real `websockets` client, plain and over TLS.

The upgrade is routed like any request (the endpoint sees Via/X-Forwarded-*), then frames go
both ways, large ones too (back-pressure); either side closing ends it. Bounded: a cap per
worker (503 beyond it) and an idle time-out; counted in the status endpoint and the per-FQDN
metrics. An endpoint that refuses the upgrade has its answer relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flame.common.pki import PlatformCA
from flame.common.ports import free_port
from flame.sfr.router import Router
from flame.sfr.router.config import Limits, Timeouts

from .conftest import RouterFactory
from .helpers import endpoint, table

pytestmark = pytest.mark.asyncio

FQDN = "chat.example"


async def _echo(ws: ServerConnection) -> None:
    """Echoes every message; 'headers' answers with the request's forwarding headers;
    'bye' closes from the server side."""
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            if message == "headers":
                h = ws.request.headers if ws.request else {}
                keys = ("Via", "X-Forwarded-Proto", "Host")
                await ws.send(json.dumps({k: h.get(k) for k in keys}))
            elif message == "bye":
                await ws.close(code=4000, reason="server says bye")
                return
            else:
                await ws.send(message)


@pytest_asyncio.fixture
async def ws_port() -> AsyncIterator[int]:
    async with serve(_echo, "127.0.0.1", 0, max_size=4 * 1024 * 1024) as server:
        yield next(iter(server.sockets)).getsockname()[1]


def _status(router: Router) -> dict:
    return httpx.get(
        f"http://127.0.0.1:{router.port}/.flame/status", headers={"Host": "sr-test"}
    ).json()


async def _router(make_router: RouterFactory, port: int, **kw: object) -> Router:
    return await make_router(table(1, {FQDN: [(endpoint("ws-1", port, fqdn=FQDN), 1.0)]}), **kw)


async def test_websocket_relayed_both_ways_plain(make_router: RouterFactory, ws_port: int) -> None:
    router = await _router(make_router, ws_port)
    uri = f"ws://{FQDN}/room"
    async with connect(uri, host="127.0.0.1", port=router.port, max_size=4 * 1024 * 1024) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send("headers")
        seen = json.loads(await ws.recv())
        assert "sr-test" in seen["Via"]
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen["Host"] == FQDN
        big = os.urandom(2 * 1024 * 1024)  # each way (incompressible): back-pressure on both sides
        await ws.send(big)
        assert await ws.recv() == big
        status = await asyncio.to_thread(_status, router)
        assert status["websockets"]["open"] == 1
        assert status["websockets"]["opened"] == 1
    # The server closing ends the tunnel too.
    async with connect(uri, host="127.0.0.1", port=router.port) as ws:
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4000
    for _ in range(100):
        status = await asyncio.to_thread(_status, router)
        if status["websockets"]["open"] == 0:
            break
        await asyncio.sleep(0.02)
    ws_stats = status["websockets"]
    assert ws_stats["open"] == 0
    assert ws_stats["opened"] == 2
    assert ws_stats["bytes"] > 4 * 1024 * 1024
    # Counted per FQDN like requests (status 101).
    assert FQDN in json.dumps(status)
    # Plain HTTP on the same router still works (the fast path is untouched).
    plain = await asyncio.to_thread(
        httpx.get, f"http://127.0.0.1:{router.port}/.flame/status", headers={"Host": "sr-test"}
    )
    assert plain.status_code == 200


async def test_websocket_over_tls(make_router: RouterFactory, ws_port: int, tmp_path: Path) -> None:
    ca = PlatformCA.open(tmp_path / "ca")
    issued = ca.issue([FQDN], days=1)
    (tmp_path / "c.crt").write_text(issued.chain_pem)
    (tmp_path / "c.key").write_text(issued.key_pem)
    router = await _router(
        make_router,
        ws_port,
        tls_port=0,
        tls_certs=((str(tmp_path / "c.crt"), str(tmp_path / "c.key")),),
    )
    assert router.tls_port
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    async with connect(
        f"wss://{FQDN}/room", host="127.0.0.1", port=router.tls_port, ssl=client_ctx
    ) as ws:
        await ws.send("headers")
        seen = json.loads(await ws.recv())
        assert seen["X-Forwarded-Proto"] == "https"
        await ws.send(b"\x00binary\xff")
        assert await ws.recv() == b"\x00binary\xff"


async def test_websocket_cap_and_idle_timeout(make_router: RouterFactory, ws_port: int) -> None:
    router = await _router(
        make_router,
        ws_port,
        limits=Limits(max_websockets=1),
        timeouts=Timeouts(websocket_idle=0.3),
    )
    uri = f"ws://{FQDN}/"
    async with connect(uri, host="127.0.0.1", port=router.port) as first:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(uri, host="127.0.0.1", port=router.port):
                pass
        assert refused.value.response.status_code == 503
        assert b"too_many_tunnels" in refused.value.response.body
        # Nothing either way for longer than the idle time-out: the SR closes it.
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(first.recv(), 5)
    ws_stats = (await asyncio.to_thread(_status, router))["websockets"]
    assert ws_stats["refused"] == 1
    assert ws_stats["idle_closed"] == 1
    assert ws_stats["open"] == 0


async def test_upgrade_refused_by_the_endpoint_is_relayed(make_router: RouterFactory) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 5\r\n\r\nnope!")
        await reader.read()  # keeps its side open: the SR closes after the 5 bytes
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        router = await _router(make_router, server.sockets[0].getsockname()[1])
        with pytest.raises(InvalidStatus) as answer:
            async with connect(
                f"ws://{FQDN}/x", host="127.0.0.1", port=router.port, open_timeout=5
            ):
                pass
        assert answer.value.response.status_code == 426
        assert answer.value.response.body == b"nope!"
        ws_stats = (await asyncio.to_thread(_status, router))["websockets"]
        assert ws_stats["opened"] == 1
        assert ws_stats["open"] == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_websocket_to_an_unreachable_endpoint_is_a_502(make_router: RouterFactory) -> None:
    dead = free_port()  # nothing listens: not a released bind(0) port another test may get
    router = await _router(make_router, dead)
    with pytest.raises(InvalidStatus) as answer:
        async with connect(f"ws://{FQDN}/", host="127.0.0.1", port=router.port, open_timeout=5):
            pass
    assert answer.value.response.status_code == 502
    assert (await asyncio.to_thread(_status, router))["websockets"]["failed"] == 1


async def test_early_client_bytes_and_a_split_answer_head_arrive_intact(
    make_router: RouterFactory,
) -> None:
    """Raw sockets on both sides: the client's first frame rides in the same packet as its
    upgrade request (before any 101); the endpoint's 101 arrives in pieces, its first bytes
    of data in the same write as the end of the head."""
    seen: list[bytes] = []

    async def endpoint_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        seen.append(await reader.readexactly(5))  # the early bytes, after the head
        for piece in (b"HTTP/1.1 101 Switching", b" Protocols\r\nUpgrade: websocket\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"Connection: Upgrade\r\n\r\nfirst")
        seen.append(await reader.readexactly(4))
        writer.write(b"last")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(endpoint_side, "127.0.0.1", 0)
    try:
        router = await _router(make_router, server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(
            f"GET /raw HTTP/1.1\r\nHost: {FQDN}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"first"
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(), 5) == b"last"  # then the SR closes
        writer.close()
        sent = seen[0].decode()
        assert "Upgrade: websocket" in sent
        assert "Connection: Upgrade" in sent
        assert "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" in sent
        assert seen[1:] == [b"early", b"ping"]
    finally:
        server.close()
        await server.wait_closed()


async def test_websocket_through_an_egress_sr(make_router: RouterFactory, ws_port: int) -> None:
    """SFR-1/SFR-10: ingress SR -> egress SR (X-Flame-Endpoint) -> endpoint, then relayed."""
    from flame.sfr.models import ForwardingTable, Route
    from flame.sfr.router.server import bind_socket

    for _ in range(20):  # a port free on both 127.0.0.1 and 127.0.0.2
        sock_a = bind_socket("127.0.0.1", 0, reuse_port=False)
        port = sock_a.getsockname()[1]
        try:
            sock_b = bind_socket("127.0.0.2", port, reuse_port=False)
        except OSError:
            sock_a.close()
            continue
        break
    else:
        pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")
    e = endpoint("ws-1", ws_port, fqdn=FQDN)

    def one(sr: str, route: Route) -> ForwardingTable:
        return ForwardingTable(sr=sr, version=1, routes={FQDN: (route,)})

    b = await make_router(
        one("sr-b", Route(e, egress_sr="sr-b", cost=0.0, latency_ms=0.0, path=("sr-b",))),
        sr_id="sr-b",
        sock=sock_b,
    )
    a = await make_router(
        one(
            "sr-a",
            Route(
                e,
                egress_sr="sr-b",
                cost=5.0,
                latency_ms=0.0,
                path=("sr-a", "sr-b"),
                egress_address="127.0.0.2",
            ),
        ),
        sr_id="sr-a",
        sock=sock_a,
        egress_hop=True,
    )
    async with connect(f"ws://{FQDN}/", host="127.0.0.1", port=a.port) as ws:
        await ws.send("headers")
        seen = json.loads(await ws.recv())
        assert seen["Via"] == "1.1 sr-a, 1.1 sr-b"  # through both SRs
        await ws.send("over two hops")
        assert await ws.recv() == "over two hops"
    assert b.context.tunnels_opened == 1
    assert a.context.tunnels_opened == 1
