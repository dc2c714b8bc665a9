"""The edge cache SF's optional parts, configured from its environment: the tenant's management
API (`admin`) and its measurements to the CLMC (`CacheReporting`).

| variable | default | meaning |
| --- | --- | --- |
| ``MEDIA_API_KEYS`` | | tenant API keys for the management API (as the content SF's) |
| ``MEDIA_AUTH_URL`` | | the orchestrator, to check platform tokens with ``/v1/whoami`` |
| ``MEDIA_TENANTS`` | ``$FLAME_TENANT`` | tenants whose platform tokens are let in |
| ``CLMC_URL``, ``CLMC_TOKEN``, ``CLMC_DB`` | ``CLMC_DB``: ``$FLAME_TENANT`` | measurements |
| ``CACHE_REPORT_INTERVAL`` | ``10`` | seconds between two reports |
| ``CACHE_REPORT_PATHS`` | ``50`` | paths reported per interval (the most requested) |

Measurements (docs/media-vcdn.md lists every field): ``media_cache``, the cache's counters
(cumulative since start, like Telegraf's) and store gauges; ``media_cache_requests``, per path
(tag ``path``) the requests and hits of the last interval, which the replica planner reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flame.common.errors import ConfigError
from flame.media.content.reporter import ClmcReporter
from flame.media.vcdn.admin import CacheAdmin

if TYPE_CHECKING:
    from flame.media.cache import EdgeCache

__all__ = ["CacheReporting", "configure"]

log = logging.getLogger(__name__)

_COUNTERS = (
    "requests", "hits", "misses", "stale", "stale_revalidate", "stale_error", "collapsed",
    "origin_fetches", "origin_errors", "origin_bytes", "bytes", "revalidated",
    "background_revalidations", "fetch_failures", "purges", "purged_objects", "bans",
    "banned_objects", "prefetched", "uncacheable",
)  # fmt: skip


class CacheReporting:
    """Samples the cache every `interval_s` into line protocol and sends it (supervised: a
    failed round is logged and counted, the next one runs)."""

    def __init__(
        self,
        cache: EdgeCache,
        reporter: ClmcReporter,
        *,
        interval_s: float = 10.0,
        top_paths: int = 50,
    ) -> None:
        self.cache = cache
        self.reporter = reporter
        self.interval_s = interval_s
        self.top_paths = top_paths
        self.rounds = 0
        self.failures = 0
        self._last = (0, 0)  # (requests answered from the store or origin, hits) at last sample

    def sample(self) -> None:
        c = self.cache.counts
        store = self.cache.store.stats()
        served = c["hits"] + c["misses"] + c["stale"]
        d_served, d_hits = served - self._last[0], c["hits"] - self._last[1]
        self._last = (served, c["hits"])
        fields: dict[str, Any] = {name: c[name] for name in _COUNTERS}
        fields.update(
            evictions=store["evictions"],
            disk_evictions=store["disk_evictions"],
            objects=store["objects"],
            store_bytes=store["bytes"],
            max_bytes=store["max_bytes"],
            disk_objects=store["disk_objects"],
            disk_bytes=store["disk_bytes"],
            inflight=len(self.cache.inflight),
            hit_ratio=(d_hits / d_served) if d_served else None,
        )
        self.reporter.point("media_cache", fields)
        demand = self.cache.take_demand()
        top = sorted(demand.items(), key=lambda kv: kv[1][0], reverse=True)[: self.top_paths]
        for path, (requests, hits) in top:
            self.reporter.point(
                "media_cache_requests", {"requests": requests, "hits": hits}, {"path": path}
            )

    async def run_until(self, stop: asyncio.Event) -> None:
        if not self.reporter.enabled:
            await stop.wait()
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            await self.report_once()

    async def report_once(self) -> None:
        try:
            self.sample()
            await self.reporter.flush()
            self.rounds += 1
        except Exception:  # a bad round must not end the reporting
            self.failures += 1
            log.exception("reporting the cache's measurements failed")

    async def close(self) -> None:
        await self.reporter.close()


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", variable=name) from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive", variable=name)
    return value


def configure(cache: EdgeCache, env: Mapping[str, str]) -> CacheReporting:
    """Attach the management API to `cache` when credentials are configured; returns the
    CLMC reporting (disabled without ``CLMC_URL``)."""
    tenant = env.get("FLAME_TENANT") or None
    keys = env.get("MEDIA_API_KEYS", "")
    auth_url = env.get("MEDIA_AUTH_URL") or None
    if keys.strip() or auth_url:
        # Imported here: it brings FastAPI, which a cache without a management API does not need.
        from flame.media.content.auth import Authenticator, parse_api_keys  # noqa: PLC0415

        if not tenant:
            raise ConfigError("the cache's management API needs FLAME_TENANT (its owner)")
        tenants = {t for t in re.split(r"[,\s]+", env.get("MEDIA_TENANTS", "")) if t} or {tenant}
        auth = Authenticator(
            api_keys=parse_api_keys(keys, tenant), whoami_url=auth_url, tenants=tenants
        )
        cache.admin = CacheAdmin(cache, auth, tenant)
    identity = {
        "sfc": env.get("FLAME_SFC", ""),
        "sfci": env.get("FLAME_SFCI", ""),
        "sf": env.get("FLAME_SF", ""),
        "sfe": env.get("FLAME_SFE", ""),
        "cluster": env.get("FLAME_CLUSTER", ""),
        "tenant": tenant or "",
    }
    reporter = ClmcReporter(
        env.get("CLMC_URL") or None,
        env.get("CLMC_TOKEN") or None,
        env.get("CLMC_DB") or tenant,
        identity,
    )
    return CacheReporting(
        cache,
        reporter,
        interval_s=_number(env, "CACHE_REPORT_INTERVAL", 10.0),
        top_paths=int(_number(env, "CACHE_REPORT_PATHS", 50)),
    )
