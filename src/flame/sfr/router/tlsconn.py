"""TLS on the SR's client connections, driven by the router itself (SFR-19).

    acceptor = TlsAcceptor(sites.context, loop, handshake_timeout=10.0)
    await loop.create_server(lambda: acceptor.connection(RouterProtocol(ctx, tls=True)), sock=s)

`TlsConnection` sits between uvloop's plain TCP transport and the router's protocol: to uvloop
it is a buffered protocol, to `RouterProtocol` it is the transport. It feeds what the socket
reads into OpenSSL through a memory BIO and hands the plaintext on, and encrypts what the
router writes into one TCP write. This replaces uvloop's `SSLProtocol` (`create_server(ssl=)`),
which does the same with more work per record: a 256 KiB read per `SSLObject.read` call, one
`SSLWantReadError` raised (and formatted) to end every read, Python-level `ssl.SSLObject`
wrappers around each call, and a state machine per connection. Here, compiled with mypyc:

- reads go into one buffer shared by the worker's connections (uvloop fills it and calls
  `buffer_updated` at once, so it is never in use by two connections), then into the BIO;
- plaintext is read a record at a time while the BIOs say more is there, so a request ends
  its read without an exception;
- the C-level `SSLObject` of `ssl` is used directly (`SSLContext._wrap_bio`, the object
  `ssl.SSLObject` wraps; the public wrapper where it is missing).

Semantics are uvloop's: the router's protocol is connected once the handshake is done (so
its caps and time-outs apply to established connections), a handshake not done within
`handshake_timeout` is aborted, close sends TLS `close_notify` after what is buffered (not
waiting for the client's: the answer is framed), a client's `close_notify` or TCP EOF is the
router's `eof_received`. Unlike uvloop, a refused handshake (an unknown server name) sends
OpenSSL's alert before closing.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

__all__ = ["TlsAcceptor", "TlsConnection"]

# One TLS record carries at most 16 KiB of plaintext: one `read` returns at most that.
_RECORD: Final = 16384
_SHARED_BUFFER_SIZE: Final = 256 * 1024


class TlsAcceptor:
    """The TLS listener's shared parts in one worker: context, buffer, handshaking conns."""

    def __init__(
        self, context: ssl.SSLContext, loop: asyncio.AbstractEventLoop, *, handshake_timeout: float
    ) -> None:
        self.context = context
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        wrap: Any = getattr(context, "_wrap_bio", None)
        self._wrap: Any = wrap
        self._buffer = bytearray(_SHARED_BUFFER_SIZE)
        self.view = memoryview(self._buffer)
        self.handshaking: set[TlsConnection] = set()
        self.handshakes = 0  # completed: full ones and resumed ones
        self.resumed = 0  # ... of which resumed a session (ticket or id)
        self.failed = 0  # refused or cut before the end

    def connection(self, app: asyncio.Protocol) -> TlsConnection:
        return TlsConnection(self, app)

    def new_object(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
        if self._wrap is not None:
            return self._wrap(incoming, outgoing, True, None)
        return self.context.wrap_bio(incoming, outgoing, server_side=True)

    def describe(self) -> dict[str, int]:
        return {
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "failed": self.failed,
            "handshaking": len(self.handshaking),
        }

    def abort_handshakes(self) -> None:
        """Shutting down: connections still in their handshake are cut."""
        for conn in list(self.handshaking):
            conn.abort()


class TlsConnection(asyncio.BufferedProtocol):
    """One client connection over TLS: uvloop's protocol and the router's transport."""

    def __init__(self, acceptor: TlsAcceptor, app: asyncio.Protocol) -> None:
        self._acceptor = acceptor
        self._app = app
        self._tcp: asyncio.Transport | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj: Any = None
        # Bound methods of the C objects, taken once: a call then skips the method lookup.
        self._ssl_read: Any = None
        self._ssl_write: Any = None
        self._in_write: Any = self._in.write
        self._out_read: Any = self._out.read
        self._tcp_write: Any = None
        self._tcp_is_closing: Any = None
        self._ready = False  # handshake done, the app connected
        self._closing = False  # close() or abort() called
        self._paused = False  # the app paused reading
        self._eof = False  # the client ended its side (TCP EOF or close_notify)
        self._eof_later = False  # ... while records it sent before wait for resume_reading
        self._app_lost = False
        self._timer: asyncio.TimerHandle | None = None

    # -- uvloop's side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: Any = transport
        self._tcp = tcp
        self._tcp_write = tcp.write
        self._tcp_is_closing = tcp.is_closing
        acceptor = self._acceptor
        self._obj = obj = acceptor.new_object(self._in, self._out)
        self._ssl_read = obj.read
        self._ssl_write = obj.write
        acceptor.handshaking.add(self)
        self._timer = acceptor.loop.call_later(acceptor.handshake_timeout, self._handshake_late)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._acceptor.view

    def buffer_updated(self, nbytes: int) -> None:
        self._in_write(self._acceptor.view[:nbytes])
        if self._ready:
            self._read()
        elif not self._closing:
            self._handshake()

    def eof_received(self) -> bool | None:
        if not self._ready:
            self._acceptor.failed += 1
            return False  # cut in the handshake: uvloop closes
        if self._paused:
            self._eof_later = True  # after the records still in the BIO
        else:
            self._client_ended()
        return True  # the transport stays: close() above (or the app) ends it

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if not self._ready:
            self._acceptor.handshaking.discard(self)
            return
        if not self._app_lost:
            self._app_lost = True
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._ready:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self._app.resume_writing()

    # -- TLS ----------------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._flush()
            return
        except (ssl.SSLError, OSError, ValueError):
            # Refused (no certificate for the name, no common version or suite) or garbage:
            # send the alert OpenSSL wrote, then close.
            self._acceptor.failed += 1
            self._flush()
            self._closing = True
            assert self._tcp is not None
            self._tcp.close()
            return
        self._flush()  # the server's last flight and session tickets
        self._ready = True
        self._cancel_timer()
        acceptor = self._acceptor
        acceptor.handshaking.discard(self)
        acceptor.handshakes += 1
        if self._obj.session_reused:
            acceptor.resumed += 1
        transport: Any = self  # an asyncio.Transport by its methods (a native class here)
        self._app.connection_made(transport)
        if self._in.pending and not self._closing:
            self._read()  # the client's first request came with its Finished

    def _read(self) -> None:
        obj = self._obj
        incoming = self._in
        app = self._app
        read = self._ssl_read
        while not self._paused and not self._closing:
            try:
                data = read(_RECORD)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify
                self._client_ended()
                break
            except (ssl.SSLError, OSError, ValueError):
                self._fail()
                return
            if not data:  # the client's close_notify (ssl reads it as b"")
                self._client_ended()
                break
            app.data_received(data)
            if not incoming.pending and not obj.pending():
                break
        if self._out.pending:
            self._flush()  # e.g. an answer to the client's KeyUpdate
        if self._eof_later and not self._paused and not self._closing:
            self._client_ended()  # every complete record is delivered

    def _client_ended(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._closing:
            return
        if not self._app.eof_received():
            self.close()

    def _flush(self) -> None:
        if self._out.pending:
            tcp = self._tcp
            assert tcp is not None
            tcp.write(self._out.read())

    def _fail(self) -> None:
        """A TLS error after the handshake (a bad record): the connection is cut."""
        self._flush()
        self.abort()

    def _handshake_late(self) -> None:
        self._timer = None
        if not self._ready:
            self._acceptor.failed += 1
            self.abort()

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    # -- the router's side (asyncio.Transport) --------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._ssl_write(data)  # into a memory BIO: always whole
        self._tcp_write(self._out_read())

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._ready:
            try:  # noqa: SIM105 - per connection: cheaper than contextlib.suppress
                self._obj.shutdown()  # close_notify
            except (ssl.SSLError, OSError, ValueError):
                pass  # waiting for the client's close_notify: we do not
            self._flush()
        tcp = self._tcp
        if tcp is not None:
            tcp.close()  # after what it holds

    def abort(self) -> None:
        self._closing = True
        tcp = self._tcp
        if tcp is not None:
            tcp.abort()

    def is_closing(self) -> bool:
        if self._closing:
            return True
        return self._tcp is None or bool(self._tcp_is_closing())

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self._paused:
            return
        self._paused = True
        tcp = self._tcp
        if tcp is not None and not self._closing:
            tcp.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        tcp = self._tcp
        if tcp is not None and not self._closing:
            tcp.resume_reading()
            if self._eof_later or self._in.pending or self._obj.pending():
                # Records that arrived while paused: delivered from the loop, not from inside
                # the caller (which may be in the middle of the app's own callback).
                self._acceptor.loop.call_soon(self._resume_read)

    def _resume_read(self) -> None:
        if self._ready and not self._paused and not self._closing:
            self._read()

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        tcp = self._tcp
        if tcp is not None:
            tcp.set_write_buffer_limits(high=high, low=low)

    def get_write_buffer_size(self) -> int:
        tcp = self._tcp
        return 0 if tcp is None else tcp.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        tcp = self._tcp
        return (0, 0) if tcp is None else tcp.get_write_buffer_limits()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        obj = self._obj
        if name == "ssl_object":
            return obj
        if name == "peercert":
            return obj.getpeercert() if self._ready else default
        if name == "cipher":
            return obj.cipher() if self._ready else default
        if name == "sslcontext":
            return self._acceptor.context
        tcp = self._tcp
        return default if tcp is None else tcp.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        app: Any = protocol
        self._app = app

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app
