"""The SFEMC's HTTP surface (SFEMC-3/4) and the HTTP plumbing the orchestrator's API shares.

* `POST /v1/sfemc/events`: a CLMC alert event (operator token: the CLMC is platform staff);
  answers with the decision and its reason. Duplicates and late events are answered 200 with
  `decision: ignored`: the sender did nothing wrong.
* `GET /v1/sfemc/endpoints[?sfc=]`: every endpoint with desired and current state (operator).

Errors are JSON `{"error", "message", ...}` from `FlameError.as_dict()`; a body that does not
fit the schema is 422 with each field's location; our own bugs are 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from flame.common.auth import Principal, TokenStore, parse_bearer, require_operator
from flame.common.errors import AuthenticationError, FlameError, UserError
from flame.sfemc.control import Sfemc
from flame.sfemc.events import AlertEvent

__all__ = ["BearerAuth", "Caller", "install_errors", "sfemc_router"]

log = logging.getLogger("flame.sfemc.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PRINCIPAL = "flame.principal"


def _error_response(exc: FlameError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="flame"'} if exc.http_status == 401 else {}
    if exc.http_status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(exc.as_dict(), status_code=exc.http_status, headers=headers)


async def _flame_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FlameError)
    if not isinstance(exc, UserError):
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return _error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": f"{where}: {first['msg']}" if where else str(first["msg"]),
            "errors": errors,
        },
        status_code=422,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "internal_error", "message": "internal error; see the server log"},
        status_code=500,
    )


def install_errors(app: FastAPI) -> None:
    app.add_exception_handler(FlameError, _flame_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


class BearerAuth:
    """Authenticate every `/v1` request before routing or body parsing."""

    def __init__(self, app: ASGIApp, tokens: TokenStore) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        try:
            token = parse_bearer(Headers(scope=scope).get("authorization"))
            scope[_PRINCIPAL] = self.tokens.authenticate(token)
        except FlameError as exc:
            await _error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _principal(request: Request) -> Principal:
    principal = request.scope.get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise AuthenticationError(
            "missing Authorization header; send 'Authorization: Bearer <token>'"
        )
    return principal


Caller = Annotated[Principal, Depends(_principal)]


class AlertBody(BaseModel):
    # The CLMC's alert event carries more (value, threshold, message, ...; see
    # docs/clmc-information-model.md); the SFEMC needs these fields and ignores the rest.
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=200)
    alert: str = Field(min_length=1, max_length=200)
    sfc: str = Field(min_length=1, max_length=200)
    sfci: str | None = None
    level: str = Field(default="critical", min_length=1, max_length=40)
    time: float | datetime = Field(description="seconds since the epoch, or ISO 8601")


def _seconds(value: float | datetime) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def sfemc_router(sfemc: Sfemc) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/sfemc/events")
    async def alert_event(body: AlertBody, caller: Caller) -> dict[str, Any]:
        """A CLMC alert notification (SFEMC-3): matched to state-change policies (SFEMC-4)."""
        require_operator(caller)
        event = AlertEvent(
            body.id, body.alert, body.sfc, body.sfci, body.level, _seconds(body.time)
        )
        return sfemc.handle_alert(event).to_dict()

    @router.get("/v1/sfemc/endpoints")
    async def endpoints(caller: Caller, sfc: str | None = None) -> dict[str, Any]:
        require_operator(caller)
        return {"endpoints": [e.to_dict() for e in sfemc.endpoints(sfc)]}

    return router
