"""TLS termination at the SR (issue 15, SFR-19), with real clients: Python's ssl and curl.

Two FQDNs of two tenants, each with its own certificate, on one TLS listener: SNI picks each
one's; an unknown or missing name is refused (no default certificate leaks another tenant's);
TLS 1.2+ only, AEAD suites, ALPN http/1.1; session resumption (TLS 1.2 ids, TLS 1.3 tickets,
across workers too); X-Forwarded-Proto https upstream; the plain listener stays and redirects
an FQDN that asks for it (308); certificates swap without dropping a connection.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flame.common.pki import PlatformCA
from flame.sfr.router import RouterConfig
from flame.sfr.router.server import reuse_port_supported
from flame.sfr.router.subscriber import save_table_file
from flame.sfr.router.tls import Site

from .helpers import SR, table

pytestmark = pytest.mark.asyncio


@dataclass
class Pki:
    ca: PlatformCA
    dir: Path

    def files(self, *names: str) -> tuple[str, str]:
        issued = self.ca.issue(list(names), days=2)
        stem = self.dir / names[0].replace("*", "star")
        cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert.write_text(issued.chain_pem)
        key.write_text(issued.key_pem)
        return str(cert), str(key)

    def site(self, fqdn: str, **kw: Any) -> Site:
        issued = self.ca.issue([fqdn], days=2)
        from flame.common.pki import inspect_chain

        info = inspect_chain(issued.chain_pem)
        return Site(
            fqdn, (fqdn,), issued.chain_pem, issued.key_pem, fingerprint=info.fingerprint, **kw
        )

    @property
    def cafile(self) -> str:
        return str(self.ca.cert_path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(PlatformCA.open(tmp_path / "ca"), tmp_path)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str
    cipher: str
    alpn: str | None
    fingerprint: str
    reused: bool
    session: ssl.SSLSession | None


def client_context(cafile: str, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


def fetch(
    port: int,
    name: str | None,
    ctx: ssl.SSLContext,
    path: str = "/",
    *,
    session: ssl.SSLSession | None = None,
    host: str | None = None,
) -> Answer:
    """One HTTPS request with Python's ssl (blocking; run it in a thread)."""
    import hashlib

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if name is None:
            ctx.check_hostname = False
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            host = host or name or "127.0.0.1"
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            der = tls.getpeercert(binary_form=True)
            cipher = tls.cipher()
            return Answer(
                int(lines[0].split()[1]),
                headers,
                body,
                str(tls.version()),
                cipher[0] if cipher else "",
                tls.selected_alpn_protocol(),
                hashlib.sha256(der or b"").hexdigest(),
                bool(tls.session_reused),
                tls.session,
            )


async def two_tenants(make_router, upstreams, pki: Pki, **settings: object):
    """An SR routing a.example (tenant A's upstream) and b.example (tenant B's), each with its
    own certificate from files, the plain listener redirecting b.example."""
    up_a, up_b = await upstreams("up-a"), await upstreams("up-b")
    t = table(
        1,
        {
            "a.example": [(up_a.endpoint(fqdn="a.example"), 1.0)],
            "b.example": [(up_b.endpoint(fqdn="b.example"), 1.0)],
        },
    )
    return await make_router(
        t,
        tls_port=0,
        tls_certs=(pki.files("a.example"), pki.files("b.example", "*.b.example")),
        tls_redirect=("b.example",),
        **settings,
    )


async def test_sni_selects_each_fqdns_certificate_python_ssl(make_router, upstreams, pki) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    port = router.tls_port
    assert port is not None
    assert port != router.port
    ctx = client_context(pki.cafile)
    a = await asyncio.to_thread(fetch, port, "a.example", ctx, "/x?y=1")
    b = await asyncio.to_thread(fetch, port, "b.example", ctx, "/z")
    sub = await asyncio.to_thread(fetch, port, "cdn.b.example", ctx, "/z")  # wildcard name
    assert (a.status, b.status) == (200, 200)
    assert json.loads(a.body)["upstream"] == "up-a"
    assert json.loads(b.body)["upstream"] == "up-b"
    assert a.fingerprint != b.fingerprint
    assert sub.fingerprint == b.fingerprint
    assert sub.status == 404  # no route for cdn.b.example: the SR's own answer, over TLS
    # HTTP/1.1 over TLS, ALPN, TLS 1.3 by default; the endpoint learns it was https.
    assert a.alpn == "http/1.1"
    assert a.version == "TLSv1.3"
    forwarded = dict((k.lower(), v) for k, v in json.loads(a.body)["headers"])
    assert forwarded["x-forwarded-proto"] == "https"
    assert json.loads(a.body)["target"] == "/x?y=1"


async def test_curl_with_the_ca_sees_each_tenants_certificate(make_router, upstreams, pki) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    router = await two_tenants(make_router, upstreams, pki)
    port = router.tls_port
    for name, upstream in (("a.example", "up-a"), ("b.example", "up-b")):
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--cacert",
            pki.cafile,
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            "-w",
            "\\n%{http_code} %{ssl_verify_result} %{http_version}",
            f"https://{name}:{port}/hello",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        body, _, trailer = out.decode().rpartition("\n")
        assert trailer == "200 0 1.1", (name, trailer, err)
        assert json.loads(body)["upstream"] == upstream
    # A name the SR has no certificate for: curl fails the handshake (no default site).
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--cacert",
        pki.cafile,
        "--resolve",
        f"c.example:{port}:127.0.0.1",
        f"https://c.example:{port}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await proc.communicate()
    assert proc.returncode == 35  # the handshake failed: unrecognized_name alert (tlsconn.py)
    assert router.stats()["tls"]["unknown_names"] == 1


async def test_unknown_or_missing_names_weak_versions_and_ciphers_are_refused(
    make_router, upstreams, pki
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    port = router.tls_port
    for name in ("c.example", None):
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.to_thread(fetch, port, name, client_context(pki.cafile))
        assert "UNRECOGNIZED_NAME" in str(refused.value).upper()  # the alert, not a bare EOF
    # TLS 1.0/1.1 (Python's client no longer offers them: openssl does, when asked).
    for flag in ("-tls1", "-tls1_1"):
        proc = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            flag,
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "a.example",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode != 0, out
        assert b"Cipher is (NONE)" in out or b"no protocols available" in out, out
    weak = client_context(pki.cafile)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES256-SHA:ECDHE-ECDSA-AES128-SHA")  # CBC, no AEAD
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(fetch, port, "a.example", weak)
    tls12 = client_context(pki.cafile)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    answer = await asyncio.to_thread(fetch, port, "a.example", tls12)
    assert answer.version == "TLSv1.2"
    assert "GCM" in answer.cipher or "CHACHA20" in answer.cipher
    assert answer.cipher.startswith("ECDHE")
    assert router.stats()["tls"]["unknown_names"] == 2


async def test_sessions_resume_with_ids_and_tickets(make_router, upstreams, pki) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    port = router.tls_port
    for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki.cafile)
        ctx.maximum_version = maximum
        first = await asyncio.to_thread(fetch, port, "a.example", ctx)
        assert not first.reused
        assert first.session is not None
        again = await asyncio.to_thread(fetch, port, "a.example", ctx, session=first.session)
        assert again.reused, maximum
        assert again.status == 200


async def test_the_plain_listener_stays_and_redirects_fqdns_that_ask(
    make_router, upstreams, pki
) -> None:
    from .helpers import Client

    router = await two_tenants(make_router, upstreams, pki)
    c = await Client.connect(router.port)
    a = await c.get("/plain", host="a.example")
    assert a.status == 200  # a.example does not ask for https
    b = await c.get("/path?q=1", host="b.example")
    assert b.status == 308
    assert b.header("location") == f"https://b.example:{router.tls_port}/path?q=1"
    again = await c.get("/", host="b.example:80")
    assert again.status == 308  # the same keep-alive connection goes on
    status = await c.get("/.flame/status", host="_flame")
    assert status.status == 200  # the SR's own endpoint is never redirected
    await c.close()


async def test_certificates_swap_without_dropping_connections(make_router, upstreams, pki) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    assert router.tls is not None
    port = router.tls_port
    ctx = client_context(pki.cafile)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="a.example"
    )
    old = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    async def one(keep: bool = True) -> int:
        writer.write(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        await reader.readexactly(length)
        return int(head.split()[1])

    assert await one() == 200
    renewed = pki.site("a.example")
    router.tls.update([renewed, *(s for s in router.tls.sites.values() if s.fqdn != "a.example")])
    assert await one() == 200  # the open connection goes on with its certificate
    fresh = await asyncio.to_thread(fetch, port, "a.example", client_context(pki.cafile))
    assert fresh.fingerprint == renewed.fingerprint
    import hashlib

    assert hashlib.sha256(old).hexdigest() != renewed.fingerprint
    writer.close()
    await writer.wait_closed()
    # b.example lost nothing; an update without a.example stops serving it.
    router.tls.update([s for s in router.tls.sites.values() if s.fqdn != "a.example"])
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(fetch, port, "a.example", client_context(pki.cafile))
    assert (
        await asyncio.to_thread(fetch, port, "b.example", client_context(pki.cafile))
    ).status == 200


async def test_a_bad_certificate_in_an_update_is_left_out_not_fatal(
    make_router, upstreams, pki, caplog
) -> None:
    router = await two_tenants(make_router, upstreams, pki)
    assert router.tls is not None
    good = pki.site("a.example")
    bad = Site("b.example", ("b.example",), good.chain_pem, pki.site("b.example").key_pem)
    router.tls.update([good, bad])
    assert set(router.tls.sites) == {"a.example"}
    assert "PRIVATE KEY" not in caplog.text
    assert "cannot load the certificate for b.example" in caplog.text


RUNNER = """
import json, sys
from flame.sfr.router import RouterConfig, serve
serve(RouterConfig.from_dict(json.loads(sys.argv[1])),
      on_tls_ready=lambda host, port: print("TLS", port, flush=True))
"""


@pytest.mark.skipif(not reuse_port_supported(), reason="SO_REUSEPORT is not available")
async def test_two_workers_share_the_tls_port_and_resume_each_others_sessions(
    upstreams, pki, tmp_path: Path
) -> None:
    up = await upstreams("up-a")
    table_file = tmp_path / "table.json"
    save_table_file(table_file, table(1, {"a.example": [(up.endpoint(fqdn="a.example"), 1.0)]}))
    config = RouterConfig(
        sr_id=SR,
        port=0,
        tls_port=0,
        workers=2,
        table_file=str(table_file),
        tls_certs=(pki.files("a.example"),),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, json.dumps(config.to_dict()), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"TLS "), line
        port = int(line.split()[1])
        ctx = client_context(pki.cafile)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # one reusable session for all
        first = await asyncio.to_thread(fetch, port, "a.example", ctx)
        assert first.status == 200
        pids, reused = set(), 0
        for _ in range(30):
            answer = await asyncio.to_thread(
                fetch,
                port,
                "a.example",
                ctx,
                "/.flame/status",
                session=first.session,
                host="_flame",
            )
            pids.add(json.loads(answer.body)["pid"])
            reused += answer.reused
        # The kernel spread the connections over both workers, and every one resumed: the
        # workers share their ticket keys (and a TLS 1.2 session resumes from its ticket).
        assert len(pids) == 2
        assert reused == 30
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)  # drains the pipe before the loop ends
