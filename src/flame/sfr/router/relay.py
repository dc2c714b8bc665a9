"""Relaying a shareable GET to the sibling worker whose shared fetch is in flight.

The workers of one SR listen on private Unix sockets besides the public port. When a worker
gets a GET whose key another worker has claimed (inflight.py), it sends the request there, as
the client sent it plus the client's address (`X-Flame-Relay-Client`, trusted only on the
private socket), and passes the answer through: the sibling joins its fetch in flight, so one
upstream fetch serves the clients of every worker (FLIPS coincidental multicast). The
sibling has already added this SR's `Via`; the relaying worker does not add it again.

A relay that fails before an answer started (the sibling is stopping, say) falls back to
fetching in this worker: relaying only ever saves fetches, it never fails a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from flame.sfr.models import Endpoint
from flame.sfr.router.coalesce import CoalesceKey
from flame.sfr.router.errors import UpstreamError
from flame.sfr.router.inflight import RELAY_MIN_BYTES, InflightTable, key_hash
from flame.sfr.router.interfaces import ExchangeOwner, ResponseSink
from flame.sfr.router.pool import UpstreamPool
from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import ResponseHead
from flame.sfr.router.upstream import UpstreamConnection

__all__ = ["RELAY_CLIENT", "Relay", "Siblings", "render_relay_head"]

RELAY_CLIENT: Final = b"X-Flame-Relay-Client"


class Siblings:
    """The other workers of this SR: their private sockets and the shared claim table."""

    def __init__(
        self, table: InflightTable, worker: int, sockets: tuple[str, ...], ttl: float
    ) -> None:
        self.table = table
        self.worker = worker
        self.sockets = sockets
        self.ttl = ttl
        self.relayed = 0
        self.fallbacks = 0

    @property
    def socket(self) -> str:
        """This worker's private socket."""
        return self.sockets[self.worker]

    def owner(self, key: CoalesceKey) -> int | None:
        """The sibling whose fetch of `key` is in flight, or None (then this worker claims it)."""
        other = self.table.owner_or_claim(key_hash(key), self.worker, self.ttl)
        if other is None or not 0 <= other < len(self.sockets):
            return None
        return other

    def release(self, key: CoalesceKey) -> None:
        self.table.release(key_hash(key), self.worker)

    def answered(self, key: CoalesceKey, head: ResponseHead) -> None:
        """Our shared fetch of `key` got its head: is it worth relaying to?"""
        small = head.content_length is not None and head.content_length <= RELAY_MIN_BYTES
        if small or not head.shareable():
            self.table.mark_small(key_hash(key), self.worker)

    def endpoint(self, worker: int) -> Endpoint:
        return Endpoint(
            sfe=f"worker-{worker}", fqdn="", cluster="", host=self.sockets[worker], port=0
        )


def render_relay_head(req: RequestHead, client_ip: bytes) -> bytes:
    """The request as the client sent it (nothing of ours added), for a sibling worker."""
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ", req.host, b"\r\n"]
    parts.extend(req.lines)
    if req.via:
        parts.append(b"Via: " + req.via + b"\r\n")
    if req.forwarded_for:
        parts.append(b"X-Forwarded-For: " + req.forwarded_for + b"\r\n")
    if req.forwarded_host:
        parts.append(b"X-Forwarded-Host: " + req.forwarded_host + b"\r\n")
    if req.forwarded_proto:
        parts.append(b"X-Forwarded-Proto: " + req.forwarded_proto + b"\r\n")
    if req.flame_endpoint is not None:
        # An ingress SR's choice (egress hop): the sibling applies the same trust rule.
        parts.append(b"X-Flame-Endpoint: " + req.flame_endpoint.encode("latin-1") + b"\r\n")
    parts.append(RELAY_CLIENT + b": " + client_ip + b"\r\n\r\n")
    return b"".join(parts)


class Relay(ExchangeOwner):
    """One request relayed to a sibling worker (the `ExchangeOwner` of the private connection)."""

    __slots__ = (
        "_connecting",
        "cancelled",
        "committed",
        "conn",
        "done",
        "endpoint",
        "fallback",
        "head",
        "pool",
        "sink",
        "timeout",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        endpoint: Endpoint,
        head: bytes,
        sink: ResponseSink,
        *,
        timeout: float,
        fallback: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.head = head
        self.sink = sink
        self.timeout = timeout
        self.fallback = fallback
        self.conn: UpstreamConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.committed = False
        self.cancelled = False
        self.done = False

    def start(self) -> None:
        conn = self.pool.take_idle(self.endpoint)
        if conn is None:
            self._connecting = self.pool.connect(self.endpoint, self._connected)
        else:
            self._begin(conn)

    def _connected(self, conn: UpstreamConnection | None, error: UpstreamError | None) -> None:
        self._connecting = None
        if self.cancelled:
            if conn is not None:
                conn.close()
            return
        if conn is None:
            self._fall_back()
            return
        self._begin(conn)

    def _begin(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.begin(
            self,
            self.endpoint,
            self.head,
            head_request=False,
            body=None,
            chunked_body=False,
            timeout=self.timeout,
        )

    # -- ExchangeOwner -------------------------------------------------------------------------------

    def upstream_head(self, head: ResponseHead) -> None:
        conn = self.conn
        assert conn is not None
        head.via = False  # the sibling, this same SR, has added it
        self.committed = True
        self.sink.response_head(head, self.endpoint)
        conn.commit(self.sink)

    def upstream_complete(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn)
        self.done = True
        self.sink.response_end()

    def upstream_failed(self, error: UpstreamError) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.discard(conn)
        if self.committed:
            self.done = True
            self.sink.response_failed(error)
        else:
            self._fall_back()

    def cancel(self) -> None:
        self.cancelled = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel("the client went away")
        self._connecting = None
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.discard(conn)

    def _fall_back(self) -> None:
        self.done = True
        self.fallback()
