"""The SR's own TLS connection driver (router/tlsconn.py, SFR-19), with real clients.

What replacing uvloop's SSLProtocol must keep or adds: full and resumed handshakes counted
apart (the benchmark's proof that its handshakes are full ones), a client's close_notify
answered at once, the unrecognized_name alert for an unknown name, the handshake time-out,
pipelined requests over TLS (reading paused and resumed with records waiting in the BIO),
large bodies both ways, and a shutdown that does not wait for connections stuck in their
handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from pathlib import Path

import pytest

from flame.common.pki import PlatformCA
from flame.sfr.router.config import Limits, Timeouts

from .helpers import UpRequest, Upstream, table
from .test_tls import Pki, client_context, fetch, two_tenants

pytestmark = pytest.mark.asyncio


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(PlatformCA.open(tmp_path / "ca"), tmp_path)


BIG = 3 * 1024 * 1024


def acceptor_stats(router) -> dict[str, int]:
    assert router._tls_acceptor is not None
    return router._tls_acceptor.describe()


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_sfr19_full_and_resumed_handshakes_are_counted_apart(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    ctx = client_context(pki.cafile)
    first = await asyncio.to_thread(fetch, router.tls_port, "a.example", ctx)
    again = await asyncio.to_thread(fetch, router.tls_port, "a.example", ctx, session=first.session)
    assert (first.status, again.status) == (200, 200)
    assert (first.reused, again.reused) == (False, True)
    stats = acceptor_stats(router)
    assert (stats["handshakes"], stats["resumed"], stats["handshaking"]) == (2, 1, 0)
    assert router.stats()["tls"]["connections"]["resumed"] == 1  # on /.flame/status too


async def test_sfr19_a_clients_close_notify_is_answered_at_once(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.tls_port, ssl=client_context(pki.cafile), server_hostname="a.example"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    # The client's SSL shutdown waits for the SR's close_notify (30 s by default if it never
    # comes); answered, it takes milliseconds: 10 s is headroom for a loaded machine.
    await asyncio.wait_for(writer.wait_closed(), timeout=10.0)


async def test_sfr19_an_unknown_name_gets_the_unrecognized_name_alert(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    with pytest.raises(ssl.SSLError) as refused:
        await asyncio.to_thread(
            fetch, router.tls_port, "nobody.example", client_context(pki.cafile)
        )
    assert "UNRECOGNIZED_NAME" in str(refused.value).upper()
    assert acceptor_stats(router)["failed"] == 1
    assert router.tls.unknown_names == 1


async def test_sfr19_a_silent_client_is_cut_at_the_handshake_timeout(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki, timeouts=Timeouts(header=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", router.tls_port)
    try:
        # Closed by the SR after 0.3 s; 10 s is the deadline of a loaded machine.
        try:
            left = await asyncio.wait_for(reader.read(), timeout=10.0)
        except ConnectionResetError:
            left = b""  # cut (aborted): a reset is as good as a FIN here
        assert left == b""
    finally:
        writer.close()
    await wait_for(lambda: acceptor_stats(router)["handshaking"] == 0)
    assert acceptor_stats(router)["failed"] == 1
    assert acceptor_stats(router)["handshakes"] == 0


async def test_sfr19_pipelined_requests_over_tls_are_answered_in_order(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.tls_port, ssl=client_context(pki.cafile), server_hostname="a.example"
    )
    try:
        writer.write(
            b"".join(b"GET /p%d HTTP/1.1\r\nHost: a.example\r\n\r\n" % i for i in range(5))
        )
        for i in range(5):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10.0)
            length = int(
                next(
                    x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            body = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200")
            assert b'"/p%d"' % i in body  # the echo upstream names the target: in order
    finally:
        writer.close()


async def big_handler(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
    """Answers with BIG deterministic bytes, and says how much body it received."""
    body = bytes(range(256)) * (BIG // 256)
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"X-Received: %d\r\nContent-Length: %d\r\n\r\n" % (len(req.body), len(body)) + body
    )
    return True


async def test_sfr19_large_bodies_both_ways_over_tls(make_router, upstreams, pki) -> None:
    up = await upstreams("big", big_handler)
    router = await make_router(
        table(1, {"a.example": [(up.endpoint(fqdn="a.example"), 1.0)]}),
        tls_port=0,
        tls_certs=(pki.files("a.example"),),
        # A small high-water mark: the client-side writes pause and resume many times.
        limits=Limits(write_high_water=16 * 1024),
    )
    upload = bytes(reversed(range(256))) * (BIG // 256)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.tls_port, ssl=client_context(pki.cafile), server_hostname="a.example"
    )
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: %d\r\n\r\n" % len(upload)
        )
        writer.write(upload)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20.0)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"X-Received: %d" % BIG in head
        body = await asyncio.wait_for(reader.readexactly(BIG), timeout=20.0)
        expected = bytes(range(256)) * (BIG // 256)
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    finally:
        writer.close()


async def test_sfr19_shutdown_does_not_wait_for_handshakes(make_router, upstreams, pki) -> None:
    # A long handshake time-out: uncut, the silent connection would stay open for 60 s.
    router = await two_tenants(make_router, upstreams, pki, timeouts=Timeouts(header=60.0))
    raw = socket.create_connection(("127.0.0.1", router.tls_port))
    try:
        await wait_for(lambda: acceptor_stats(router)["handshaking"] == 1)
        started = asyncio.get_running_loop().time()
        await router.shutdown(grace=0.5)
        # ~0.5 s (the grace) measured; 20 s leaves headroom for a loaded machine.
        assert asyncio.get_running_loop().time() - started < 20.0
        assert acceptor_stats(router)["handshaking"] == 0
    finally:
        raw.close()
