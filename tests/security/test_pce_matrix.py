"""Issue 11: the PCE's authorization matrix, every route × every kind of caller.

Mutating operator routes are called with a body or name that fails after the gate (422 / 404),
so the matrix proves who passes each gate without changing the PCE between cells; tenant
scoping (B on A's FQDN) is exercised on real data: x.example is delegated to tenant A (acme)
and served by an endpoint the operator registered for it.

Issue 15: the content certificate routes. A tenant reads, uploads, changes, deletes and
renews certificates of its own FQDNs only (x.example has acme's own certificate; B gets 403
everywhere on it); only routers (and the operator) read an SR's bundle, which holds keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.common.auth import Role
from sfr.test_api import LINE, Env, register, x_endpoint
from sfr.test_certs import own_chain
from sfr.test_certs import running as running_with_certs

from .matrix import CALLERS, PUBLIC_ROW, assert_covers, headers, row
from .matrix import DOC_ROWS as DOCS

pytestmark = pytest.mark.asyncio

# (method, route path) -> (the concrete path, a JSON body or None, the expected row)
CASES: dict[tuple[str, str], tuple[str, Any, dict[str, int]]] = {
    ("GET", "/health"): ("/health", None, PUBLIC_ROW),
    ("GET", "/v1/topology"): ("/v1/topology", None, row(a=200)),
    ("POST", "/v1/topology/links/{a}/{b}/down"): (
        "/v1/topology/links/zz/yy/down",
        None,
        row(a=403, operator=404),
    ),
    ("POST", "/v1/topology/links/{a}/{b}/up"): (
        "/v1/topology/links/zz/yy/up",
        None,
        row(a=403, operator=404),
    ),
    ("POST", "/v1/topology/links/{a}/{b}/liveness"): (
        "/v1/topology/links/zz/yy/liveness",
        {"up": False, "reporter": "zz"},
        row(a=403, router=404, operator=404),
    ),
    ("PUT", "/v1/topology/links/{a}/{b}"): (
        "/v1/topology/links/zz/yy",
        {"latency_ms": -1},
        row(a=403, operator=422),
    ),
    ("POST", "/v1/topology/nodes"): ("/v1/topology/nodes", {}, row(a=403, operator=422)),
    ("DELETE", "/v1/topology/nodes/{node_id}"): (
        "/v1/topology/nodes/zz",
        None,
        row(a=403, operator=404),
    ),
    ("GET", "/v1/registrations"): ("/v1/registrations", None, row(a=200)),
    # Only the SFEMC (operator) registers endpoint addresses: finding 5.
    ("POST", "/v1/registrations"): ("/v1/registrations", {}, row(a=403, operator=422)),
    ("DELETE", "/v1/registrations/{sfe}"): (
        "/v1/registrations/x-d",
        None,
        row(a=403, operator=200),
    ),
    ("GET", "/v1/delegations"): ("/v1/delegations", None, row(a=200)),
    ("PUT", "/v1/delegations/{name}"): ("/v1/delegations/y.example", {}, row(a=403, operator=422)),
    ("DELETE", "/v1/delegations/{name}"): (
        "/v1/delegations/y.example",
        None,
        row(a=403, operator=404),
    ),
    ("GET", "/v1/policies"): ("/v1/policies", None, row(a=200)),
    ("GET", "/v1/policies/{fqdn}"): ("/v1/policies/x.example", None, row(a=404, b=403)),
    ("PUT", "/v1/policies/{fqdn}"): (
        "/v1/policies/x.example",
        {"prefer_clusters": ["no-such-cluster"]},
        row(a=400, b=403),
    ),
    ("DELETE", "/v1/policies/{fqdn}"): ("/v1/policies/x.example", None, row(a=404, b=403)),
    # A router reads forwarding tables and nothing else.
    ("GET", "/v1/tables/{sr}"): ("/v1/tables/sr-a", None, row(a=403, router=200, operator=200)),
    ("GET", "/v1/routes/{fqdn}"): ("/v1/routes/x.example", None, row(a=200, b=403)),
    # Content certificates (issue 15).
    ("GET", "/v1/certs"): ("/v1/certs", None, row(a=200)),
    ("GET", "/v1/certs/ca"): ("/v1/certs/ca", None, row(a=200, router=200)),
    # The bundle holds private keys: routers and the operator only.
    ("GET", "/v1/certs/sr/{sr}"): ("/v1/certs/sr/sr-a", None, row(a=403, router=200, operator=200)),
    ("GET", "/v1/certs/{fqdn}"): ("/v1/certs/x.example", None, row(a=200, b=403)),
    # hop-by-hop TLS: endpoint certificates for routers and operators (409: the switch is off)
    ("POST", "/v1/certs/endpoint"): (
        "/v1/certs/endpoint",
        {"host": "127.0.0.1"},
        row(a=403, router=409, operator=409),
    ),
    ("PUT", "/v1/certs/{fqdn}"): (
        "/v1/certs/x.example",
        {"chain": "not a certificate", "key": "not a key"},
        row(a=400, b=403),
    ),
    ("PATCH", "/v1/certs/{fqdn}"): (
        "/v1/certs/x.example",
        {"redirect_http": False},
        row(a=200, b=403),
    ),
    ("DELETE", "/v1/certs/{fqdn}"): ("/v1/certs/cdn.x.example", None, row(a=404, b=403)),
    ("POST", "/v1/certs/{fqdn}/renew"): (
        "/v1/certs/cdn.x.example/renew",
        None,
        row(a=404, b=403),
    ),
    **{key: (key[1], None, expected) for key, expected in DOCS.items()},
}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    from flame.common.auth import TokenStore

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


async def test_every_pce_route_answers_each_caller_as_its_rule_says(env: Env) -> None:
    router = env.tokens.issue("sr-a", Role.ROUTER)
    tokens = {
        "tenant_a": env.acme,
        "tenant_b": env.globex,
        "router": router,
        "operator": env.operator,
    }
    async with running_with_certs(env) as pce:
        assert_covers(pce_app(pce), {key: case[2] for key, case in CASES.items()})
        ops = headers("operator", tokens)
        await pce.http.put("/v1/delegations/x.example", json={"tenant": "acme"}, headers=ops)
        chain, pem_key = own_chain(["x.example"])
        uploaded = await pce.http.put(
            "/v1/certs/x.example",
            json={"chain": chain, "key": pem_key},
            headers=headers("tenant_a", tokens),
        )
        assert uploaded.status_code == 200, uploaded.text
        got: dict[tuple[str, str], dict[str, int]] = {}
        for key, (path, body, _) in CASES.items():
            got[key] = {}
            for caller in CALLERS:
                if key in (("DELETE", "/v1/registrations/{sfe}"), ("GET", "/v1/routes/{fqdn}")):
                    # A CertPce has the `http` and `env` that sfr.test_api.register uses.
                    registered = await register(pce, x_endpoint(tenant="acme"))  # type: ignore[arg-type]
                    assert registered.status_code in (200, 201)
                response = await send(pce.http, key[0], path, body, headers(caller, tokens))
                got[key][caller] = response.status_code
                if caller != "router" and key[1] != "/v1/certs/sr/{sr}":
                    assert "PRIVATE KEY" not in response.text, (key, caller)  # never a key
                if response.status_code >= 400 and not key[1].startswith("/docs"):
                    assert response.json()["error"], response.text  # JSON errors, always
        assert got == {key: case[2] for key, case in CASES.items()}


def pce_app(pce: Any) -> Any:
    transport = pce.http._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app


async def send(
    http: httpx.AsyncClient, method: str, path: str, body: Any, head: dict[str, str]
) -> httpx.Response:
    if body is None:
        return await http.request(method, path, headers=head)
    return await http.request(method, path, json=body, headers=head)
