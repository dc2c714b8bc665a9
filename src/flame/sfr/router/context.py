"""What every connection of one worker shares: table, pools, forwarder, multicast, metrics.

Built by `Router` (router.py); protocols and cycles only read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flame.sfr.router._tasks import TaskSet
from flame.sfr.router.config import RouterConfig
from flame.sfr.router.flow import Outbox
from flame.sfr.router.forward import Forwarder
from flame.sfr.router.metrics import RouterMetrics
from flame.sfr.router.multicast import Coalescer
from flame.sfr.router.outlier import OutlierDetector
from flame.sfr.router.pool import UpstreamPool
from flame.sfr.router.relay import Siblings
from flame.sfr.router.table import RoutingState

if TYPE_CHECKING:
    from flame.sfr.router.protocol import RouterProtocol

__all__ = ["RouterContext"]


@dataclass(eq=False)
class RouterContext:
    config: RouterConfig
    loop: asyncio.AbstractEventLoop
    routing: RoutingState
    outliers: OutlierDetector
    pool: UpstreamPool
    forwarder: Forwarder
    coalescer: Coalescer | None
    metrics: RouterMetrics
    tasks: TaskSet
    worker: int = 0
    siblings: Siblings | None = None  # the other workers of this SR (multicast across them)
    connections: set[RouterProtocol] = field(default_factory=set)
    sr: bytes = b""  # our Via received-by
    local_hosts: frozenset[str] = frozenset()  # Host values answered by the status endpoint
    closing: bool = False  # graceful shutdown in progress: no new keep-alive
    outbox: Outbox | None = None  # writes held to the end of the loop iteration (flow.py)
    # Client connections: at most `max_connections` open (0: no cap) and `max_per_ip` per
    # client address (0: no such limit); those beyond are answered 503, closed and counted.
    max_connections: int = 0
    max_per_ip: int = 0
    per_ip: dict[bytes, int] = field(default_factory=dict)  # open connections per address
    refused: int = 0
    refused_reported: int = 0  # ... of which the log has told
    refused_log_at: float = 0.0  # loop time of the last such log line
    source_status: Callable[[], dict[str, Any]] | None = None  # the table source's, if it tells
    # TLS (tls.py): FQDNs whose plain-HTTP requests are redirected to https on `tls_port`
    # (replaced whole when the certificates change), and the TLS status for /.flame/status.
    redirect_https: frozenset[str] = frozenset()
    # WebSocket tunnels (tunnel.py): open ones, the cap per worker (0: none), the idle
    # time-out, and counters for the status endpoint.
    tunnels: set[Any] = field(default_factory=set)
    tunnel_cap: int = 1024
    tunnel_idle: float = 300.0
    tunnels_opened: int = 0
    tunnels_refused: int = 0
    tunnels_failed: int = 0
    tunnels_idle_closed: int = 0
    tunnel_bytes: int = 0
    # ACME http-01 answers from the PCE's bundles: fqdn -> token -> key authorization.
    acme_challenges: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    tls_port: int = 0
    tls_status: Callable[[], dict[str, Any]] | None = None
    # Hop-by-hop TLS (upstream_tls.py): with egress hops over mutual TLS, `X-Flame-Endpoint`
    # is honoured only on the hop listener from a peer whose certificate names an SR.
    pin_needs_sr: bool = False
    pins_ignored: int = 0  # X-Flame-Endpoint headers dropped for want of an SR certificate
