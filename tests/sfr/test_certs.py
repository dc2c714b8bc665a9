"""Content certificates at the PCE (issue 15; SFR-22, SFR-23), in process.

A tenant uploads a chain and key for an FQDN delegated to it (checked: covers the FQDN, key
matches, not expired), never for another's; reads back chain and metadata, never the key;
the key is sealed at rest with a key file outside the database; routed, delegated FQDNs get
platform certificates, renewed when due; each SR's long-polled bundle holds the certificates
(and keys) of the FQDNs its table routes, and nothing once a delegation is taken back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flame.common.auth import Role, TokenStore
from flame.common.pki import PlatformCA, inspect_chain
from flame.sfr.api import create_app
from flame.sfr.certs import CertManager, open_cert_manager
from flame.sfr.service import PceService
from flame.sfr.store import Store
from flame.topology.loader import load_topology

from .test_api import LINE, Env, bearer, x_endpoint

pytestmark = pytest.mark.asyncio


@pytest.fixture
def env(tmp_path: Path) -> Env:
    topology_path = tmp_path / "line.yaml"
    topology_path.write_text(LINE, encoding="utf-8")
    tokens = TokenStore(tmp_path / "state" / "tokens.json")
    return Env(
        tmp=tmp_path,
        topology_path=topology_path,
        db=tmp_path / "pce.sqlite3",
        tokens=tokens,
        operator=tokens.issue("ops", Role.OPERATOR),
        acme=tokens.issue("acme-bot", Role.TENANT, "acme"),
        globex=tokens.issue("globex-bot", Role.TENANT, "globex"),
    )


class CertPce:
    def __init__(self, service: PceService, http: httpx.AsyncClient, env: Env, certs: CertManager):
        self.service, self.http, self.env, self.certs = service, http, env, certs
        self.router = env.tokens.issue(f"sr-{id(self)}", Role.ROUTER)

    async def op(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, path, headers=bearer(self.env.operator), **kw)

    async def bundle(self, sr: str, since: int = 0) -> httpx.Response:
        return await self.http.get(
            f"/v1/certs/sr/{sr}", params={"since": since}, headers=bearer(self.router)
        )


@contextlib.asynccontextmanager
async def running(env: Env, **manager: Any) -> AsyncIterator[CertPce]:
    store = Store(env.db, "pce-1")
    certs = open_cert_manager(env.tmp / "state", db=env.tmp / "certs.sqlite3", **manager)
    service = PceService(load_topology(env.topology_path), store, certs=certs)
    app = create_app(service, env.tokens)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://pce") as http,
        ):
            yield CertPce(service, http, env, certs)
    finally:
        certs.store.close()
        store.close()


@pytest_asyncio.fixture
async def pce(env: Env) -> AsyncIterator[CertPce]:
    async with running(env) as p:
        await p.op("PUT", "/v1/delegations/x.example", json={"tenant": "acme"})
        await p.op("PUT", "/v1/delegations/y.example", json={"tenant": "globex"})
        yield p


def own_chain(names: list[str], *, days: float = 30, start_days: float = -1) -> tuple[str, str]:
    """A tenant's own certificate (a CA of its own, not the platform's): chain, key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"Tenant CA {secrets.token_hex(4)}")]
    )
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain.decode(), key_pem.decode()


async def route(pce: CertPce, sfe: str = "x-d", fqdn: str = "x.example", port: int = 9001) -> None:
    endpoint = x_endpoint(sfe=sfe, port=port)
    body = {k: v for k, v in endpoint.to_dict().items() if v is not None}
    body["fqdn"] = fqdn
    r = await pce.op("POST", "/v1/registrations", json=body)
    assert r.status_code in (200, 201), r.text


# -- manual certificates (SFR-22) ------------------------------------------------------------------


async def test_a_tenant_uploads_for_its_fqdn_and_reads_back_the_chain_never_the_key(
    pce: CertPce, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chain, key = own_chain(["x.example", "www.x.example"])
    r = await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["source"] == "manual"
    assert doc["tenant"] == "acme"
    assert doc["names"] == ["x.example", "www.x.example"]
    assert doc["certificates"] == 2
    got = await pce.http.get("/v1/certs/x.example", headers=bearer(pce.env.acme))
    assert got.json()["chain"].startswith("-----BEGIN CERTIFICATE-----")
    listed = await pce.http.get("/v1/certs", headers=bearer(pce.env.acme))
    assert [c["fqdn"] for c in listed.json()["certificates"]] == ["x.example"]
    # The other tenant sees nothing of it, and cannot read it.
    other = await pce.http.get("/v1/certs", headers=bearer(pce.env.globex))
    assert other.json()["certificates"] == []
    assert (
        await pce.http.get("/v1/certs/x.example", headers=bearer(pce.env.globex))
    ).status_code == 403
    # The key is in no answer to a tenant or operator API call, and in no log line.
    for response in (r, got, listed):
        assert "PRIVATE KEY" not in response.text
    operator_view = await pce.op("GET", "/v1/certs/x.example")
    assert "PRIVATE KEY" not in operator_view.text
    body = key.split("-----")[2].strip().splitlines()[1]
    assert body not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_a_tenant_cannot_upload_for_an_fqdn_it_does_not_own(pce: CertPce) -> None:
    chain, key = own_chain(["y.example"])
    r = await pce.http.put(
        "/v1/certs/y.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    assert r.status_code == 403
    assert r.json()["error"] == "permission_denied"
    # Nor for a name nobody was given, nor a subdomain of another's.
    for fqdn in ("z.example", "cdn.y.example"):
        chain, key = own_chain([fqdn])
        r = await pce.http.put(
            f"/v1/certs/{fqdn}", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
        )
        assert r.status_code == 403, fqdn
    # A subdomain of its own delegation is its own.
    chain, key = own_chain(["cdn.x.example"])
    r = await pce.http.put(
        "/v1/certs/cdn.x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other_name", "does not cover 'x.example'"),
        ("wrong_key", "does not match"),
        ("expired", "expired"),
        ("garbage", "not PEM"),
        ("bad_key", "cannot be read"),
        ("wrong_order", "out of order"),
    ],
)
async def test_uploads_are_checked(pce: CertPce, case: str, message: str) -> None:
    chain, key = own_chain(["x.example"])
    if case == "other_name":
        chain, key = own_chain(["other.example"])
    elif case == "wrong_key":
        key = own_chain(["x.example"])[1]
    elif case == "expired":
        chain, key = own_chain(["x.example"], days=-1, start_days=-10)
    elif case == "garbage":
        chain = "hello"
    elif case == "bad_key":
        key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "wrong_order":
        blocks = chain.split("-----END CERTIFICATE-----\n")
        chain = (
            blocks[1] + "-----END CERTIFICATE-----\n" + blocks[0] + "-----END CERTIFICATE-----\n"
        )
    r = await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert "AAAA" not in r.text


async def test_keys_are_sealed_at_rest_with_a_private_key_file(pce: CertPce) -> None:
    chain, key = own_chain(["x.example"])
    await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    state = pce.env.tmp / "state"
    key_body = "".join(key.splitlines()[1:-1]).encode()
    for path in pce.env.tmp.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data or path.parent.name == "ca", path
            assert key_body[64:120] not in data, path
    assert stat.S_IMODE((state / "certs.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pce.env.tmp / "certs.sqlite3").stat().st_mode) == 0o600
    # A restarted PCE unseals it again (the SR bundle carries it).
    await route(pce)


# -- distribution to the SRs that route the FQDN ----------------------------------------------------


async def test_only_the_srs_routing_an_fqdn_get_its_certificate_and_key(pce: CertPce) -> None:
    chain, key = own_chain(["x.example"])
    await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    before = await pce.bundle("sr-a")
    assert before.json()["certs"] == []  # x.example is not routed yet
    await route(pce)
    r = await pce.bundle("sr-a")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["version"] >= 1
    (entry,) = doc["certs"]
    assert entry["fqdn"] == "x.example"
    assert entry["key"].strip() == key.strip()
    assert entry["chain"].startswith("-----BEGIN CERTIFICATE-----")
    assert entry["source"] == "manual"
    # Unchanged: 304; the tenant's token does not read bundles.
    again = await pce.bundle("sr-a", since=doc["version"])
    assert again.status_code == 304
    denied = await pce.http.get("/v1/certs/sr/sr-a", headers=bearer(pce.env.acme))
    assert denied.status_code == 403


async def test_routed_delegated_fqdns_get_platform_certificates_and_renewals(
    pce: CertPce,
) -> None:
    await route(pce)
    r = await pce.bundle("sr-b")
    (entry,) = r.json()["certs"]
    assert entry["source"] == "platform"
    info = inspect_chain(entry["chain"], entry["key"])
    assert info.covers("x.example")
    ca = PlatformCA.open(pce.env.tmp / "state" / "ca")
    assert info.issuer == ca._cert.subject.rfc4514_string()
    # The static registration's FQDN is the operator's own: no automatic certificate.
    assert all(c["fqdn"] != "static.example" for c in r.json()["certs"])
    # The tenant renews it: a new certificate, a new bundle version.
    renewed = await pce.http.post("/v1/certs/x.example/renew", headers=bearer(pce.env.acme))
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["fingerprint_sha256"] != info.fingerprint
    newer = await pce.bundle("sr-b", since=r.json()["version"])
    assert newer.status_code == 200
    assert newer.json()["certs"][0]["fingerprint_sha256"] == renewed.json()["fingerprint_sha256"]
    # Another tenant cannot renew or delete it; the owner cannot delete the platform's.
    assert (
        await pce.http.post("/v1/certs/x.example/renew", headers=bearer(pce.env.globex))
    ).status_code == 403
    assert (
        await pce.http.delete("/v1/certs/x.example", headers=bearer(pce.env.acme))
    ).status_code == 409


async def test_a_platform_certificate_is_renewed_when_a_third_of_its_life_is_left(
    env: Env,
) -> None:
    async with running(env) as pce:
        await pce.op("PUT", "/v1/delegations/x.example", json={"tenant": "acme"})
        await route(pce)
        first = pce.certs.records["x.example"]
        assert not pce.certs.due()
        # Two thirds of its life later:
        life = first.info.not_after - first.info.not_before
        pce.certs._clock = lambda: first.info.not_after - life / 4
        assert pce.certs.due()
        await pce.service._lease_tick()
        second = pce.certs.records["x.example"]
        assert second.info.fingerprint != first.info.fingerprint
        assert pce.certs.renewed == 1


async def test_an_upload_replaces_the_platform_certificate_and_deleting_it_brings_it_back(
    pce: CertPce,
) -> None:
    await route(pce)
    auto = (await pce.bundle("sr-a")).json()
    chain, key = own_chain(["x.example"])
    await pce.http.put(
        "/v1/certs/x.example",
        json={"chain": chain, "key": key, "redirect_http": True},
        headers=bearer(pce.env.acme),
    )
    manual = (await pce.bundle("sr-a", since=auto["version"])).json()
    assert manual["certs"][0]["source"] == "manual"
    assert manual["certs"][0]["redirect_http"] is True
    deleted = await pce.http.delete("/v1/certs/x.example", headers=bearer(pce.env.acme))
    assert deleted.status_code == 200
    back = (await pce.bundle("sr-a", since=manual["version"])).json()
    assert back["certs"][0]["source"] == "platform"
    assert back["certs"][0]["redirect_http"] is True  # the option belongs to the FQDN
    off = await pce.http.patch(
        "/v1/certs/x.example", json={"redirect_http": False}, headers=bearer(pce.env.acme)
    )
    assert off.status_code == 200
    assert (await pce.bundle("sr-a", since=back["version"])).json()["certs"][0][
        "redirect_http"
    ] is False


async def test_undelegation_removes_the_certificate_from_every_sr(pce: CertPce) -> None:
    chain, key = own_chain(["x.example"])
    await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    await route(pce)
    versions = {}
    for sr in ("sr-a", "sr-e"):
        doc = (await pce.bundle(sr)).json()
        assert [c["fqdn"] for c in doc["certs"]] == ["x.example"]
        versions[sr] = doc["version"]
    r = await pce.op("DELETE", "/v1/delegations/x.example")
    assert r.status_code == 200
    for sr in ("sr-a", "sr-e"):
        doc = (await pce.bundle(sr, since=versions[sr])).json()
        assert doc["certs"] == []  # the registration stays (routing goes on), the cert not
    assert (await pce.op("GET", "/v1/certs/x.example")).status_code == 404
    # Given to another tenant: the new owner's platform certificate, not the old upload.
    await pce.op("PUT", "/v1/delegations/x.example", json={"tenant": "globex"})
    doc = (await pce.bundle("sr-a")).json()
    (entry,) = doc["certs"]
    assert entry["source"] == "platform"


async def test_a_certificate_naming_another_tenants_fqdn_is_never_served_for_it(
    pce: CertPce,
) -> None:
    chain, key = own_chain(["x.example", "y.example"])
    r = await pce.http.put(
        "/v1/certs/x.example", json={"chain": chain, "key": key}, headers=bearer(pce.env.acme)
    )
    assert r.status_code == 200  # it covers x.example; y.example is left out at the SRs
    await route(pce)
    (entry,) = (await pce.bundle("sr-a")).json()["certs"]
    assert entry["names"] == ["x.example"]


async def test_the_ca_certificate_is_public_to_token_holders(pce: CertPce) -> None:
    r = await pce.http.get("/v1/certs/ca", headers=bearer(pce.env.globex))
    assert r.json()["ca"].startswith("-----BEGIN CERTIFICATE-----")
    assert (await pce.http.get("/v1/certs/ca")).status_code == 401


async def test_a_restarted_pce_keeps_certificates_and_bundle_versions(env: Env) -> None:
    async with running(env) as pce:
        await pce.op("PUT", "/v1/delegations/x.example", json={"tenant": "acme"})
        await route(pce)
        first = (await pce.bundle("sr-a")).json()
    async with running(env) as pce:
        again = await pce.bundle("sr-a", since=first["version"])
        assert again.status_code == 304  # same content, same version
        doc = (await pce.bundle("sr-a")).json()
        assert doc["certs"][0]["fingerprint_sha256"] == first["certs"][0]["fingerprint_sha256"]
