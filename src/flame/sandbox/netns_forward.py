"""TCP forwarders from this host's loopback into the namespaces of `flame up --netns`.

The control plane listens inside the control namespace, the SRs inside theirs; nothing is added to
the host's own network. So that the dashboard, the `flame` CLI and the supervisor's health checks
work from the host, each forwarded service gets a port on 127.0.0.1 whose connections are relayed
to the service's address inside its namespace. A socket belongs to the network namespace it was
created in, and setns(2) moves only the calling thread: a short-lived thread enters the
namespace, creates the socket and ends; the relay then runs in this process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable

__all__ = ["Forwarders", "socket_in"]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(ns: str) -> socket.socket:
    """A TCP socket of network namespace `ns` (by name, as `ip netns` keeps them)."""
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=enter, name=f"setns-{ns}")
    thread.start()
    thread.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


class Forwarders:
    """Listeners on 127.0.0.1, each relaying to (namespace, host, port); in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netns-forward")
        self.thread.daemon = True
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []

    def add(self, ns: str, host: str, port: int, local_port: int = 0) -> int:
        """Forward 127.0.0.1:`local_port` (0: a free one) to `host`:`port` in `ns`; the port."""
        future = asyncio.run_coroutine_threadsafe(
            self._serve(ns, host, port, local_port), self.loop
        )
        return future.result(10)

    async def _serve(self, ns: str, host: str, port: int, local_port: int) -> int:
        handler = self._relay(ns, host, port)
        server = await asyncio.start_server(handler, "127.0.0.1", local_port)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def _relay(
        self, ns: str, host: str, port: int
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                sock = await asyncio.to_thread(socket_in, ns)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                up_reader, up_writer = await asyncio.open_connection(sock=sock)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        return relay

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            for server in self.servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 1)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
