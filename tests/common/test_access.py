"""flame.common.access: gates check roles before the handler; undeclared routes cannot be served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from flame.common.access import (
    PUBLIC,
    AnyRole,
    OperatorOnly,
    RouterOrOperator,
    TenantOrOperator,
    require_declared,
    route_rules,
)
from flame.common.auth import Role, TokenStore
from flame.common.http_api import BearerAuth, install_errors


def app_with(tokens: TokenStore) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BearerAuth, tokens=tokens)
    install_errors(app, "the test app")
    calls: list[str] = []
    app.state.calls = calls

    @app.get("/health", dependencies=[PUBLIC])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/ops")
    async def ops(caller: OperatorOnly, body: dict[str, int]) -> dict[str, str]:
        calls.append("ops")
        return {"by": caller.name}

    @app.get("/v1/tenant")
    async def tenant(caller: TenantOrOperator) -> dict[str, str]:
        calls.append("tenant")
        return {"by": caller.name}

    @app.get("/v1/table")
    async def table(caller: RouterOrOperator) -> dict[str, str]:
        return {"by": caller.name}

    @app.get("/v1/me")
    async def me(caller: AnyRole) -> dict[str, str]:
        return {"by": caller.name}

    return require_declared(app)


def test_an_app_with_an_undeclared_route_refuses_to_build() -> None:
    app = FastAPI()

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="GET /v1/forgotten"):
        require_declared(app)


def test_route_rules_name_each_routes_roles(tmp_path: Path) -> None:
    rules = route_rules(app_with(TokenStore(tmp_path / "t.json")))
    assert rules[("POST", "/v1/ops")].roles == {Role.OPERATOR}  # type: ignore[union-attr]
    assert rules[("GET", "/v1/tenant")].roles == {Role.OPERATOR, Role.TENANT}  # type: ignore[union-attr]
    assert rules[("GET", "/health")].public  # type: ignore[union-attr]
    assert rules[("GET", "/openapi.json")].public  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_gates_answer_403_before_the_body_is_read_or_the_handler_runs(
    tmp_path: Path,
) -> None:
    tokens = TokenStore(tmp_path / "t.json")
    tenant = tokens.issue("acme", Role.TENANT, "acme")
    router = tokens.issue("sr", Role.ROUTER)
    operator = tokens.issue("ops", Role.OPERATOR)
    app = app_with(tokens)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

        async def status(method: str, path: str, token: str | None, **kw: object) -> int:
            head = {} if token is None else {"Authorization": f"Bearer {token}"}
            return (await http.request(method, path, headers=head, **kw)).status_code  # type: ignore[arg-type]

        # A malformed body is 403 for a tenant (the gate first), 422 for the operator.
        assert await status("POST", "/v1/ops", tenant, content=b"not json") == 403
        assert await status("POST", "/v1/ops", router, json={"a": 1}) == 403
        assert await status("POST", "/v1/ops", operator, content=b"not json") == 422
        assert await status("POST", "/v1/ops", operator, json={"a": 1}) == 200
        assert await status("GET", "/v1/tenant", router) == 403
        assert await status("GET", "/v1/tenant", tenant) == 200
        assert await status("GET", "/v1/table", tenant) == 403
        assert await status("GET", "/v1/table", router) == 200
        for token in (tenant, router, operator):
            assert await status("GET", "/v1/me", token) == 200
        assert await status("GET", "/v1/me", None) == 401
        assert await status("GET", "/health", None) == 200
        denied = await http.get("/v1/tenant", headers={"Authorization": f"Bearer {router}"})
        assert denied.json()["error"] == "permission_denied"
        assert "router" in denied.json()["message"]
    assert app.state.calls == ["ops", "tenant"]  # denied requests never reached a handler
