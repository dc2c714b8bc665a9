"""Issue 11 on the CLMC: what a router, a tenant and a revoked token may do, measured over HTTP.

Findings (each failed on the code before the fix): a router token acted as the operator (2);
`/query?chunked=true` skipped every tenant check (3); alert rules read any database (4); a revoked
token worked for about 5 s more (6). Then tenant-scoped monitoring: a tenant reads the platform
database `flame` narrowed to the rows of its FQDNs, through every path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.clmc.api import create_app
from flame.clmc.ingest import Ingest
from flame.clmc.service import ClmcService
from flame.common.auth import Role, TokenStore

pytestmark = pytest.mark.asyncio

S = 1_000_000_000
# Two tenants' traffic as the SRs report it, and a configuration event of each.
FLAME_DATA = b"""\
sr_fqdn,sr=sr-a,fqdn=x.example,worker=0 requests=10i,response_time=20 1000000000
sr_fqdn,sr=sr-a,fqdn=eu.x.example,worker=0 requests=1i,response_time=30 2000000000
sr_fqdn,sr=sr-a,fqdn=y.example,worker=0 requests=99i,response_time=900 1000000000
sr_fqdn,sr=sr-a,fqdn=_unknown,worker=0 requests=5i,response_time=1 1000000000
endpoint_config,tenant=acme,sfc=vod,sfe=s1 current_state="connected" 1000000000
endpoint_config,tenant=globex,sfc=news,sfe=s2 current_state="failed" 1000000000
"""


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tokens = TokenStore(tmp / "tokens.json")
        self.operator = self.tokens.issue("ops", Role.OPERATOR)
        self.acme = self.tokens.issue("acme-bot", Role.TENANT, "acme")
        self.globex = self.tokens.issue("globex-bot", Role.TENANT, "globex")
        self.router = self.tokens.issue("sr-a", Role.ROUTER)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest_asyncio.fixture
async def clmc(ingest: Ingest, env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """The InfluxDB API with tokens (built the same way before and after the fix)."""
    for db in ("flame", "acme", "globex"):
        ingest.store.create_database(db)
    app = create_app(ingest, env.tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        yield c


async def query(c: httpx.AsyncClient, token: str, q: str, **params: str) -> httpx.Response:
    return await c.post("/query", params={"q": q, **params}, headers=auth(token))


def databases(store: Any) -> list[str]:
    return sorted(store.databases())


# -- finding 2: a router token writes its measurements to `flame`, nothing else --------------------


async def test_a_router_token_only_writes_to_the_platform_database(
    clmc: httpx.AsyncClient, env: Env, ingest: Ingest
) -> None:
    as_router = auth(env.router)
    r = await clmc.post("/write", params={"db": "flame"}, content=b"sr_fqdn v=1", headers=as_router)
    assert r.status_code == 204, r.text
    r = await clmc.post(
        "/api/v2/write", params={"bucket": "flame"}, content=b"sr_fqdn v=2", headers=as_router
    )
    assert r.status_code == 204, r.text
    r = await clmc.post("/write", params={"db": "acme"}, content=b"m v=1", headers=as_router)
    assert r.status_code == 403
    assert "not authorized" in r.json()["error"]
    for q in (
        "SELECT * FROM sr_fqdn",
        "SHOW DATABASES",
        "SHOW MEASUREMENTS ON flame",
        "CREATE DATABASE router_made",
        "DROP DATABASE acme",
        "DROP DATABASE flame",
    ):
        for chunked in ("false", "true"):
            r = await query(clmc, env.router, q, db="flame", chunked=chunked)
            assert r.status_code == 403, (q, chunked, r.text)
            assert r.json()["error"], r.text  # InfluxDB-shaped
    assert databases(ingest.store) == ["acme", "db", "flame", "globex"]


# -- finding 3: chunked queries are checked as plain ones ------------------------------------------


@pytest.mark.parametrize("chunked", ["false", "true"])
async def test_a_tenant_cannot_drop_or_read_what_it_does_not_own_chunked_or_not(
    clmc: httpx.AsyncClient, env: Env, ingest: Ingest, chunked: str
) -> None:
    for q, db in (
        ("DROP DATABASE globex", "acme"),
        ("DROP DATABASE flame", "acme"),
        ("SELECT * FROM m", "globex"),
        ('SELECT * FROM "globex"."autogen"."m"', "acme"),
        ("SHOW MEASUREMENTS ON globex", "acme"),
        ("DELETE FROM sr_fqdn", "flame"),
        ("DROP MEASUREMENT sr_fqdn", "flame"),
        ("DROP SERIES FROM sr_fqdn", "flame"),
        ("CREATE DATABASE flame", "acme"),
        ("CREATE RETENTION POLICY short ON flame DURATION 1h REPLICATION 1", "acme"),
        # one forbidden statement refuses the whole request: the first does not run either
        ("CREATE DATABASE acme_ok; DROP DATABASE globex", "acme"),
    ):
        r = await query(clmc, env.acme, q, db=db, chunked=chunked)
        assert r.status_code == 403, (q, r.text)
        assert "not authorized" in r.json()["error"], r.text
    assert databases(ingest.store) == ["acme", "db", "flame", "globex"]
    r = await query(clmc, env.acme, "SHOW DATABASES", chunked=chunked)
    assert r.status_code == 200
    shown = [json.loads(line) for line in r.text.splitlines()]
    assert shown[0]["results"][0]["series"][0]["values"] == [["acme"], ["flame"]]


async def test_a_tenant_never_writes_to_the_platform_database(
    clmc: httpx.AsyncClient, env: Env
) -> None:
    r = await clmc.post(
        "/write", params={"db": "flame"}, content=b"sr_fqdn v=1", headers=auth(env.acme)
    )
    assert r.status_code == 403


async def test_a_tenant_named_like_the_platform_database_does_not_own_it(
    clmc: httpx.AsyncClient, env: Env, ingest: Ingest
) -> None:
    impostor = env.tokens.issue("flame-bot", Role.TENANT, "flame")
    r = await clmc.post(
        "/write", params={"db": "flame"}, content=b"sr_fqdn v=1", headers=auth(impostor)
    )
    assert r.status_code == 403
    r = await query(clmc, impostor, "DROP DATABASE flame")
    assert r.status_code == 403
    assert "flame" in ingest.store.databases()


# -- finding 6: revocation takes effect on the next request ----------------------------------------


async def test_a_revoked_token_is_refused_on_the_very_next_request(
    clmc: httpx.AsyncClient, env: Env
) -> None:
    token = env.tokens.issue("short-lived", Role.TENANT, "acme")
    assert (await query(clmc, token, "SHOW DATABASES")).status_code == 200
    r = await clmc.post("/write", params={"db": "acme"}, content=b"m v=1", headers=auth(token))
    assert r.status_code == 204
    env.tokens.revoke("short-lived")
    r = await query(clmc, token, "SHOW DATABASES")
    assert r.status_code == 401
    assert r.json() == {"error": "authorization failed"}
    r = await clmc.post("/write", params={"db": "acme"}, content=b"m v=1", headers=auth(token))
    assert r.status_code == 401


# -- the whole service: alert rules (finding 4) and tenant-scoped monitoring -----------------------


@contextlib.asynccontextmanager
async def service(
    tmp: Path, env: Env, *, delegations: object = None
) -> AsyncIterator[tuple[ClmcService, httpx.AsyncClient]]:
    alerts = AlertService(None, Notifier("http://127.0.0.1:9/none"), sliding=False)
    extra = {} if delegations is None else {"delegations": delegations}
    svc = ClmcService(tmp / "clmc", env.tokens, fsync=False, alerts=alerts, **extra)  # type: ignore[arg-type]
    async with svc.app.router.lifespan_context(svc.app):
        transport = httpx.ASGITransport(app=svc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as c:
            yield svc, c


RULE = {
    "name": "slow",
    "policy": "scale",
    "event_type": "threshold",
    "measurement": "sr_fqdn",
    "field": "response_time",
    "threshold": 100.0,
    "granularity_s": 1.0,
    "aggregation": "mean",
    "comparison": "gt",
}


async def test_alert_rules_read_only_what_their_tenant_may_query(tmp_path: Path, env: Env) -> None:
    async with service(tmp_path, env) as (svc, c):
        assert svc.ingest is not None
        svc.ingest.store.create_database("globex")
        body = {"rules": [RULE], "database": "globex"}
        r = await c.put("/v1/alerts/vod/vod-1", json=body, headers=auth(env.acme))
        assert r.status_code == 403, r.text
        assert "may not read database 'globex'" in r.json()["error"]
        # Nor through the operator's token (the orchestrator sets the rules tenants wrote).
        body = {"tenant": "acme", "rules": [RULE], "database": "globex_tv"}
        r = await c.put("/v1/alerts/vod/vod-1", json=body, headers=auth(env.operator))
        assert r.status_code == 403, r.text
        for database in ("acme", "acme_video", "flame"):
            body = {"rules": [RULE], "database": database}
            r = await c.put("/v1/alerts/vod/vod-1", json=body, headers=auth(env.acme))
            assert r.status_code == 200, (database, r.text)
        assert {k.tenant for k, _, _ in svc.alerts.engine.rules()} == {"acme"}  # type: ignore[union-attr]
        # routers have no business with alerts
        assert (await c.get("/v1/alerts", headers=auth(env.router))).status_code == 403
        r = await c.put("/v1/alerts/vod/vod-1", json=body, headers=auth(env.router))
        assert r.status_code == 403


async def test_a_tenant_reads_its_own_rows_of_the_platform_database(
    tmp_path: Path, env: Env
) -> None:
    from flame.clmc.tenancy import StaticDelegations  # the feature (none before the fix)

    delegations = StaticDelegations({"x.example": "acme", "y.example": "globex"})
    async with service(tmp_path, env, delegations=delegations) as (_, c):
        r = await c.post(
            "/write", params={"db": "flame"}, content=FLAME_DATA, headers=auth(env.router)
        )
        assert r.status_code == 204, r.text

        async def values(token: str, q: str, chunked: str = "false") -> list[Any]:
            r = await query(c, token, q, db="flame", chunked=chunked)
            assert r.status_code == 200, r.text
            out: list[Any] = []
            for line in r.text.splitlines():
                for result in json.loads(line)["results"]:
                    assert "error" not in result, result
                    for series in result.get("series", []):
                        out.extend(series["values"])
            return out

        for chunked in ("false", "true"):
            q = "SELECT requests, fqdn FROM sr_fqdn"
            assert [v[1:] for v in await values(env.acme, q, chunked)] == [
                [10, "x.example"],
                [1, "eu.x.example"],
            ]
            assert [v[1:] for v in await values(env.globex, q, chunked)] == [[99, "y.example"]]
            assert len(await values(env.operator, q, chunked)) == 4
            q = "SHOW TAG VALUES FROM sr_fqdn WITH KEY = fqdn"
            assert await values(env.acme, q, chunked) == [
                ["fqdn", "eu.x.example"],
                ["fqdn", "x.example"],
            ]
            q = 'SELECT current_state, sfc FROM "endpoint_config"'
            assert [v[1:] for v in await values(env.globex, q, chunked)] == [["failed", "news"]]
        r = await query(c, env.acme, "SHOW DATABASES")
        assert r.json()["results"][0]["series"][0]["values"] == [["flame"]]
        health = (await c.get("/health")).json()
        assert health["delegations"] == {"source": "static", "state": "ok", "delegations": 2}
