"""A finished job's outputs over HTTP (MC-9): media types, validators, single byte ranges and
caching headers, and a player page with the vendored hls.js and dash.js.

Segment names never repeat and a finished job's files never change, so segments are cached
for a year (``immutable``); manifests get a short TTL so a re-run job (same id never happens,
but a deleted one does) is not held by a cache for long. Only flat names a packager writes
are served (no ``/``, no dot segments): the name is checked before the filesystem is touched.
"""

from __future__ import annotations

import asyncio
import os
import re
from email.utils import formatdate
from pathlib import Path
from typing import Final

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from flame.media.content.errors import NotFound
from flame.media.messages import etag_matches
from flame.media.ranges import UNSATISFIABLE, ByteRange, content_range, parse_range

__all__ = ["PLAYERS", "cache_control", "media_type", "player_page", "serve_file"]

PLAYERS: Final = Path(__file__).resolve().parents[1] / "players"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
MANIFEST_TTL_S: Final = 10


def media_type(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext == ".m3u8":
        return "application/vnd.apple.mpegurl"
    if ext == ".mpd":
        return "application/dash+xml"
    if ext == ".m4s":
        # An initialization segment is an MP4 header; a media segment is an ISO BMFF segment.
        return "video/mp4" if name.startswith("init-") else "video/iso.segment"
    if ext in (".mp4", ".m4v"):
        return "video/mp4"
    if ext == ".js":
        return "text/javascript; charset=utf-8"
    return "application/octet-stream"


def cache_control(name: str) -> str:
    if name.endswith((".m3u8", ".mpd")):
        return f"public, max-age={MANIFEST_TTL_S}"
    return "public, max-age=31536000, immutable"


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    with path.open("rb") as fh:
        return fh.read(), os.fstat(fh.fileno())


async def serve_file(request: Request, directory: Path, name: str) -> Response:
    """`name` from `directory`, with ranges, ETag/Last-Modified and 304s."""
    if not _NAME.fullmatch(name) or name == "job.json":
        raise NotFound(f"no file {name[:80]!r}")
    try:
        body, st = await asyncio.to_thread(_read, directory / name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no file {name!r}") from None
    etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    headers = {
        "Content-Type": media_type(name),
        "Cache-Control": cache_control(name),
        "ETag": etag,
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
        "Accept-Ranges": "bytes",
        "Access-Control-Allow-Origin": "*",  # players on other origins fetch these
        "Access-Control-Expose-Headers": "Content-Length, Content-Range",
    }
    inm = request.headers.get("if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    size = len(body)
    raw = request.headers.get("range") if request.method == "GET" else None
    if raw is not None and request.headers.get("if-range", etag).strip() != etag:
        raw = None
    selected = parse_range(raw, size)
    if selected is UNSATISFIABLE:
        return JSONResponse(
            {"error": "range_not_satisfiable", "message": f"no byte of {raw!r} in 0-{size - 1}"},
            status_code=416,
            headers={**headers, "Content-Range": content_range(UNSATISFIABLE, size)},
        )
    status, part = 200, body
    if isinstance(selected, ByteRange):
        status, part = 206, body[selected.slice()]
        headers["Content-Range"] = content_range(selected, size)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(part))
        return Response(status_code=status, headers=headers)
    return Response(part, status_code=status, headers=headers)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>FLAME player: {job}</title>
<style>body{{font:14px sans-serif;margin:1em}}video{{width:640px;background:#000}}</style>
</head><body data-player="{player}">
<video id="video" muted autoplay playsinline controls></video>
<pre id="state"></pre>
<script src="/players/{script}"></script>
<script>
"use strict";
// window.flame: what the page sees, for people and for the playback tests.
const st = window.flame = {{player: "{player}", heights: [], switches: [], errors: [],
                           height: null, supported: true}};
const video = document.getElementById("video");
const src = "/o/{job}/" + ("{player}" === "hls" ? "master.m3u8" : "manifest.mpd");
function rendered(h) {{
  if (h && h !== st.height) {{ st.switches.push(h); st.height = h; }}
}}
if ("{player}" === "hls") {{
  if (!Hls.isSupported()) {{ st.supported = false; }}
  const hls = st.engine = new Hls({{abrEwmaDefaultEstimate: 5e6, maxBufferLength: 4,
                                    maxMaxBufferLength: 6, backBufferLength: 10}});
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, d) => rendered(hls.levels[d.level].height));
  hls.on(Hls.Events.FRAG_LOADED, (_, d) => {{
    if (d.frag.type === "main") st.heights.push(hls.levels[d.frag.level].height);
  }});
  hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) st.errors.push(d.details); }});
  hls.loadSource(src);
  hls.attachMedia(video);
}} else {{
  const p = st.engine = dashjs.MediaPlayer().create();
  p.updateSettings({{debug: {{logLevel: 1}}, streaming: {{
    buffer: {{bufferTimeAtTopQuality: 6, bufferTimeAtTopQualityLongForm: 6,
              stableBufferTime: 6}},
    abr: {{initialBitrate: {{video: 5000}}}}}}}});
  p.on(dashjs.MediaPlayer.events.QUALITY_CHANGE_RENDERED, (e) => {{
    if (e.mediaType === "video") rendered(p.getBitrateInfoListFor("video")[e.newQuality].height);
  }});
  p.on(dashjs.MediaPlayer.events.FRAGMENT_LOADING_COMPLETED, (e) => {{
    const r = e.request;
    if (r && r.mediaType === "video" && r.type === "MediaSegment") {{
      const info = p.getBitrateInfoListFor("video")[r.quality];
      if (info) st.heights.push(info.height);
    }}
  }});
  p.on(dashjs.MediaPlayer.events.ERROR, (e) => st.errors.push(String(e.error && e.error.message)));
  p.initialize(video, src, true);
}}
setInterval(() => {{
  document.getElementById("state").textContent = JSON.stringify(
    {{time: video.currentTime, height: st.height, switches: st.switches, errors: st.errors}});
}}, 500);
</script></body></html>
"""


def player_page(job_id: str, player: str) -> str:
    """A page playing a job's output with hls.js or dash.js (`job_id` is checked by the caller)."""
    script = "hls.min.js" if player == "hls" else "dash.all.min.js"
    return _PAGE.format(job=job_id, player=player, script=script)
