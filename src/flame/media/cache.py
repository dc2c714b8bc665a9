"""The edge cache SF: a read-through surrogate of the origin (the virtual CDN's cache, MC-5/MC-10).

    python -m flame.media.cache --origin URL [--via SR_URL] [--port N] [--cache-bytes SIZE]
                                [--disk-dir DIR] [--playlist-ttl S]

A request is answered from the store while its object is fresh (``X-Cache: HIT``); otherwise
the object is fetched whole from the origin over a keep-alive pool (``X-Cache: MISS``), with
the stale copy's validators so that an unchanged object costs a 304. Concurrent misses for
one object share one origin fetch: the first starts it as a task of its own (a client that
goes away does not cancel it) and the others await the same result. Byte ranges and
conditional requests are answered from the stored object. 404/410 are cached briefly.

RFC 5861: within an object's ``stale-while-revalidate`` window the stale copy is served at
once (``X-Cache: STALE``) and one background revalidation per object is started; within its
``stale-if-error`` window (default ``--stale-if-error`` seconds) a stale copy covers an origin
that is down, times out or answers 5xx. ``Vary`` keys variants by the request's values of the
named headers (at most ``--max-variants`` per URL; ``Vary: *`` is not stored). Origin tags
(``Surrogate-Key``, ``Cache-Tag``) are kept per object for bans. The tenant's management API
(purge, ban, prefetch) and the CLMC reports live in `flame.media.vcdn`; docs/media-vcdn.md.

Out of scope: streaming objects larger than a quarter of the RAM bound (fetched whole and
passed on without being stored).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from flame.common.errors import ConfigError
from flame.common.units import ScalarError, parse_scalar
from flame.media.freshness import (
    lifetime,
    parse_cache_control,
    stale_windows,
    storable,
    surrogate_keys,
    vary_names,
)
from flame.media.messages import (
    Request,
    Response,
    error,
    http_date,
    json_response,
    not_modified,
    parse_http_date,
    select,
)
from flame.media.runtime import add_listen_args, listen_port, run
from flame.media.server import HttpServer
from flame.media.store import CachedObject, ObjectStore, variant_key
from flame.media.tasks import TaskSet

__all__ = ["ADMIN_PREFIX", "EdgeCache", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8081
ADMIN_PREFIX = "/_cache/"  # the tenant's management API (flame.media.vcdn.admin)
# Origin headers a client of the cache still needs; hop-by-hop and per-connection ones go.
_REPLAY = frozenset(
    ("content-type", "etag", "last-modified", "cache-control", "content-language", "expires",
     "vary")
)  # fmt: skip
# Request headers never forwarded to the origin: hop-by-hop, framing, the cache's own business
# (validators, ranges: we fetch whole objects), and credentials (a shared cache must not
# store answers made for one user).
_NOT_FORWARDED = frozenset(
    ("connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host",
     "proxy-authorization", "proxy-connection", "content-length", "expect", "range", "if-range",
     "if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "accept-encoding",
     "authorization", "cookie", "via")
)  # fmt: skip
_PLAYLISTS = (".m3u8", ".mpd")
_DEMAND_PATHS = 10_000  # distinct paths counted per report interval (the rest go to "other")


@dataclass(slots=True)
class _Outcome:
    obj: CachedObject | None
    label: str  # X-Cache
    failure: Response | None = None


class EdgeCache:
    """The cache's request handler (no listening socket: `HttpServer` calls `handle`)."""

    def __init__(
        self,
        origin: str,
        store: ObjectStore,
        *,
        origin_host: str | None = None,
        via: str | None = None,
        default_ttl: float = 10.0,
        negative_ttl: float = 2.0,
        timeout_s: float = 10.0,
        stale_if_error: float = 600.0,
        playlist_ttl: float | None = None,
    ) -> None:
        self.origin = origin.rstrip("/")
        # Through a service router (`via`), the origin's FQDN travels in the Host header and the
        # SR picks the origin endpoint, as for any request between the SFs of a chain.
        self.origin_host = origin_host or (urlsplit(self.origin).netloc if via else None)
        self.via = via.rstrip("/") if via else None
        self.store = store
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self.stale_if_error = stale_if_error
        self.playlist_ttl = playlist_ttl
        # trust_env=False: a proxy variable of the host must not reroute origin fetches.
        self.client = httpx.AsyncClient(
            base_url=self.via or self.origin,
            timeout=httpx.Timeout(timeout_s, connect=min(2.0, timeout_s)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            trust_env=False,
            follow_redirects=False,
        )
        self.inflight: dict[str, asyncio.Task[_Outcome]] = {}
        self.tasks = TaskSet("the edge cache")
        self.sfe = os.environ.get("FLAME_SFE", "")
        self.started = time.monotonic()
        self.purge_epoch = 0  # a fetch started before a purge must not store what it got
        self.admin: Any = None  # a flame.media.vcdn.admin.CacheAdmin, when configured
        self.demand: dict[str, list[int]] = {}  # path -> [requests, hits] since the last report
        self.counts = dict.fromkeys(
            ("requests", "hits", "misses", "stale", "stale_revalidate", "stale_error",
             "collapsed", "origin_fetches", "origin_errors", "revalidated",
             "background_revalidations", "fetch_failures", "bytes", "origin_bytes", "purges",
             "purged_objects", "bans", "banned_objects", "prefetched", "uncacheable"),
            0,
        )  # fmt: skip

    async def close(self) -> None:
        await self.tasks.cancel_all("cache closing")
        await self.client.aclose()
        if self.admin is not None:
            await self.admin.close()

    async def handle(self, req: Request) -> Response:
        counts = self.counts
        counts["requests"] += 1
        path = req.path
        if path == "/health":
            resp = json_response(
                200, {"status": "ok", "sfe": self.sfe or None, "origin": self.origin}
            )
        elif path == "/metrics":
            resp = json_response(200, self.metrics())
        elif path.startswith(ADMIN_PREFIX):
            if self.admin is None:
                resp = error(
                    404, "management_disabled", "the management API needs MEDIA_API_KEYS or "
                    "MEDIA_AUTH_URL (see docs/media-vcdn.md)"
                )  # fmt: skip
            else:
                resp = await self.admin.handle(req)
        else:
            resp = await self._media(req)
        if self.sfe:
            resp.headers.append(("X-Flame-Sfe", self.sfe))
        if req.method != "HEAD":
            counts["bytes"] += len(resp.body)
        return resp

    # -- the data path ---------------------------------------------------------------------------

    async def _media(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            resp = error(405, "method_not_allowed", f"{req.method} is not served; use GET or HEAD")
            resp.headers.append(("Allow", "GET, HEAD"))
            return resp
        if "\x00" in req.path or any(p == ".." for p in req.path.split("/")):
            return error(403, "path_refused", "the path leaves the served directory")
        base = f"{req.path}?{req.query}" if req.query else req.path
        store = self.store
        key = store.variant_key(base, req.headers) if store.vary else base
        obj = store.get(key)
        seen = self.demand.get(req.path)
        if seen is None:
            seen = self._demand_slot(req.path)
        seen[0] += 1
        if obj is not None:
            now = time.time()
            if now < obj.expires_at:
                self.counts["hits"] += 1
                seen[1] += 1
                return self._answer(req, obj, "HIT")
            if obj.status == 200 and now < obj.expires_at + obj.swr:
                self.counts["stale"] += 1
                self.counts["stale_revalidate"] += 1
                self._revalidate(key, base, req, obj)
                return self._answer(req, obj, "STALE")
        outcome = await self._fetch_shared(key, base, req, obj)
        if outcome.obj is not None and outcome.obj.vary:
            mine = variant_key(base, outcome.obj.vary, req.headers)
            if mine != outcome.obj.key:  # the shared fetch was for another variant: our own
                outcome = await self._fetch_shared(mine, base, req, store.get(mine))
        if outcome.failure is not None:
            return outcome.failure
        assert outcome.obj is not None
        return self._answer(req, outcome.obj, outcome.label)

    def _demand_slot(self, path: str) -> list[int]:
        if len(self.demand) >= _DEMAND_PATHS:
            path = "other"
        return self.demand.setdefault(path, [0, 0])

    def _answer(self, req: Request, obj: CachedObject, label: str) -> Response:
        age = max(0, int(time.time() - obj.stored_at))
        headers = [*obj.headers, ("Age", str(age)), ("X-Cache", label)]
        if obj.status != 200:
            return Response(obj.status, headers, obj.body)
        if not_modified(req, obj.etag, obj.last_modified):
            return Response(304, headers)
        return select(req, obj.body, headers, obj.etag)

    def _revalidate(self, key: str, base: str, req: Request, stale: CachedObject) -> None:
        """Start (once per object) a background revalidation of `stale`."""
        if key not in self.inflight:
            self.counts["background_revalidations"] += 1
            self._start_fetch(key, base, req, stale)

    def _start_fetch(
        self, key: str, base: str, req: Request, stale: CachedObject | None
    ) -> asyncio.Task[_Outcome]:
        target = quote(req.path, safe="/:@!$&'()*+,;=-._~") + (f"?{req.query}" if req.query else "")
        forwarded = {k: v for k, v in req.headers.items() if k not in _NOT_FORWARDED}
        task = self.tasks.spawn(
            self._fetch_guarded(key, base, target, stale, forwarded), name=f"fetch {key}"
        )
        self.inflight[key] = task
        task.add_done_callback(lambda t: self._fetch_done(key, t))
        return task

    async def _fetch_shared(
        self, key: str, base: str, req: Request, stale: CachedObject | None
    ) -> _Outcome:
        task = self.inflight.get(key)
        if task is None:
            task = self._start_fetch(key, base, req, stale)
        else:
            self.counts["collapsed"] += 1
        # shield: a waiter that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, key: str, task: asyncio.Task[_Outcome]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]

    async def _fetch_guarded(
        self,
        key: str,
        base: str,
        target: str,
        stale: CachedObject | None,
        forwarded: dict[str, str],
    ) -> _Outcome:
        """`_fetch`, supervised: an unexpected failure is logged and counted, and every waiter
        gets a 502 JSON (or the stale copy), never an exception."""
        try:
            return await self._fetch(key, base, target, stale, forwarded)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counts["fetch_failures"] += 1
            log.exception("fetching %s failed", key)
            return self._origin_failed(
                stale, 502, "fetch_failed", f"the cache failed to fetch: {type(exc).__name__}"
            )

    async def _fetch(
        self,
        key: str,
        base: str,
        target: str,
        stale: CachedObject | None,
        forwarded: dict[str, str],
    ) -> _Outcome:
        counts = self.counts
        counts["origin_fetches"] += 1
        epoch = self.purge_epoch
        headers = {"user-agent": "flame-vod-cache", **forwarded, "accept-encoding": "identity"}
        if self.origin_host:
            headers["host"] = self.origin_host
        if stale is not None and stale.status == 200:
            if stale.etag:
                headers["if-none-match"] = stale.etag
            elif stale.last_modified is not None:
                headers["if-modified-since"] = http_date(stale.last_modified)
        try:
            r = await self.client.get(target, headers=headers)
        except httpx.TimeoutException as exc:
            return self._origin_failed(
                stale, 504, "origin_timeout", f"the origin did not answer in time: {exc!r}"
            )
        except httpx.HTTPError as exc:
            return self._origin_failed(
                stale, 502, "origin_unreachable", f"cannot reach the origin: {exc!r}"
            )
        now = time.time()
        directives = parse_cache_control(r.headers.get("cache-control"))
        ttl = lifetime(
            r.status_code, directives, default_ttl=self.default_ttl, negative_ttl=self.negative_ttl
        )
        if self.playlist_ttl is not None and target.split("?", 1)[0].endswith(_PLAYLISTS):
            ttl = min(ttl, self.playlist_ttl)  # live playlists change with every segment
        windows = stale_windows(directives, default_if_error=self.stale_if_error)
        if r.status_code == 304 and stale is not None:
            counts["revalidated"] += 1
            counts["misses"] += 1
            stale.headers = _merge(stale.headers, r.headers)
            stale.expires_at = now + ttl
            stale.swr, stale.sie = windows
            if epoch == self.purge_epoch:
                self.store.refresh(stale)
            return _Outcome(stale, "MISS")
        if r.status_code >= 500:
            return self._origin_failed(
                stale, 502, "origin_error", f"the origin answered {r.status_code}", passthrough=r
            )
        counts["misses"] += 1
        counts["origin_bytes"] += len(r.content)
        vary_header = r.headers.get("vary")
        names = vary_names(vary_header)
        obj = CachedObject(
            key=variant_key(base, names, forwarded) if names else base,
            status=r.status_code,
            headers=[(k, v) for k, v in r.headers.items() if k.lower() in _REPLAY],
            body=r.content,
            etag=r.headers.get("etag"),
            last_modified=parse_http_date(r.headers.get("last-modified")),
            stored_at=now,
            expires_at=now + ttl,
            base=base,
            vary=names,
            tags=surrogate_keys(r.headers.get("surrogate-key"), r.headers.get("cache-tag")),
            swr=windows.while_revalidate,
            sie=windows.if_error,
        )
        if epoch != self.purge_epoch:
            pass  # purged while we fetched: answer the waiters, keep nothing
        elif storable(r.status_code, directives, vary_header):
            self.store.put(obj, persist=r.status_code == 200)
        else:
            counts["uncacheable"] += 1
            self.store.delete(key)
        return _Outcome(obj, "MISS")

    def _origin_failed(
        self,
        stale: CachedObject | None,
        status: int,
        code: str,
        message: str,
        *,
        passthrough: httpx.Response | None = None,
    ) -> _Outcome:
        self.counts["origin_errors"] += 1
        if stale is not None and stale.status == 200 and time.time() < stale.expires_at + stale.sie:
            self.counts["stale"] += 1
            self.counts["stale_error"] += 1
            log.warning("%s; serving a stale copy of %s", message, stale.key)
            return _Outcome(stale, "STALE")
        log.warning("%s (%s)", message, self.origin)
        if passthrough is not None:  # the origin's own 5xx, passed on uncached
            kept = [(k, v) for k, v in passthrough.headers.items() if k.lower() in _REPLAY]
            resp = Response(
                passthrough.status_code, [*kept, ("X-Cache", "MISS")], passthrough.content
            )
            return _Outcome(None, "MISS", resp)
        return _Outcome(None, "MISS", error(status, code, message, origin=self.origin))

    # -- management (called by flame.media.vcdn.admin) -------------------------------------------

    def purge(self, paths: list[str], prefixes: list[str]) -> int:
        """Remove the objects at `paths` (every variant) and under `prefixes`; returns how many."""
        self._invalidate_inflight()
        n = sum(self.store.purge(p) for p in paths)
        n += sum(self.store.purge_prefix(p) for p in prefixes)
        self.counts["purges"] += 1
        self.counts["purged_objects"] += n
        return n

    def ban(self, tags: list[str]) -> int:
        """Remove every object the origin tagged with one of `tags`; returns how many."""
        self._invalidate_inflight()
        n = sum(self.store.ban(t) for t in tags)
        self.counts["bans"] += 1
        self.counts["banned_objects"] += n
        return n

    def _invalidate_inflight(self) -> None:
        # Fetches in flight go on for their waiters but store nothing; new requests start anew.
        self.purge_epoch += 1
        self.inflight.clear()

    async def prefetch(self, target: str) -> str:
        """Warm one object (a path with an optional query, percent-decoded): 'fresh' when it
        is already held, 'fetched', 'not stored' (the origin forbids it, or it is too big), or
        'error <status>'."""
        path, _, query = target.partition("?")
        base = target
        obj = self.store.get(self.store.variant_key(base, {}))
        if obj is not None and obj.fresh():
            return "fresh"
        req = Request("GET", path, query, {}, target=target)
        outcome = await self._fetch_shared(self.store.variant_key(base, {}), base, req, obj)
        if outcome.failure is not None:
            return f"error {outcome.failure.status}"
        assert outcome.obj is not None
        if outcome.obj.status != 200:
            return f"error {outcome.obj.status}"
        if self.store.get(outcome.obj.key) is None:
            return "not stored"  # no-store, private, Vary: *, or above the per-object bound
        self.counts["prefetched"] += 1
        return "fetched"

    def take_demand(self) -> dict[str, list[int]]:
        """Requests and hits per path since the last call (for the CLMC reports)."""
        demand, self.demand = self.demand, {}
        return demand

    def metrics(self) -> dict[str, Any]:
        return {
            **self.counts,
            "inflight": len(self.inflight),
            "store": self.store.stats(),
            "origin": self.origin,
            "via": self.via,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }


def _merge(headers: list[tuple[str, str]], update: httpx.Headers) -> list[tuple[str, str]]:
    """Stored headers updated by a 304's (RFC 9111 4.3.4)."""
    fresh = {k.lower(): v for k, v in update.items() if k.lower() in _REPLAY}
    kept = [(k, v) for k, v in headers if k.lower() not in fresh]
    return kept + list(fresh.items())


def _size(value: str, what: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return int(parse_scalar(value, "scalar-unit.size"))
    except ScalarError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _seconds(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return float(parse_scalar(value, "scalar-unit.time"))
    except ScalarError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m flame.media.cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_listen_args(p, DEFAULT_PORT)
    p.add_argument(
        "--origin",
        default=env("FLAME_ORIGIN") or env("ORIGIN") or env("ORIGIN_URL"),
        help="the origin's base URL (default: $FLAME_ORIGIN, else $ORIGIN, else $ORIGIN_URL)",
    )
    p.add_argument(
        "--origin-host",
        default=env("FLAME_ORIGIN_HOST") or env("ORIGIN_HOST"),
        help="Host header for origin fetches (the origin's FQDN when going via an SR)",
    )
    p.add_argument(
        "--via",
        default=env("FLAME_SR_URL"),
        help="send origin fetches to this service router (default: $FLAME_SR_URL)",
    )
    p.add_argument(
        "--cache-bytes",
        default=env("CACHE_SIZE", "256MB"),
        help="RAM bound, bytes or a size such as 256MB (default: $CACHE_SIZE or 256MB)",
    )
    p.add_argument(
        "--disk-dir",
        type=Path,
        default=env("CACHE_DISK_DIR") or None,
        help="also keep objects here (default: $CACHE_DISK_DIR)",
    )
    p.add_argument(
        "--disk-bytes",
        default=env("CACHE_DISK_SIZE") or None,
        help="disk bound (default: $CACHE_DISK_SIZE, else 4x --cache-bytes)",
    )
    p.add_argument("--default-ttl", type=float, default=10.0, help="without Cache-Control (s)")
    p.add_argument("--negative-ttl", type=float, default=2.0, help="404/410 kept this long (s)")
    p.add_argument(
        "--playlist-ttl",
        default=env("PLAYLIST_TTL") or None,
        help="cap on the freshness of .m3u8/.mpd, e.g. 2s (default: $PLAYLIST_TTL)",
    )
    p.add_argument(
        "--stale-if-error",
        default=env("CACHE_STALE_IF_ERROR", "600"),
        help="seconds a stale copy covers origin failures when the origin sets no "
        "stale-if-error (default: $CACHE_STALE_IF_ERROR or 600)",
    )
    p.add_argument("--max-variants", type=int, default=8, help="Vary variants kept per URL")
    p.add_argument("--origin-timeout", type=float, default=10.0, help="seconds")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        from flame.media.vcdn.service import configure  # noqa: PLC0415 - the SF's optional parts

        if not args.origin:
            raise ConfigError("no origin: pass --origin URL or set FLAME_ORIGIN or ORIGIN")
        if not args.origin.startswith(("http://", "https://")):
            raise ConfigError(f"--origin {args.origin!r} is not an http(s) URL")
        mem = _size(str(args.cache_bytes), "--cache-bytes/CACHE_SIZE")
        disk = _size(str(args.disk_bytes), "--disk-bytes") if args.disk_bytes else None
        store = ObjectStore(
            mem, disk_dir=args.disk_dir, disk_max_bytes=disk, max_variants=args.max_variants
        )
        cache = EdgeCache(
            args.origin,
            store,
            origin_host=args.origin_host,
            via=args.via,
            default_ttl=args.default_ttl,
            negative_ttl=args.negative_ttl,
            timeout_s=args.origin_timeout,
            stale_if_error=_seconds(str(args.stale_if_error), "--stale-if-error"),
            playlist_ttl=(
                _seconds(args.playlist_ttl, "--playlist-ttl/PLAYLIST_TTL")
                if args.playlist_ttl
                else None
            ),
        )
        reporting = configure(cache, dict(os.environ))
        server = HttpServer(cache.handle, server_header="flame-vod-cache")
        try:
            port = await server.start(args.host, listen_port(args))
            log.info("cache listening on http://%s:%d/, origin %s", args.host, port, args.origin)
            print(f"listening on http://{args.host}:{port}/", flush=True)
            await reporting.run_until(stop)
            await server.stop()
        finally:
            await reporting.close()
            await cache.close()

    return run(serve, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
