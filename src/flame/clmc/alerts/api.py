"""HTTP routes of alerting, mounted on the CLMC app:

    PUT    /v1/alerts/{sfc}/{sfci}   {"tenant": T, "rules": [AlertRule dicts], "database": "flame"}
    DELETE /v1/alerts/{sfc}/{sfci}
    GET    /v1/alerts                rules with their current level
    GET    /v1/alerts/events?limit=N the latest level changes (KPI events, CLMC-21)
    GET    /v1/alerts/stream         the same, live, as server-sent events

Every route is for tenants and the operator (`TenantOrOperator`; a router gets 403). Tenants see
and change only their own chains' rules; the operator (and the orchestrator, which holds an
operator token) any tenant's. A rule reads only what its tenant may query, whoever sets it
(the orchestrator sets rules a tenant wrote in its template): the tenant's own databases, or the
platform database `flame`, where the engine gives it only the tenant's rows (see
`flame.clmc.tenancy`). Errors are `{"error": ...}` as on the CLMC's InfluxDB routes.
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
from flame.clmc.tenancy import Delegations, access_of_tenant
from flame.common.access import TenantOrOperator
from flame.common.auth import Principal, Role

__all__ = ["install_alert_routes"]

# For an app without the CLMC's authentication: returns the caller (None when authentication is
# off) or raises an exception with `status` and `message`, or an AuthenticationError.
Authenticate = Callable[[Request], Principal | None]


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def install_alert_routes(
    app: FastAPI,
    alerts: AlertService,
    authenticate: Authenticate | None = None,
    *,
    delegations: Delegations | None = None,
) -> None:
    """Add the alerting routes to `app`, which authenticates its callers (the CLMC app does,
    `flame.clmc.api.InfluxAuth`); or give `authenticate` to have this add the authentication
    and the JSON errors to an app of its own."""
    if authenticate is not None:
        _install_authentication(app, authenticate)
    _install_rule_changes(app, alerts, delegations)
    _install_rule_reads(app, alerts)
    _install_event_routes(app, alerts)


def _tenant_for(principal: Principal, asked: object) -> str | JSONResponse:
    """The tenant whose rules a PUT sets: the operator names it, a tenant sets only its own."""
    if principal.role is Role.OPERATOR:
        if not isinstance(asked, str) or not asked:
            return _json_error(400, "'tenant' is required: the tenant owning the chain")
        return asked
    if asked not in (None, principal.tenant):
        return _json_error(403, f"tenant {principal.tenant!r} may not set rules of {asked!r}")
    return str(principal.tenant)


def _visible(principal: Principal, tenant: str) -> bool:
    return principal.role is Role.OPERATOR or principal.tenant == tenant


def _install_rule_changes(
    app: FastAPI, alerts: AlertService, delegations: Delegations | None
) -> None:
    """PUT and DELETE /v1/alerts/{sfc}/{sfci}."""

    @app.put("/v1/alerts/{sfc}/{sfci}")
    async def put_rules(sfc: str, sfci: str, request: Request, caller: TenantOrOperator) -> Any:
        try:
            body = await request.json()
        except ValueError as exc:
            return _json_error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list):
            return _json_error(
                400, 'send {"tenant": ..., "rules": [...]} (rules as in the service model)'
            )
        tenant = _tenant_for(caller, body.get("tenant"))
        if isinstance(tenant, JSONResponse):
            return tenant
        database = body.get("database", DEFAULT_DATABASE)
        if not isinstance(database, str) or not database:
            return _json_error(400, "'database' must be a database name")
        # The rule's tenant, not the caller: the operator's token sets tenants' rules too.
        if not access_of_tenant(caller.name, tenant, delegations).may_read(database):
            return _json_error(
                403,
                f"alert rules of tenant {tenant!r} may not read database {database!r}: a rule "
                f"reads only what its tenant may query (its own databases, or "
                f"{DEFAULT_DATABASE!r} narrowed to its names)",
            )
        try:
            names = alerts.put(tenant, sfc, sfci, body["rules"], database)
        except (KeyError, ValueError, TypeError) as exc:
            return _json_error(400, f"malformed alert rule: {type(exc).__name__}: {exc}")
        return {"tenant": tenant, "sfc": sfc, "sfci": sfci, "rules": names}

    @app.delete("/v1/alerts/{sfc}/{sfci}")
    async def delete_rules(sfc: str, sfci: str, caller: TenantOrOperator) -> Any:
        tenants = (
            {k.tenant for k, _, _ in alerts.engine.rules() if (k.sfc, k.sfci) == (sfc, sfci)}
            if caller.role is Role.OPERATOR
            else {str(caller.tenant)}
        )
        removed = sum(alerts.delete(t, sfc, sfci) for t in tenants)
        if not removed:
            return _json_error(404, f"no alert rules for {sfc}/{sfci}")
        return {"removed": removed}


def _install_rule_reads(app: FastAPI, alerts: AlertService) -> None:
    """GET /v1/alerts: the rules the caller may see, with their current level."""

    @app.get("/v1/alerts")
    async def list_rules(caller: TenantOrOperator) -> Any:
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
            if _visible(caller, key.tenant)
        ]


def _install_event_routes(app: FastAPI, alerts: AlertService) -> None:
    """GET /v1/alerts/stream (server-sent events) and /v1/alerts/events (the latest ones)."""

    @app.get("/v1/alerts/stream")
    async def stream(caller: TenantOrOperator, keepalive_s: float = 15.0) -> Any:
        tenant = None if caller.role is Role.OPERATOR else caller.tenant

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
    async def events(caller: TenantOrOperator, limit: int = 100) -> Any:
        tenant = None if caller.role is Role.OPERATOR else caller.tenant
        return [e.to_dict() for e in alerts.recent(tenant, max(1, min(limit, 1000)))]


def _install_authentication(app: FastAPI, authenticate: Authenticate) -> None:
    """An app of its own: `authenticate` in a middleware, gate refusals as JSON errors."""
    from flame.clmc.api import OPEN_PRINCIPAL, install_influx_errors  # noqa: PLC0415
    from flame.common.access import set_principal  # noqa: PLC0415
    from flame.common.errors import FlameError  # noqa: PLC0415

    failure_key = "flame.clmc.alerts.auth_failure"

    class Authentication:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                try:
                    principal = authenticate(Request(scope))
                except Exception as exc:  # the caller's authenticate says what a failure is
                    status = getattr(exc, "status", None)
                    if not isinstance(status, int):
                        if not isinstance(exc, FlameError):
                            raise
                        status = exc.http_status
                    scope[failure_key] = (status, getattr(exc, "message", str(exc)))
                else:
                    set_principal(scope, OPEN_PRINCIPAL if principal is None else principal)
            await self.inner(scope, receive, send)

    app.add_middleware(Authentication)
    install_influx_errors(app, failure_key=failure_key)
