"""Small HTTP peers for the data-plane tests: upstream endpoints, raw clients, a response reader.

Everything speaks real TCP on 127.0.0.1 with ephemeral ports; nothing here is a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from flame.sfr.models import Endpoint, ForwardingTable, Route

SR = "sr-test"


# -- tables ---------------------------------------------------------------------------------------


def endpoint(
    sfe: str, port: int, *, fqdn: str = "vod.example", cluster: str = "c1", weight: float = 1.0
) -> Endpoint:
    return Endpoint(sfe=sfe, fqdn=fqdn, cluster=cluster, host="127.0.0.1", port=port, weight=weight)


def table(
    version: int, routes: dict[str, list[tuple[Endpoint, float]]], *, sr: str = SR
) -> ForwardingTable:
    """A forwarding table: fqdn -> [(endpoint, cost)]."""
    return ForwardingTable(
        sr=sr,
        version=version,
        routes={
            fqdn: tuple(Route(e, egress_sr=sr, cost=c, latency_ms=c, path=(sr,)) for e, c in eps)
            for fqdn, eps in routes.items()
        },
    )


# -- upstream endpoints ------------------------------------------------------------------------------


@dataclass
class UpRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


Handler = Callable[["Upstream", UpRequest, asyncio.StreamWriter], Awaitable[bool]]


class _RequestParser:
    """httptools callbacks collecting complete requests."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: deque[UpRequest] = deque()
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", [], bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append(
            UpRequest(
                self.parser.get_method().decode(),
                self._url.decode("latin-1"),
                self.parser.get_http_version(),
                self._headers,
                bytes(self._body),
            )
        )


async def echo_handler(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
    """200 with a JSON description of the request and which upstream answered."""
    body = json.dumps(
        {
            "upstream": up.name,
            "method": req.method,
            "target": req.target,
            "headers": req.headers,
            "body_len": len(req.body),
        }
    ).encode()
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (up.name.encode(), len(body)) + body
    )
    return True


class Upstream:
    """An HTTP/1.1 endpoint: parses requests, records them, answers with `handler`."""

    def __init__(self, name: str, handler: Handler = echo_handler) -> None:
        self.name = name
        self.handler = handler
        self.requests: list[UpRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0, *, sock: socket.socket | None = None) -> Upstream:
        """Listen on 127.0.0.1:`port`, or on `sock` (bound, e.g. in another namespace)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def endpoint(
        self, *, fqdn: str = "vod.example", cluster: str = "c1", weight: float = 1.0
    ) -> Endpoint:
        return endpoint(self.name, self.port, fqdn=fqdn, cluster=cluster, weight=weight)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._writers.add(writer)
        collector = _RequestParser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                collector.parser.feed_data(data)
                while collector.done:
                    req = collector.done.popleft()
                    self.requests.append(req)
                    keep = await self.handler(self, req, writer)
                    await writer.drain()
                    if not keep:
                        return
        except (ConnectionError, httptools.HttpParserError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            # close() cancels this task, maybe while it waits here: it must still end normally,
            # as Python 3.11's stream server logs a cancelled handler as an error.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and cut every open connection (as a dying endpoint does)."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class RawUpstream:
    """An endpoint whose handler gets the raw streams (for misbehaving or slow answers)."""

    def __init__(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.handler = handler
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- clients ------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True
    raw_head: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class _ResponseCollector:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: deque[Response] = deque()
        self.first_body_at: float | None = None
        self._begin()

    def _begin(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.in_message = False
        self.headers_done = False

    def on_message_begin(self) -> None:
        self._begin()
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.first_body_at is None:
            self.first_body_at = asyncio.get_running_loop().time()
        self.body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.in_message = False
        if status < 200:
            return
        self.done.append(Response(status, self.headers, bytes(self.body)))


class Client:
    """A raw HTTP/1.1 client connection: write any bytes, read parsed responses in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _ResponseCollector()
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(
        self, path: str = "/", host: str = "vod.example", headers: dict[str, str] | None = None
    ) -> Response:
        await self.send(request_bytes("GET", path, host, headers))
        return await self.response()

    async def response(self, timeout: float = 10.0) -> Response:
        """The next complete response; on EOF mid-response one with complete=False."""
        c = self._collector
        async with asyncio.timeout(timeout):
            while not c.done:
                if self.eof:
                    raise EOFError("connection closed before a response")
                data = await self.reader.read(1 << 20)
                if not data:
                    self.eof = True
                    if c.in_message and c.headers_done:
                        return Response(
                            c.parser.get_status_code(), c.headers, bytes(c.body), complete=False
                        )
                    raise EOFError("connection closed before a response")
                c.parser.feed_data(data)
        return c.done.popleft()

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the router closes the connection (reads to EOF)."""
        async with asyncio.timeout(timeout):
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def request_bytes(
    method: str,
    path: str,
    host: str | None = "vod.example",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body and not any(
        k.lower() in ("content-length", "transfer-encoding") for k in headers or {}
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes, half-close, read everything until the router closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# -- loops a test runs itself ---------------------------------------------------------------------------


def close_loop(loop: asyncio.AbstractEventLoop, *, timeout: float = 30.0) -> None:
    """Close `loop` (not running) in order: cancel the tasks still pending and let them finish,
    end async generators and the default executor, then close it.

    A task or transport left behind is destroyed when the garbage collector gets to it, maybe
    during a later test on the same xdist worker, whose setup then fails on the unraisable
    warning; closing here keeps the failure in the test that caused it. Raises if a task does
    not end within `timeout` (generous: a loaded 2-core machine stalls)."""
    stuck: list[str] = []
    try:
        for _ in range(3):  # a task's cleanup may start another one
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.wait(pending, timeout=timeout))
        stuck = [t.get_name() for t in asyncio.all_tasks(loop) if not t.done()]
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        # Transports closed just now end on the loop's next turns.
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    if stuck:
        raise AssertionError(f"tasks ignored their cancellation for {timeout}s: {stuck}")
