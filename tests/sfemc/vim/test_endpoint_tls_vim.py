"""The process VIM and SFEs that opt in to hop-by-hop TLS (SFR-19; docs/tls.md): a certificate
at every start, renewed before it expires while the SFE runs, plain HTTP (and saying so) when
the PCE's switch is off, a retry when no certificate can be had. The certificates come from a
real platform CA through a source standing in for the PCE's `POST /v1/certs/endpoint` (that
path is exercised end to end in tests/orchestrator/test_hop_tls_sfe.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from eventually import eventually_async
from flame.common.pki import PlatformCA, fingerprint_of
from flame.sfemc.images import ImageRepository
from flame.sfemc.vim.base import VimError, VimState
from flame.sfemc.vim.endpoint_tls import (
    CertUnavailable,
    EndpointCert,
    HopTlsOff,
    probe_tls,
)
from flame.sfemc.vim.process import ProcessVim

from .conftest import make_sf, spec

pytestmark = pytest.mark.asyncio

SERVER = """\
import os, sys
from flame.media.serving import serve_app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": body})

sys.exit(serve_app(app, os.environ["FLAME_HOST"], int(os.environ["FLAME_PORT"])))
"""


class CaSource:
    """Endpoint certificates from a real platform CA; `off`/`away` play the PCE's answers."""

    def __init__(self, ca: PlatformCA, days: float) -> None:
        self.ca, self.days = ca, days
        self.off = False
        self.away = False
        self.issued: list[str] = []

    async def issue(self, host: str) -> EndpointCert:
        if self.off:
            raise HopTlsOff("hop TLS is off at this PCE")
        if self.away:
            raise CertUnavailable("no endpoint certificate from the PCE (connection refused)")
        issued = self.ca.issue([], ip_addresses=[host], days=self.days)
        self.issued.append(fingerprint_of(issued.chain_pem))
        return EndpointCert(
            host, issued.chain_pem, issued.key_pem, self.ca.cert_pem, issued.not_after,
            self.issued[-1],
        )  # fmt: skip

    async def close(self) -> None:
        return None


def _tls_sf(repo: ImageRepository, tmp_path: Path) -> str:
    return make_sf(
        repo,
        tmp_path,
        "tlsecho",
        SERVER,
        tls="true",
        ports="[8080]",
        health="{path: /health, interval: 0.2 s}",
    )


def _state(vim: ProcessVim, sfe: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads((vim.sfes_dir / sfe / "state.json").read_text())
    return doc


async def test_sfr19_certificate_at_boot_and_renewed_before_expiry(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    ca = PlatformCA.open(tmp_path / "ca")
    # A 15 s certificate: renewed when a third of it is left (10 s in). 15 s, not less: the
    # first boot must pass its health check (which verifies the certificate) before it expires,
    # and a loaded machine has been seen to take ~5 s to start a Python SF.
    source = CaSource(ca, days=15 / 86400)
    vim.endpoint_certs = source
    await vim.place(spec(_tls_sf(repo, tmp_path), "i1.tls.c1"))
    status = await vim.boot("i1.tls.c1")
    assert status.tls is True
    port = status.ports["http"]
    assert await probe_tls("127.0.0.1", port, "/health", ca.cert_pem, 5.0)
    with pytest.raises(httpx.HTTPError):  # HTTPS only
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    first = source.issued[-1]

    def renewed(doc: dict[str, object]) -> bool:
        tls = doc["tls"]
        return isinstance(tls, dict) and tls["fingerprint_sha256"] != first

    doc = await eventually_async(
        lambda: _state(vim, "i1.tls.c1"), until=renewed, what="a renewed certificate"
    )
    assert doc["restarts"] == 0  # a renewal is not a crash
    after = await eventually_async(
        lambda: vim.status("i1.tls.c1"),
        until=lambda s: s.state is VimState.RUNNING,
        what="the SFE healthy on its renewed certificate",
    )
    assert after.tls is True
    assert len(source.issued) >= 2


async def test_sfr19_hop_tls_off_runs_plain_and_says_so(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    source = CaSource(PlatformCA.open(tmp_path / "ca"), days=1)
    source.off = True
    vim.endpoint_certs = source
    await vim.place(spec(_tls_sf(repo, tmp_path), "i1.plain.c1"))
    status = await vim.boot("i1.plain.c1")
    assert status.tls is False
    answer = httpx.get(f"http://127.0.0.1:{status.ports['http']}/health", timeout=5)
    assert answer.status_code == 200
    logs = "\n".join(await vim.logs("i1.plain.c1"))
    assert "hop-by-hop TLS is off, serving plain HTTP: the PCE says: hop TLS is off" in logs


async def test_sfr19_no_certificate_now_is_a_temporary_boot_failure(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    source = CaSource(PlatformCA.open(tmp_path / "ca"), days=1)
    source.away = True
    vim.endpoint_certs = source
    await vim.place(spec(_tls_sf(repo, tmp_path), "i1.away.c1"))
    with pytest.raises(VimError, match="connection refused") as info:
        await vim.boot("i1.away.c1")
    assert not info.value.permanent  # the reconciler retries: never plain by accident
    assert (await vim.status("i1.away.c1")).pid is None
    source.away = False
    status = await vim.boot("i1.away.c1")
    assert status.tls is True
