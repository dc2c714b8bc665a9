"""One keep-alive HTTP/1.1 connection from the router to an endpoint (SFR-1).

An `asyncio.Protocol` fed by `httptools.HttpResponseParser`, carrying one exchange at a time
(no upstream pipelining, so a failure is attributable to one request). The exchange's owner
(a `Forwarding`) hears of it through callbacks, in the same turn of the loop as the bytes
arrive: `upstream_head` when the head is parsed (it then `commit`s the connection to a sink,
or abandons it to retry elsewhere), `upstream_complete` once the body has ended and
`upstream_failed` on a reset, a parse error or a time-out. No future or task per request.

Time-outs are deadlines checked by the pool's sweeper (`check_timeout`): an exchange fails
when neither side has moved for `timeout` seconds, except while the router itself stopped
reading because the client is slow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

import httptools

from flame.sfr.models import Endpoint
from flame.sfr.router.body import RequestBody
from flame.sfr.router.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from flame.sfr.router.flow import CLIENT_FULL, FlowControl, Outbox
from flame.sfr.router.interfaces import ExchangeOwner, ResponseSink
from flame.sfr.router.response import ResponseHead
from flame.sfr.router.table import Address

__all__ = ["UpstreamConnection"]

log = logging.getLogger(__name__)

# Exchange states.
IDLE: Final = 0
AWAIT_HEAD: Final = 1
BODY: Final = 2
COMPLETE: Final = 3
FAILED: Final = 4


class UpstreamConnection(asyncio.Protocol):
    """A pooled connection to one endpoint address."""

    def __init__(
        self,
        address: Address,
        *,
        on_lost: Callable[[UpstreamConnection], None],
        high_water: int,
        outbox: Outbox | None = None,
    ) -> None:
        self.address = address
        self._outbox = outbox  # the worker's held writes (flow.py)
        self._on_lost = on_lost
        self._high_water = high_water
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time  # bound once: called per exchange and per read
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.exchanges = 0  # begun on this connection; above 1 it was reused
        self.closed = False
        self.close_after = False  # drained: close once the current exchange ends (SFR-14)
        self.idle_since = 0.0
        # The current exchange.
        self._state = IDLE
        self._owner: ExchangeOwner | None = None
        self._sink: ResponseSink | None = None
        self._endpoint: Endpoint | None = None
        self._head_request = False
        self._chunked_body = False
        self._body: RequestBody | None = None
        self._body_sent = True
        self._reason = b""
        self._head = ResponseHead(0, b"")  # filled header by header as the parser reads
        self._informational = False
        self._keep_alive = True
        self._close_delimited = False
        self._completed = False  # the parser saw the end of the response in this chunk
        self.got_bytes = False
        self._version = b""
        self._timeout = 60.0
        self.last_io = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport, self._outbox)
        self.transport.set_write_buffer_limits(high=self._high_water)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state != AWAIT_HEAD and state != BODY:  # noqa: PLR1714 - the hot path
            # Bytes nobody asked for (or after a HEAD answer): the stream is out of step.
            log.debug("unexpected %d bytes from %s:%d; closing", len(data), *self.address)
            self.close()
            return
        self.last_io = self._time()
        if not self.got_bytes:
            self.got_bytes = True
            # The status line's version, read here: httptools only offers it as a string
            # formatted per call. Anything unusual is left to the parser (on_headers_complete).
            if len(data) > 8 and data.startswith(b"HTTP/1."):
                self._version = data[5:8]
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(
                self._error(UpstreamProtocolError, "the endpoint switched protocols unasked")
            )
            return
        except httptools.HttpParserError as exc:
            if self._completed:
                # Garbage after a complete response: the response stands, the connection goes.
                self._keep_alive = False
                self._finish()
                self.close()
                return
            context = exc.__context__
            if isinstance(context, UpstreamError):
                self._fail(context)
            else:
                if context is not None:
                    log.error(
                        "internal error handling a response from %s:%d",
                        *self.address,
                        exc_info=context,
                    )
                self._fail(self._error(UpstreamProtocolError, f"unparsable response: {exc}"))
            return
        if self._completed:
            self._finish()
        elif self._sink is not None:
            # Whatever this chunk gave the sink goes out now, head and body in one write.
            self._sink.response_flush()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == BODY and self._close_delimited and exc is None:
            # The close is the end of a body without length (RFC 9112 §6.3).
            self._state = COMPLETE
            self._finish()
        elif self._state == AWAIT_HEAD or self._state == BODY:  # noqa: PLR1714
            where = (
                "before responding"
                if self._state == AWAIT_HEAD
                else "in the middle of the response"
            )
            self._fail(self._error(UpstreamReset, f"the endpoint closed the connection {where}"))
        if self._body is not None:
            self._body.detach()
            self._body = None
        self._on_lost(self)

    def pause_writing(self) -> None:
        if self._body is not None:
            self._body.peer_paused()

    def resume_writing(self) -> None:
        if self._body is not None:
            self._body.peer_resumed()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.add(name, value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise self._error(UpstreamProtocolError, "the endpoint switched protocols unasked")
            # 100 Continue / 103 Early Hints: the real response follows.
            self._informational = True
            self._head = ResponseHead(0, b"")
            self._reason = b""
            return
        head = self._head
        head.status = status
        head.reason = self._reason.strip()
        head.version = self._version or parser.get_http_version().encode("ascii")
        head.scan()
        self._keep_alive = parser.should_keep_alive()
        self._close_delimited = (
            head.has_body
            and not self._head_request
            and head.content_length is None
            and not head.chunked
        )
        self._state = BODY
        owner = self._owner
        if owner is not None:
            owner.upstream_head(head)
        if self._head_request and self._state == BODY:
            # httptools cannot be told that a HEAD answer has no body, so the exchange ends
            # here and the connection is not reused (its parser would wait for a body).
            self._keep_alive = False
            self._state = COMPLETE
            self._completed = True

    def on_body(self, data: bytes) -> None:
        if self._state == BODY and self._sink is not None:
            self._sink.response_body(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._state == BODY:
            self._state = COMPLETE
            self._completed = True

    # -- the exchange, driven by its owner ------------------------------------------------------

    @property
    def reused(self) -> bool:
        return self.exchanges > 1

    @property
    def complete(self) -> bool:
        """The whole response has arrived."""
        return self._state == COMPLETE

    @property
    def reusable(self) -> bool:
        """Whether the connection can carry another exchange after this one."""
        return (
            self._state == COMPLETE
            and self._keep_alive
            and self._body_sent
            and not self.closed
            and not self.close_after
        )

    def begin(
        self,
        owner: ExchangeOwner,
        endpoint: Endpoint,
        head: bytes,
        *,
        head_request: bool,
        body: RequestBody | None,
        chunked_body: bool,
        timeout: float,
    ) -> None:
        """Send a request head; attach its body (sent as it arrives)."""
        assert self.flow is not None
        self.exchanges += 1
        self._owner = owner
        self._sink = None
        self._endpoint = endpoint
        self._state = AWAIT_HEAD
        self._head_request = head_request
        self._chunked_body = chunked_body
        self._reason = b""
        self._head = ResponseHead(0, b"")
        self._informational = False
        self._completed = False
        self.got_bytes = False
        self._version = b""
        self._timeout = timeout
        self.last_io = self._time()
        self.flow.write(head)
        self._body = body
        if body is not None:
            self._body_sent = False
            body.attach(self)
        else:
            self._body_sent = True

    def commit(self, sink: ResponseSink) -> None:
        """The owner takes this response: its body goes to `sink` as it arrives."""
        self._sink = sink
        sink.bind_source(self)

    def end_exchange(self) -> None:
        """The owner is done with the exchange (before the pool keeps or closes it)."""
        self._owner = None
        self._sink = None
        if self._body is not None:
            self._body.detach()
            self._body = None
        if self.flow is not None:
            self.flow.unblock_reading(CLIENT_FULL)
        if self._state != COMPLETE:
            self.close()
        self._state = IDLE

    def close(self) -> None:
        """Close the connection; an exchange in progress is dropped without notice."""
        self._owner = None
        self._sink = None
        if self._state == AWAIT_HEAD or self._state == BODY:  # noqa: PLR1714
            self._state = FAILED
        if self.flow is not None:
            self.flow.close()

    def check_timeout(self, now: float) -> None:
        """Called by the pool's sweeper for busy connections."""
        if self._state != AWAIT_HEAD and self._state != BODY:  # noqa: PLR1714
            return
        if self.flow is not None and self.flow.reading_paused:
            # We stopped reading because the client is slow: not the endpoint's fault.
            self.last_io = now
            return
        if now - self.last_io >= self._timeout:
            phase = "for the response head" if self._state == AWAIT_HEAD else "for more of the body"
            self._fail(self._error(UpstreamTimeout, f"waited {self._timeout:g}s {phase}"))

    # SourceControl: the sink's back-pressure.
    def pause_reading(self) -> None:
        if self.flow is not None:
            self.flow.block_reading(CLIENT_FULL)

    def resume_reading(self) -> None:
        if self.flow is not None:
            self.last_io = self._time()
            self.flow.unblock_reading(CLIENT_FULL)

    # BodyTarget: the client's request body.
    def send_body(self, data: bytes) -> None:
        flow = self.flow
        if flow is None or flow.closing or not data:
            return
        self.last_io = self._time()
        if self._chunked_body:
            flow.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            flow.write(data)

    def end_body(self) -> None:
        self._body_sent = True
        flow = self.flow
        if self._chunked_body and flow is not None and not flow.closing:
            flow.write(b"0\r\n\r\n")

    # -- internals ----------------------------------------------------------------------------

    def _finish(self) -> None:
        self._completed = False
        owner = self._owner
        if owner is not None:
            owner.upstream_complete()

    def _fail(self, error: UpstreamError) -> None:
        owner = self._owner
        self.close()
        if owner is not None:
            owner.upstream_failed(error)

    def _error(self, cls: type[UpstreamError], message: str) -> UpstreamError:
        endpoint = self._endpoint
        host, port = self.address
        return cls(
            f"{message} ({endpoint.sfe if endpoint else '?'} at {host}:{port})",
            sfe=endpoint.sfe if endpoint else "",
            endpoint=f"{host}:{port}",
            before_response=self._state == AWAIT_HEAD,
        )
