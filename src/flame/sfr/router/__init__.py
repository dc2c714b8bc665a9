"""The service router data plane (SFR-1, SFR-14, FLIPS coincidental multicast, CLMC-8).

An HTTP/1.1 reverse router on uvloop + httptools, no web framework in the request path:
`Host` -> FQDN -> the best endpoint of the SR's forwarding table, keep-alive pools towards
endpoints, streaming bodies, in-session switching when the table changes, failover with
outlier ejection, one upstream fetch for identical concurrent GETs, and line-protocol
measurements to the CLMC. It depends only on `flame.sfr.models` and `flame.common`: tables
arrive as JSON from the PCE (import-linter forbids importing the control plane).

Modules, one concern each::

    server       serve(config): worker processes sharing the port (SO_REUSEPORT), signals
    router       Router: one worker's listeners, table, sweeper, background tasks, shutdown
    protocol     RouterProtocol: one client connection (asyncio.Protocol + httptools)
    cycle        RequestCycle: one request, from its head to its last response byte
    writer       ResponseWriter: client-side framing, keep-alive, byte counts
    body         RequestBody: the client's body buffered, streamed, kept for a retry
    forward      Forwarding: endpoint choice per attempt, retry once, ejection, egress hop
                 health and fall-back (callbacks)
    upstream     UpstreamConnection: one keep-alive connection to an endpoint
    pool         UpstreamPool: bounded pools per endpoint address, draining, time-outs
    multicast    SharedFetch / Coalescer: one fetch streamed to many clients
    inflight     InflightTable: which worker fetches what (shared memory across workers)
    relay        Relay / Siblings: joining another worker's fetch over a private socket
    coalesce     which requests may share a fetch (pure)
    balancer     the PCE's order in cost tiers + smooth weighted round robin (pure)
    outlier      OutlierDetector: ejection back-off (pure)
    table        RoutingState: the table in use, switches, withdrawn endpoints (pure)
    request      request head analysis and the head sent upstream (pure)
    response     response heads, framing, the router's own answers (pure)
    headers      hop-by-hop fields, Host -> FQDN (pure)
    flow         FlowControl: pause/resume reading for several reasons
    interfaces   the callback protocols between connection, forwarding, sinks and waiters
    metrics      counters and InfluxDB line protocol (pure)
    reporter     ClmcReporter: batches to the CLMC in the background
    subscriber   TableSubscriber (PCE long-poll, standby PCEs, table file), StaticTableSource
    status       the /.flame/* status endpoint
    context      RouterContext: what the connections of one worker share
    config       RouterConfig, Limits, Timeouts
    errors       the exception tree (each error is an HTTP answer)
    _tasks       TaskSet: the only place tasks are started (named, referenced, logged);
                 long-lived ones supervised (restarted with a back-off, shown in status)

The request path runs on callbacks from the transports (no task or future per request);
tasks are used only for new upstream connections and background work (table source,
CLMC reporter, time-out sweeper; supervised).
"""

from __future__ import annotations

from flame.sfr.router.config import Limits, RouterConfig, Timeouts
from flame.sfr.router.errors import (
    NoEndpoint,
    RouteError,
    RouterError,
    UnknownFqdn,
    UpstreamError,
)
from flame.sfr.router.router import Router
from flame.sfr.router.server import serve
from flame.sfr.router.subscriber import StaticTableSource, TableSource, TableSubscriber

__all__ = [
    "Limits",
    "NoEndpoint",
    "RouteError",
    "Router",
    "RouterConfig",
    "RouterError",
    "StaticTableSource",
    "TableSource",
    "TableSubscriber",
    "Timeouts",
    "UnknownFqdn",
    "UpstreamError",
    "serve",
]
