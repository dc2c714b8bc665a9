"""The SFEMC's side of hop-by-hop TLS (SFR-19, docs/tls.md): the manifest's opt-in, the files
an SFE gets, and the VIM's health check of a TLS SFE. End to end with real processes:
tests/orchestrator/test_hop_tls_sfe.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flame.common.diagnostics import ValidationFailed
from flame.common.pki import PlatformCA
from flame.sfemc.images.manifest import ImageManifest, load_manifest
from flame.sfemc.vim.endpoint_tls import EndpointCert, probe_tls, write_cert_files

BASE = "name: s\nentrypoint: [python3, s.py]\nports: [8080]\n"


def _manifest(tmp_path: Path, extra: str) -> ImageManifest:
    path = tmp_path / "flame-sf.yaml"
    path.write_text(BASE + extra)
    return load_manifest(path, default_name="s")


def test_manifest_tls_opt_in_round_trips_and_is_absent_when_false(tmp_path: Path) -> None:
    on = _manifest(tmp_path, "tls: true\n")
    assert on.tls is True
    assert on.to_json()["tls"] is True
    assert ImageManifest.from_json(on.to_json()).tls is True
    off = _manifest(tmp_path, "")
    assert off.tls is False
    assert "tls" not in off.to_json()  # images without it keep their digests


def test_manifest_tls_must_be_a_boolean_located(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _manifest(tmp_path, "tls: sometimes\n")
    (item,) = caught.value.diagnostics
    assert item.code == "E1001"
    assert "tls must be true or false" in item.message
    assert item.position.line == 4


def _cert(ca: PlatformCA, host: str = "127.0.0.1") -> EndpointCert:
    issued = ca.issue([], ip_addresses=[host], days=1)
    return EndpointCert(host, issued.chain_pem, issued.key_pem, ca.cert_pem, 0.0, "ab" * 32)


def test_cert_files_are_private_and_never_written_through_a_planted_link(tmp_path: Path) -> None:
    ca = PlatformCA.open(tmp_path / "ca")
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "platform-secrets"
    elsewhere.mkdir()
    (home / ".flame-tls").symlink_to(elsewhere)  # what a hostile SFE could leave behind
    env = write_cert_files(home, _cert(ca), "/home/sfe", None)
    assert env == {
        "FLAME_TLS_CERT": "/home/sfe/.flame-tls/cert.pem",
        "FLAME_TLS_KEY": "/home/sfe/.flame-tls/key.pem",
        "FLAME_TLS_CA": "/home/sfe/.flame-tls/ca.pem",
    }
    assert list(elsewhere.iterdir()) == []
    directory = home / ".flame-tls"
    assert not directory.is_symlink()
    assert directory.stat().st_mode & 0o777 == 0o700
    for name in ("cert.pem", "key.pem", "ca.pem"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" in (directory / "key.pem").read_text()
    assert repr(_cert(ca)).count("PRIVATE") == 0  # never the key in a log line


@contextlib.asynccontextmanager
async def _server(ctx: ssl.SSLContext | None) -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Whatever arrives (a request, or a TLS ClientHello at a plain server), answer at once.
        with contextlib.suppress(Exception):
            await reader.read(4096)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _server_ctx(tmp_path: Path, ca: PlatformCA, *, client_ca: str | None) -> ssl.SSLContext:
    issued = ca.issue([], ip_addresses=["127.0.0.1"], days=1)
    cert, key = tmp_path / f"{os.urandom(4).hex()}.crt", tmp_path / f"{os.urandom(4).hex()}.key"
    cert.write_text(issued.chain_pem)
    key.write_text(issued.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.mark.asyncio
async def test_probe_accepts_only_tls_with_the_platform_certificate(tmp_path: Path) -> None:
    """SFR-19: a TLS SFE is healthy when it presents the CA's certificate for its host, whether
    it answers or refuses the VIM for want of a client certificate; plain HTTP or another CA's
    certificate on that port is not."""
    ca = PlatformCA.open(tmp_path / "ca")
    other = PlatformCA.open(tmp_path / "other", name="another CA")
    async with _server(_server_ctx(tmp_path, ca, client_ca=None)) as port:
        assert await probe_tls("127.0.0.1", port, "/health", ca.cert_pem, 5.0)
    async with _server(_server_ctx(tmp_path, ca, client_ca=ca.cert_pem)) as port:
        assert await probe_tls("127.0.0.1", port, "/health", ca.cert_pem, 5.0)
    async with _server(_server_ctx(tmp_path, other, client_ca=None)) as port:
        assert not await probe_tls("127.0.0.1", port, "/health", ca.cert_pem, 5.0)
    async with _server(None) as port:  # an SFE that ignored FLAME_TLS_* and serves plain
        assert not await probe_tls("127.0.0.1", port, "/health", ca.cert_pem, 5.0)
