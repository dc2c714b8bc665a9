"""Writing one response to the client: head, framed body, end; or a cut connection.

The writer owns the client-side framing decision (response.py's `choose_framing`): bodies of
known length pass through, others are re-chunked for HTTP/1.1 clients or delimited by closing
the connection for HTTP/1.0 ones. It counts the bytes sent (CLMC-8) and remembers whether the
connection may carry another request afterwards.
"""

from __future__ import annotations

from typing import Final

from flame.sfr.router.errors import RequestRejected, RouterError
from flame.sfr.router.flow import FlowControl
from flame.sfr.router.response import (
    CONTINUE_100,
    Framing,
    ResponseHead,
    choose_framing,
    client_head_parts,
    error_response,
)

__all__ = ["ResponseWriter"]

# Held-back bytes are written once they reach this much, so the transport's own
# back-pressure (pause_writing) still sees them early.
_CORK_LIMIT: Final = 64 * 1024
_JOIN_LIMIT: Final = 16 * 1024


class ResponseWriter:
    """The response half of one request cycle."""

    __slots__ = (
        "_corked",
        "_corked_bytes",
        "bytes_out",
        "complete",
        "framing",
        "head_request",
        "http11",
        "keep_alive",
        "out",
        "sr",
        "started",
        "status",
    )

    def __init__(
        self,
        out: FlowControl,
        sr: bytes,
        *,
        head_request: bool,
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self.out = out  # the client connection's writes
        self.sr = sr
        self.head_request = head_request
        self.http11 = http11
        self.keep_alive = keep_alive  # may the connection carry another request after this?
        self.framing = Framing.NONE
        self.started = False  # a response byte has been written
        self.complete = False  # the whole response has been written
        self.status = 0
        self.bytes_out = 0
        self._corked: list[bytes] | None = None  # head and body bytes held for one write
        self._corked_bytes = 0

    def interim_continue(self) -> None:
        """`100 Continue`: the client may send the body it announced with `Expect`."""
        if not self.started and not self.out.closing:
            self.out.write(CONTINUE_100)

    def start(self, head: ResponseHead, *, keep_alive: bool) -> None:
        """Write the head; it is held (corked) until `flush`, `end` or the next body bytes
        that find the client busy, so that a small response goes out in one system call."""
        framing = choose_framing(head, head_request=self.head_request, http11=self.http11)
        self.keep_alive = keep_alive and self.keep_alive and framing != Framing.CLOSE
        parts = client_head_parts(
            head, self.sr, framing, keep_alive=self.keep_alive, http11=self.http11
        )
        size = 0
        for part in parts:
            size += len(part)
        self.framing = framing
        self.started = True
        self.status = head.status
        self.bytes_out += size
        self._corked = parts
        self._corked_bytes = size

    def body(self, data: bytes) -> None:
        framing = self.framing
        if framing == Framing.NONE or not data:
            return
        corked = self._corked
        if framing == Framing.CHUNKED:
            size = b"%x\r\n" % len(data)
            self.bytes_out += len(size) + len(data) + 2
            if corked is not None:
                corked.extend((size, data, b"\r\n"))
                self._corked_bytes += len(data)
                if self._corked_bytes > _CORK_LIMIT:
                    self.flush()
            else:
                self.out.writelines((size, data, b"\r\n"))
        else:
            self.bytes_out += len(data)
            if corked is not None:
                corked.append(data)
                self._corked_bytes += len(data)
                if self._corked_bytes > _CORK_LIMIT:
                    self.flush()
            else:
                self.out.write(data)

    def flush(self) -> None:
        """Write what is held back (one writev)."""
        corked = self._corked
        if corked is not None:
            self._corked = None
            if len(corked) == 1:
                self.out.write(corked[0])
            elif self._corked_bytes <= _JOIN_LIMIT:
                # A small response: one copy and one plain write cost less than a writev.
                self.out.write(b"".join(corked))
            else:
                self.out.writelines(corked)

    def end(self) -> None:
        if self.complete:
            return
        if self.framing == Framing.CHUNKED:
            self.bytes_out += 5
            if self._corked is not None:
                self._corked.append(b"0\r\n\r\n")
            else:
                self.out.write(b"0\r\n\r\n")
        self.flush()
        self.complete = True

    def error(self, error: RouterError) -> None:
        """The router's own answer for a request that could not be forwarded."""
        # Routing and upstream failures leave the connection usable; a rejected request
        # (its body unread) or our own bug do not.
        self.keep_alive = (
            self.keep_alive and not isinstance(error, RequestRejected) and error.http_status != 500
        )
        data = error_response(
            error, keep_alive=self.keep_alive, http11=self.http11, head_request=self.head_request
        )
        self.local(error.http_status, data)

    def local(self, status: int, data: bytes) -> None:
        """A complete response made by the router (error or status page)."""
        self.started = True
        self.complete = True
        self.status = status
        self.bytes_out += len(data)
        self.out.write(data)

    def cut(self) -> None:
        """The response cannot be completed: the client sees the connection close."""
        self.flush()
        self.keep_alive = False
        self.complete = False
