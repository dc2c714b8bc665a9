"""Keep-alive connection pools towards endpoints, one per address (host, port), per worker.

Bounded twice: at most `max_connections` open (busy + idle) per address, waiting up to the
connect time-out for a free one beyond that (then `UpstreamBusy`, a 503); at most `max_idle`
idle ones kept, the most recently used first (warm), the others closed after `idle_timeout`.
Addresses that leave the forwarding table are drained (SFR-14): idle connections closed now,
busy ones when their exchange ends.

The common case costs no task: `take_idle` hands out a warm connection at once. Only a new
connection is made in a (named, referenced) task, whose result goes to a callback.
`sweep` is called periodically: it closes stale idle connections and fails exchanges whose
endpoint has been silent for longer than their time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable

from flame.sfr.models import Endpoint
from flame.sfr.router._tasks import TaskSet
from flame.sfr.router.errors import (
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTlsError,
)
from flame.sfr.router.flow import Outbox
from flame.sfr.router.table import TLS_KEY_PREFIX, Address, pool_key
from flame.sfr.router.upstream import UpstreamConnection
from flame.sfr.router.upstream_tls import UpstreamTls

__all__ = ["Connected", "UpstreamPool"]

log = logging.getLogger(__name__)

Connected = Callable[[UpstreamConnection | None, UpstreamError | None], None]
"""connected(conn, None) or connected(None, error): the outcome of `UpstreamPool.connect`."""


class UpstreamPool:
    """All upstream connections of one worker."""

    def __init__(
        self,
        tasks: TaskSet,
        *,
        max_connections: int,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
        high_water: int,
        outbox: Outbox | None = None,
    ) -> None:
        self.tasks = tasks
        self.outbox = outbox  # the worker's held writes (flow.py)
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.high_water = high_water
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self._open: dict[Address, int] = {}  # connecting + busy + idle
        self._waiters: dict[Address, deque[asyncio.Future[None]]] = {}
        self._conns: set[UpstreamConnection] = set()
        self._draining: set[Address] = set()
        self.connects = 0
        # Hop-by-hop TLS (upstream_tls.py): the SR's client context, for endpoints with `tls`.
        self.tls: UpstreamTls | None = None
        self.tls_connects = 0
        self.closed = False
        # Created in the loop; asyncio.get_running_loop() costs a getpid() per call.
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time  # bound once: called per released connection

    def take_idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """A warm idle connection to the endpoint's address, if there is one."""
        idle = self._idle.get(
            (TLS_KEY_PREFIX + endpoint.host, endpoint.port)
            if endpoint.tls
            else (endpoint.host, endpoint.port)
        )
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def connect(self, endpoint: Endpoint, connected: Connected) -> asyncio.Task[None]:
        """Open a new connection in a task; `connected` hears the outcome (unless cancelled)."""
        return self.tasks.spawn(
            self._connect(endpoint, connected), name=f"sr-connect {endpoint.sfe}"
        )

    async def _connect(self, endpoint: Endpoint, connected: Connected) -> None:
        try:
            conn = await self._open_connection(endpoint)
        except UpstreamError as exc:
            connected(None, exc)
            return
        connected(conn, None)

    async def _open_connection(self, endpoint: Endpoint) -> UpstreamConnection:
        address = pool_key(endpoint)
        while self._open.get(address, 0) >= self.max_connections:
            await self._wait_for_slot(endpoint, address)
            conn = self.take_idle(endpoint)
            if conn is not None:
                return conn
        self._open[address] = self._open.get(address, 0) + 1
        created: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            # Registered at once: connection_lost may run before create_connection returns.
            conn = UpstreamConnection(
                address, on_lost=self._lost, high_water=self.high_water, outbox=self.outbox
            )
            created.append(conn)
            self._conns.add(conn)
            return conn

        try:
            async with asyncio.timeout(self.connect_timeout):
                if endpoint.tls:
                    return await self._open_tls(endpoint, factory)
                if endpoint.port == 0:
                    # A sibling worker's private Unix socket (relay.py).
                    _, conn = await self._loop.create_unix_connection(factory, endpoint.host)
                else:
                    _, conn = await self._loop.create_connection(
                        factory, endpoint.host, endpoint.port
                    )
        except (OSError, TimeoutError) as exc:
            self._abandon(created, address)
            reason = _reason(exc)
            tls = isinstance(exc, ssl.SSLError)
            error = (UpstreamTlsError if tls else UpstreamConnectError)(
                f"cannot connect to {endpoint.sfe} at {endpoint.host}:{endpoint.port}: {reason}",
                sfe=endpoint.sfe,
                endpoint=f"{endpoint.host}:{endpoint.port}",
            )
            if not tls and isinstance(exc, OSError):
                # ENETUNREACH and the like: the forwarding tells a path from an endpoint failure.
                error.errno = exc.errno
            raise error from exc
        except BaseException:
            # Cancelled (the client went away): give the slot back before passing it on.
            self._abandon(created, address)
            raise
        self.connects += 1
        return conn

    async def _open_tls(
        self, endpoint: Endpoint, factory: Callable[[], UpstreamConnection]
    ) -> UpstreamConnection:
        """A mutual-TLS connection with the SR's current platform identity (connect time only)."""
        tls = self.tls
        ctx = tls.client if tls is not None else None
        if tls is None or ctx is None:
            raise ssl.SSLError("no platform identity for TLS yet (the PCE runs without --hop-tls?)")
        generation = tls.generation
        _, conn = await self._loop.create_connection(
            factory,
            endpoint.host,
            endpoint.port,
            ssl=ctx,
            server_hostname=endpoint.host,
            ssl_handshake_timeout=self.connect_timeout,
        )
        self.connects += 1
        self.tls_connects += 1
        if tls.generation != generation:
            conn.close_after = True  # the identity changed during the handshake: drain it
        return conn

    def drain_tls(self) -> int:
        """The SR's identity changed: TLS connections made with the previous one close (idle
        ones now, busy ones after their exchange); returns how many closed now."""
        closed = 0
        for address in [a for a in self._idle if a[0].startswith(TLS_KEY_PREFIX)]:
            for conn in self._idle.pop(address):
                conn.close()
                closed += 1
        for conn in self._conns:
            if conn.address[0].startswith(TLS_KEY_PREFIX):
                conn.close_after = True
        return closed

    def release(self, conn: UpstreamConnection) -> None:
        """The exchange is over: keep the connection for the next request, or close it."""
        reusable = conn.reusable
        conn.end_exchange()
        address = conn.address
        if (
            self.closed
            or not reusable
            or address in self._draining
            or len(self._idle.get(address, ())) >= self.max_idle
        ):
            conn.close()
            return
        conn.idle_since = self._time()
        self._idle.setdefault(address, []).append(conn)
        if self._waiters:
            self._wake(address)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection whose exchange failed or was abandoned."""
        conn.end_exchange()
        conn.close()

    def drain(self, removed: Iterable[Address], keep: Iterable[Address]) -> int:
        """Stop using `removed` addresses: close idle connections, busy ones after their exchange.

        Returns how many connections were closed now.
        """
        self._draining -= set(keep)
        removed = set(removed)
        self._draining |= removed
        closed = 0
        for address in removed:
            for conn in self._idle.pop(address, []):
                conn.close()
                closed += 1
        for conn in self._conns:
            if conn.address in removed:
                conn.close_after = True
        return closed

    def sweep(self, now: float) -> None:
        """Close stale idle connections; fail exchanges whose endpoint went silent."""
        for address, idle in list(self._idle.items()):
            # Oldest first: the list is used as a stack, so stale ones sink to the bottom.
            while idle and now - idle[0].idle_since > self.idle_timeout:
                idle.pop(0).close()
            if not idle:
                del self._idle[address]
        for conn in list(self._conns):
            conn.check_timeout(now)

    def stats(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for (host, port), count in self._open.items():
            idle = len(self._idle.get((host, port), ()))
            result[f"{host}:{port}"] = {"open": count, "idle": idle, "busy": count - idle}
        return result

    def close(self) -> None:
        """Close every connection (at shutdown)."""
        self.closed = True
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    async def _wait_for_slot(self, endpoint: Endpoint, address: Address) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        waiters = self._waiters.setdefault(address, deque())
        waiters.append(fut)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await fut
        except TimeoutError:
            raise UpstreamBusy(
                f"all {self.max_connections} connections of this worker to {endpoint.sfe} "
                f"({endpoint.host}:{endpoint.port}) stayed busy for {self.connect_timeout:g}s",
                sfe=endpoint.sfe,
                endpoint=f"{endpoint.host}:{endpoint.port}",
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(address, None)

    def _wake(self, address: Address) -> None:
        waiters = self._waiters.get(address)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _abandon(self, created: list[UpstreamConnection], address: Address) -> None:
        if not created:
            self._forget_slot(address)
        elif created[0].transport is None:
            self._lost(created[0])
        else:
            created[0].close()  # its connection_lost gives the slot back

    def _forget_slot(self, address: Address) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
        if self._waiters:
            self._wake(address)

    def _lost(self, conn: UpstreamConnection) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        address = conn.address
        self._forget_slot(address)
        idle = self._idle.get(address)
        if idle is not None and conn in idle:
            idle.remove(conn)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or repr(exc)
    return repr(exc)
