"""The transcoder SF on loopback for its tests: a real uvicorn server in a thread, real ffmpeg."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from eventually import Fatal, eventually
from flame.common.ports import free_port
from flame.media.transcode.app import create_app
from flame.media.transcode.service import Config, TranscodeService

KEY = "transcode-test-key-0123456789abcdef"
OTHER_KEY = "transcode-other-key-0123456789abcdef"
API_KEYS = f"editor={KEY},intruder@globex={OTHER_KEY}"


@dataclass
class Running:
    url: str
    service: TranscodeService

    def client(self, key: str = KEY, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=kw.pop("timeout", 30), trust_env=False, **kw)  # fmt: skip


def env_for(data: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(data),
        "TRANSCODE_DATA_DIR": str(data / "transcode"),
        "FLAME_TENANT": "acme",
        "FLAME_SFE": "t1.transcode.metro",
        "FLAME_SF": "transcode",
        "MEDIA_API_KEYS": API_KEYS,
        "MEDIA_TENANTS": "acme,globex",
        "TRANSCODE_THREADS": "2",
    }
    env.update(extra)
    return env


@contextmanager
def transcoder(data: Path, **extra: str) -> Iterator[Running]:
    service = TranscodeService(Config.from_env(env_for(data, **extra)))
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
    thread = threading.Thread(target=server.run, daemon=True, name="transcode-sf")
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise Fatal("the transcoder's server thread ended before it started")
        return bool(server.started)

    eventually(started, every=0.02, what="the transcoder to start")
    try:
        yield Running(f"http://127.0.0.1:{port}", service)
    finally:
        server.should_exit = True
        thread.join(15)


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    job = eventually(
        lambda: http.get(f"/v1/jobs/{job_id}").json(),
        until=lambda j: j["state"] not in ("queued", "running"),
        timeout=timeout,
        every=0.1,
        what=f"job {job_id} to finish",
    )
    return dict(job)


def upload(http: httpx.Client, name: str, path: Path) -> None:
    r = http.put(f"/v1/sources/{name}", content=path.read_bytes())
    assert r.status_code == 201, r.text
