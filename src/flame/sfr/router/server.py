"""Running a service router: N worker processes sharing one port (SO_REUSEPORT), SFR-1.

    serve(RouterConfig(sr_id="sr-1", port=8080, workers=4, pce_urls=("http://pce:7070",)))

Each worker is a process with its own uvloop event loop, listening socket (the kernel spreads
connections over the workers' sockets), table subscriber, pools and metrics. The workers share
one thing: which of them has a multicast fetch in flight for which object (inflight.py), so
that a popular object is fetched once for the SR, not once per worker (relay.py). The parent holds
the port while the workers start (so port 0 gives all of them the same free port), reports
readiness, forwards SIGTERM/SIGINT to them and waits. A worker stops in stages on either
signal (router.py's `shutdown`). Without SO_REUSEPORT the router runs one worker in-process.
If a worker dies unexpectedly the others are stopped and `serve` raises: restarting is the
supervisor's job (systemd, Kubernetes), which sees the failure. At start the soft limit on
open files is raised to the hard one (as nginx's `worker_rlimit_nofile`, or Go's runtime, do):
each worker's client connection cap is derived from it (config.py).

With `tls_port` set, every worker also listens there with TLS (tls.py), on a port shared the
same way; the parent makes the TLS session ticket keys all workers use, so a session resumes
on whichever worker the kernel hands the connection to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from flame.common.logging import logging_spec, setup_logging
from flame.sfr.router.config import RouterConfig
from flame.sfr.router.errors import RouterError
from flame.sfr.router.inflight import InflightTable
from flame.sfr.router.native import native_status
from flame.sfr.router.relay import Siblings
from flame.sfr.router.router import Router
from flame.sfr.router.tls import TICKET_KEY_BYTES

__all__ = ["bind_socket", "raise_fd_limit", "reuse_port_supported", "run_worker", "serve"]

log = logging.getLogger(__name__)

Ready = Callable[[str, int], None]


def reuse_port_supported() -> bool:
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    return True


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.info("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft
    log.info("open files limit raised from %d to %d", soft, target)
    return target


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def serve(
    config: RouterConfig, *, on_ready: Ready | None = None, on_tls_ready: Ready | None = None
) -> None:
    """Run the SR until SIGTERM/SIGINT; returns after a graceful stop.

    `on_ready(host, port)` is called once every worker listens, then `on_tls_ready(host,
    tls_port)` when TLS is on. Raises `RouterError` if a worker fails.
    """
    native = native_status()
    (log.warning if native.stale else log.info)("SR %s: %s", config.sr_id, native.describe())
    raise_fd_limit()
    workers = config.workers or os.cpu_count() or 1
    if workers > 1 and not reuse_port_supported():
        log.warning("SO_REUSEPORT is not available here; running 1 worker instead of %d", workers)
        workers = 1
    if config.tls_port is not None and config.tls_ticket_key is None:
        config = dataclasses.replace(
            config, tls_ticket_key=secrets.token_bytes(TICKET_KEY_BYTES).hex()
        )
    if workers == 1:
        sock = bind_socket(config.host, config.port, reuse_port=False)
        tls_sock = None
        if config.tls_port is not None:
            try:
                tls_sock = bind_socket(config.host, config.tls_port, reuse_port=False)
            except BaseException:
                sock.close()
                raise
        run_worker(config, 0, sock, tls_sock, on_ready=on_ready, on_tls_ready=on_tls_ready)
        return
    _serve_processes(config, workers, on_ready, on_tls_ready)


def run_worker(
    config: RouterConfig,
    index: int,
    sock: socket.socket | None = None,
    tls_sock: socket.socket | None = None,
    *,
    on_ready: Ready | None = None,
    on_tls_ready: Ready | None = None,
    siblings: Siblings | None = None,
) -> None:
    """Run one worker in this process until SIGTERM/SIGINT."""
    import uvloop  # noqa: PLC0415 - only workers need it, the parent does not

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker_main(config, index, sock, tls_sock, on_ready, on_tls_ready, siblings))


async def _worker_main(
    config: RouterConfig,
    index: int,
    sock: socket.socket | None,
    tls_sock: socket.socket | None,
    on_ready: Ready | None,
    on_tls_ready: Ready | None,
    siblings: Siblings | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    router = Router(config, worker=index, siblings=siblings)
    await router.start(sock, tls_sock)
    # What exists now (code, configuration, tables) lives as long as the worker: keep it out
    # of the collector's generations, so collections triggered by requests scan only them.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(*router.address)
    if on_tls_ready is not None and router.tls_port is not None:
        on_tls_ready(router.address[0], router.tls_port)
    await stop.wait()
    log.info(
        "SR %s worker %d: stopping (grace %gs)", config.sr_id, index, config.timeouts.shutdown_grace
    )
    await router.shutdown()


def _worker_process(
    config_data: dict[str, Any],
    index: int,
    host: str,
    port: int,
    tls_port: int | None,
    ready: Connection,
    inflight: InflightTable | None,
    sockets: tuple[str, ...],
    log_spec: tuple[str, str],
) -> None:
    """Entry point of a worker process (spawned, so it starts clean)."""
    setup_logging(*log_spec)  # the parent's level and format (json, redaction) too
    config = RouterConfig.from_dict(config_data)
    try:
        sock = bind_socket(host, port, reuse_port=True)
        tls_sock = None if tls_port is None else bind_socket(host, tls_port, reuse_port=True)
    except OSError as exc:
        ready.send(("error", f"worker {index} cannot bind {host}:{port}/{tls_port}: {exc}"))
        ready.close()
        sys.exit(1)

    def report(h: str, p: int) -> None:
        ready.send(("ready", p))
        ready.close()

    siblings = None
    if inflight is not None:
        siblings = Siblings(inflight, index, sockets, ttl=config.timeouts.coalesce_window)
    run_worker(config, index, sock, tls_sock, on_ready=report, siblings=siblings)


def _serve_processes(
    config: RouterConfig, workers: int, on_ready: Ready | None, on_tls_ready: Ready | None
) -> None:
    # Holding a bound SO_REUSEPORT socket reserves the port (and fixes port 0 to one number)
    # for the workers; it never listens, so the kernel gives it no connections.
    holder = bind_socket(config.host, config.port, reuse_port=True)
    port = holder.getsockname()[1]
    tls_holder: socket.socket | None = None
    tls_port: int | None = None
    if config.tls_port is not None:
        try:
            tls_holder = bind_socket(config.host, config.tls_port, reuse_port=True)
        except BaseException:
            holder.close()
            raise
        tls_port = tls_holder.getsockname()[1]
    # Multicast across workers (inflight.py, relay.py): a shared claim table and a private
    # socket per worker, in a directory only this SR uses.
    runtime = tempfile.mkdtemp(prefix="flame-sr-")
    sockets = tuple(os.path.join(runtime, f"w{i}.sock") for i in range(workers))
    inflight = InflightTable() if config.coalescing else None
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        config_data = config.to_dict()
        for index in range(workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_worker_process,
                args=(
                    config_data,
                    index,
                    config.host,
                    port,
                    tls_port,
                    child_end,
                    inflight,
                    sockets,
                    logging_spec(),
                ),
                name=f"flame-sr-{config.sr_id}-{index}",
            )
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        _await_ready(procs, pipes, config.timeouts.upstream_connect + 30.0)
        holder.close()
        if tls_holder is not None:
            tls_holder.close()
        log.info(
            "SR %s: %d workers listening on %s:%d%s",
            config.sr_id,
            workers,
            config.host,
            port,
            f" (TLS on {tls_port})" if tls_port is not None else "",
        )
        if on_ready is not None:
            on_ready(config.host, port)
        if on_tls_ready is not None and tls_port is not None:
            on_tls_ready(config.host, tls_port)
        failed = _supervise(procs, lambda: stopping)
    except BaseException:
        forward(signal.SIGTERM, None)
        for proc in procs:
            proc.join(timeout=config.timeouts.shutdown_grace + 5.0)
            if proc.is_alive():
                proc.kill()
        raise
    finally:
        holder.close()
        if tls_holder is not None:
            tls_holder.close()
        shutil.rmtree(runtime, ignore_errors=True)
        for pipe in pipes:
            pipe.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed:
        raise RouterError(
            f"SR {config.sr_id}: worker(s) {failed} exited unexpectedly; the SR stopped"
        )


def _await_ready(
    procs: list[multiprocessing.process.BaseProcess], pipes: list[Connection], timeout: float
) -> None:
    pending = dict(zip(pipes, procs, strict=True))
    while pending:
        ready = wait(list(pending), timeout=timeout)
        if not ready:
            raise RouterError(f"{len(pending)} SR workers did not start within {timeout:g}s")
        for pipe in ready:
            assert isinstance(pipe, Connection)
            try:
                kind, detail = pipe.recv()
            except EOFError:
                raise RouterError(f"SR worker {pending[pipe].name} died while starting") from None
            if kind != "ready":
                raise RouterError(str(detail))
            del pending[pipe]


def _supervise(
    procs: list[multiprocessing.process.BaseProcess], stopping: Callable[[], bool]
) -> list[int]:
    """Wait for the workers; the indexes of those that failed (outside a requested stop)."""
    alive = {p.sentinel: (i, p) for i, p in enumerate(procs)}
    failed: list[int] = []
    while alive:
        for sentinel in wait(list(alive), timeout=1.0):
            assert isinstance(sentinel, int)
            index, p = alive.pop(sentinel)
            p.join()
            if p.exitcode != 0 and not stopping():
                log.error(
                    "SR worker %d exited with status %s; stopping the others", index, p.exitcode
                )
                failed.append(index)
                for _, other in alive.values():
                    if other.pid is not None and other.is_alive():
                        os.kill(other.pid, signal.SIGTERM)
    return failed
