"""What the live tests share: the live SF and an edge cache as processes, a camera (the bundled
ffmpeg pushing a test pattern whose top rows carry the wall clock of each frame), and a viewer
that follows a live playlist through the cache and measures glass-to-glass latency."""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg  # type: ignore[import-untyped]

from eventually import eventually
from flame.common.ports import free_port
from media.helpers import Proc

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
NEWS_KEY = "news-key-0123456789abcdef"
SPORT_KEY = "sport-key-0123456789abcdef"
BLOCK = 20  # pixels per bit of the burnt-in clock, at 640 wide
BITS = 32

# The frame's wall clock (ms, modulo 2^32) as 32 black/white blocks in the top 16 rows: geq
# runs on frames whose timestamps were set to the real-time clock, which are then renumbered.
_CLOCK = (
    "setpts=RTCTIME/1000000/TB,"
    f"geq=lum='if(lt(Y,16),255*mod(floor(T*1000/pow(2,floor(X/{BLOCK}))),2),lum(X,Y))'"
    # neutral chroma under the strip (chroma planes are half height: 8 rows)
    ":cb='if(lt(Y,8),128,cb(X,Y))':cr='if(lt(Y,8),128,cr(X,Y))',setpts=N/25/TB"
)


def camera_argv(url: str, seconds: float, *, fmt: str = "flv") -> list[str]:
    return [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25,{_CLOCK}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", "25", "-c:a", "aac", "-b:a", "64k", "-f", fmt, url,
    ]  # fmt: skip


def camera(url: str, seconds: float, *, fmt: str = "flv") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        camera_argv(url, seconds, fmt=fmt), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def frame_clock_ms(media: bytes, tmp: Path) -> int:
    """The wall clock burnt into the first frame of an (init + segment) CMAF file."""
    src = tmp / f"probe-{time.monotonic_ns()}.mp4"
    src.write_bytes(media)
    raw = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(src), "-frames:v", "1",
         "-vf", "scale=640:360", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    src.unlink()
    row = raw[8 * 640 : 9 * 640]
    return sum((1 << i) for i in range(BITS) if row[i * BLOCK + BLOCK // 2] > 128)


def clock_delta_ms(now_ms: int, clock_ms: int) -> int:
    return (now_ms - clock_ms) % (1 << BITS)


@dataclass
class LiveSF:
    proc: Proc
    api: int
    rtmp: int
    srt: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api}"

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp}/live/{key}"

    def srt_url(self, key: str) -> str:
        return f"srt://127.0.0.1:{self.srt}?passphrase={key}&connect_timeout=3000000"

    def feeds(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/v1/feeds", trust_env=False, timeout=5).json())

    def feed(self, name: str) -> dict[str, Any]:
        return next(f for f in self.feeds()["feeds"] if f["feed"] == name)

    def wait(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        return eventually(self.feeds, until=check, timeout=timeout, every=0.1, what=what)


def start_live(tmp: Path, **env: str) -> LiveSF:
    api, rtmp, srt = free_port(), free_port(), free_port()
    environment = {
        "LIVE_KEYS": f"news={NEWS_KEY},sport={SPORT_KEY}",
        "FLAME_PORT_API": str(api), "FLAME_PORT_RTMP": str(rtmp), "FLAME_PORT_SRT": str(srt),
        "LIVE_DATA_DIR": str(tmp / "live-data"), "SEGMENT_SECONDS": "1",
        "PLAYLIST_WINDOW": "4", "LADDER": "360p,180p", "FLAME_SFE": "live-test",
        **env,
    }  # fmt: skip
    proc = Proc("flame.media.live", [], environment, tmp / "live.log")
    sf = LiveSF(proc, api, rtmp, srt)
    proc.wait_healthy(sf.url)
    return sf


def start_cache(tmp: Path, origin: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc("flame.media.cache", ["--origin", origin, "--port", str(port)], {}, tmp / "c.log")
    url = f"http://127.0.0.1:{port}"
    proc.wait_healthy(url)
    return proc, url


_URI = re.compile(r"^[^#\s].*$", re.M)


@dataclass
class Viewer:
    """Follows a media playlist through the cache like a player at the live edge would."""

    base: str  # .../live/<feed>/
    playlist: str
    http: httpx.Client
    tmp: Path
    seen: list[str] = field(default_factory=list)
    latencies_ms: list[int] = field(default_factory=list)
    windows: list[list[str]] = field(default_factory=list)
    ended: bool = False
    _init: bytes = b""
    _fetched: list[tuple[int, bytes]] = field(default_factory=list)

    def poll(self) -> None:
        r = self.http.get(self.base + self.playlist)
        if r.status_code == 404 and not self.windows:
            return  # the first segment is not out yet: a player retries too
        assert r.status_code == 200, r.text
        text = r.text
        uris = _URI.findall(text)
        self.windows.append(uris)
        self.ended = "#EXT-X-ENDLIST" in text
        if not self._init:
            m = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
            assert m, text
            self._init = self.http.get(self.base + m.group(1)).content
        if len(self.windows) == 1:  # joined late: what is already listed became visible earlier
            self.seen.extend(uris)
            return
        for uri in uris:
            if uri in self.seen:
                continue
            self.seen.append(uri)
            body = self.http.get(self.base + uri)
            assert body.status_code == 200
            visible = int(time.time() * 1000) % (1 << BITS)
            self._fetched.append((visible, body.content))

    def measure(self) -> list[int]:
        """Glass-to-glass of each new segment's first frame (decoded after the run)."""
        self.latencies_ms = [
            clock_delta_ms(visible, frame_clock_ms(self._init + body, self.tmp))
            for visible, body in self._fetched
        ]
        return self.latencies_ms

    def follow(self, segments: int, timeout: float = 60.0) -> None:
        """Poll the playlist every 0.1 s (a player's pace) until `segments` or its end."""

        def done() -> bool:
            if len(self._fetched) >= segments or self.ended:
                return True
            self.poll()
            return False

        def state() -> str:
            return f"{segments} segments or the end (seen {self.seen}, {self.windows[-1:]})"

        eventually(done, timeout=timeout, every=0.1, what=state)

    def median_ms(self) -> float:
        return float(statistics.median(self.measure()))
