"""One client connection: an `asyncio.Protocol` fed by `httptools.HttpRequestParser` (SFR-1).

Per-connection state lives here, per-request state in `RequestCycle` (as in uvicorn's
`httptools_impl`). Requests are answered strictly in order: the first parsed request is
active, pipelined ones wait in `_pipeline` (and reading pauses) until it is done. Anything the
parser or our checks refuse becomes a `RequestRejected` in the pipeline, answered in its turn
with its 4xx, after which the connection closes; a malformed request never raises out of
`data_received`.

Connections beyond the worker's cap (`RouterContext.max_connections`, derived from the file
descriptor limit: config.py) or beyond the per-address limit are answered 503 with
`Retry-After` and closed at once, before anything is read, and counted (status endpoint; a
warning at most every 10 s): a burst of idle connections cannot take the descriptors the
table source and upstream connections need.

Time-outs: a new or kept-alive connection with no request for `keepalive` seconds (`header`
for a brand-new one, like nginx's `client_header_timeout`: a connection that never sends a
request, half-open or idle, is closed after it) is closed; a request whose head has not fully arrived `header` seconds
after its first byte gets a 408 (the deadline is fixed at the first byte, so dripping bytes
does not extend it). Both are deadlines the worker's sweeper checks, not timers per request.

Cycles run by callbacks: a request whose answer is immediate (a 502, the status endpoint)
ends inside `_activate`; `_next` then loops instead of recursing, so a long pipeline of such
requests cannot exhaust the stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import Final, cast

import httptools

from flame.sfr.router.body import RequestBody
from flame.sfr.router.context import RouterContext
from flame.sfr.router.cycle import RequestCycle
from flame.sfr.router.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestRejected,
    RequestTimeout,
)
from flame.sfr.router.flow import PIPELINE, REJECTED, FlowControl
from flame.sfr.router.request import RequestHead, analyze_request
from flame.sfr.router.response import error_response
from flame.sfr.router.tunnel import Tunnel, is_websocket
from flame.sfr.router.upstream_tls import peer_sr

__all__ = ["RouterProtocol"]

log = logging.getLogger(__name__)

# The answer to a connection beyond the cap, written as it is accepted (nothing is read).
_REFUSED_BODY: Final = (
    b'{"error":"too_many_connections","message":"the SR is at its client connection limit; '
    b'retry later"}\n'
)
_REFUSED: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: flame-sr\r\nRetry-After: 1\r\n"
    b"Content-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_REFUSED_BODY) + _REFUSED_BODY
)
REFUSED_LOG_INTERVAL: Final = 10.0  # seconds between warnings about refused connections


class RouterProtocol(asyncio.Protocol):
    """The router's side of one client connection."""

    flow: FlowControl  # set in connection_made (declared, not None, for the compiled class)

    def __init__(
        self, ctx: RouterContext, *, internal: bool = False, tls: bool = False, hop: bool = False
    ) -> None:
        self.ctx = ctx
        # On the egress-hop listener (mutual TLS, upstream_tls.py): set in connection_made
        # when the verified peer certificate names an SR.
        self.hop = hop
        self.peer_sr = False
        # On a sibling worker's private socket: requests relayed by another worker of this SR.
        self.internal = internal
        self.tls = tls  # on the TLS listener (tls.py): the handshake is done by now
        self._loop = ctx.loop
        self._time = ctx.loop.time  # bound once: called per request
        config = ctx.config
        limits = config.limits
        # Read once per connection: the configuration is a plain (interpreted) object.
        self._sr_id = config.sr_id
        self._header_timeout = config.timeouts.header
        self._keepalive_timeout = config.timeouts.keepalive
        self._max_head = limits.max_head_bytes
        self._max_body = limits.max_body_bytes
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.client_ip = b"unknown"
        self._ip_counted = False  # counted in ctx.per_ip (to give back when it closes)
        self.lost = False
        self.requests = 0
        # The request head being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._raw_head = 0
        self._completed = 0  # requests parsed on this connection
        self._chunk = b""  # the chunk being parsed
        self._chunk_fresh = False  # ... and no message has begun or ended in it yet
        self._line_in_chunk = False  # the current request's line starts `_chunk`
        # Requests.
        self._parsing: RequestCycle | None = None  # the cycle whose body is arriving
        self._active: RequestCycle | None = None  # the cycle being answered
        self._pipeline: deque[RequestCycle | RequestRejected] = deque()
        self._rejected = False  # nothing more is read; the connection closes after answering
        self._eof = False  # the client half-closed: close once everything is answered
        # Deadlines (loop time, 0: none), checked by the worker's sweeper (`check_timeouts`):
        # cheaper than a timer handle armed and cancelled for every request.
        self._idle_deadline = 0.0
        self._head_deadline = 0.0
        self._advancing = False  # inside _next: a cycle ending meanwhile only asks for more
        self._advance_again = False
        self._tunnel: Tunnel | None = None  # a WebSocket: bytes go there, not to the parser

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.flow = FlowControl(t, self.ctx.outbox)
        t.set_write_buffer_limits(high=self.ctx.config.limits.write_high_water)
        peer = t.get_extra_info("peername")
        ctx = self.ctx
        if isinstance(peer, tuple) and peer and not self.internal:
            self.client_ip = ip = str(peer[0]).encode("ascii", "replace")
            if ctx.max_connections and len(ctx.connections) >= ctx.max_connections:
                self._refuse(t, "the worker's client connection cap")
                return
            if ctx.max_per_ip:
                open_now = ctx.per_ip.get(ip, 0)
                if open_now >= ctx.max_per_ip:
                    self._refuse(t, "the per-address connection limit")
                    return
                ctx.per_ip[ip] = open_now + 1
                self._ip_counted = True
        if self.hop:
            self.peer_sr = peer_sr(t.get_extra_info("peercert")) is not None
        ctx.connections.add(self)
        if ctx.closing:
            t.close()
            return
        self._idle_deadline = self._loop.time() + self._header_timeout

    def _refuse(self, t: asyncio.Transport, limit: str) -> None:
        """A connection beyond a limit: a 503 and closed, before anything is read."""
        self.lost = True
        self._rejected = True
        t.pause_reading()
        t.write(_REFUSED)
        t.close()
        ctx = self.ctx
        ctx.refused += 1
        now = self._loop.time()
        if now - ctx.refused_log_at >= REFUSED_LOG_INTERVAL:
            ctx.refused_log_at = now
            log.warning(
                "SR %s worker %d: refused %d client connection(s) at %s (%d open, cap %d, "
                "%d per address); see /.flame/status",
                self._sr_id,
                ctx.worker,
                ctx.refused - ctx.refused_reported,
                limit,
                len(ctx.connections),
                ctx.max_connections,
                ctx.max_per_ip,
            )
            ctx.refused_reported = ctx.refused

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.client_data(data)
            return
        if self._rejected:
            return
        self._idle_deadline = 0.0
        completed = self._completed
        # Between messages, a chunk starts with the next request line (see _version).
        self._chunk = data
        self._chunk_fresh = not self._in_head and self._parsing is None
        if self._in_head:
            self._line_in_chunk = False  # the head started in an earlier chunk
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if isinstance(error, RequestRejected):
                self._reject(error)
            else:
                log.error(
                    "internal error parsing a request from %s",
                    self.client_ip.decode(),
                    exc_info=error,
                )
                self._reject(BadRequest("the request could not be processed"))
            return
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data, int(exc.args[0]))
            return
        except httptools.HttpParserError as exc:
            self._reject(BadRequest(f"malformed HTTP request: {_parser_message(exc)}"))
            return
        if self._in_head:
            if self._completed == completed:
                # The whole chunk belongs to the unfinished head. httptools only reports a
                # header once it is complete, so this guards memory against one endless line.
                self._raw_head += len(data)
                if self._raw_head > self._max_head:
                    self._reject(self._too_large_head())
                    return
            if not self._head_deadline:
                self._head_deadline = self._loop.time() + self._header_timeout

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            self._tunnel.close()
            return None
        # A client half-close: answer what was asked, then close. A request cut short by it
        # (head or body incomplete) is answered with a 400 in its turn.
        self._eof = True
        if self._in_head or self._parsing is not None:
            self._reject(BadRequest("the client closed its side in the middle of a request"))
            return True
        if self._active is not None or self._pipeline:
            return True
        # Returning a false value lets the transport close itself now, after what it holds.
        self.flow.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        ctx = self.ctx
        ctx.connections.discard(self)
        if self._ip_counted:
            self._ip_counted = False
            left = ctx.per_ip.get(self.client_ip, 1) - 1
            if left > 0:
                ctx.per_ip[self.client_ip] = left
            else:
                ctx.per_ip.pop(self.client_ip, None)
        self._cancel_timers()
        if self._tunnel is not None:
            self._tunnel.close()
        active, self._active = self._active, None
        self._pipeline.clear()
        if active is not None:
            active.cancel()
        self.flow.on_writable = None

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.client_paused()
            return
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.client_resumed()
            return
        self.flow.resume_writing()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._line_in_chunk = self._chunk_fresh
        self._chunk_fresh = False
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._raw_head = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise self._too_large_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise self._too_large_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_deadline = 0.0
        if self.flow.closing:
            return  # an earlier request in this chunk closed the connection
        parser = self._parser
        req = analyze_request(
            parser.get_method(),
            self._url,
            self._version(),
            self._headers,
            keep_alive=parser.should_keep_alive(),
            sr_id=self._sr_id,
        )
        if self.tls:
            req.forwarded_proto = b"https"  # the client reached us over TLS, whatever it says
        if req.flame_endpoint is not None and self.ctx.pin_needs_sr and not self.peer_sr:
            req.flame_endpoint = None  # not from an SR that proved it is one (upstream_tls.py)
            self.ctx.pins_ignored += 1
        if parser.should_upgrade() and self._may_tunnel(req):
            self._start_tunnel(req)
            return
        if req.content_length is not None and req.content_length > self._max_body:
            raise PayloadTooLarge(
                f"the request body of {req.content_length} bytes is above the limit of "
                f"{self._max_body} bytes"
            )
        body: RequestBody | None = None
        cycle: RequestCycle
        if req.has_body:
            limits = self.ctx.config.limits
            body = RequestBody(
                self.flow,
                retain_limit=limits.retry_body_bytes,
                high_water=limits.write_high_water,
            )
            cycle = RequestCycle(self, req, body, monotonic())
            if req.expect_continue:
                body.on_attach = cycle.writer.interim_continue
            self._parsing = cycle
        else:
            cycle = RequestCycle(self, req, None, monotonic())
        if self._active is None and not self._pipeline:
            self._activate(cycle)
        else:
            self._pipeline.append(cycle)
            self.flow.block_reading(PIPELINE)

    def on_body(self, data: bytes) -> None:
        cycle = self._parsing
        if cycle is None or cycle.body is None:
            return
        if cycle.body.received + len(data) > self._max_body:
            raise PayloadTooLarge(f"the request body is above the limit of {self._max_body} bytes")
        cycle.body.feed(data)

    def on_message_complete(self) -> None:
        self._chunk_fresh = False  # a next request in this chunk does not start it
        self._completed += 1
        cycle, self._parsing = self._parsing, None
        if cycle is not None and cycle.body is not None:
            cycle.body.finish()

    def _version(self) -> str:
        """The request's HTTP version: read from its request line when that line starts the
        chunk being parsed (the usual case), since httptools formats a new string per call."""
        if self._line_in_chunk:
            chunk = self._chunk
            end = chunk.find(b"\r\n")
            if end >= 9 and chunk[end - 9 : end - 3] == b" HTTP/":
                version = chunk[end - 3 : end]
                if version == b"1.1":
                    return "1.1"
                if version == b"1.0":
                    return "1.0"
        return self._parser.get_http_version()

    # -- requests in order --------------------------------------------------------------------

    def _activate(self, cycle: RequestCycle) -> None:
        self._active = cycle
        self.flow.on_writable = None  # a drain callback of the previous cycle is stale
        cycle.start()

    def cycle_done(self, cycle: RequestCycle, keep_alive: bool) -> None:
        """Called by the cycle when its response is written (or abandoned)."""
        if cycle is not self._active:
            return
        self._active = None
        self.requests += 1
        if self.lost:
            return
        if not keep_alive or self.ctx.closing:
            self._close()
            return
        self._next()

    def _next(self) -> None:
        """Start the next pipelined request, or wait for one."""
        if self._advancing:
            # A cycle that answered at once (e.g. a 502) ended inside the loop below: let the
            # loop go on instead of recursing once per pipelined request.
            self._advance_again = True
            return
        self._advancing = True
        try:
            while True:
                self._advance_again = False
                if self._pipeline:
                    item = self._pipeline.popleft()
                    if isinstance(item, RequestRejected):
                        self._answer_rejection(item)
                        return
                    self._activate(item)
                    if self._advance_again and self._active is None and not self.lost:
                        continue
                    return
                break
        finally:
            self._advancing = False
        self.flow.unblock_reading(PIPELINE)
        if self._rejected or self._eof:
            self._close()
        elif not self._in_head:
            self._idle_deadline = self._time() + self._keepalive_timeout

    def _reject(self, error: RequestRejected) -> None:
        """Stop reading; answer `error` once the requests before it are answered; close."""
        if self._rejected:
            return
        self._rejected = True
        self._in_head = False
        self._cancel_timers()
        self.flow.block_reading(REJECTED)
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            # The error hit the body of a request already parsed.
            if parsing is self._active:
                parsing.abort(error)
                self._close()
                return
            if self._pipeline and self._pipeline[-1] is parsing:
                self._pipeline.pop()
        self._pipeline.append(error)
        if self._active is None:
            self._next()

    def _answer_rejection(self, error: RequestRejected) -> None:
        if not self.flow.closing:
            self.flow.write(error_response(error, keep_alive=False))
        self.ctx.metrics.request_done(
            "_rejected",
            None,
            status=error.http_status,
            complete=True,
            rt_ms=0.0,
            bytes_in=0,
            bytes_out=0,
            coalesced=False,
        )
        self._close()

    def _may_tunnel(self, req: RequestHead) -> bool:
        """A WebSocket alone on its connection, for a routed FQDN (not a redirected one)."""
        ctx = self.ctx
        return (
            is_websocket(self._headers)
            and self._active is None
            and not self._pipeline
            and not req.has_body
            and not self.internal
            and req.fqdn not in ctx.local_hosts
            and (self.tls or req.fqdn not in ctx.redirect_https)
            and ctx.routing.lookup(req.fqdn) is not None  # else the usual 404 answers it
        )

    def _start_tunnel(self, req: RequestHead) -> None:
        self.flow.flush()  # what earlier responses left in the outbox goes first
        self._cancel_timers()
        self._tunnel = tunnel = Tunnel(self, req)
        tunnel.start()

    def _upgrade(self, data: bytes, offset: int) -> None:
        if self._tunnel is not None:
            self._tunnel.client_data(data[offset:])  # the client's first frames, if any
            return
        # httptools stops at a request with `Connection: upgrade`. A WebSocket alone on its
        # connection became a tunnel (tunnel.py); any other upgrade (h2c...) is forwarded as
        # plain HTTP without the Upgrade header (request.py drops it), answered normally.
        parsing = self._parsing
        if parsing is not None and parsing.body is not None and not parsing.body.complete:
            self._reject(BadRequest("an Upgrade request with a body is not supported"))
            return
        self._parser = httptools.HttpRequestParser(self)
        if offset < len(data):
            self.data_received(data[offset:])

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the response in progress."""
        if self._active is None:
            self._close()
        else:
            self._pipeline.clear()
            self.flow.block_reading(REJECTED)

    def abort(self) -> None:
        """Last stage of a shutdown: drop the connection whatever it is doing."""
        if self.transport is not None:
            self.flow.abort()

    # -- internals ----------------------------------------------------------------------------

    def _close(self) -> None:
        self._cancel_timers()
        if self.transport is not None:
            self.flow.close()

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweeper: close idle connections, 408 slow request heads."""
        if self._tunnel is not None:
            self._tunnel.check(now)
            return
        if self._idle_deadline and now >= self._idle_deadline:
            self._idle_deadline = 0.0
            if self._active is None and not self._pipeline and not self._in_head:
                self._close()
        if self._head_deadline and now >= self._head_deadline:
            self._head_deadline = 0.0
            if self._in_head:
                self._reject(
                    RequestTimeout(
                        f"the request head did not arrive within {self._header_timeout:g}s"
                    )
                )

    def _too_large_head(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request line and headers are above the limit of {self._max_head} bytes"
        )

    def _cancel_timers(self) -> None:
        self._idle_deadline = 0.0
        self._head_deadline = 0.0


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
