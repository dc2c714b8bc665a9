"""HTTP routes of alerting, mounted on the CLMC app:

    PUT    /v1/alerts/{sfc}/{sfci}   {"tenant": T, "rules": [AlertRule dicts], "database": "flame"}
    DELETE /v1/alerts/{sfc}/{sfci}
    GET    /v1/alerts                rules with their current level
    GET    /v1/alerts/events?limit=N the latest level changes (KPI events, CLMC-21)
    GET    /v1/alerts/stream         the same, live, as server-sent events

Tenants see and change only their own chains' rules; the operator (and the orchestrator, which
holds an operator token) any tenant's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from flame.clmc.alerts.engine import DEFAULT_DATABASE
from flame.clmc.alerts.service import AlertService
from flame.common.auth import Principal, Role

__all__ = ["install_alert_routes"]

# Raises an exception with `status` and `message` (401) when the request has no valid token;
# returns None when authentication is off.
Authenticate = Callable[[Request], Principal | None]


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def install_alert_routes(app: FastAPI, alerts: AlertService, authenticate: Authenticate) -> None:
    def who(request: Request) -> Principal | JSONResponse | None:
        try:
            return authenticate(request)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                return _json_error(status, getattr(exc, "message", str(exc)))
            raise

    def tenant_for(principal: Principal | None, asked: object) -> str | JSONResponse:
        if principal is None or principal.role is Role.OPERATOR:
            if not isinstance(asked, str) or not asked:
                return _json_error(400, "'tenant' is required: the tenant owning the chain")
            return asked
        if asked not in (None, principal.tenant):
            return _json_error(403, f"tenant {principal.tenant!r} may not set rules of {asked!r}")
        return str(principal.tenant)

    @app.put("/v1/alerts/{sfc}/{sfci}")
    async def put_rules(sfc: str, sfci: str, request: Request) -> Any:
        principal = who(request)
        if isinstance(principal, JSONResponse):
            return principal
        try:
            body = await request.json()
        except ValueError as exc:
            return _json_error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list):
            return _json_error(
                400, 'send {"tenant": ..., "rules": [...]} (rules as in the service model)'
            )
        tenant = tenant_for(principal, body.get("tenant"))
        if isinstance(tenant, JSONResponse):
            return tenant
        database = body.get("database", DEFAULT_DATABASE)
        if not isinstance(database, str) or not database:
            return _json_error(400, "'database' must be a database name")
        try:
            names = alerts.put(tenant, sfc, sfci, body["rules"], database)
        except (KeyError, ValueError, TypeError) as exc:
            return _json_error(400, f"malformed alert rule: {type(exc).__name__}: {exc}")
        return {"tenant": tenant, "sfc": sfc, "sfci": sfci, "rules": names}

    @app.delete("/v1/alerts/{sfc}/{sfci}")
    async def delete_rules(sfc: str, sfci: str, request: Request) -> Any:
        principal = who(request)
        if isinstance(principal, JSONResponse):
            return principal
        tenants = (
            {k.tenant for k, _, _ in alerts.engine.rules() if (k.sfc, k.sfci) == (sfc, sfci)}
            if principal is None or principal.role is Role.OPERATOR
            else {str(principal.tenant)}
        )
        removed = sum(alerts.delete(t, sfc, sfci) for t in tenants)
        if not removed:
            return _json_error(404, f"no alert rules for {sfc}/{sfci}")
        return {"removed": removed}

    def visible(principal: Principal | None, tenant: str) -> bool:
        return principal is None or principal.role is Role.OPERATOR or principal.tenant == tenant

    @app.get("/v1/alerts")
    async def list_rules(request: Request) -> Any:
        principal = who(request)
        if isinstance(principal, JSONResponse):
            return principal
        return [
            {
                "tenant": key.tenant,
                "sfc": key.sfc,
                "sfci": key.sfci,
                "name": key.name,
                "level": level,
                "measurement": rule.measurement,
                "field": rule.field,
                "aggregation": rule.aggregation,
                "comparison": None if rule.comparison is None else rule.comparison.value,
                "threshold": rule.threshold,
                "granularity_s": rule.granularity_s,
                "event_type": rule.event_type.value,
                "tags": dict(rule.tags),
            }
            for key, rule, level in alerts.engine.rules()
            if visible(principal, key.tenant)
        ]

    @app.get("/v1/alerts/stream")
    async def stream(request: Request, keepalive_s: float = 15.0) -> Any:
        principal = who(request)
        if isinstance(principal, JSONResponse):
            return principal
        tenant = None if principal is None or principal.role is Role.OPERATOR else principal.tenant

        async def events() -> AsyncIterator[bytes]:
            with alerts.listen() as queue:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
                    except TimeoutError:
                        yield b": keep-alive\n\n"  # proxies close silent connections
                        continue
                    if tenant is None or event.tenant == tenant:
                        data = json.dumps(event.to_dict(), separators=(",", ":"))
                        yield f"id: {event.id}\nevent: alert\ndata: {data}\n\n".encode()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/v1/alerts/events")
    async def events(request: Request, limit: int = 100) -> Any:
        principal = who(request)
        if isinstance(principal, JSONResponse):
            return principal
        tenant = None if principal is None or principal.role is Role.OPERATOR else principal.tenant
        return [e.to_dict() for e in alerts.recent(tenant, max(1, min(limit, 1000)))]
