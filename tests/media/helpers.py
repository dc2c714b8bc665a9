"""Real servers on loopback for the media tests: in a thread (fast) or as a process (the CLI)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from eventually import Fatal, eventually
from flame.media.messages import Request, Response
from flame.media.server import HttpServer


class ServerThread:
    """An `HttpServer` on its own event loop in a thread; `make` builds the handler owner there."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.app: Any = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="media-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the test server did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        import uvloop

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app = self._make()
        server = HttpServer(self.app.handle)
        self.port = await server.start("127.0.0.1", 0)
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace_s=1.0)
        close = getattr(self.app, "close", None)
        if close is not None:
            await close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (to read or change the app safely)."""
        assert self._loop is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)
        return box[0]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the test server did not stop"


@contextmanager
def running(make: Callable[[], Any]) -> Iterator[ServerThread]:
    server = ServerThread(make).start()
    try:
        yield server
    finally:
        server.stop()


class ScriptedOrigin:
    """A programmable origin (real HTTP through `HttpServer`) that counts what it was asked."""

    def __init__(self, respond: Callable[[Request], Awaitable[Response]]) -> None:
        self.respond = respond
        self.requests: list[Request] = []

    async def handle(self, req: Request) -> Response:
        self.requests.append(req)
        return await self.respond(req)


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet; returns everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse back-to-back HTTP/1.1 responses framed by Content-Length."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


class Proc:
    """A media SF started as `python -m ...`, stopped with SIGTERM."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **env},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, url: str, timeout: float = 60.0) -> None:
        def healthy() -> bool:
            if self.popen.poll() is not None:
                raise Fatal(f"exited {self.popen.returncode} before it was healthy")
            return httpx.get(url + "/health", timeout=2).status_code == 200

        try:
            eventually(healthy, timeout=timeout, what=f"{url}/health")
        except AssertionError as exc:  # the log says why
            raise AssertionError(f"{exc}\n--- log\n{self.log.read_text()}") from exc

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._fh.close()
        return self.popen.returncode


def age_out(cache: ServerThread, base: str, by: float = 0.01) -> None:
    """Make every stored variant of `base` in an `EdgeCache` expire `by` seconds ago: tests
    move the clock this way instead of sleeping past a max-age (a sleep races a stalled
    machine on both sides: the copy may expire before the "still fresh" request)."""

    def expire() -> None:
        store = cache.app.store
        for key in store.bases.get(base, ()):
            store.get(key).expires_at = time.time() - by

    cache.call(expire)


def expires_in(cache: ServerThread, key: str) -> float:
    """Seconds until the cached `key` is stale (what the cache made of max-age and its caps)."""
    return float(cache.call(lambda: cache.app.store.get(key).expires_at) - time.time())
