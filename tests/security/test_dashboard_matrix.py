"""Issue 11, finding 6 (first half): the dashboard answered 200 to an unknown token. Now every
`/api` request is checked with the orchestrator's `GET /v1/whoami` (a real orchestrator here),
on every request, so a revoked token stops at once; the page and its static files are public;
`/api/*` is for tenants and the operator; a tenant's snapshot holds its own services only and
says who it is; the CLMC refusing it the platform database leaves an error for the KPIs and the
rest of the snapshot intact.

The CLMC is a stub here (what it answers is the CLMC's business, tested with the CLMC); what
is tested is what the dashboard does with its answers and which token it sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flame.clmc.dashboard.app import DashboardConfig, create_dashboard_app
from flame.common.auth import Role, TokenStore, parse_bearer
from flame.common.errors import FlameError
from orchestrator.harness import Platform

from .matrix import BAD_TOKEN, CALLERS, PUBLIC_ROW, assert_covers, headers, row
from .test_orchestrator_matrix import deployed

pytestmark = pytest.mark.asyncio

CASES: dict[tuple[str, str], tuple[str, dict[str, int]]] = {
    ("GET", "/"): ("/", PUBLIC_ROW),
    ("GET", "/static/{name}"): ("/static/app.js", PUBLIC_ROW),
    ("GET", "/api/snapshot"): ("/api/snapshot", row(a=200)),
    ("GET", "/api/query"): ("/api/query?q=SHOW%20DATABASES", row(a=200)),
}


class StubClmc:
    """Answers as the CLMC does before tenants may read `flame`: 403 to a tenant there."""

    def __init__(self, tokens: TokenStore) -> None:
        self.seen: list[str] = []  # who each request came as
        app = FastAPI()

        def who(request: Request) -> Any:
            principal = tokens.authenticate(parse_bearer(request.headers.get("authorization")))
            self.seen.append(principal.name)
            return principal

        @app.exception_handler(FlameError)
        async def refused(_request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, FlameError)
            return JSONResponse({"error": exc.message}, status_code=exc.http_status)

        @app.get("/query")
        async def query(request: Request, db: str = "") -> Any:
            principal = who(request)
            if principal.role is not Role.OPERATOR and db == "flame":
                return JSONResponse(
                    {"error": f'"{principal.name}" user is not authorized to use database "flame"'},
                    status_code=403,
                )
            series = {
                "name": "sr_fqdn",
                "tags": {"fqdn": "vod.example", "sr": "sr-ue-1"},
                "columns": ["time", "response_time", "requests"],
                "values": [[1000, 12.5, 3]],
            }
            return {"results": [{"statement_id": 0, "series": [series]}]}

        @app.get("/v1/alerts")
        async def alerts(request: Request) -> Any:
            who(request)
            return []

        @app.get("/v1/alerts/events")
        async def events(request: Request) -> Any:
            who(request)
            return []

        self.app = app


class Upstreams(httpx.AsyncBaseTransport):
    """The stub CLMC at http://clmc.test, everything else over the network (the orchestrator)."""

    def __init__(self, clmc: StubClmc) -> None:
        self.clmc = httpx.ASGITransport(app=clmc.app)
        self.network = httpx.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "clmc.test":
            return await self.clmc.handle_async_request(request)
        return await self.network.handle_async_request(request)

    async def aclose(self) -> None:
        await self.network.aclose()


@asynccontextmanager
async def dashboard(
    platform: Platform, tmp_path: Path, *, orchestrator_url: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, StubClmc, TokenStore, FastAPI]]:
    tokens = TokenStore(tmp_path / "tokens.json")  # the harness's orchestrator's tokens
    clmc = StubClmc(tokens)
    app = create_dashboard_app(
        DashboardConfig(
            clmc_url="http://clmc.test",
            orchestrator_url=orchestrator_url or platform.url,
            timeout_s=10.0,
        ),
        transport=Upstreams(clmc),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://dashboard", timeout=30
        ) as http,
    ):
        yield http, clmc, tokens, app


async def test_every_dashboard_route_answers_each_caller_as_its_rule_says(
    platform: Platform, tmp_path: Path
) -> None:
    async with dashboard(platform, tmp_path) as (http, _clmc, store, app):
        tokens = {
            "tenant_a": platform.acme,
            "tenant_b": platform.globex,
            "router": store.issue("sr-ue-1", Role.ROUTER),
            "operator": platform.operator,
        }
        assert_covers(app, {key: case[1] for key, case in CASES.items()})
        got: dict[tuple[str, str], dict[str, int]] = {}
        for key, (path, _) in CASES.items():
            got[key] = {}
            for caller in CALLERS:
                response = await http.get(path, headers=headers(caller, tokens))
                got[key][caller] = response.status_code
                if response.status_code >= 400:
                    body = response.json()
                    assert body["error"], response.text  # JSON errors, always
                    assert "services" not in body  # and nothing of a snapshot
                if response.status_code == 401:
                    assert response.headers["www-authenticate"].startswith("Bearer")
        assert got == {key: case[1] for key, case in CASES.items()}


async def test_a_tenant_s_snapshot_is_its_own_and_says_who_it_is(
    platform: Platform, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as orchestrator:
        await deployed(orchestrator, platform.acme, platform)  # tenant A's VoD service
    async with dashboard(platform, tmp_path) as (http, clmc, _store, _app):
        acme = (await http.get("/api/snapshot", headers=bearer(platform.acme))).json()
        assert acme["whoami"] == {"name": "acme", "role": "tenant", "tenant": "acme"}
        assert [s["sfc"] for s in acme["services"]] == ["vod"]
        # The CLMC refuses a tenant the platform database: the KPIs say so, the rest stays.
        assert acme["kpi"] == []
        assert acme["errors"]["kpi"].startswith("HTTP 403")
        assert set(clmc.seen) == {"acme"}  # every upstream call carried the caller's token

        globex = (await http.get("/api/snapshot", headers=bearer(platform.globex))).json()
        assert globex["whoami"]["tenant"] == "globex"
        assert globex["services"] == []
        assert "vod" not in str(globex["services"])

        ops = (await http.get("/api/snapshot", headers=bearer(platform.operator))).json()
        assert ops["whoami"] == {"name": "ops", "role": "operator", "tenant": None}
        assert [(s["sfc"], s["tenant"]) for s in ops["services"]] == [("vod", "acme")]
        assert [s["tags"]["fqdn"] for s in ops["kpi"]] == ["vod.example"]
        assert "kpi" not in ops["errors"]


async def test_an_unknown_or_revoked_token_gets_401_and_no_content(
    platform: Platform, tmp_path: Path
) -> None:
    """The finding itself, with only what the dashboard had before the fix (no stubs)."""
    store = TokenStore(tmp_path / "tokens.json")
    app = create_dashboard_app(DashboardConfig(orchestrator_url=platform.url, timeout_s=10.0))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as http,
    ):
        for head in (bearer(BAD_TOKEN), bearer("not-even-a-token"), {}):
            refused = await http.get("/api/snapshot", headers=head)
            assert refused.status_code == 401, refused.text
            assert "services" not in refused.json()
        token = store.issue("acme-laptop", Role.TENANT, "acme")
        assert (await http.get("/api/snapshot", headers=bearer(token))).status_code == 200
        store.revoke("acme-laptop")  # no cache: the very next request is refused
        refused = await http.get("/api/snapshot", headers=bearer(token))
        assert refused.status_code == 401
        assert "services" not in refused.json()
        query = await http.get("/api/query?q=SHOW%20DATABASES", headers=bearer(token))
        assert query.status_code == 401


async def test_without_the_orchestrator_no_token_is_taken(
    platform: Platform, tmp_path: Path
) -> None:
    from flame.common.ports import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    async with dashboard(platform, tmp_path, orchestrator_url=closed) as (http, clmc, _store, _app):
        response = await http.get("/api/snapshot", headers=bearer(platform.operator))
        assert response.status_code == 503
        assert "orchestrator" in response.json()["message"]
        assert clmc.seen == []  # nothing was asked upstream on the token's behalf
        assert (await http.get("/")).status_code == 200  # the page itself is public


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
