"""Hop-by-hop TLS inside the platform (SFR-19, issue 15 item 3; docs/tls.md).

Real SRs, real TLS endpoints and real certificates: the platform CA (`PlatformCA`) and the
PCE's identity code (`SrIdentities`) issue the SRs' identities and the endpoints' server
certificates exactly as the PCE does; the identity reaches each SR the way the bundle's
does (`UpstreamTls.apply`, what `CertSubscriber` calls). The PCE's bundle itself is covered
in tests/sfr/test_hop_tls_pce.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from flame.common.pki import PlatformCA
from flame.common.ports import free_port
from flame.sfr.hop_identity import HopTls, SrIdentities
from flame.sfr.models import Endpoint, ForwardingTable, Route
from flame.sfr.router.upstream_tls import HopIdentity, peer_sr

from .helpers import Client, UpRequest, Upstream, echo_handler

pytestmark = pytest.mark.asyncio

FQDN = "vod.example"
A, B = "sr-a", "sr-b"
LOOPBACK = "127.0.0.1"
INGRESS = "127.0.0.2"  # the ingress SR's own address (every SR listens for hops on one port)


class Pki:
    """A platform CA with the PCE's identity code, in a temporary directory."""

    def __init__(self, directory: Path, mode: HopTls = HopTls.ALL) -> None:
        self.ca = PlatformCA.open(directory)
        self.ids = SrIdentities(self.ca, mode)
        self.directory = directory

    def identity(self, sr: str, *, renew: bool = False) -> HopIdentity:
        if renew:
            self.ids.renew(sr)
        found = self.ids.current(sr, LOOPBACK)
        assert found is not None
        return HopIdentity(
            chain_pem=found.chain_pem,
            key_pem=found.key_pem,
            trust_pem=self.ca.cert_pem,
            fingerprint=found.fingerprint,
            not_after=found.not_after,
            mode=self.ids.mode.value,
        )

    def endpoint_context(self, *, require_client: bool = True) -> ssl.SSLContext:
        """An endpoint's server context: platform certificate for 127.0.0.1, SR clients only."""
        issued = self.ids.endpoint_cert(LOOPBACK)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = self.directory / "ep.crt", self.directory / "ep.key"
        cert.write_text(str(issued["chain"]))
        key.write_text(str(issued["key"]))
        ctx.load_cert_chain(cert, key)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca.cert_pem)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "platform")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "elsewhere")


class TlsUpstream(Upstream):
    """An endpoint serving HTTPS (optionally requiring a client certificate); it records the
    SR id and fingerprint of each connection's client certificate."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        super().__init__(name, self._answer)
        self.ctx = ctx
        self.peers: list[str | None] = []
        self.client_certs: set[str] = set()

    async def start(self, port: int = 0, *, sock: socket.socket | None = None) -> TlsUpstream:
        assert sock is None, "a TLS upstream listens on loopback"
        self._server = await asyncio.start_server(self._serve, LOOPBACK, port, ssl=self.ctx)
        return self

    async def _answer(self, up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
        sslobj = w.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der:
            self.client_certs.add(hashlib.sha256(der).hexdigest())
        self.peers.append(peer_sr(w.get_extra_info("peercert")))
        return await echo_handler(up, req, w)

    def endpoint(self, **kw: Any) -> Endpoint:
        e = super().endpoint(**kw)
        return Endpoint(e.sfe, e.fqdn, e.cluster, e.host, e.port, tls=True)


def table(sr: str, routes: list[Route], version: int = 1) -> ForwardingTable:
    return ForwardingTable(sr=sr, version=version, routes={FQDN: tuple(routes)})


def direct(e: Endpoint, sr: str) -> Route:
    return Route(e, egress_sr=sr, cost=1.0, latency_ms=0.0, path=(sr,), egress_address=None)


async def get(
    port: int, path: str = "/", headers: dict[str, str] | None = None, host: str = LOOPBACK
) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    client = Client(reader, writer)
    try:
        return await client.get(path, headers=headers)
    finally:
        writer.close()


async def exchange(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    """One request over TLS; what came back (b"" if the server closed)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def refused(port: int, ctx: ssl.SSLContext, request: bytes) -> bool:
    """The server refused this client's certificate (or its absence): a TLS alert or a
    close before any answer (with TLS 1.3 the refusal comes after the client's handshake)."""
    try:
        return await exchange(port, ctx, request) == b""
    except (ssl.SSLError, ConnectionError):
        return True


async def started(up: TlsUpstream, cleanup: list[Upstream]) -> TlsUpstream:
    await up.start()
    cleanup.append(up)
    return up


@pytest_asyncio.fixture
async def tls_upstreams() -> Any:
    made: list[Upstream] = []
    yield made
    for up in made:
        await up.close()


# -- SR -> endpoint ---------------------------------------------------------------------------


async def test_sfr19_tls_endpoint_reached_with_the_srs_platform_identity(
    make_router, pki, tls_upstreams
) -> None:
    up = await started(TlsUpstream("tls-1", pki.endpoint_context()), tls_upstreams)
    router = await make_router(table(A, [direct(up.endpoint(), A)]), sr_id=A, hop_tls=True)
    router.hop_tls.apply(pki.identity(A))
    for _ in range(3):
        response = await get(router.port)
        assert response.status == 200, response.body
    # The endpoint verified a certificate naming this SR; one pooled TLS connection served all.
    assert up.peers == [A, A, A]
    status = router.stats()
    assert status["hop_tls"]["connects"] == 1
    assert status["hop_tls"]["fingerprint_sha256"] == pki.identity(A).fingerprint
    assert f"tls:{LOOPBACK}:{up.port}" in status["upstream_pools"]
    assert "PRIVATE KEY" not in repr(status)


async def test_sfr19_plain_and_tls_connections_to_one_address_never_mix(
    make_router, pki, tls_upstreams
) -> None:
    up = await started(TlsUpstream("tls-1", pki.endpoint_context()), tls_upstreams)
    router = await make_router(None, sr_id=A, hop_tls=True)
    router.hop_tls.apply(pki.identity(A))
    plain = Endpoint("tls-1", FQDN, "c1", LOOPBACK, up.port)  # same address, no tls
    assert router.context.pool.take_idle(plain) is None
    router.set_table(table(A, [direct(up.endpoint(), A)]))
    assert (await get(router.port)).status == 200
    assert router.context.pool.take_idle(plain) is None  # the TLS one is not handed out


async def test_sfr19_endpoint_refuses_an_sr_without_the_platform_certificate(
    make_router, pki, other_pki, tls_upstreams
) -> None:
    up = await started(TlsUpstream("tls-1", pki.endpoint_context()), tls_upstreams)
    # No identity yet: the SR does not even try in clear; 502.
    router = await make_router(table(A, [direct(up.endpoint(), A)]), sr_id=A, hop_tls=True)
    response = await get(router.port)
    assert response.status == 502
    assert b"no platform identity" in response.body
    assert response.json()["error"] == "upstream_tls_failed"
    # An identity from another CA (trusting this endpoint's CA): the endpoint refuses it.
    # (Another SR: the first one ejected the endpoint for a second.)
    other = await make_router(table(A, [direct(up.endpoint(), A)]), sr_id=A, hop_tls=True)
    foreign = other_pki.identity(A)
    other.hop_tls.apply(
        HopIdentity(foreign.chain_pem, foreign.key_pem, pki.ca.cert_pem, foreign.fingerprint)
    )
    response = await get(other.port)
    assert response.status == 502, response.body
    assert up.requests == []
    # A client without any certificate: refused by the endpoint itself.
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem)
    assert await refused(up.port, ctx, b"GET / HTTP/1.1\r\nHost: vod.example\r\n\r\n")
    assert up.requests == []


async def test_sfr19_endpoint_with_a_certificate_of_another_ca_is_a_502(
    make_router, pki, other_pki, tls_upstreams
) -> None:
    impostor = await started(
        TlsUpstream("tls-x", other_pki.endpoint_context(require_client=False)), tls_upstreams
    )
    router = await make_router(table(A, [direct(impostor.endpoint(), A)]), sr_id=A, hop_tls=True)
    router.hop_tls.apply(pki.identity(A))
    response = await get(router.port)
    assert response.status == 502
    assert response.json()["error"] == "upstream_tls_failed"
    assert b"CERTIFICATE_VERIFY_FAILED" in response.body
    assert impostor.requests == []  # nothing was sent to it


# -- SR -> egress SR ----------------------------------------------------------------------------


async def _egress_pair(make_router, pki, endpoint: Endpoint) -> tuple[Any, Any, int]:
    """SR B (egress, on 127.0.0.1) and SR A (ingress, on 127.0.0.2), both listening for
    hops on the same port of their own address, as every SR does."""
    hop_port = free_port()
    b = await make_router(
        table(B, [direct(endpoint, B)]),
        sr_id=B,
        hop_tls=True,
        hop_tls_port=hop_port,
        egress_hop=True,
    )
    b.hop_tls.apply(pki.identity(B))
    far = Route(
        endpoint, egress_sr=B, cost=1.0, latency_ms=0.0, path=(A, B), egress_address=LOOPBACK
    )
    a = await make_router(
        table(A, [far]),
        sr_id=A,
        host=INGRESS,
        hop_tls=True,
        hop_tls_port=hop_port,
        egress_hop=True,
        egress_port=b.port,
    )
    return a, b, hop_port


async def test_sfr19_egress_hop_over_mutual_tls(make_router, upstreams, pki) -> None:
    up = await upstreams("far-1")
    a, b, hop_port = await _egress_pair(make_router, pki, up.endpoint())
    # Before the PCE says `all`, the hop is plain (to B's plain port).
    assert not a.routing.egress_tls
    assert a.routing.egress_port == b.port
    a.hop_tls.apply(pki.identity(A))
    assert a.routing.egress_tls
    assert a.routing.egress_port == hop_port
    response = await get(a.port, host=INGRESS)
    assert response.status == 200, response.body
    seen = {n.lower(): v for n, v in up.requests[-1].headers}
    assert "x-flame-endpoint" not in seen
    assert f"1.1 {A}" in seen["via"]
    assert f"1.1 {B}" in seen["via"]
    assert b.stats()["hop_tls"]["pins_need_sr"] is True
    assert f"tls:{LOOPBACK}:{hop_port}" in a.stats()["upstream_pools"]
    assert a.stats()["egress_hops"]["failures"] == 0


async def test_sfr19_egress_listener_refuses_an_sr_without_a_platform_certificate(
    make_router, upstreams, pki, other_pki
) -> None:
    up = await upstreams("far-1")
    _, b, hop_port = await _egress_pair(make_router, pki, up.endpoint())
    request = b"GET / HTTP/1.1\r\nHost: vod.example\r\nX-Flame-Endpoint: far-1\r\n\r\n"

    no_cert = ssl.create_default_context(cadata=pki.ca.cert_pem)
    foreign = ssl.create_default_context(cadata=pki.ca.cert_pem)
    other = other_pki.identity(A)
    from flame.common.tls import load_chain

    load_chain(foreign, other.chain_pem, other.key_pem)
    # A certificate of the platform CA that is not an SR identity (an endpoint's: serverAuth
    # only) does not pass as a client either.
    server_only = ssl.create_default_context(cadata=pki.ca.cert_pem)
    issued = pki.ids.endpoint_cert(LOOPBACK)
    load_chain(server_only, str(issued["chain"]), str(issued["key"]))
    for ctx in (no_cert, foreign, server_only):
        assert await refused(hop_port, ctx, request)
    assert up.requests == []
    # With B's own platform identity (it names an SR) the same request is served.
    mine = ssl.create_default_context(cadata=pki.ca.cert_pem)
    own = pki.identity(A)
    load_chain(mine, own.chain_pem, own.key_pem)
    assert (await exchange(hop_port, mine, request)).startswith(b"HTTP/1.1 200")
    # On B's plain listener X-Flame-Endpoint is no longer honoured (routed as usual).
    assert (await get(b.port, headers={"X-Flame-Endpoint": "far-1"})).status == 200
    assert b.stats()["hop_tls"]["pins_ignored"] == 1


# -- rotation ------------------------------------------------------------------------------------


async def test_sfr19_client_certificate_rotation_under_load_fails_no_request(
    make_router, pki, tls_upstreams
) -> None:
    up = await started(TlsUpstream("tls-1", pki.endpoint_context()), tls_upstreams)
    router = await make_router(table(A, [direct(up.endpoint(), A)]), sr_id=A, hop_tls=True)
    router.hop_tls.apply(pki.identity(A))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, router.port)
        client = Client(reader, writer)
        try:
            while not stop.is_set():
                statuses.append((await client.get("/")).status)
        finally:
            writer.close()

    workers = [asyncio.create_task(load()) for _ in range(8)]
    try:
        for _ in range(3):
            before = len(statuses)
            await _until(lambda before=before: len(statuses) >= before + 50)
            router.hop_tls.apply(pki.identity(A, renew=True))
        # Until the last identity was presented too: pooled connections of the old one drain
        # as they come back, so under load the first new handshake may come late.
        await _until(lambda: len(statuses) >= 400 and len(up.client_certs) == 4)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert set(statuses) == {200}, sorted(set(statuses))
    # Every identity was presented to the endpoint: old connections drained, new ones made.
    assert len(up.client_certs) == 4
    assert router.stats()["hop_tls"]["generation"] == 4


async def _until(condition: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_sfr19_peer_sr_reads_only_sr_uris() -> None:
    assert peer_sr({"subjectAltName": (("DNS", "sr-a"), ("URI", "flame:sr:sr-a"))}) == "sr-a"
    assert peer_sr({"subjectAltName": (("URI", "https://x"), ("URI", "flame:sr:"))}) is None
    assert peer_sr(None) is None
    assert peer_sr({}) is None


async def test_sfr19_websocket_to_a_tls_endpoint_over_mutual_tls(make_router, pki) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    peers: list[str | None] = []

    async def echo(ws: ServerConnection) -> None:
        peers.append(peer_sr(ws.transport.get_extra_info("peercert")))
        async for message in ws:
            await ws.send(message)

    async with serve(echo, LOOPBACK, 0, ssl=pki.endpoint_context()) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        e = Endpoint("ws-1", FQDN, "c1", LOOPBACK, port, tls=True)
        router = await make_router(table(A, [direct(e, A)]), sr_id=A, hop_tls=True)
        router.hop_tls.apply(pki.identity(A))
        async with connect(f"ws://{FQDN}/", host=LOOPBACK, port=router.port) as ws:
            await ws.send("over mutual TLS")
            assert await ws.recv() == "over mutual TLS"
    assert peers == [A]


async def test_sfr19_a_fixed_identity_from_files(make_router, pki, tls_upstreams, tmp_path) -> None:
    up = await started(TlsUpstream("tls-1", pki.endpoint_context()), tls_upstreams)
    identity = pki.identity(A)
    files = []
    for name, text in (("sr.crt", identity.chain_pem), ("sr.key", identity.key_pem)):
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    files.append(str(pki.ca.cert_path))
    router = await make_router(
        table(A, [direct(up.endpoint(), A)]), sr_id=A, hop_tls=True, hop_tls_files=tuple(files)
    )
    assert (await get(router.port)).status == 200
    assert up.peers == [A]
    assert router.stats()["hop_tls"]["mode"] == "endpoints"
