"""WebSocket (`Upgrade: websocket`) through the SR: the request is routed like any other, then
bytes are relayed both ways until either side closes (issue 15, item 5).

A client connection whose request asks for a WebSocket, with nothing else in flight on it,
leaves the HTTP machinery (`RouterProtocol` hands its bytes here): the SR picks an endpoint
as for a plain request (the table, outlier ejection, an egress hop with `X-Flame-Endpoint`,
or the pinned endpoint when it is the egress SR), opens a new connection to it (never a
pooled one: it will not come back), and sends the head with `Connection: Upgrade` and
`Upgrade: websocket` restored. The endpoint's answer goes to the client verbatim; after a
`101` both directions are relayed as they are, with back-pressure (a side that cannot write
stops reading the other). Any other answer is relayed and the connection then closes.

Bounded: at most `limits.max_websockets` tunnels per worker (beyond: 503), an idle timeout
(`timeouts.websocket_idle`, no byte either way; checked by the sweeper), an answer head of at
most 64 KiB. Counted: open/opened/refused/failed tunnels and bytes in `/.flame/status`, and
each finished tunnel as a request (status 101) in the per-FQDN metrics.

Not done: other upgrades (h2c and the like are forwarded without `Upgrade`, as before).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, cast

from flame.sfr.models import Endpoint
from flame.sfr.router.request import RequestHead, render_upstream_head
from flame.sfr.router.response import local_response

if TYPE_CHECKING:
    from flame.sfr.router.context import RouterContext
    from flame.sfr.router.protocol import RouterProtocol

__all__ = ["Tunnel", "is_websocket"]

log = logging.getLogger(__name__)

MAX_ANSWER_HEAD = 64 * 1024
UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def is_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """Does this request ask for `Upgrade: websocket`?"""
    for name, value in headers:
        if len(name) == 7 and name.lower() == b"upgrade":
            return b"websocket" in value.lower()
    return False


class _Upstream(asyncio.Protocol):
    """The endpoint's side of a tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tunnel.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.tunnel.upstream_data(data)

    def eof_received(self) -> bool | None:
        self.tunnel.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        self.tunnel.client_transport.pause_reading()

    def resume_writing(self) -> None:
        self.tunnel.client_transport.resume_reading()


class Tunnel:
    """One WebSocket: a client connection and its endpoint connection, relayed."""

    def __init__(self, conn: RouterProtocol, req: RequestHead) -> None:
        self.conn = conn
        self.ctx: RouterContext = conn.ctx
        self.req = req
        assert conn.transport is not None
        self.client_transport: asyncio.Transport = conn.transport
        self.upstream: asyncio.Transport | None = None
        self.endpoint: Endpoint | None = None
        self.pending: list[bytes] = []  # client bytes before the endpoint connection is up
        self.head = b""  # the endpoint's answer head, while it arrives
        self.switched = False
        self.remaining: int | None = None  # bytes left of a non-101 answer's body
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last = conn.ctx.loop.time()
        self.started = monotonic()
        self.closed = False
        self._connecting: asyncio.Task[None] | None = None

    # -- start --------------------------------------------------------------------------------

    def start(self) -> None:
        ctx = self.ctx
        if ctx.tunnel_cap and len(ctx.tunnels) >= ctx.tunnel_cap:
            ctx.tunnels_refused += 1
            self._answer_error(503, "too_many_tunnels", "the SR is at its WebSocket limit")
            return
        routes = ctx.routing.lookup(self.req.fqdn)
        if routes is None:
            self._answer_error(404, "unknown_fqdn", f"no route for '{self.req.fqdn}'")
            return
        pin = self.req.flame_endpoint
        endpoint = routes.local.get(pin) if pin is not None else None
        hop = None
        if endpoint is None:
            outliers = ctx.outliers
            endpoint = routes.choose(outliers.is_ejected if outliers.any_ejected else None)
            if endpoint is None:
                self._answer_error(503, "no_endpoint", f"no endpoint for '{self.req.fqdn}'")
                return
            egress_port = ctx.routing.egress_port
            if egress_port:
                hop = routes.hop(endpoint, egress_port, ctx.routing.egress_tls)
        self.endpoint = endpoint
        head = render_upstream_head(self.req, self.conn.client_ip, ctx.sr)[:-2]
        target = endpoint
        if hop is not None:
            head += hop.header
            target = hop.target
        ctx.tunnels.add(self)
        ctx.tunnels_opened += 1
        self.pending.append(head + UPGRADE_LINES)
        self._connecting = ctx.tasks.spawn(
            self._connect(target.host, target.port, target.tls),
            name=f"sr-websocket {endpoint.sfe}",
        )

    async def _connect(self, host: str, port: int, tls: bool = False) -> None:
        try:
            if tls:  # hop-by-hop TLS: the SR's platform identity (upstream_tls.py)
                hop = self.ctx.pool.tls
                ctx = hop.client if hop is not None else None
                if ctx is None:
                    raise OSError(0, "no platform identity for TLS yet")
                connect = self.ctx.loop.create_connection(
                    lambda: _Upstream(self), host, port, ssl=ctx, server_hostname=host
                )
            else:
                connect = self.ctx.loop.create_connection(lambda: _Upstream(self), host, port)
            await asyncio.wait_for(connect, self.ctx.config.timeouts.upstream_connect)
        except (OSError, TimeoutError) as exc:
            if not self.closed:
                self.ctx.tunnels_failed += 1
                log.info("WebSocket to %s:%d failed: %s", host, port, type(exc).__name__)
                self._answer_error(502, "upstream_unreachable", "the endpoint did not answer")
        finally:
            self._connecting = None

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.close()
            return
        self.upstream = transport
        transport.write(b"".join(self.pending))
        self.pending = []

    # -- relaying -----------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.last = self.ctx.loop.time()
        self.bytes_in += len(data)
        if self.switched and self.upstream is not None:
            self.upstream.write(data)
            return
        # Held until the endpoint switched (bounded: reading stops beyond 64 KiB).
        self.pending.append(data)
        if sum(map(len, self.pending)) > MAX_ANSWER_HEAD:
            self.client_transport.pause_reading()

    def upstream_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.last = self.ctx.loop.time()
        if self.switched:
            self.bytes_out += len(data)
            self.client_transport.write(data)
            return
        if self.remaining is not None:
            self._relay_answer_body(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_ANSWER_HEAD:
                self._answer_error(502, "bad_upstream_response", "the answer head is too large")
            return
        head, rest = self.head[: end + 4], self.head[end + 4 :]
        self.head = b""
        try:
            self.status = int(head[9:12])
        except ValueError:
            self._answer_error(502, "bad_upstream_response", "the endpoint's answer is not HTTP")
            return
        self.bytes_out += len(head)
        self.client_transport.write(head)
        if self.status == 101:
            self.switched = True
            held, self.pending = self.pending, []
            if held and self.upstream is not None:
                self.upstream.write(b"".join(held))
                self.client_transport.resume_reading()
            if rest:
                self.upstream_data(rest)
            return
        # Not switched: the answer (a 4xx, a redirect...) goes to the client, then we close.
        self.remaining = _content_length(head)
        self._relay_answer_body(rest)

    def _relay_answer_body(self, data: bytes) -> None:
        if self.remaining is None:
            return
        if data and self.remaining != 0:
            part = data if self.remaining < 0 else data[: self.remaining]
            self.bytes_out += len(part)
            self.client_transport.write(part)
            if self.remaining > 0:
                self.remaining -= len(part)
        if self.remaining == 0:
            self.close()  # (a length of -1: relayed until the endpoint closes)

    def client_paused(self) -> None:
        """The client cannot take more for now: stop reading the endpoint."""
        if self.upstream is not None:
            self.upstream.pause_reading()

    def client_resumed(self) -> None:
        if self.upstream is not None and not self.closed:
            self.upstream.resume_reading()

    # -- ending -------------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """The sweeper: close a tunnel idle for `tunnel_idle` seconds."""
        if not self.closed and now - self.last >= self.ctx.tunnel_idle:
            self.ctx.tunnels_idle_closed += 1
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        ctx.tunnels.discard(self)
        if self._connecting is not None:
            self._connecting.cancel()
        if self.upstream is not None:
            self.upstream.close()
        self.client_transport.close()  # after what it holds
        ctx.tunnel_bytes += self.bytes_in + self.bytes_out
        if self.endpoint is not None:
            ctx.metrics.request_done(
                self.req.fqdn,
                self.endpoint,
                status=self.status or 502,
                complete=self.status != 0,
                rt_ms=(monotonic() - self.started) * 1000,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                coalesced=False,
            )

    def _answer_error(self, status: int, code: str, message: str) -> None:
        if not self.client_transport.is_closing():
            self.client_transport.write(
                local_response(status, {"error": code, "message": message}, keep_alive=False)
            )
        self.status = 0
        self.close()


def _content_length(head: bytes) -> int:
    """The body length of a non-101 answer: its Content-Length; -1 (until the endpoint
    closes) without one; 0 for answers that have no body."""
    status = int(head[9:12])
    if status in (204, 304) or 100 <= status < 200:
        return 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return -1
    return -1
