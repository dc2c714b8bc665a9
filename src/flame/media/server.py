"""A small HTTP/1.1 server for the media SFs: an `asyncio.Protocol` fed by httptools, on uvloop.

Why not uvicorn + Starlette: these SFs are the demo's data path (the SRs measure their response
times), and an ASGI stack costs several times the per-request CPU of a protocol that parses with
httptools and answers from a bytes buffer in one `write` (see bench/origin_vs_nginx.py). What
we need of HTTP is small: GET/HEAD, keep-alive, pipelining answered in order, 400 for what the
parser refuses.

Per connection, requests are answered strictly in order by one task (`_serve`); reading
pauses while a pipeline of `_MAX_PIPELINE` requests waits or while the socket cannot take our
writes (back-pressure). A handler's exception becomes a 500 JSON answer and a log line, never a
traceback to the client. `HttpServer.stop` closes the listener, lets requests in progress
finish for a grace period, then closes what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from flame.media.messages import Request, Response, error, http_date
from flame.media.tasks import TaskSet

__all__ = ["Handler", "HttpServer"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

_MAX_PIPELINE = 16
_MAX_HEADERS = 100
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024
_IDLE_TIMEOUT_S = 75.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class HttpServer:
    """One listening socket and the connections it accepted."""

    def __init__(self, handler: Handler, *, server_header: str = "flame-media") -> None:
        self.handler = handler
        self.server_header = server_header.encode()
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.Server | None = None
        self.tasks = TaskSet("the media HTTP server")

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let answers in progress finish for `grace_s`, close the rest."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        deadline = asyncio.get_running_loop().time() + grace_s
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort("server stopping")
        if self._server is not None:
            await self._server.wait_closed()
        await self.tasks.cancel_all("server stopped")


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pipeline: deque[Request | Response] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        self.reading_paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.done_reading = False
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.writable.set()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel("client went away")

    def data_received(self, data: bytes) -> None:
        if self.closing or self.done_reading:
            return
        self._arm_idle_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._enqueue(error(400, "upgrade_refused", "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._enqueue(error(400, "bad_request", f"cannot parse the request: {exc}"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if len(self._headers) >= _MAX_HEADERS and key not in self._headers:
            self._reject(error(431, "too_many_headers", f"more than {_MAX_HEADERS} headers"))
        elif key in self._headers:
            self._headers[key] += ", " + text
        else:
            self._headers[key] = text

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > _MAX_BODY_BYTES:
            self._reject(
                error(413, "body_too_large", f"bodies are limited to {_MAX_BODY_BYTES} bytes")
            )
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self.done_reading:
            return
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._enqueue(error(400, "bad_target", "the request target is not a valid URL"))
            return
        raw_path = (parsed.path or b"/").decode("latin-1")
        try:
            path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            self._enqueue(error(400, "bad_target", "the path is not UTF-8 once percent-decoded"))
            return
        req = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=path,
            query=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
            target=self._url.decode("latin-1"),
            body=b"".join(self._body),
        )
        self._enqueue(req)
        if not self.parser.should_keep_alive():
            # The last request of the connection: whatever a client pipelines after it is
            # ignored (RFC 9112 9.6), and the answer closes the connection.
            self.keep_alive = False
            self.done_reading = True

    # -- internals ----------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > _MAX_HEAD_BYTES:
            self._reject(error(431, "head_too_large", f"the head exceeds {_MAX_HEAD_BYTES} bytes"))

    def _reject(self, resp: Response) -> None:
        # Answered at once (after the requests before it) and reading stops: a head or body
        # past the limits must not keep growing in memory until its message completes.
        self._enqueue(resp)

    def _enqueue(self, item: Request | Response) -> None:
        if self.done_reading:
            return  # after a refusal the framing is lost: whatever follows is ignored
        if isinstance(item, Response):
            # A refused request is answered in its turn, then the connection closes.
            self.keep_alive = False
            self.done_reading = True
        self.pipeline.append(item)
        if len(self.pipeline) >= _MAX_PIPELINE and self.transport and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            self.worker = self.server.tasks.spawn(self._serve(), name="media-connection")

    async def _serve(self) -> None:
        while self.pipeline:
            item = self.pipeline.popleft()
            if self.reading_paused and len(self.pipeline) < _MAX_PIPELINE // 2 and self.transport:
                self.reading_paused = False
                self.transport.resume_reading()
            if isinstance(item, Response):
                resp, method = item, "GET"
            else:
                method = item.method
                try:
                    resp = await self.server.handler(item)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("handler failed on %s %s", item.method, item.path)
                    resp = error(500, "internal_error", f"the server failed: {type(exc).__name__}")
            last = not self.keep_alive and not self.pipeline
            self._write(resp, method, close=last)
            if not self.writable.is_set():
                await self.writable.wait()
            if last:
                return

    def _write(self, resp: Response, method: str, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        no_body = method == "HEAD" or resp.status == 304 or resp.status < 200 or resp.status == 204
        length = resp.content_length if resp.content_length is not None else len(resp.body)
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, _REASONS.get(resp.status, b"Unknown"))]
        lines.append(
            b"Date: %s\r\nServer: %s\r\n" % (http_date().encode(), self.server.server_header)
        )
        for name, value in resp.headers:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if resp.status not in (304, 204):
            lines.append(b"Content-Length: %d\r\n" % length)
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if not no_body:
            lines.append(resp.body)
        transport.write(b"".join(lines))
        if close:
            transport.close()
        else:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(_IDLE_TIMEOUT_S, self._idle)

    def _idle(self) -> None:
        if self._quiet() and self.transport is not None:
            self.transport.close()

    def _quiet(self) -> bool:
        return not self.pipeline and (self.worker is None or self.worker.done())

    def close_when_idle(self) -> None:
        """For a stopping server: close now if idle, else after the answer in progress."""
        self.keep_alive = False
        if self._quiet() and self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        log.debug("aborting a connection: %s", reason)
        if self.transport is not None:
            self.transport.abort()
