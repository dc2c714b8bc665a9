"""What every FLAME control API shares: bearer-token authentication before anything else, and
errors always as JSON `{"error": <code>, "message": <text>, ...}`, never a traceback.

`BearerAuth` checks every `/v1` request before routing or body parsing, so an anonymous request
learns nothing, not even whether its body was valid; handlers take the principal through one of
the access gates of `flame.common.access`, which also check its role.
`install_errors` maps `FlameError` to its status and `as_dict()`, schema misfits to 422 with
each field's location, unknown routes to 404 JSON, and our own bugs to 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from flame.common.access import set_principal
from flame.common.auth import TokenStore, parse_bearer
from flame.common.errors import FlameError, UserError

__all__ = ["BearerAuth", "error_response", "install_errors"]

log = logging.getLogger("flame.common.http_api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REALM = 'Bearer realm="flame"'


def error_response(exc: FlameError) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = _REALM
    elif exc.http_status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(exc.as_dict(), status_code=exc.http_status, headers=headers)


async def _flame_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FlameError)
    if not isinstance(exc, UserError) and exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: pydantic's "input" and "ctx" may hold anything.
    errors = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}",
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
    return JSONResponse(
        {"error": code, "message": message},
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


def install_errors(app: FastAPI, service: str) -> None:
    """JSON errors for every failure; `service` names the server in a 500 ("the PCE")."""

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": "internal_error", "message": f"internal error in {service}; see its log"},
            status_code=500,
        )

    app.add_exception_handler(FlameError, _flame_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, internal_error)


class BearerAuth:
    """Authenticate every `/v1` request before routing, body parsing or validation."""

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
            set_principal(scope, self.tokens.authenticate(token))
        except FlameError as exc:  # 401, or 500 for an unusable token store
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
