"""Who may call the content SF. An SF cannot read the platform's token store, so it checks
credentials itself, two ways, both optional, both giving tenant principals:

- **API keys** set by the tenant in the template: ``MEDIA_API_KEYS="editor=sha256:<hex>,
  bot@other-tenant=sha256:<hex>"`` (the SHA-256 of each key, so the template never holds a key
  itself; ``name=<key>`` with the key in clear is accepted too, 24 characters at least). A key
  acts for the SF's tenant (``FLAME_TENANT``) unless its name says ``@tenant``.
- **Platform tokens** (``flm_...``), checked with the orchestrator's ``GET /v1/whoami`` when
  ``MEDIA_AUTH_URL`` names it. Only tenant tokens of the tenants in ``MEDIA_TENANTS`` (default:
  the SF's own) are let in; operator and router tokens are refused: an SF is tenant code, and
  the operator's token must never be handed to it. Answers are cached for ``cache_s`` seconds
  (default 5) by the token's digest, so a revoked token stops working here within that time;
  refusals for 1 s.

Every ``/v1`` request is authenticated before routing or body parsing (`ContentAuth`), like
the platform's own APIs; the routes then take the caller through a `Gate` of
`flame.common.access`, and `require_declared` refuses an app with an undeclared route.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

import httpx
from fastapi import Depends
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from flame.common.access import Gate, set_principal
from flame.common.auth import Principal, Role, validate_tenant_id
from flame.common.errors import (
    AuthenticationError,
    ConfigError,
    FlameError,
    PermissionDenied,
    UserError,
)

__all__ = ["Authenticator", "ContentAuth", "TenantOnly", "parse_api_keys"]

log = logging.getLogger(__name__)

TenantOnly = Annotated[
    Principal,
    Depends(Gate({Role.TENANT}, "a tenant of this SF: its own content only")),
]
"""The content API is for tenants (the SF's own, or those MEDIA_TENANTS lets in)."""

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AuthUnavailable(FlameError):
    code = "auth_unavailable"
    http_status = 503


def parse_api_keys(spec: str, default_tenant: str | None) -> dict[str, Principal]:
    """``name[@tenant]=sha256:<hex>|<key>`` separated by commas or whitespace -> digest map."""
    keys: dict[str, Principal] = {}
    for item in re.split(r"[,\s]+", spec.strip()):
        if not item:
            continue
        who, eq, secret = item.partition("=")
        if not eq or not secret:
            raise ConfigError(
                f"MEDIA_API_KEYS entry {who!r} is not name=sha256:<hex> or name=<key>"
            )
        name, at, tenant = who.partition("@")
        tenant = tenant if at else (default_tenant or "")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"MEDIA_API_KEYS: {name!r} is not a valid key name")
        if not tenant:
            raise ConfigError(
                f"MEDIA_API_KEYS: key {name!r} names no tenant and FLAME_TENANT is unset"
            )
        try:
            validate_tenant_id(tenant)
        except UserError as exc:
            raise ConfigError(f"MEDIA_API_KEYS: {exc.message}") from None
        m = _DIGEST.fullmatch(secret)
        if m:
            digest = m[1]
        elif len(secret) >= 24:
            digest = hashlib.sha256(secret.encode()).hexdigest()
        else:
            raise ConfigError(f"MEDIA_API_KEYS: the key of {name!r} is shorter than 24 characters")
        keys[digest] = Principal(name=name, role=Role.TENANT, tenant=tenant)
    return keys


class Authenticator:
    def __init__(
        self,
        *,
        api_keys: dict[str, Principal] | None = None,
        whoami_url: str | None = None,
        tenants: set[str] | None = None,
        cache_s: float = 5.0,
    ) -> None:
        self.api_keys = api_keys or {}
        self.whoami_url = whoami_url.rstrip("/") if whoami_url else None
        self.tenants = tenants or set()
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | FlameError]] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def configured(self) -> bool:
        return bool(self.api_keys or self.whoami_url)

    async def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise AuthenticationError(
                "missing Authorization header; send 'Authorization: Bearer <token>'"
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, principal in self.api_keys.items():
            if hmac.compare_digest(known, digest):
                return principal
        if not token.startswith("flm_") or self.whoami_url is None:
            raise AuthenticationError("unknown API key")
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], FlameError):
                raise cached[1]
            return cached[1]
        try:
            principal = await self._whoami(token)
        except (AuthenticationError, PermissionDenied) as exc:
            self._remember(digest, exc, 1.0)
            raise
        self._remember(digest, principal, self.cache_s)
        return principal

    def _remember(self, digest: str, value: Principal | FlameError, ttl: float) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + ttl, value)

    async def _whoami(self, token: str) -> Principal:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0, trust_env=False)
        try:
            resp = await self._client.get(
                f"{self.whoami_url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise AuthUnavailable(
                f"cannot check the token with the orchestrator: {exc!r}"
            ) from None
        if resp.status_code == 401:
            raise AuthenticationError("the platform does not know this token")
        if resp.status_code != 200:
            raise AuthUnavailable(f"the orchestrator answered whoami with {resp.status_code}")
        try:
            doc = resp.json()
            role = Role(doc["role"])
            name = str(doc["name"])
            tenant = doc.get("tenant")
        except (ValueError, KeyError, TypeError):
            raise AuthUnavailable("the orchestrator's whoami answer is not understood") from None
        if role is not Role.TENANT or not tenant:
            raise PermissionDenied(
                f"this service function serves tenants; {name!r} is a {role.value} principal "
                "(never send operator or router tokens to an SF)"
            )
        if tenant not in self.tenants:
            raise PermissionDenied(f"tenant {tenant!r} may not use this service function")
        return Principal(name=name, role=Role.TENANT, tenant=str(tenant))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ContentAuth:
    """ASGI middleware: authenticate every ``/v1`` request before routing or reading a body;
    honour tus's ``X-HTTP-Method-Override`` on POST (for clients that cannot send PATCH)."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], auth: Authenticator
    ) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        override = headers.get("x-http-method-override")
        if override and scope["method"] == "POST" and path.startswith("/v1/uploads"):
            scope = dict(scope)
            scope["method"] = override.strip().upper()
        try:
            set_principal(scope, await self.auth.authenticate(headers.get("authorization")))
        except FlameError as exc:
            extra = (
                {"WWW-Authenticate": 'Bearer realm="flame-media"'} if exc.http_status == 401 else {}
            )
            if path.startswith("/v1/uploads"):
                extra["Tus-Resumable"] = "1.0.0"
            await JSONResponse(exc.as_dict(), status_code=exc.http_status, headers=extra)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)
