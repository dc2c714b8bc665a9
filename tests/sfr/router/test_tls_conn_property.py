"""Property test of the SR's TLS connection driver (router/tlsconn.py, SFR-19) as a state
machine: however the client's bytes are cut into socket reads, and whether the router pauses
reading in between, the router's protocol gets exactly the client's plaintext, in order, once
the handshake is done; its answer reaches the client; the client's close_notify is its end of
input and is answered with the SR's own. No sockets: uvloop's side is played by a recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.common.pki import PlatformCA
from flame.sfr.router.tls import Site, TlsSites
from flame.sfr.router.tlsconn import TlsAcceptor, TlsConnection

from .helpers import close_loop

_CA_DIR = Path(tempfile.mkdtemp(prefix="flame-tlsconn-"))
_CA = PlatformCA.open(_CA_DIR / "ca")
_ISSUED = _CA.issue(["a.example"], days=2)
_SITES = TlsSites()
_SITES.update([Site("a.example", ("a.example",), _ISSUED.chain_pem, _ISSUED.key_pem)])


class Tcp:
    """uvloop's TCP transport, recorded."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class App(asyncio.Protocol):
    """The router's protocol, recorded; pauses reading after its first data when asked."""

    def __init__(self, pause_once: bool) -> None:
        self.transport: Any = None
        self.received = bytearray()
        self.pause_once = pause_once
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.pause_once:
            self.pause_once = False
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return False


def feed(conn: TlsConnection, tcp: Tcp, data: bytes, cuts: list[int], loop: Any) -> None:
    """`data` as reads of the sizes in `cuts` (cycled), as uvloop delivers them; a paused
    transport gets no read until it is resumed (the loop runs the resume)."""
    i = 0
    k = 0
    while i < len(data):
        resume(conn, tcp, loop)
        n = cuts[k % len(cuts)]
        k += 1
        chunk = data[i : i + n]
        i += n
        view = conn.get_buffer(len(chunk))
        view[: len(chunk)] = chunk
        conn.buffer_updated(len(chunk))
    resume(conn, tcp, loop)


def resume(conn: TlsConnection, tcp: Tcp, loop: Any) -> None:
    """The router's protocol resumes reading later, from the loop (as after a pipelined
    request is answered); records held meanwhile are delivered then."""
    if tcp.paused:
        app = conn.get_protocol()
        assert isinstance(app, App)
        loop.call_soon(app.transport.resume_reading)
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))


def pump(client: ssl.SSLObject, c_out: ssl.MemoryBIO, c_in: ssl.MemoryBIO, tcp: Tcp) -> bytes:
    """What the SR sent goes to the client; what the client has to send is returned."""
    if tcp.sent:
        c_in.write(bytes(tcp.sent))
        tcp.sent.clear()
    return c_out.read()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8),
    requests=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4),
    pause_once=st.booleans(),
)
def test_sfr19_any_cut_of_the_client_stream_gives_the_same_plaintext(
    cuts: list[int], requests: list[bytes], pause_once: bool
) -> None:
    loop = asyncio.new_event_loop()
    try:
        acceptor = TlsAcceptor(_SITES.context, loop, handshake_timeout=60.0)
        app = App(pause_once)
        conn = acceptor.connection(app)
        tcp = Tcp()
        conn.connection_made(tcp)  # type: ignore[arg-type]
        ctx = ssl.create_default_context(cafile=str(_CA.cert_path))
        c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = ctx.wrap_bio(c_in, c_out, server_hostname="a.example")
        for _ in range(20):
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                feed(conn, tcp, pump(client, c_out, c_in, tcp), cuts, loop)
        else:
            raise AssertionError("the handshake did not end")
        assert app.transport is None or app.received == b""
        # The client's Finished (if still queued) and every request, cut the same way.
        for request in requests:
            client.write(request)
        feed(conn, tcp, pump(client, c_out, c_in, tcp), cuts, loop)
        assert app.transport is conn
        assert bytes(app.received) == b"".join(requests)
        # The answer reaches the client whole.
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" * 3
        conn.write(answer)
        pump(client, c_out, c_in, tcp)
        got = b""
        while True:
            try:
                got += client.read(65536)
            except ssl.SSLWantReadError:
                break
        assert got == answer
        # close_notify from the client: the router's end of input, answered with the SR's.
        with contextlib.suppress(ssl.SSLWantReadError):
            client.unwrap()
        feed(conn, tcp, pump(client, c_out, c_in, tcp), cuts, loop)
        assert app.eof
        assert tcp.closed
        pump(client, c_out, c_in, tcp)
        client.unwrap()  # the SR's close_notify arrived: the client's shutdown completes
        assert acceptor.describe()["handshakes"] == 1
    finally:
        close_loop(loop)  # a connection's pending callbacks end here, not in a later test
