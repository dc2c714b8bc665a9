"""Forwarding one request: choose an endpoint, send, retry once elsewhere, eject failures.

A `Forwarding` is a small state machine driven by events from its upstream connection
(head, complete, failed) and from the pool (connected); it decides, the sink writes. No task
or future per request: with a warm pooled connection a request is forwarded and answered in
the loop turns its bytes arrive in.

The retry rule (SFR-1 failover): a connect error, a time-out or reset before the response
head, or a 5xx head is retried once on the next endpoint (the FQDN's next choice, skipping the
failed and ejected ones) when the method is idempotent and the request body is still whole in
memory (`RequestBody.replayable`). A connect error is retried for any method: the request never
left the router. Nothing has reached the client at that point: the sink only hears of a
response the forwarding has committed to. A reused keep-alive connection that the endpoint
closed before answering (a stale connection, not a failing endpoint) is retried once on a
fresh connection to the same endpoint under the same rule.

Connect errors, resets and time-outs before the head eject the endpoint (outlier.py); a 5xx
ejects it only when the request was retried elsewhere (an endpoint that answers is alive, and
with no alternative its answer is better than a 503); a response cut in the middle is the
client's loss but no ejection (the endpoint answered, and nothing can be retried any more).

The egress hop (FLIPS; `RoutingState.egress_port` set, config `egress_hop`): an attempt on an
endpoint whose route leads to another SR with a known address connects to that egress SR
instead (pooled by its address, like any endpoint) and adds `X-Flame-Endpoint: <sfe>` to the
head. The egress SR sends a request naming one of its local endpoints (the route's egress SR is
this SR) to that endpoint without choosing again, and without a retry elsewhere or emulated
latency (the ingress SR does both); any other `X-Flame-Endpoint` is ignored: routed as usual.

A hop failure is not an endpoint failure. The ingress SR keeps the health of each egress SR
address apart from its endpoints' (`Forwarder.hops`, an `OutlierDetector` of its own): a
connect error or a reset before the response head from the egress SR, or the egress SR's own
answer that it has no route for the request (`X-Flame-Not-Forwarded: route`: no table yet, an
unknown FQDN), marks the HOP down for a back-off (1 s doubling to 10 s, reset by an answer),
and never ejects the endpoint. The same attempt then goes straight to the endpoint (its own
address is in the table), in the same loop turn, without counting as the retry: for any method
when nothing was sent (connect error, no route), for idempotent methods after a reset, as the
retry rule says. While the hop is down, every attempt on an endpoint behind that egress SR goes
direct; the first one after the back-off probes the hop again. A stale pooled connection to
the egress SR is retried on a fresh one first, as for an endpoint. An egress SR that cannot
connect to the endpoint answers 503 with `X-Flame-Not-Forwarded: unreachable`: that is the
endpoint's failure, and the ingress SR retries as after its own connect error, for any method.
A time-out waiting for the egress SR stays the endpoint's failure (the egress SR times out
the endpoint on the same clock, so a slow endpoint and a hung egress SR look alike).

A connect the network refused (`ENETUNREACH`, `EHOSTUNREACH`: no route on this host, or an ICMP
unreachable from a router on the path) is neither the endpoint's nor the egress SR's failure:
the path was missing for a moment (a link went down and the routes had not moved yet; they move
within milliseconds). It ejects nothing and bypasses no hop; the same attempt is made once more
per request after `timeouts.network_retry` (50 ms), for any method (nothing was sent), without
counting as the retry. If the network refuses that too, an attempt through an egress SR goes
straight to the endpoint, and a direct one goes to the next endpoint by the retry rule, still
without ejecting. An egress SR whose own connect the network refused says so with
`X-Flame-Not-Forwarded: network`; the ingress then fails over without ejecting the endpoint.
(Before, the SR ejected its only endpoint for 1 s after a 200 ms route gap: a second of 503s.)

When the last attempt failed to connect (nothing reached any endpoint), the answer is 503
with `Retry-After` (when an ejected endpoint comes back), not 502: see errors.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from flame.sfr.models import Endpoint
from flame.sfr.router.balancer import EgressHop, FqdnRoutes
from flame.sfr.router.body import RequestBody
from flame.sfr.router.config import Timeouts
from flame.sfr.router.errors import (
    NoEndpoint,
    RouterError,
    UnknownFqdn,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReset,
)
from flame.sfr.router.interfaces import ExchangeOwner, ResponseSink
from flame.sfr.router.metrics import RouterMetrics
from flame.sfr.router.outlier import OutlierDetector
from flame.sfr.router.pool import UpstreamPool
from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import NETWORK, NO_ROUTE, ResponseHead
from flame.sfr.router.table import RoutingState
from flame.sfr.router.upstream import UpstreamConnection

__all__ = ["Forwarder", "Forwarding", "may_retry"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 2  # the first endpoint and one retry
HOP_BACKOFF: Final = 1.0  # a failed egress hop is bypassed this long, doubling ...
HOP_BACKOFF_MAX: Final = 10.0  # ... up to this, while it keeps failing


def may_retry(
    req: RequestHead, body: RequestBody | None, attempts: int, *, sent: bool = True
) -> bool:
    """Whether a request that failed before any response byte may be sent again.

    `sent` False: the connection was never established, so nothing reached the endpoint and
    any method may go elsewhere (as nginx's `proxy_next_upstream error` does).
    """
    return (
        attempts < MAX_ATTEMPTS
        and (req.idempotent or not sent)
        and (body is None or body.replayable)
    )


class Forwarder:
    """The services every forwarding of one worker uses."""

    def __init__(
        self,
        routing: RoutingState,
        pool: UpstreamPool,
        outliers: OutlierDetector,
        metrics: RouterMetrics,
        timeouts: Timeouts,
        *,
        emulate_latency: bool = False,
        hops: OutlierDetector | None = None,
    ) -> None:
        self.routing = routing
        self.pool = pool
        self.outliers = outliers
        self.metrics = metrics
        self.timeouts = timeouts
        # Egress SR addresses ("host:port") whose hop failed: bypassed (direct) for a back-off.
        self.hops = hops if hops is not None else OutlierDetector(HOP_BACKOFF, HOP_BACKOFF_MAX)
        self.hop_failures = 0  # attempts through an egress SR that failed there
        self.hop_fallbacks = 0  # ... and went straight to the endpoint instead
        self.network_refusals = 0  # connects the network refused (no route): nothing ejected
        # FLAME-in-a-box: every hop is loopback, so the topology's path latency is added as a
        # round trip before each attempt (request and response each cross the path once).
        self.emulate_latency = emulate_latency

    def forward(
        self, req: RequestHead, head: bytes, body: RequestBody | None, sink: ResponseSink
    ) -> Forwarding:
        """Start forwarding one request; its response (or error) goes to `sink`."""
        forwarding = Forwarding(self, req, head, body, sink)
        forwarding.start()
        return forwarding

    def unknown(self, fqdn: str) -> UnknownFqdn:
        return UnknownFqdn(
            f"no service function endpoint is registered for FQDN {fqdn!r} at SR "
            f"{self.routing.sr_id!r} (table version {self.routing.version}); check the FQDN "
            "or its registration",
            fqdn=fqdn,
        )

    def no_endpoint(self, routes: FqdnRoutes) -> NoEndpoint:
        sfes = [e.sfe for e in routes.endpoints()]
        if not sfes:
            return NoEndpoint(
                f"FQDN {routes.fqdn!r} has no connected endpoint reachable from SR "
                f"{self.routing.sr_id!r}; retry later",
                fqdn=routes.fqdn,
                retry_after=max(1, round(self.timeouts.retry_after)),
            )
        return NoEndpoint(
            f"all {len(sfes)} endpoints of FQDN {routes.fqdn!r} are ejected after failures; "
            "retry later",
            fqdn=routes.fqdn,
            retry_after=self.outliers.retry_after(sfes, self.timeouts.retry_after),
        )

    def retry_after(self, routes: FqdnRoutes) -> int:
        """`Retry-After` seconds for a request none of whose endpoints could take it now."""
        return self.outliers.retry_after(
            [e.sfe for e in routes.endpoints()], self.timeouts.retry_after
        )

    def hop_failure(self, hop: EgressHop, reason: str) -> None:
        """The egress SR at `hop` failed a request: bypass it for a back-off (not the endpoint)."""
        self.hop_failures += 1
        backoff = self.hops.failure(hop.key)
        if backoff is not None:
            log.warning(
                "egress SR %s (%s) failed: %s; requests for its endpoints go straight to them "
                "for %gs",
                hop.egress_sr,
                hop.key,
                reason,
                backoff,
            )

    def record_failure(self, fqdn: str, endpoint: Endpoint, reason: str, *, eject: bool) -> None:
        self.metrics.upstream_error(fqdn, endpoint)
        if not eject:
            return
        backoff = self.outliers.failure(endpoint.sfe)
        if backoff is not None:
            self.metrics.ejection(fqdn, endpoint)
            log.warning(
                "ejecting endpoint %s (%s:%d) of %s for %gs: %s; requests go to the next endpoint",
                endpoint.sfe,
                endpoint.host,
                endpoint.port,
                fqdn,
                backoff,
                reason,
            )


class Forwarding(ExchangeOwner):
    """One request on its way to an endpoint (the `ExchangeOwner` of its connection)."""

    __slots__ = (
        "_again",
        "_attempts",
        "_connecting",
        "_delay",
        "_direct",
        "_fresh",
        "_net_retried",
        "_pinned",
        "_stale_retried",
        "_tried",
        "body",
        "cancelled",
        "committed",
        "conn",
        "done",
        "endpoint",
        "fw",
        "head",
        "hop",
        "req",
        "routes",
        "send",
        "sink",
        "target",
    )

    def __init__(
        self,
        fw: Forwarder,
        req: RequestHead,
        head: bytes,
        body: RequestBody | None,
        sink: ResponseSink,
    ) -> None:
        self.fw = fw
        self.req = req
        self.head = head
        self.body = body
        self.sink = sink
        self.routes: FqdnRoutes | None = None
        self.endpoint: Endpoint | None = None
        self.target: Endpoint | None = None  # what the attempt connects to: endpoint or egress SR
        self.hop: EgressHop | None = None  # the egress hop of the attempt; None: direct
        self.send = head  # the head the attempt sends (with X-Flame-Endpoint on an egress hop)
        self.conn: UpstreamConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._delay: asyncio.TimerHandle | None = None
        self._tried: set[str] | None = None  # made on a second attempt: most have one
        self._attempts = 0
        # One-shot flags for the next attempt (read and cleared by `_attempt_now`):
        self._again = False  # the same endpoint once more: not a new attempt
        self._fresh = False  # ... on a new connection (the pooled one was stale)
        self._direct = False  # ... straight to the endpoint (its egress hop just failed)
        self._stale_retried = False
        self._net_retried = False  # the one delayed retry after a network refusal is used
        self._pinned = False  # this SR is the egress SR of the endpoint an ingress SR chose
        self.committed = False
        self.cancelled = False
        self.done = False

    # -- decisions ---------------------------------------------------------------------------------

    def _skip(self, sfe: str) -> bool:
        tried = self._tried
        return (tried is not None and sfe in tried) or self.fw.outliers.is_ejected(sfe)

    def start(self) -> None:
        fw = self.fw
        routes = self.routes = fw.routing.lookup(self.req.fqdn)
        if routes is None:
            self._fail(fw.unknown(self.req.fqdn))
            return
        pin = self.req.flame_endpoint
        if pin is not None:
            local = routes.local.get(pin)
            if local is not None:
                self._pinned = True
                self._attempt(local)
                return
        # A first attempt skips only ejected endpoints; usually there are none.
        endpoint = routes.choose(self._skip if fw.outliers.any_ejected else None)
        if endpoint is None:
            self._fail(fw.no_endpoint(routes))
            return
        self._attempt(endpoint)

    def _attempt(self, endpoint: Endpoint) -> None:
        if self.fw.emulate_latency and not self._pinned and self.routes is not None:
            latency_ms = self.routes.latency_ms.get(endpoint.sfe, 0.0)
            if latency_ms > 0:
                self.endpoint = endpoint
                loop = asyncio.get_running_loop()
                self._delay = loop.call_later(2 * latency_ms / 1000, self._attempt_now, endpoint)
                return
        self._attempt_now(endpoint)

    def _attempt_now(self, endpoint: Endpoint) -> None:
        self._delay = None
        if self.cancelled:
            return
        fw = self.fw
        self.endpoint = target = endpoint
        self.send = self.head
        self.hop = None
        direct, self._direct = self._direct, False
        egress_port = fw.routing.egress_port
        if egress_port and not direct and self.routes is not None:
            hop = self.routes.hop(endpoint, egress_port, fw.routing.egress_tls)
            if hop is not None and not fw.hops.is_ejected(hop.key):
                self.hop = hop
                target = hop.target
                self.send = self.head[:-2] + hop.header + b"\r\n"  # before the blank line
        self.target = target
        fresh, self._fresh = self._fresh, False
        if self._again:
            self._again = False
        else:
            self._attempts += 1
            if self._tried is None:
                self._tried = {endpoint.sfe}
            else:
                self._tried.add(endpoint.sfe)
        conn = None if fresh else fw.pool.take_idle(target)
        fw.metrics.fetch(self.req.fqdn, endpoint)
        if conn is None:
            self._connecting = fw.pool.connect(target, self._connected)
        else:
            self._begin(conn)

    def _connected(self, conn: UpstreamConnection | None, error: UpstreamError | None) -> None:
        self._connecting = None
        if self.cancelled:
            if conn is not None:
                conn.close()
            return
        if conn is not None:
            self._begin(conn)
            return
        assert error is not None
        assert self.endpoint is not None
        if isinstance(error, UpstreamBusy):
            self.fw.metrics.upstream_error(self.req.fqdn, self.endpoint)
            self._fail(error)
            return
        if isinstance(error, UpstreamConnectError) and error.network_refused:
            self._network_refused(error)
            return
        if self.hop is not None:
            # The egress SR does not answer: its failure, not the endpoint's.
            self._hop_failed(error, sent=False)
            return
        self._retry_or_fail(error, sent=False)

    def _begin(self, conn: UpstreamConnection) -> None:
        assert self.target is not None
        self.conn = conn
        conn.begin(
            self,
            self.target,
            self.send,
            head_request=self.req.method == b"HEAD",
            body=self.body,
            chunked_body=self.req.chunked,
            timeout=self.fw.timeouts.upstream_response,
        )

    def _hop_failed(self, error: UpstreamError, *, sent: bool) -> None:
        """The attempt's egress SR failed: bypass it, and send the request to the endpoint
        directly if the retry rule allows (not counted as the retry), else fail."""
        hop = self.hop
        assert hop is not None
        self.fw.hop_failure(hop, str(error))
        if not self._fall_back(sent=sent):
            self._fail(error)

    def _fall_back(self, *, sent: bool) -> bool:
        """The same endpoint again, straight (its egress hop failed), if the rule allows."""
        endpoint = self.endpoint
        assert endpoint is not None
        if not may_retry(self.req, self.body, 0, sent=sent):
            return False
        self.fw.hop_fallbacks += 1
        self._again = self._direct = True
        self._attempt_now(endpoint)
        return True

    def _network_refused(self, error: UpstreamConnectError) -> None:
        """The network had no path to the attempt's target: eject nothing, bypass no hop (see
        the module notes); the same attempt once more after a short delay, then on as usual."""
        endpoint = self.endpoint
        assert endpoint is not None
        fw = self.fw
        fw.network_refusals += 1
        if not self._net_retried and may_retry(self.req, self.body, 0, sent=False):
            fw.metrics.upstream_error(self.req.fqdn, endpoint)
            delay = fw.timeouts.network_retry
            log.info("%s: trying again in %gs: %s", self.req.fqdn, delay, error)
            self._net_retried = self._again = True
            self._direct = self.hop is None  # the same target: through the hop or not
            loop = asyncio.get_running_loop()
            self._delay = loop.call_later(delay, self._attempt_now, endpoint)
            return
        if self.hop is not None and may_retry(self.req, self.body, 0, sent=False):
            fw.metrics.upstream_error(self.req.fqdn, endpoint)
            self._fall_back(sent=False)  # straight to the endpoint: maybe another path
            return
        self._retry_or_fail(error, sent=False, eject=False)

    def _retry_or_fail(self, error: UpstreamError, *, sent: bool, eject: bool = True) -> None:
        """After a failed attempt: the next endpoint if the rule allows, else the error."""
        endpoint, routes = self.endpoint, self.routes
        assert endpoint is not None
        assert routes is not None
        self.fw.record_failure(self.req.fqdn, endpoint, str(error), eject=eject)
        if not self._pinned and may_retry(self.req, self.body, self._attempts, sent=sent):
            nxt = routes.choose(self._skip)
            if nxt is not None:
                log.info(
                    "retrying %s %s on %s after: %s",
                    self.req.fqdn,
                    self.req.method.decode(),
                    nxt.sfe,
                    error,
                )
                self._attempt(nxt)
                return
        if isinstance(error, UpstreamConnectError):
            # Nothing reached any endpoint: a 503 saying when to try again.
            error.retry_after = 1 if not eject else self.fw.retry_after(routes)
        self._fail(error)

    # -- ExchangeOwner -------------------------------------------------------------------------------

    def upstream_head(self, head: ResponseHead) -> None:
        conn, endpoint, routes = self.conn, self.endpoint, self.routes
        assert conn is not None
        assert endpoint is not None
        assert routes is not None
        fw = self.fw
        hop = self.hop
        if hop is not None:
            if head.not_forwarded == NO_ROUTE and head.status >= 400:
                # The egress SR has no route for it (no table yet, say): the hop's failure.
                fw.hop_failure(hop, f"answered {head.status} without a route")
                if may_retry(self.req, self.body, 0, sent=False):
                    self.conn = None
                    fw.pool.discard(conn)
                    self._fall_back(sent=False)
                    return
                # (else its answer goes back to the client, as any other)
            else:
                fw.hops.success(hop.key)
        if head.status >= 500:
            # An egress SR that could not connect to the endpoint says so: the request reached
            # no endpoint, so any method may go to the next one (as after our own connect error).
            sent = hop is None or head.not_forwarded is None
            if not self._pinned and may_retry(self.req, self.body, self._attempts, sent=sent):
                nxt = routes.choose(self._skip)
                if nxt is not None:
                    self.conn = None
                    fw.pool.discard(conn)
                    fw.record_failure(
                        self.req.fqdn,
                        endpoint,
                        f"answered {head.status}",
                        eject=hop is None or head.not_forwarded != NETWORK,
                    )
                    self._attempt(nxt)
                    return
            fw.metrics.upstream_error(self.req.fqdn, endpoint)
        else:
            fw.outliers.success(endpoint.sfe)
        self.committed = True
        self.sink.response_head(head, endpoint)
        conn.commit(self.sink)

    def upstream_complete(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            self.fw.pool.release(conn)
        self.done = True
        self.sink.response_end()

    def upstream_failed(self, error: UpstreamError) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            self.fw.pool.discard(conn)
        if self.committed:
            # Cut mid-response: the client sees it cut. No ejection (see the module notes).
            assert self.endpoint is not None
            self.fw.record_failure(self.req.fqdn, self.endpoint, str(error), eject=False)
            self._fail(error)
            return
        stale = (
            conn is not None
            and conn.reused
            and not conn.got_bytes
            and isinstance(error, UpstreamReset)
        )
        if stale and not self._stale_retried and may_retry(self.req, self.body, 0):
            # The endpoint (or egress SR) had closed the idle connection: not its failure.
            assert self.endpoint is not None
            self._stale_retried = self._fresh = self._again = True
            self._attempt(self.endpoint)
            return
        if self.hop is not None and isinstance(error, UpstreamReset):
            # The egress SR closed the connection before answering (it died, say).
            self._hop_failed(error, sent=True)
            return
        self._retry_or_fail(error, sent=True)

    # -- ending --------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The client went away: drop the exchange (its connection cannot be reused)."""
        self.cancelled = True
        if self._delay is not None:
            self._delay.cancel()
            self._delay = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel("the client went away")
        self._connecting = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            self.fw.pool.discard(conn)

    def _fail(self, error: RouterError) -> None:
        self.done = True
        self.sink.response_failed(error)
