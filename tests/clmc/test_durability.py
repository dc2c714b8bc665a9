"""Acknowledged means durable (CLMC-9): SIGKILL `flame serve clmc` during a sustained write load,
restart it, and find every acknowledged point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from flame.common.ports import free_port

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, data: Path, port: int) -> None:
        env = {**os.environ, "FLAME_STATE_DIR": str(data / "state"), "FLAME_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from flame.cli.main import main; main()",
                "serve",
                "clmc",
                "--data",
                str(data / "clmc"),
                "--port",
                str(port),
                "--no-auth",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("flame serve clmc did not come up")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    port = free_port()
    server = Server(tmp_path, port)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        assert (
            httpx.post(server.url + "/query", params={"q": "CREATE DATABASE d"}).status_code == 200
        )

        def writer(w: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    batch = f"w{w}b{i}"
                    body = "\n".join(
                        f"m,b={batch} v={j} {i * 1000 + j}" for j in range(200)
                    ).encode()
                    try:
                        r = c.post("/write", params={"db": "d"}, content=body)
                    except httpx.HTTPError:
                        return  # the server died mid-request: that write was never acknowledged
                    if r.status_code == 204:
                        with lock:
                            acked[batch] = 200
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # in the middle of the load
        stop.set()
        for t in threads:
            t.join(15)
        assert len(acked) >= 40, "the server did not acknowledge enough writes before the kill"
    finally:
        stop.set()
        server.stop()

    server = Server(tmp_path, port)
    try:
        r = httpx.get(
            server.url + "/query",
            params={"db": "d", "q": "SELECT count(v) FROM m GROUP BY b"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        series = r.json()["results"][0].get("series", [])
        found = {s["tags"]["b"]: s["values"][0][1] for s in series}
        missing = {b: n for b, n in acked.items() if found.get(b) != n}
        assert not missing, (
            f"{len(missing)} acknowledged batches lost or incomplete: {sorted(missing)[:5]}"
        )
    finally:
        server.stop()
