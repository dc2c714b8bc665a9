"""The VoD origin SF: serves the HLS test stream (and optionally a files directory) over HTTP/1.1.

    python -m flame.media.origin [--port N] [--media-dir DIR] [--files DIR] [--delay-ms MS]

Mounts: ``/hls/`` the generated stream (``/hls/master.m3u8``), ``/files/`` the ``--files``
directory. Answers carry Content-Type, ETag, Last-Modified and Cache-Control (playlists 2 s,
segments a year), support HEAD, single byte ranges (206/416) and conditional GETs (304).
``/health`` and ``/metrics`` are JSON. ``--delay-ms`` holds every media answer back by that
much, to play a far-away origin: the demo needs the edge cache to be visibly faster.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError
from flame.media.files import FileCache, PathRefused, Resolver
from flame.media.hls import StreamSpec, default_media_dir, ensure_stream
from flame.media.messages import (
    Request,
    Response,
    error,
    json_response,
    not_modified,
    select,
)
from flame.media.runtime import add_listen_args, listen_port, run
from flame.media.server import HttpServer

__all__ = ["Origin", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
_NEGATIVE = "public, max-age=5"  # a missing file may appear: caches keep a 404 only briefly


class Origin:
    """The request handler of the origin (no sockets: `HttpServer` calls `handle`)."""

    def __init__(self, mounts: dict[str, Path], *, delay_ms: float = 0.0) -> None:
        # Longest prefix first, so /hls/x is not taken by a mount at /.
        self.mounts = sorted(
            ((prefix.rstrip("/") + "/", Resolver(path)) for prefix, path in mounts.items()),
            key=lambda m: -len(m[0]),
        )
        self.delay_s = delay_ms / 1000.0
        self.files = FileCache()
        self.sfe = os.environ.get("FLAME_SFE", "")
        self.started = time.monotonic()
        self.requests = 0
        self.bytes_out = 0
        self.statuses: dict[str, int] = {}

    async def handle(self, req: Request) -> Response:
        self.requests += 1
        if req.path == "/health":
            resp = json_response(200, {"status": "ok", "sfe": self.sfe or None})
        elif req.path == "/metrics":
            resp = json_response(200, self.metrics())
        else:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            resp = self._media(req)
        if self.sfe:
            resp.headers.append(("X-Flame-Sfe", self.sfe))
        key = f"{resp.status // 100}xx"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if req.method != "HEAD":
            self.bytes_out += len(resp.body)
        return resp

    def _media(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            resp = error(405, "method_not_allowed", f"{req.method} is not served; use GET or HEAD")
            resp.headers.append(("Allow", "GET, HEAD"))
            return resp
        if req.path == "/":
            return json_response(200, {"service": "flame-vod-origin", "mounts": self._index()})
        for prefix, resolver in self.mounts:
            if req.path.startswith(prefix) or req.path == prefix.rstrip("/"):
                return self._file(req, resolver, req.path[len(prefix) :])
        return error(
            404,
            "not_found",
            f"nothing is served at {req.path}",
            cache_control=_NEGATIVE,
            mounts=self._index(),
        )

    def _file(self, req: Request, resolver: Resolver, relative: str) -> Response:
        try:
            path = resolver(relative)
        except PathRefused:
            return error(403, "path_refused", "the path leaves the served directory")
        if path is None:
            return error(404, "not_found", f"no file {req.path}", cache_control=_NEGATIVE)
        try:
            f = self.files.get(path)
        except OSError:
            resolver.forget(relative)
            return error(404, "not_found", f"no file {req.path}", cache_control=_NEGATIVE)
        if not_modified(req, f.etag, f.mtime):
            return Response(304, list(f.headers))
        return select(req, f.body, list(f.headers), f.etag)

    def _index(self) -> list[str]:
        return [prefix for prefix, _ in self.mounts]

    def metrics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes": self.bytes_out,
            "statuses": dict(sorted(self.statuses.items())),
            "file_cache_bytes": self.files.bytes,
            "delay_ms": self.delay_s * 1000.0,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flame.media.origin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_listen_args(p, DEFAULT_PORT)
    p.add_argument("--media-dir", type=Path, default=None, help="where the stream is generated")
    p.add_argument("--no-hls", action="store_true", help="do not generate or serve /hls/")
    p.add_argument("--files", type=Path, default=None, help="a directory to serve at /files/")
    p.add_argument(
        "--delay-ms",
        type=float,
        default=float(os.environ.get("ORIGIN_DELAY_MS") or 0),
        help="added to every media answer, emulating a far-away origin (default: $ORIGIN_DELAY_MS or 0)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        if args.delay_ms < 0:
            raise ConfigError("--delay-ms must be >= 0")
        mounts: dict[str, Path] = {}
        if not args.no_hls:
            media_dir = args.media_dir or default_media_dir()
            # ffmpeg runs in a thread: a slow first encode must not freeze signal handling.
            mounts["/hls"] = await asyncio.to_thread(ensure_stream, media_dir, StreamSpec())
        if args.files is not None:
            if not args.files.is_dir():
                raise ConfigError(f"--files {args.files} is not a directory")
            mounts["/files"] = args.files
        origin = Origin(mounts, delay_ms=args.delay_ms)
        server = HttpServer(origin.handle, server_header="flame-vod-origin")
        port = await server.start(args.host, listen_port(args))
        log.info(
            "origin listening on http://%s:%d/ (mounts: %s)",
            args.host,
            port,
            ", ".join(origin._index()) or "none",
        )
        print(f"listening on http://{args.host}:{port}/", flush=True)
        await stop.wait()
        await server.stop()

    return run(serve, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
