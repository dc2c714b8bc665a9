"""Helpers of the vCDN tests: a cache with its management API in a thread, scripted origins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flame.media.cache import EdgeCache
from flame.media.messages import Request, Response
from flame.media.store import ObjectStore
from flame.media.vcdn.service import configure
from media.helpers import ScriptedOrigin

MB = 1024 * 1024
KEY = "acme-cache-admin-key-0123456789"  # the owner's API key (>= 24 characters)
OTHER_KEY = "globex-cache-admin-key-0123456789"  # a key of another tenant


def managed_cache(
    origin_url: str, *, max_bytes: int = 64 * MB, env: dict[str, str] | None = None, **kw: Any
) -> Callable[[], EdgeCache]:
    """An `EdgeCache` of tenant acme whose management API knows both keys."""

    def make() -> EdgeCache:
        cache = EdgeCache(origin_url, ObjectStore(max_bytes, max_object_bytes=max_bytes), **kw)
        configure(
            cache,
            {"FLAME_TENANT": "acme", "MEDIA_API_KEYS": f"ops={KEY},bot@globex={OTHER_KEY}",
             **(env or {})},
        )  # fmt: skip
        return cache

    return make


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scripted(respond: Callable[[Request], Awaitable[Response]]) -> Callable[[], ScriptedOrigin]:
    return lambda: ScriptedOrigin(respond)


class ReportingCache:
    """A managed cache (as `managed_cache`) that also reports to the CLMC, in a `ServerThread`."""

    def __init__(self, origin_url: str, env: dict[str, str]) -> None:
        import asyncio

        self.cache = managed_cache(origin_url, env=env)()
        self.reporting = configure(self.cache, {"FLAME_TENANT": "acme", **env})
        self._stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.reporting.run_until(self._stop))
        self.handle = self.cache.handle

    async def close(self) -> None:
        self._stop.set()
        await self.task
        await self.reporting.close()
        await self.cache.close()
