"""The live ingest SF's HTTP side: the live windows, status and health.

    GET /live/<feed>/master.m3u8       HLS multivariant playlist (CMAF segments)
    GET /live/<feed>/media_<n>.m3u8    HLS media playlists (sliding window)
    GET /live/<feed>/manifest.mpd      MPEG-DASH (dynamic while live, static once ended)
    GET /live/<feed>/<segment>.m4s     init and media segments (CMAF)
    GET /v1/feeds                      feeds, sessions, refusals, recordings (no keys)
    GET /healthz (and /health)         liveness, for the platform's health check

Manifests are ``Cache-Control: public, max-age=1`` (an edge cache may share one fetch among
its viewers, and a viewer never sees a window more than a second old); segments are
``public, max-age=31536000, immutable``: their names carry the session id and never repeat.
Conditional GETs (ETag) and byte ranges are answered; nothing but GET and HEAD.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flame.media.live.pipeline import MANIFEST, MASTER
from flame.media.live.sessions import LiveIngest
from flame.media.messages import (
    Request,
    Response,
    error,
    json_response,
    not_modified,
    select,
)

__all__ = ["LiveApp"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_MANIFEST_CC = "public, max-age=1"
_SEGMENT_CC = "public, max-age=31536000, immutable"
_MISSING_CC = "public, max-age=1"
_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
}
_MAX_FILE = 64 * 1024 * 1024


class LiveApp:
    def __init__(self, ingest: LiveIngest, *, sfe: str = "") -> None:
        self.ingest = ingest
        self.sfe = sfe
        self.started = time.time()
        self.requests = 0

    async def handle(self, req: Request) -> Response:
        self.requests += 1
        if req.method not in ("GET", "HEAD"):
            resp = error(405, "method_not_allowed", f"{req.method} is not served; use GET or HEAD")
            resp.headers.append(("Allow", "GET, HEAD"))
            return resp
        if req.path in ("/healthz", "/health"):
            return json_response(200, self.health())
        if req.path == "/v1/feeds":
            return json_response(200, self.feeds())
        if req.path.startswith("/live/"):
            return self._live(req, req.path[len("/live/") :])
        if req.path == "/":
            return json_response(200, {"service": "flame-live-ingest", "feeds": "/v1/feeds"})
        return error(404, "not_found", f"nothing is served at {req.path}")

    def _live(self, req: Request, rest: str) -> Response:
        feed_name, _, name = rest.partition("/")
        feed = self.ingest.feeds.get(feed_name)
        if feed is None:
            return error(404, "unknown_feed", f"no feed {feed_name!r}", cache_control=_MISSING_CC)
        if not _NAME.match(name) or ".." in name:
            return error(404, "not_found", "not a file of a live window", cache_control=_MISSING_CC)
        session = feed.current
        if session is None:
            return error(404, "not_live", f"feed {feed_name!r} has not been live yet",
                         cache_control=_MISSING_CC)  # fmt: skip
        ext = name[name.rfind(".") :] if "." in name else ""
        kind = _TYPES.get(ext)
        if kind is None or name == "dvr.ts":
            return error(404, "not_found", f"no file {name!r}", cache_control=_MISSING_CC)
        path = session.dir / name
        try:
            st = path.stat()
            if st.st_size > _MAX_FILE:
                return error(404, "not_found", f"no file {name!r}", cache_control=_MISSING_CC)
            body = path.read_bytes()
        except OSError:
            return error(404, "not_found", f"no file {name!r} in the live window",
                         cache_control=_MISSING_CC)  # fmt: skip
        etag = f'"{st.st_mtime_ns:x}-{len(body):x}"'
        cc = _SEGMENT_CC if ext == ".m4s" else _MANIFEST_CC
        headers = [
            ("Content-Type", kind),
            ("Cache-Control", cc),
            ("ETag", etag),
            ("Access-Control-Allow-Origin", "*"),
        ]
        if name in (MASTER, MANIFEST) or name.startswith("media_"):
            headers.append(("X-Flame-Live-State", session.state))
        if self.sfe:
            headers.append(("X-Flame-Sfe", self.sfe))
        if not_modified(req, etag, None):
            return Response(304, headers)
        return select(req, body, headers, etag)

    def health(self) -> dict[str, Any]:
        srt = self.ingest.srt_session
        return {
            "status": "ok",
            "sfe": self.sfe or None,
            "feeds_live": self.ingest.live_count(),
            "max_feeds": self.ingest.config.max_feeds,
            "srt": None if srt is None else {"feed": srt.feed, "state": srt.state},
        }

    def feeds(self) -> dict[str, Any]:
        ingest = self.ingest
        out = []
        for feed in ingest.feeds.values():
            current = feed.current
            out.append({
                "feed": feed.name,
                "live": feed.busy,
                "hls": f"/live/{feed.name}/{MASTER}",
                "dash": f"/live/{feed.name}/{MANIFEST}",
                "sessions": feed.sessions,
                "restarts": feed.restarts,
                "current": current.summary() if current is not None else None,
                "recordings": list(feed.recordings[-20:]),
            })  # fmt: skip
        srt = ingest.srt_session
        config = ingest.config
        return {
            "feeds": out,
            # Where encoders push (the SRs route HTTP only): append the stream key to `rtmp`;
            # `srt` takes the key as passphrase and carries `srt_feed`.
            "contribution": {
                "rtmp": f"rtmp://{config.host}:{ingest.rtmp_port}/live/",
                "srt": f"srt://{config.host}:{config.srt_port}" if config.srt_feed else None,
                "srt_feed": config.srt_feed,
            },
            "max_feeds": ingest.config.max_feeds,
            "refused": dict(ingest.refused),
            "srt_listener": None if srt is None else srt.summary(),
            "ladder": [{"rendition": r.name, "kbps": r.kbps} for r in ingest.config.ladder],
            "segment_seconds": ingest.config.segment_s,
            "playlist_window": ingest.config.window,
        }
