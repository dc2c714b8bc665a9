"""Hop-by-hop TLS at the PCE (SFR-19, issue 15 item 3): SR identities in the bundles, their
renewal, the `--hop-tls` switch, endpoint certificates, and `tls` endpoints in the tables.

In process, through the PCE's HTTP API (as tests/sfr/test_certs.py); the data plane side is
tests/sfr/router/test_hop_tls.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from flame.common.auth import Role, TokenStore
from flame.sfr.hop_identity import HopTls
from flame.sfr.models import Endpoint
from flame.sfr.router.upstream_tls import parse_identity

from .test_api import LINE, Env, bearer
from .test_certs import route, running

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


def _sans(pem: str) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


async def test_sfr19_each_sr_bundle_carries_its_platform_identity(env: Env) -> None:
    async with running(env, hop_tls=HopTls.ALL) as pce:
        await route(pce)
        srs = sorted(pce.certs.bundles)
        assert srs
        fingerprints = set()
        for sr in srs:
            r = await pce.bundle(sr)
            assert r.status_code == 200
            identity = parse_identity(r.json())
            assert identity is not None
            assert identity.mode == "all"
            assert "PRIVATE KEY" in identity.key_pem
            assert identity.trust_pem == pce.certs.ca.cert_pem
            sans = _sans(identity.chain_pem)
            assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"flame:sr:{sr}"]
            cert = x509.load_pem_x509_certificate(identity.chain_pem.encode())
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages
            fingerprints.add(identity.fingerprint)
        assert len(fingerprints) == len(srs)  # one identity per SR
        # Tenants never see identities (the bundle route is the router's or operator's).
        r = await pce.http.get(f"/v1/certs/sr/{srs[0]}", headers=bearer(env.acme))
        assert r.status_code == 403


async def test_sfr19_identity_renewal_reaches_the_sr_as_a_new_bundle_version(env: Env) -> None:
    async with running(env, hop_tls=HopTls.ENDPOINTS) as pce:
        await route(pce)
        sr = sorted(pce.certs.bundles)[0]
        first = (await pce.bundle(sr)).json()
        identity = parse_identity(first)
        assert identity is not None
        assert identity.mode == "endpoints"
        assert not pce.certs.due()
        # Two thirds of its life later the lease tick renews it.
        life_left = (identity.not_after - pce.certs._clock()) / 4
        pce.certs.identities._clock = lambda: identity.not_after - life_left
        assert pce.certs.due()
        await pce.service._lease_tick()
        second = (await pce.bundle(sr, since=first["version"])).json()
        assert second["version"] > first["version"]
        renewed = parse_identity(second)
        assert renewed is not None
        assert renewed.fingerprint != identity.fingerprint
        assert pce.certs.identities.renewed >= 1


async def test_sfr19_hop_tls_off_gives_no_identity_and_no_endpoint_certificate(
    env: Env,
) -> None:
    async with running(env) as pce:
        await route(pce)
        sr = sorted(pce.certs.bundles)[0]
        assert parse_identity((await pce.bundle(sr)).json()) is None
        r = await pce.op("POST", "/v1/certs/endpoint", json={"host": "127.0.0.1"})
        assert r.status_code == 409
        assert r.json()["error"] == "hop_tls_off"


async def test_sfr19_endpoint_certificates_for_routers_and_operators_only(env: Env) -> None:
    async with running(env, hop_tls=HopTls.ENDPOINTS) as pce:
        r = await pce.op("POST", "/v1/certs/endpoint", json={"host": "127.0.0.1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ca"] == pce.certs.ca.cert_pem
        assert "PRIVATE KEY" in body["key"]
        sans = _sans(body["chain"])
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        router = env.tokens.issue("vim", Role.ROUTER)
        r = await pce.http.post(
            "/v1/certs/endpoint", json={"host": "sfe.example"}, headers=bearer(router)
        )
        assert r.status_code == 200
        assert _sans(r.json()["chain"]).get_values_for_type(x509.DNSName) == ["sfe.example"]
        r = await pce.http.post(
            "/v1/certs/endpoint", json={"host": "127.0.0.1"}, headers=bearer(env.acme)
        )
        assert r.status_code == 403
        for bad in ({"host": "a b"}, {"host": "-x-"}, {"host": "x", "days": 1000}, {}):
            r = await pce.op("POST", "/v1/certs/endpoint", json=bad)
            assert r.status_code in (400, 422), (bad, r.text)
            assert "error" in r.json()


async def test_sfr19_tls_endpoints_are_marked_in_the_tables(env: Env) -> None:
    async with running(env, hop_tls=HopTls.ENDPOINTS) as pce:
        await route(pce)
        body = Endpoint("x-t", "x.example", "c-a", "127.0.0.1", 9002, tls=True).to_dict()
        body = {k: v for k, v in body.items() if v is not None}
        r = await pce.op("POST", "/v1/registrations", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["registration"]["tls"] is True
        table = (await pce.op("GET", "/v1/tables/sr-a")).json()
        endpoints = {
            route["endpoint"]["sfe"]: route["endpoint"]
            for routes in table["routes"].values()
            for route in routes
        }
        assert endpoints["x-t"]["tls"] is True
        assert "tls" not in endpoints["x-d"]  # plain endpoints' JSON is unchanged
        assert Endpoint.from_dict(endpoints["x-t"]).tls is True
