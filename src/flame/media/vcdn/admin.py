"""The edge cache's management API, for the tenant that owns the cache SF.

Every route needs ``Authorization: Bearer <key or token>``, checked like the content SF's
(`flame.media.content.auth.Authenticator`: the tenant's API keys from ``MEDIA_API_KEYS``, or
platform tokens checked with the orchestrator's ``/v1/whoami`` when ``MEDIA_AUTH_URL`` is set),
and the caller's tenant must be the SF's own (``FLAME_TENANT``): another tenant gets 403.

    POST /_cache/v1/purge     {"paths": [...], "prefixes": [...]}   -> {"purged": n}
    POST /_cache/v1/ban       {"tags": [...]}                       -> {"banned": n}
    POST /_cache/v1/prefetch  {"paths": [...]}                      -> {"results": {...}, ...}
    GET  /_cache/v1/stats                                           -> the cache's counters

`ROUTES` is the route table (default deny: a path or method not in it is a 404/405 before
any credential is looked at, and each entry names its access rule).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from flame.common.auth import Principal
from flame.common.errors import FlameError
from flame.media.messages import Request, Response, error, json_response

if TYPE_CHECKING:
    from flame.media.cache import EdgeCache
    from flame.media.content.auth import Authenticator

__all__ = ["MAX_ITEMS", "ROUTES", "CacheAdmin"]

MAX_ITEMS = 256  # paths, prefixes or tags in one call
MAX_TARGET = 2048
MAX_TAG = 128
TENANT_RULE = "a tenant principal of the SF's own tenant"
ROUTES: dict[str, tuple[str, str]] = {
    "/_cache/v1/purge": ("POST", TENANT_RULE),
    "/_cache/v1/ban": ("POST", TENANT_RULE),
    "/_cache/v1/prefetch": ("POST", TENANT_RULE),
    "/_cache/v1/stats": ("GET", TENANT_RULE),
}


class BadInput(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CacheAdmin:
    def __init__(
        self,
        cache: EdgeCache,
        auth: Authenticator,
        tenant: str,
        *,
        prefetch_concurrency: int = 4,
    ) -> None:
        self.cache = cache
        self.auth = auth
        self.tenant = tenant
        self.prefetch_slots = asyncio.Semaphore(prefetch_concurrency)
        self.refused = 0
        handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Response]]] = {
            "/_cache/v1/purge": self._purge,
            "/_cache/v1/ban": self._ban,
            "/_cache/v1/prefetch": self._prefetch,
            "/_cache/v1/stats": self._stats,
        }
        assert handlers.keys() == ROUTES.keys()
        self.handlers = handlers

    async def close(self) -> None:
        await self.auth.close()

    async def handle(self, req: Request) -> Response:
        route = ROUTES.get(req.path)
        if route is None:
            return error(404, "not_found", f"no management route {req.path!r}")
        if req.method != route[0]:
            resp = error(405, "method_not_allowed", f"use {route[0]} for {req.path}")
            resp.headers.append(("Allow", route[0]))
            return resp
        refusal = await self._check(req.headers.get("authorization"))
        if refusal is not None:
            self.refused += 1
            return refusal
        try:
            doc = _body(req) if req.method == "POST" else {}
            return await self.handlers[req.path](doc)
        except BadInput as exc:
            return error(400, "bad_request", exc.message)

    async def _check(self, header: str | None) -> Response | None:
        try:
            principal: Principal = await self.auth.authenticate(header)
        except FlameError as exc:
            resp = error(exc.http_status, exc.code, exc.message)
            if exc.http_status == 401:
                resp.headers.append(("WWW-Authenticate", 'Bearer realm="flame-cache"'))
            return resp
        if principal.tenant != self.tenant:
            return error(
                403, "forbidden", f"this cache belongs to another tenant than {principal.tenant!r}"
            )
        return None

    async def _purge(self, doc: dict[str, Any]) -> Response:
        paths = [_target(p) for p in _strings(doc, "paths", MAX_TARGET)]
        prefixes = [_target(p) for p in _strings(doc, "prefixes", MAX_TARGET)]
        if not paths and not prefixes:
            raise BadInput("give 'paths' and/or 'prefixes' (lists of URL paths)")
        return json_response(200, {"purged": self.cache.purge(paths, prefixes)})

    async def _ban(self, doc: dict[str, Any]) -> Response:
        tags = _strings(doc, "tags", MAX_TAG)
        if not tags:
            raise BadInput("give 'tags' (a list of Surrogate-Key / Cache-Tag values)")
        return json_response(200, {"banned": self.cache.ban(tags)})

    async def _prefetch(self, doc: dict[str, Any]) -> Response:
        targets = list(dict.fromkeys(_target(p) for p in _strings(doc, "paths", MAX_TARGET)))
        if not targets:
            raise BadInput("give 'paths' (a list of URL paths to warm)")

        async def one(target: str) -> str:
            async with self.prefetch_slots:
                return await self.cache.prefetch(target)

        results = dict(zip(targets, await asyncio.gather(*(one(t) for t in targets)), strict=True))
        values = list(results.values())
        return json_response(
            200,
            {
                "results": results,
                "fetched": values.count("fetched"),
                "fresh": values.count("fresh"),
                "errors": sum(v.startswith("error") for v in values),
            },
        )

    async def _stats(self, doc: dict[str, Any]) -> Response:
        return json_response(200, self.cache.metrics())


def _body(req: Request) -> dict[str, Any]:
    ctype = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadInput("send a JSON object with Content-Type: application/json")
    try:
        doc = json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadInput("the body must be a JSON object")
    return doc


def _strings(doc: dict[str, Any], name: str, max_len: int) -> list[str]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadInput(f"{name!r} must be a list of non-empty strings")
    if len(value) > MAX_ITEMS:
        raise BadInput(f"{name!r} has {len(value)} entries; at most {MAX_ITEMS} per call")
    for v in value:
        if len(v) > max_len:
            raise BadInput(f"an entry of {name!r} is longer than {max_len} characters")
    return list(value)


def _target(raw: str) -> str:
    """A URL path with an optional query -> the cache's key form (the path percent-decoded)."""
    path, q, query = raw.partition("?")
    if not path.startswith("/"):
        raise BadInput(f"{raw[:80]!r} is not a URL path (it must start with /)")
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadInput(f"{raw[:80]!r} is not UTF-8 once percent-decoded") from None
    if "\x00" in path or any(p == ".." for p in path.split("/")):
        raise BadInput(f"{raw[:80]!r} leaves the served tree")
    return f"{path}?{query}" if q and query else path
