"""One request on one client connection, from its parsed head to its last response byte.

A cycle is driven by callbacks, like its connection. It answers the status endpoint itself;
otherwise it looks the FQDN up in the table in use *now* (so the next request on a connection
follows a new table: in-session switching, SFR-14) and either joins a shared fetch (FLIPS
coincidental multicast) or starts its own `Forwarding`. It is the `ResponseSink` of its own
forwarding and the `Waiter` of a shared fetch; both write through its `ResponseWriter`. When
it ends it tells its connection, which starts the next pipelined request or waits for one.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING

from flame.sfr.models import Endpoint
from flame.sfr.router.body import RequestBody
from flame.sfr.router.coalesce import coalesce_key
from flame.sfr.router.errors import RouterError
from flame.sfr.router.forward import Forwarding
from flame.sfr.router.interfaces import ResponseSink, SourceControl
from flame.sfr.router.metrics import UNKNOWN_FQDN
from flame.sfr.router.multicast import SharedFetch
from flame.sfr.router.relay import Relay, render_relay_head
from flame.sfr.router.request import RequestHead, render_upstream_head
from flame.sfr.router.response import ResponseHead, redirect_response, text_response
from flame.sfr.router.status import status_answer
from flame.sfr.router.writer import ResponseWriter

if TYPE_CHECKING:
    from flame.sfr.router.protocol import RouterProtocol

__all__ = ["RequestCycle"]

log = logging.getLogger(__name__)

ACME_PREFIX = b"/.well-known/acme-challenge/"


class RequestCycle(ResponseSink):
    """Per-request state; the connection keeps per-connection state."""

    __slots__ = (
        "_head",
        "_source",
        "body",
        "conn",
        "endpoint",
        "fetch",
        "finished",
        "forwarding",
        "joined",
        "relay",
        "req",
        "started_at",
        "writer",
    )

    def __init__(
        self, conn: RouterProtocol, req: RequestHead, body: RequestBody | None, started_at: float
    ) -> None:
        self.conn = conn
        self.req = req
        self.body = body
        self.started_at = started_at
        assert conn.transport is not None
        self.writer = ResponseWriter(
            conn.flow,
            conn.ctx.sr,
            head_request=req.method == b"HEAD",
            http11=req.http11,
            keep_alive=req.keep_alive,
        )
        self.endpoint: Endpoint | None = None
        self.fetch: SharedFetch | None = None
        self.forwarding: Forwarding | None = None
        self.relay: Relay | None = None
        self.joined = False
        self.finished = False
        self._source: SourceControl | None = None
        self._head = b""

    # -- driven by the connection ---------------------------------------------------------------

    def start(self) -> None:
        """Route the request; the answer comes through the sink or waiter callbacks."""
        try:
            self._route()
        except Exception as exc:
            log.exception("internal error serving %s %s", self.req.method.decode(), self.req.fqdn)
            self.response_failed(RouterError(f"internal error in the service router: {exc!r}"))

    def cancel(self) -> None:
        """The client went away: stop work for it (its shared fetch goes on for the others)."""
        if self.forwarding is not None:
            self.forwarding.cancel()
        if self.relay is not None:
            self.relay.cancel()
        self._finish()

    def abort(self, error: RouterError) -> None:
        """The request went wrong while its body was arriving (e.g. too large): answer, stop."""
        writer = self.writer
        if not writer.started:
            writer.keep_alive = False
            writer.error(error)
        else:
            writer.cut()
        if self.forwarding is not None:
            self.forwarding.cancel()
        if self.relay is not None:
            self.relay.cancel()
        self._finish()

    # -- the request ------------------------------------------------------------------------------

    def _route(self) -> None:
        ctx = self.conn.ctx
        req = self.req
        if req.fqdn in ctx.local_hosts:
            status, data = status_answer(ctx, req)
            self.writer.local(status, data)
            self._finish()
            return
        if ctx.acme_challenges and self._acme_answer(ctx.acme_challenges.get(req.fqdn)):
            return
        conn = self.conn
        if (
            ctx.redirect_https
            and not (conn.tls or conn.internal or conn.hop)
            and req.fqdn in ctx.redirect_https
        ):
            self._redirect()
            return
        if ctx.routing.lookup(req.fqdn) is None:
            self.response_failed(ctx.forwarder.unknown(req.fqdn))
            return
        client_ip = self.conn.client_ip
        if self.conn.internal and req.relay_client:
            client_ip = req.relay_client  # relayed by a sibling worker: its client's address
        self._head = head = render_upstream_head(req, client_ip, ctx.sr)
        coalescer = ctx.coalescer
        if coalescer is not None:
            key = coalesce_key(req, coalescer.vary)
            if key is not None:
                siblings = ctx.siblings
                if siblings is not None and not self.conn.internal:
                    owner = siblings.owner(key)
                    if owner is not None:
                        # Another worker is fetching this very object: join it there.
                        siblings.relayed += 1
                        self.joined = True
                        self.relay = Relay(
                            ctx.pool,
                            siblings.endpoint(owner),
                            render_relay_head(req, client_ip),
                            self,
                            timeout=ctx.config.timeouts.upstream_response,
                            fallback=self._relay_failed,
                        )
                        self.relay.start()
                        return
                self.fetch, self.joined = coalescer.join(key, req, head, self)
                return
        self.forwarding = ctx.forwarder.forward(req, head, self.body, self)

    def _acme_answer(self, tokens: dict[bytes, bytes] | None) -> bool:
        """An ACME http-01 validation for a certificate being issued: answered here, on both
        listeners and before any redirect; any other path goes on as usual."""
        target = self.req.target
        if tokens is None or not target.startswith(ACME_PREFIX):
            return False
        answer = tokens.get(target[len(ACME_PREFIX) :])
        if answer is None:
            return False
        writer = self.writer
        writer.local(
            200, text_response(answer, keep_alive=writer.keep_alive, http11=self.req.http11)
        )
        self._finish()
        return True

    def _redirect(self) -> None:
        """Plain HTTP for an FQDN that asks for https: 308 to the same URL on the TLS port."""
        req = self.req
        port = self.conn.ctx.tls_port
        location = b"https://" + req.fqdn.encode("ascii", "replace")
        if port and port != 443:
            location += b":%d" % port
        location += req.target if req.target.startswith(b"/") else b"/"
        writer = self.writer
        writer.local(
            308,
            redirect_response(
                location,
                keep_alive=writer.keep_alive,
                http11=req.http11,
                head_request=req.method == b"HEAD",
            ),
        )
        self._finish()

    def _relay_failed(self) -> None:
        """The sibling could not take the request: fetch it here."""
        ctx = self.conn.ctx
        self.relay = None
        self.joined = False
        if ctx.siblings is not None:
            ctx.siblings.fallbacks += 1
        self._fetch_again()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.fetch is not None:
            self.fetch.leave(self)
            self.fetch = None
        writer = self.writer
        body = self.body
        ctx = self.conn.ctx
        fqdn = self.req.fqdn
        if (
            self.endpoint is None
            and fqdn not in ctx.local_hosts
            and ctx.routing.lookup(fqdn) is None
        ):
            fqdn = UNKNOWN_FQDN
        # A request relayed between workers is counted once, by the worker its client is on
        # (under its FQDN only: the endpoint is the sibling's business).
        if not self.conn.internal:
            ctx.metrics.request_done(
                fqdn,
                None if self.relay is not None else self.endpoint,
                status=writer.status,
                complete=writer.complete,
                rt_ms=(monotonic() - self.started_at) * 1000.0,  # (uvloop's clock ticks in ms)
                bytes_in=body.received if body is not None else 0,
                bytes_out=writer.bytes_out,
                coalesced=self.joined,
            )
        # The connection can carry the next request only after a complete exchange.
        keep_alive = writer.keep_alive and writer.complete and (body is None or body.complete)
        # Break the cycle <-> forwarding reference loop: reference counting frees both now,
        # instead of the cyclic garbage collector, later, for every request.
        self.forwarding = None
        self.relay = None
        self._source = None
        self.conn.cycle_done(self, keep_alive)

    # -- ResponseSink (own forwarding) -------------------------------------------------------------

    def bind_source(self, source: SourceControl | None) -> None:
        self._source = source

    def response_head(self, head: ResponseHead, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.writer.start(head, keep_alive=not self.conn.ctx.closing)

    def response_body(self, data: bytes) -> None:
        self.writer.body(data)
        flow = self.conn.flow
        if not flow.writable and self._source is not None and flow.on_writable is None:
            # The client is slower than the endpoint: stop reading it until the client drains.
            self._source.pause_reading()
            flow.on_writable = self._resume_source

    def _resume_source(self) -> None:
        if self._source is not None:
            self._source.resume_reading()

    def response_flush(self) -> None:
        self.writer.flush()
        flow = self.conn.flow
        if not flow.writable and self._source is not None and flow.on_writable is None:
            self._source.pause_reading()
            flow.on_writable = self._resume_source

    def response_end(self) -> None:
        self.writer.end()
        self._finish()

    def response_failed(self, error: RouterError) -> None:
        if self.writer.started:
            self.writer.cut()
        else:
            self.writer.error(error)
        self._finish()

    # -- Waiter (shared fetch) --------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.conn.flow.writable and not self.conn.lost

    def deliver_head(self, head: ResponseHead, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.writer.start(head, keep_alive=not self.conn.ctx.closing)

    def deliver_body(self, data: bytes) -> None:
        self.writer.body(data)

    def flush(self) -> None:
        self.writer.flush()
        flow = self.conn.flow
        if not flow.writable and flow.on_writable is None:
            flow.on_writable = self._drained

    def _drained(self) -> None:
        if self.fetch is not None:
            self.fetch.waiter_writable(self)

    def deliver_end(self) -> None:
        self.fetch = None
        self.writer.end()
        self._finish()

    def deliver_error(self, error: RouterError) -> None:
        self.fetch = None
        self.response_failed(error)

    def refetch(self) -> None:
        """The shared answer was not for sharing: fetch this one on its own."""
        self.fetch = None
        self.joined = False
        self.forwarding = self.conn.ctx.forwarder.forward(self.req, self._head, self.body, self)

    def regroup(self) -> None:
        """The shared answer is another variant (Vary): fetch again, with requests like this."""
        self.fetch = None
        self.joined = False
        self._fetch_again()

    def _fetch_again(self) -> None:
        """Fetch here after a failed relay or a regroup: shared when the request may be."""
        ctx = self.conn.ctx
        coalescer = ctx.coalescer
        key = coalesce_key(self.req, coalescer.vary) if coalescer is not None else None
        if coalescer is not None and key is not None:
            self.fetch, self.joined = coalescer.join(key, self.req, self._head, self)
        else:
            self.forwarding = ctx.forwarder.forward(self.req, self._head, self.body, self)
