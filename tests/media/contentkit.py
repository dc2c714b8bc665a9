"""The content SF for tests: the real app under uvicorn on a loopback port, in a thread; small
clips made by the bundled ffmpeg."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from eventually import Fatal, eventually
from flame.common.ports import free_port
from flame.media.content.app import create_app
from flame.media.content.service import Config, ContentService
from flame.media.hls import ffmpeg_exe

KEY_A = "key-for-acme-0123456789abcdef"
KEY_A2 = "second-key-acme-0123456789ab"
KEY_B = "key-for-globex-0123456789abcd"
API_KEYS = (
    f"editor=sha256:{hashlib.sha256(KEY_A.encode()).hexdigest()},"
    f"bot={KEY_A2},"
    f"other@globex=sha256:{hashlib.sha256(KEY_B.encode()).hexdigest()}"
)


@dataclass
class Running:
    url: str
    service: ContentService
    port: int

    def client(self, key: str = KEY_A, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=kw.pop("timeout", 30),
            trust_env=False,
            **kw,
        )


def base_env(data: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(data),
        "MEDIA_DATA_DIR": str(data / "content"),
        "FLAME_TENANT": "acme",
        "FLAME_SFE": "vod-1.content.metro",
        "FLAME_SFC": "vod",
        "FLAME_SFCI": "vod-1",
        "FLAME_SF": "content",
        "MEDIA_API_KEYS": API_KEYS,
        "MEDIA_ANALYSIS": "off",
    }
    env.update(extra)
    return env


@contextmanager
def content_server(
    data: Path, env: Mapping[str, str] | None = None, /, **extra: str
) -> Iterator[Running]:
    config = Config.from_env(env if env is not None else base_env(data, **extra))
    service = ContentService(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True, name="content-sf")
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise Fatal("the content SF's server thread ended before it started")
        return bool(server.started)

    eventually(started, every=0.02, what="the content SF to start")
    try:
        yield Running(f"http://127.0.0.1:{port}", service, port)
    finally:
        server.should_exit = True
        thread.join(15)


def tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", **extra}


def metadata(**pairs: str | None) -> str:
    out = []
    for k, v in pairs.items():
        out.append(k if v is None else f"{k} {base64.b64encode(v.encode()).decode()}")
    return ",".join(out)


def create(http: httpx.Client, length: int, **meta: str | None) -> str:
    meta.setdefault("filename", "clip.bin")
    r = http.post(
        "/v1/uploads",
        headers=tus_headers(**{"Upload-Length": str(length), "Upload-Metadata": metadata(**meta)}),
    )
    assert r.status_code == 201, r.text
    return str(r.headers["location"])


def patch(
    http: httpx.Client, location: str, offset: int, data: bytes | Iterator[bytes], **extra: str
) -> httpx.Response:
    """PATCH `data` at `offset`; an iterator is streamed (chunked), as a large upload is."""
    return http.patch(
        location,
        content=data,
        headers=tus_headers(
            **{
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                **extra,
            }
        ),
    )


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


# -- clips -----------------------------------------------------------------------------------


def make_clip(
    out: Path,
    *,
    size: str = "320x240",
    seconds: float = 2,
    rate: int = 25,
    crf: int = 20,
    audio: bool = True,
    source: Path | None = None,
    vcodec: str = "libx264",
    black: bool = False,
) -> Path:
    """A small real clip: testsrc2 (or `source` re-encoded) with a sine tone."""
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if source is not None:
        argv += ["-i", str(source), "-vf", f"scale={size.replace('x', ':')}"]
    else:
        video = (
            f"color=c=black:size={size}:rate={rate}"
            if black
            else f"testsrc2=size={size}:rate={rate}"
        )
        argv += ["-f", "lavfi", "-i", f"{video}:duration={seconds}"]
        if audio:
            argv += [
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            ]
    argv += ["-c:v", vcodec, "-pix_fmt", "yuv420p", "-threads", "2"]
    if vcodec == "libx264":
        argv += ["-preset", "veryfast", "-crf", str(crf)]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
    else:
        argv += ["-an"]
    argv += ["-movflags", "+faststart", str(out)]
    subprocess.run(argv, check=True, timeout=120)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
