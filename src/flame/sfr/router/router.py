"""One worker of a service router: listener, table, pools, multicast, metrics, shutdown.

    router = Router(RouterConfig(sr_id="sr-1", port=0), source=StaticTableSource(table))
    await router.start()             # listening on router.port (and router.tls_port)
    router.set_table(newer_table)    # the next request on every connection follows it
    await router.shutdown()          # staged: stop accepting, finish requests, close

`server.serve` runs one `Router` per process; tests run them in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from types import TracebackType
from typing import Any

import httpx

from flame.common.tls import client_verify
from flame.sfr.models import ForwardingTable
from flame.sfr.router._tasks import TaskSet
from flame.sfr.router.coalesce import JoinWindow, VaryTable
from flame.sfr.router.config import RouterConfig, client_connection_cap
from flame.sfr.router.context import RouterContext
from flame.sfr.router.flow import Outbox
from flame.sfr.router.forward import HOP_BACKOFF, HOP_BACKOFF_MAX, Forwarder
from flame.sfr.router.metrics import RouterMetrics
from flame.sfr.router.multicast import Coalescer
from flame.sfr.router.outlier import OutlierDetector
from flame.sfr.router.pool import UpstreamPool
from flame.sfr.router.protocol import RouterProtocol
from flame.sfr.router.relay import Siblings
from flame.sfr.router.reporter import ClmcReporter
from flame.sfr.router.request import via_entry
from flame.sfr.router.status import status_document
from flame.sfr.router.subscriber import StaticTableSource, TableSource, TableSubscriber
from flame.sfr.router.table import TLS_KEY_PREFIX, RoutingState
from flame.sfr.router.tls import CertSubscriber, Site, StaticCerts, TlsSites
from flame.sfr.router.tlsconn import TlsAcceptor, TlsConnection
from flame.sfr.router.upstream_tls import HopIdentity, UpstreamTls, identity_from_files

__all__ = ["Router", "default_source"]

log = logging.getLogger(__name__)


def default_source(config: RouterConfig) -> TableSource:
    """The PCE subscriber if PCE URLs are configured, else the table file (or nothing)."""
    if config.pce_urls:
        return TableSubscriber(
            config.sr_id,
            config.pce_urls,
            token=config.token,
            wait=config.poll_wait,
            table_file=config.table_file,
            verify=client_verify(config.ca_file),
        )
    if config.table_file:
        return StaticTableSource.from_file(config.table_file)
    return StaticTableSource()


def _listen(sock: socket.socket, backlog: int) -> None:
    try:
        sock.listen(backlog)
    except OSError as exc:
        host, port = sock.getsockname()[:2]
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _check_listening(server: asyncio.AbstractServer, host: str, port: int) -> None:
    """Raise if a listener closed while starting (uvloop logs a failed listen(), no raise)."""
    if any(s is None for s in server.sockets):  # type: ignore[attr-defined]
        server.close()
        raise OSError(errno.EADDRINUSE, f"cannot listen on {host}:{port}: the address is in use")


class Router:
    """The data plane of one worker process (SFR-1, SFR-14)."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        worker: int = 0,
        source: TableSource | None = None,
        clmc_transport: httpx.AsyncBaseTransport | None = None,
        siblings: Siblings | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.siblings = siblings
        self.source = source if source is not None else default_source(config)
        self._clmc_transport = clmc_transport
        self.routing = RoutingState(config.sr_id)
        self.outliers = OutlierDetector()
        self.hops = OutlierDetector(HOP_BACKOFF, HOP_BACKOFF_MAX)  # egress SR addresses
        self.metrics = RouterMetrics(config.sr_id, worker)
        self.tasks = TaskSet(f"SR {config.sr_id} worker {worker}")
        self.reporter: ClmcReporter | None = None
        self._ctx: RouterContext | None = None
        self._server: asyncio.Server | None = None
        self._internal: asyncio.Server | None = None  # the private socket for sibling workers
        self._tls_server: asyncio.Server | None = None
        # TLS (SFR-19): the SNI map, fed by files and/or the PCE (tls.py).
        self.tls: TlsSites | None = None
        self._tls_acceptor: TlsAcceptor | None = None
        self.cert_source: CertSubscriber | None = None
        self._static_sites: list[Site] = []
        self._pce_sites: list[Site] = []
        self._hop_server: asyncio.Server | None = None
        # Hop-by-hop TLS (upstream_tls.py): the SR's platform identity, from the PCE's bundle.
        self.hop_tls: UpstreamTls | None = UpstreamTls() if config.hop_tls else None
        if config.tls_port is not None:
            key = bytes.fromhex(config.tls_ticket_key) if config.tls_ticket_key else None
            self.tls = TlsSites(ticket_key=key)
            self.tls.on_change.append(self._tls_changed)
            if config.tls_certs:
                self._static_sites = StaticCerts(
                    config.tls_certs, redirect=config.tls_redirect
                ).sites
                self._merge_sites()
        self._plain_egress_port = 0
        self.table_changes = 0
        initial = self.source.initial()
        if initial is not None:
            self.set_table(initial)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(
        self, sock: socket.socket | None = None, tls_sock: socket.socket | None = None
    ) -> None:
        """Start listening (on `sock` if given, else config.host:port; TLS on `tls_sock`, else
        config.host:tls_port, when TLS is on) and the background tasks."""
        loop = asyncio.get_running_loop()
        config = self.config
        limits, timeouts = config.limits, config.timeouts
        outbox = Outbox(loop)
        pool = UpstreamPool(
            self.tasks,
            max_connections=limits.upstream_max_connections,
            max_idle=limits.upstream_max_idle,
            idle_timeout=timeouts.upstream_idle,
            connect_timeout=timeouts.upstream_connect,
            high_water=limits.write_high_water,
            outbox=outbox,
        )
        forwarder = Forwarder(
            self.routing,
            pool,
            self.outliers,
            self.metrics,
            timeouts,
            emulate_latency=config.emulate_latency,
            hops=self.hops,
        )
        coalescer = None
        if config.coalescing:
            coalescer = Coalescer(
                forwarder,
                window=JoinWindow(
                    max_age=timeouts.coalesce_window, max_bytes=limits.coalesce_max_bytes
                ),
                backlog_limit=limits.coalesce_backlog_bytes,
                current_version=lambda: self.routing.version,
                siblings=self.siblings if config.coalescing else None,
                vary=VaryTable(limits.coalesce_vary_resources),
            )
        self._ctx = ctx = RouterContext(
            config=config,
            loop=loop,
            routing=self.routing,
            outliers=self.outliers,
            pool=pool,
            forwarder=forwarder,
            coalescer=coalescer,
            metrics=self.metrics,
            tasks=self.tasks,
            worker=self.worker,
            siblings=self.siblings if config.coalescing else None,
            sr=via_entry(config.sr_id),
            local_hosts=frozenset({config.sr_id.lower(), "_flame"}),
            outbox=outbox,
            max_connections=client_connection_cap(limits),
            max_per_ip=limits.max_connections_per_ip,
            source_status=getattr(self.source, "describe", None),
            tunnel_cap=limits.max_websockets,
            tunnel_idle=config.timeouts.websocket_idle,
        )
        if sock is not None:
            # listen() here so that a port taken since bind() raises; uvloop's create_server
            # only logs a failed listen and returns a server without a socket.
            _listen(sock, config.backlog)
            self._server = await loop.create_server(
                lambda: RouterProtocol(ctx), sock=sock, backlog=config.backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: RouterProtocol(ctx), config.host, config.port, backlog=config.backlog
            )
        _check_listening(self._server, config.host, config.port)
        if self.tls is not None:
            # TLS is driven by the router (tlsconn.py), not uvloop's SSLProtocol: less work per
            # record and per handshake. The handshake must end within the header time-out (a
            # client that opens a TLS connection and sends nothing holds a descriptor no longer
            # than a plain one).
            self._tls_acceptor = acceptor = TlsAcceptor(
                self.tls.context, loop, handshake_timeout=timeouts.header
            )

            def tls_connection() -> TlsConnection:
                return acceptor.connection(RouterProtocol(ctx, tls=True))

            if tls_sock is not None:
                _listen(tls_sock, config.backlog)
                self._tls_server = await loop.create_server(
                    tls_connection, sock=tls_sock, backlog=config.backlog
                )
            else:
                self._tls_server = await loop.create_server(
                    tls_connection, config.host, config.tls_port, backlog=config.backlog
                )
            _check_listening(self._tls_server, config.host, config.tls_port or 0)
            ctx.tls_port = self.tls_port or 0
            ctx.tls_status = self._tls_status
            self._tls_changed(self.tls)
        if self.hop_tls is not None:
            pool.tls = self.hop_tls
            self.hop_tls.on_change.append(self._hop_changed)
            if config.hop_tls_files is not None:
                self.hop_tls.apply(identity_from_files(*config.hop_tls_files))
            if config.hop_tls_port is not None:
                # Egress hops over mutual TLS: every worker listens (SO_REUSEPORT), the
                # handshake bounded like the TLS listener's.
                self._hop_server = await loop.create_server(
                    lambda: RouterProtocol(ctx, hop=True),
                    config.host,
                    config.hop_tls_port,
                    ssl=self.hop_tls.server,
                    backlog=config.backlog,
                    # shared by this SR's workers only (several: SO_REUSEPORT, as server.py)
                    reuse_port=(config.workers or os.cpu_count() or 1) > 1,
                    ssl_handshake_timeout=timeouts.header,
                )
                _check_listening(self._hop_server, config.host, config.hop_tls_port)
        wants_bundle = self.tls is not None or (
            self.hop_tls is not None and config.hop_tls_files is None
        )
        if config.tls_from_pce and config.pce_urls and wants_bundle:
            self.cert_source = CertSubscriber(
                config.sr_id,
                config.pce_urls,
                self._apply_pce_sites,
                token=config.token,
                wait=config.poll_wait,
                verify=client_verify(config.ca_file),
                on_challenges=self._apply_challenges,
                # (a fixed identity from files is never replaced by the bundle's)
                on_identity=(
                    self._apply_identity
                    if self.hop_tls is not None and config.hop_tls_files is None
                    else None
                ),
            )
            self.tasks.supervise(self.cert_source.run, name="sr-cert-source")
        if config.egress_hop:
            # FLIPS' egress hop; by default every SR listens on the same port (its own address).
            self.routing.egress_port = self._plain_egress_port = (
                config.egress_port if config.egress_port is not None else self.port
            )
        if self.siblings is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.siblings.socket)
            self._internal = await loop.create_unix_server(
                lambda: RouterProtocol(ctx, internal=True),
                path=self.siblings.socket,
                backlog=config.backlog,
            )
        # Long-lived: supervised (restarted with a back-off if they fail; status.py shows them).
        self.tasks.supervise(self._sweep, name="sr-sweeper")
        self.tasks.supervise(lambda: self.source.run(self._apply), name="sr-table-source")
        if config.clmc_url:
            self.reporter = ClmcReporter(
                self.metrics,
                config.clmc_url,
                interval=config.metrics_interval,
                db=config.clmc_db,
                token=config.clmc_token,
                transport=self._clmc_transport,
                verify=client_verify(config.ca_file),
            )
            # Measurements are not routing: a failing reporter does not make the SR unhealthy.
            self.tasks.supervise(self.reporter.run, name="sr-clmc-reporter", essential=False)
        log.info(
            "SR %s worker %d listening on %s:%d (table version %s; at most %d client "
            "connections)%s",
            config.sr_id,
            self.worker,
            *self.address,
            self.routing.version,
            ctx.max_connections,
            f"; egress hop to port {self.routing.egress_port}" if self.routing.egress_port else "",
        )
        if self._tls_server is not None:
            log.info(
                "SR %s worker %d: TLS on %s:%d (%s)",
                config.sr_id,
                self.worker,
                config.host,
                self.tls_port,
                "certificates from the PCE" if self.cert_source else "certificates from files",
            )

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() the router first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port, None without one."""
        if self._tls_server is None:
            return None
        return int(self._tls_server.sockets[0].getsockname()[1])

    # -- TLS ------------------------------------------------------------------------------------

    def _apply_pce_sites(self, sites: list[Site]) -> None:
        self._pce_sites = sites
        self._merge_sites()

    def _apply_identity(self, identity: HopIdentity | None) -> None:
        assert self.hop_tls is not None
        self.hop_tls.apply(identity)

    def _hop_changed(self, hop: UpstreamTls) -> None:
        """A new identity (or mode): drain TLS connections of the old one; egress hops over
        mutual TLS when the PCE says `all` and this SR has a hop listener (every SR on the
        same `hop_tls_port`), else as configured."""
        ctx = self._ctx
        if ctx is None:
            return
        drained = ctx.pool.drain_tls()
        over_tls = hop.mode == "all" and self.config.hop_tls_port is not None
        ctx.pin_needs_sr = over_tls
        if self.config.egress_hop:
            self.routing.egress_tls = over_tls
            self.routing.egress_port = (
                self.config.hop_tls_port or 0 if over_tls else self._plain_egress_port
            )
        log.info(
            "SR %s worker %d: hop TLS generation %d (mode %s); %d idle TLS connections of the "
            "previous identity closed, busy ones close after their response",
            self.config.sr_id,
            self.worker,
            hop.generation,
            hop.mode,
            drained,
        )

    def _apply_challenges(self, challenges: dict[str, dict[bytes, bytes]]) -> None:
        if self._ctx is not None:
            self._ctx.acme_challenges = challenges  # replaced whole, like the redirects

    def _merge_sites(self) -> None:
        """Files and the PCE together; the PCE's certificate for an FQDN wins."""
        if self.tls is None:
            return  # the bundle is fetched for the hop identity only (no TLS listener)
        from_pce = {s.fqdn for s in self._pce_sites}
        self.tls.update(
            [*self._pce_sites, *(s for s in self._static_sites if s.fqdn not in from_pce)]
        )

    def _tls_changed(self, sites: TlsSites) -> None:
        if self._ctx is not None:
            self._ctx.redirect_https = sites.redirects

    def _tls_status(self) -> dict[str, Any]:
        assert self.tls is not None
        doc = self.tls.describe()
        doc["port"] = self.tls_port
        if self._tls_acceptor is not None:  # this worker's TLS connections (tlsconn.py)
            doc["connections"] = self._tls_acceptor.describe()
        doc["source"] = self.cert_source.describe() if self.cert_source is not None else None
        return doc

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop in stages: accept nothing, let requests finish (up to `grace`), close."""
        ctx = self._ctx
        if ctx is None or ctx.closing:
            return
        grace = self.config.timeouts.shutdown_grace if grace is None else grace
        ctx.closing = True
        # 1. No new connections.
        if self._server is not None:
            self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        if self._tls_acceptor is not None:
            self._tls_acceptor.abort_handshakes()
        if self._hop_server is not None:
            self._hop_server.close()
        if self._internal is not None:
            self._internal.close()
        # 2. Idle connections close now, busy ones after their response.
        for conn in list(ctx.connections):
            conn.shutdown()
        # 3. Wait for in-flight requests.
        loop = ctx.loop
        deadline = loop.time() + grace
        while ctx.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # 4. Whatever is left is cut, and said so.
        if ctx.connections:
            log.warning(
                "SR %s worker %d: %d connections still busy after %gs; closing them",
                self.config.sr_id,
                self.worker,
                len(ctx.connections),
                grace,
            )
            for conn in list(ctx.connections):
                conn.abort()
        # 5. Background work: a last measurement batch, then everything else.
        await self.tasks.cancel_all("the service router is shutting down")
        if self.reporter is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.flush(), timeout=1.0)
            await self.reporter.aclose()
        ctx.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._tls_server is not None:
            await self._tls_server.wait_closed()
        if self._hop_server is not None:
            await self._hop_server.wait_closed()
        if self._internal is not None:
            await self._internal.wait_closed()
            assert self.siblings is not None
            with contextlib.suppress(OSError):
                os.unlink(self.siblings.socket)
        # Let transports closed above deliver connection_lost before the loop may stop.
        await asyncio.sleep(0)
        log.info("SR %s worker %d stopped", self.config.sr_id, self.worker)

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown(grace=1.0)

    # -- the table ------------------------------------------------------------------------------

    def set_table(self, table: ForwardingTable, *, force: bool = False) -> bool:
        """Use `table` from the next request on (SFR-14); False if it is not newer."""
        change = self.routing.set_table(table, force=force)
        if change is None:
            return False
        self.table_changes += 1
        self.metrics.switch(change.switched)
        self.metrics.set_paths(
            {
                (fqdn, sfe): latency
                for fqdn in self.routing.fqdns()
                if (r := self.routing.lookup(fqdn))
                for sfe, latency in r.latency_ms.items()
            }
        )
        self.outliers.forget(
            e.sfe
            for fqdn in self.routing.fqdns()
            if (r := self.routing.lookup(fqdn))
            for e in r.endpoints()
        )
        self.hops.forget(
            f"{host.removeprefix(TLS_KEY_PREFIX)}:{port}" for host, port in change.addresses
        )
        drained = 0
        if self._ctx is not None:
            drained = self._ctx.pool.drain(change.removed, change.addresses)
        log.info(
            "SR %s worker %d: table version %s -> %d; %d FQDNs switched; %d endpoint addresses "
            "withdrawn (%d idle connections closed, busy ones close after their response)",
            self.config.sr_id,
            self.worker,
            change.old_version,
            change.version,
            len(change.switched),
            len(change.removed),
            drained,
        )
        return True

    async def _sweep(self) -> None:
        """Time-outs of client and upstream connections, checked a few times per time-out."""
        ctx = self.context
        t = self.config.timeouts
        shortest = min(t.header, t.keepalive, t.upstream_response, t.upstream_idle)
        interval = min(1.0, max(0.02, shortest / 5))
        loop = ctx.loop
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            ctx.pool.sweep(now)
            for conn in list(ctx.connections):
                conn.check_timeouts(now)

    def _apply(self, table: ForwardingTable, force: bool) -> bool:
        return self.set_table(table, force=force)

    # -- introspection ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The status document (as served on /.flame/status)."""
        assert self._ctx is not None, "start() the router first"
        return status_document(self._ctx)

    @property
    def context(self) -> RouterContext:
        assert self._ctx is not None, "start() the router first"
        return self._ctx
