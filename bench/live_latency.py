"""Benchmark: glass-to-glass latency of the live ingest SF against plain ffmpeg doing the same.

The camera is the bundled ffmpeg (testsrc2 640x360 at 25 fps, the wall clock of each frame
burnt into its top rows, H.264 + AAC over RTMP). Two paths, run one after the other:

- **ours**: ``python -m flame.media.live`` (the RTMP front with its stream-key check and relay,
  the supervised session ffmpeg, the HTTP server of the live window);
- **peer**: the same ffmpeg command (`flame.media.live.pipeline.session_argv`, same ladder,
  segment length and window) listening for RTMP itself, its directory served by Python's
  ``http.server``: what one would run by hand, with no authentication and no supervision.

A viewer polls the 180p media playlist over HTTP every 50 ms, fetches each new segment and
decodes the clock of its first frame: latency = when the segment was fetched - when its first
frame was captured. The ratio ours/peer shows what the front, the relay and the SF's HTTP add.

    .venv/bin/python bench/live_latency.py            # 3 rounds of 20 s feeds, 1 s segments
    .venv/bin/python bench/live_latency.py --quick    # 1 round of 10 s: under a minute

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import imageio_ffmpeg  # noqa: E402

from flame.common.ports import free_port  # noqa: E402
from flame.media.live.config import LiveConfig  # noqa: E402
from flame.media.live.pipeline import session_argv  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
KEY = "bench-key-0123456789abcdef"
BLOCK, BITS = 20, 32
CLOCK = (
    "setpts=RTCTIME/1000000/TB,"
    f"geq=lum='if(lt(Y,16),255*mod(floor(T*1000/pow(2,floor(X/{BLOCK}))),2),lum(X,Y))'"
    ":cb='if(lt(Y,8),128,cb(X,Y))':cr='if(lt(Y,8),128,cr(X,Y))',setpts=N/25/TB"
)
ENV = {"LIVE_KEYS": f"news={KEY}", "SEGMENT_SECONDS": "1", "PLAYLIST_WINDOW": "4",
       "LADDER": "360p,180p"}  # fmt: skip


def camera(url: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25,{CLOCK}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
         "-c:a", "aac", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def clock_ms(media: bytes, tmp: Path) -> int:
    src = tmp / "probe.mp4"
    src.write_bytes(media)
    raw = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(src), "-frames:v", "1",
         "-vf", "scale=640:360", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    row = raw[8 * 640 : 9 * 640]
    return sum(1 << i for i in range(BITS) if row[i * BLOCK + BLOCK // 2] > 128)


def watch(base: str, cam: subprocess.Popen[bytes], tmp: Path) -> list[int]:
    """Follow media_1.m3u8 until the camera is done; latency of every segment that appeared."""
    seen: set[str] = set()
    init = b""
    fetched: list[tuple[int, bytes]] = []
    first = True
    with httpx.Client(base_url=base, trust_env=False, timeout=5) as http:
        while cam.poll() is None:
            r = http.get("media_1.m3u8")
            if r.status_code != 200:
                time.sleep(0.05)
                continue
            uris = re.findall(r"^[^#\s].*$", r.text, re.M)
            if not init:
                m = re.search(r'#EXT-X-MAP:URI="([^"]+)"', r.text)
                init = http.get(m.group(1)).content if m else b""
            for uri in uris:
                if uri in seen:
                    continue
                seen.add(uri)
                body = http.get(uri).content
                if not first:  # segments listed before we joined are not "new"
                    fetched.append((int(time.time() * 1000) % (1 << BITS), body))
            first = False
            time.sleep(0.05)
    return [(t - clock_ms(init + b, tmp)) % (1 << BITS) for t, b in fetched[:-1]]  # last: partial


def run_ours(seconds: float, tmp: Path) -> list[int]:
    api, rtmp = free_port(), free_port()
    env = {**os.environ, **ENV, "FLAME_PORT_API": str(api), "FLAME_PORT_RTMP": str(rtmp),
           "FLAME_PORT_SRT": "off", "LIVE_DATA_DIR": str(tmp / "ours")}  # fmt: skip
    sf = subprocess.Popen([sys.executable, "-m", "flame.media.live"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{api}/healthz", trust_env=False).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the live SF did not start"
            time.sleep(0.05)
        cam = camera(f"rtmp://127.0.0.1:{rtmp}/live/{KEY}", seconds)
        try:
            return watch(f"http://127.0.0.1:{api}/live/news/", cam, tmp)
        finally:
            cam.wait(30)
    finally:
        sf.send_signal(signal.SIGTERM)
        sf.wait(15)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def run_peer(seconds: float, tmp: Path) -> list[int]:
    out = tmp / "peer"
    out.mkdir()
    port, rtmp = free_port(), free_port()
    config = LiveConfig.from_env({**ENV, "HOME": str(tmp)})
    argv = session_argv(FFMPEG, config, "peer", out,
                        ["-listen", "1", "-i", f"rtmp://127.0.0.1:{rtmp}/live/x"])  # fmt: skip
    argv = [a for a in argv if a not in ("-progress", "pipe:1")]
    ff = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        time.sleep(0.5)  # ffmpeg takes the first connection: no probing its port
        cam = camera(f"rtmp://127.0.0.1:{rtmp}/live/x", seconds)
        try:
            return watch(f"http://127.0.0.1:{port}/", cam, tmp)
        finally:
            cam.wait(30)
    finally:
        ff.wait(15)
        server.shutdown()
        server.server_close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rounds, seconds = (1, 10.0) if args.quick else (3, 20.0)
    ours: list[int] = []
    peer: list[int] = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            ours += run_ours(seconds, Path(d))
        with tempfile.TemporaryDirectory() as d:
            peer += run_peer(seconds, Path(d))
        print(f"round {r + 1}: ours {len(ours)} segments, peer {len(peer)}", flush=True)
    mo, mp = statistics.median(ours), statistics.median(peer)
    print(f"glass-to-glass, 1 s segments, 360p/180p ladder: ours median {mo:.0f} ms "
          f"(p90 {sorted(ours)[int(len(ours) * 0.9)]} ms), plain ffmpeg median {mp:.0f} ms "
          f"(p90 {sorted(peer)[int(len(peer) * 0.9)]} ms); ratio ours/peer {mo / mp:.2f}")  # fmt: skip
    print(json.dumps({"bench": "live_latency", "ours_median_ms": mo, "peer_median_ms": mp,
                      "ratio": round(mo / mp, 3), "ours": ours, "peer": peer}))  # fmt: skip


if __name__ == "__main__":
    main()
