"""The VoD edge cache SF: a read-through surrogate of the origin (the "virtual CDN cache").

    python -m flame.media.cache --origin URL [--via SR_URL] [--port N] [--cache-bytes SIZE]
                                [--disk-dir DIR]

A request is answered from the store while its object is fresh (``X-Cache: HIT``); otherwise
the object is fetched whole from the origin over a keep-alive pool (``X-Cache: MISS``), with
the stale copy's validators so that an unchanged object costs a 304. Concurrent misses for
one object share one origin fetch: the first starts it as a task of its own (a client that
goes away does not cancel it) and the others await the same result. Byte ranges and
conditional requests are answered from the stored object. 404/410 are cached briefly
(negative TTL). When the origin is down or failing, a stale copy is served
(``X-Cache: STALE``), else a 502 (504 on time-out) JSON error.

Out of scope: ``Vary`` (the origin serves one representation per URL) and streaming objects
larger than a quarter of the RAM bound (fetched whole and passed on without being stored).
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
from flame.media.freshness import lifetime, parse_cache_control, storable
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
from flame.media.store import CachedObject, ObjectStore
from flame.media.tasks import TaskSet

__all__ = ["EdgeCache", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8081
# Origin headers a client of the cache still needs; hop-by-hop and per-connection ones go.
_REPLAY = ("content-type", "etag", "last-modified", "cache-control", "content-language", "expires")


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
    ) -> None:
        self.origin = origin.rstrip("/")
        # Through a service router (`via`), the origin's FQDN travels in the Host header and the
        # SR picks the origin endpoint, as for any request between the SFs of a chain.
        self.origin_host = origin_host or (urlsplit(self.origin).netloc if via else None)
        self.via = via.rstrip("/") if via else None
        self.store = store
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
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
        self.counts = dict.fromkeys(
            ("requests", "hits", "misses", "stale", "collapsed", "origin_fetches",
             "origin_errors", "revalidated", "bytes", "origin_bytes"),
            0,
        )  # fmt: skip

    async def close(self) -> None:
        await self.tasks.cancel_all("cache closing")
        await self.client.aclose()

    async def handle(self, req: Request) -> Response:
        counts = self.counts
        counts["requests"] += 1
        if req.path == "/health":
            resp = json_response(
                200, {"status": "ok", "sfe": self.sfe or None, "origin": self.origin}
            )
        elif req.path == "/metrics":
            resp = json_response(200, self.metrics())
        else:
            resp = await self._media(req)
        if self.sfe:
            resp.headers.append(("X-Flame-Sfe", self.sfe))
        if req.method != "HEAD":
            counts["bytes"] += len(resp.body)
        return resp

    async def _media(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            resp = error(405, "method_not_allowed", f"{req.method} is not served; use GET or HEAD")
            resp.headers.append(("Allow", "GET, HEAD"))
            return resp
        if "\x00" in req.path or any(p == ".." for p in req.path.split("/")):
            return error(403, "path_refused", "the path leaves the served directory")
        key = f"{req.path}?{req.query}" if req.query else req.path
        obj = self.store.get(key)
        if obj is not None and obj.fresh():
            self.counts["hits"] += 1
            return self._answer(req, obj, "HIT")
        outcome = await self._fetch_shared(key, req, obj)
        if outcome.failure is not None:
            return outcome.failure
        assert outcome.obj is not None
        return self._answer(req, outcome.obj, outcome.label)

    def _answer(self, req: Request, obj: CachedObject, label: str) -> Response:
        age = max(0, int(time.time() - obj.stored_at))
        headers = [*obj.headers, ("Age", str(age)), ("X-Cache", label)]
        if obj.status != 200:
            return Response(obj.status, headers, obj.body)
        if not_modified(req, obj.etag, obj.last_modified):
            return Response(304, headers)
        return select(req, obj.body, headers, obj.etag)

    async def _fetch_shared(self, key: str, req: Request, stale: CachedObject | None) -> _Outcome:
        task = self.inflight.get(key)
        if task is None:
            target = quote(req.path, safe="/:@!$&'()*+,;=-._~") + (
                f"?{req.query}" if req.query else ""
            )
            task = self.tasks.spawn(self._fetch(key, target, stale), name=f"fetch {key}")
            self.inflight[key] = task
            task.add_done_callback(lambda t: self._fetch_done(key, t))
        else:
            self.counts["collapsed"] += 1
        # shield: a waiter that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, key: str, task: asyncio.Task[_Outcome]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]

    async def _fetch(self, key: str, target: str, stale: CachedObject | None) -> _Outcome:
        counts = self.counts
        counts["origin_fetches"] += 1
        headers = {"accept-encoding": "identity", "user-agent": "flame-vod-cache"}
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
        if r.status_code == 304 and stale is not None:
            counts["revalidated"] += 1
            counts["misses"] += 1
            stale.headers = _merge(stale.headers, r.headers)
            stale.expires_at = now + ttl
            self.store.refresh(stale)
            return _Outcome(stale, "MISS")
        if r.status_code >= 500:
            return self._origin_failed(
                stale, 502, "origin_error", f"the origin answered {r.status_code}", passthrough=r
            )
        counts["misses"] += 1
        counts["origin_bytes"] += len(r.content)
        obj = CachedObject(
            key=key,
            status=r.status_code,
            headers=[(k, v) for k, v in r.headers.items() if k.lower() in _REPLAY],
            body=r.content,
            etag=r.headers.get("etag"),
            last_modified=parse_http_date(r.headers.get("last-modified")),
            stored_at=now,
            expires_at=now + ttl,
        )
        if storable(r.status_code, directives):
            self.store.put(obj, persist=r.status_code == 200)
        else:
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
        if stale is not None and stale.status == 200:
            self.counts["stale"] += 1
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
        default=env("FLAME_ORIGIN") or env("ORIGIN_URL"),
        help="the origin's base URL (default: $FLAME_ORIGIN, else $ORIGIN_URL)",
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
    p.add_argument("--disk-dir", type=Path, default=None, help="also keep objects here")
    p.add_argument("--disk-bytes", default=None, help="disk bound (default: 4x --cache-bytes)")
    p.add_argument("--default-ttl", type=float, default=10.0, help="without Cache-Control (s)")
    p.add_argument("--negative-ttl", type=float, default=2.0, help="404/410 kept this long (s)")
    p.add_argument("--origin-timeout", type=float, default=10.0, help="seconds")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        if not args.origin:
            raise ConfigError("no origin: pass --origin URL or set FLAME_ORIGIN")
        if not args.origin.startswith(("http://", "https://")):
            raise ConfigError(f"--origin {args.origin!r} is not an http(s) URL")
        mem = _size(str(args.cache_bytes), "--cache-bytes")
        disk = _size(str(args.disk_bytes), "--disk-bytes") if args.disk_bytes else None
        store = ObjectStore(mem, disk_dir=args.disk_dir, disk_max_bytes=disk)
        cache = EdgeCache(
            args.origin,
            store,
            origin_host=args.origin_host,
            via=args.via,
            default_ttl=args.default_ttl,
            negative_ttl=args.negative_ttl,
            timeout_s=args.origin_timeout,
        )
        server = HttpServer(cache.handle, server_header="flame-vod-cache")
        try:
            port = await server.start(args.host, listen_port(args))
            log.info("cache listening on http://%s:%d/, origin %s", args.host, port, args.origin)
            print(f"listening on http://{args.host}:{port}/", flush=True)
            await stop.wait()
            await server.stop()
        finally:
            await cache.close()

    return run(serve, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
