"""A low-overhead open-loop HTTP/1.1 load generator for the netns link-failure measurements.

`flame ue run` (httpx) spends about 2 ms of CPU per request: on this project's 2-core machine,
shared with the SRs and the SFEs it loads, it falls behind near 100 req/s and its own queueing
shows up as seconds of latency. This client keeps a pool of keep-alive connections with
`asyncio.Protocol`s and httptools' parser (uvloop when installed), a few tens of microseconds
per request.

Everything a user waits for is counted: request i is due at `i / rps` s after the start and
its latency runs from then (time spent waiting in the client for a free connection included,
so a stalled client or path shows up as latency, not as a quietly lower rate); it fails on an
HTTP status >= 400, a connection error, or no complete answer `timeout_s` after it was due.
Nothing is skipped. The report lists every failure with its due time, so a failure can be
placed against the moment a link went down.

Run as `python -m flame.sandbox.netns_load --url http://SR:8080 --fqdn F --path P --rps N
--duration S` (inside a UE's namespace); prints one JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["STARTED", "LoadResult", "run"]

MAX_CONNECTIONS = 256
STARTED = "netns_load: sending"  # on stderr when the first request is due


@dataclass(slots=True)
class LoadResult:
    rps: float
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (due s, why)
    sent_by: float = 0.0  # when the last request was written (s after the start)
    started_at: float = 0.0  # wall clock (epoch s) of the first request's due time
    connections: int = 0

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        sent = len(lat)
        return {
            "rps_asked": self.rps,
            # Requests per second over the time the client took to send them all (it never
            # skips one, so a client that falls behind shows a lower figure here).
            "rps_achieved": round(sent / max(self.sent_by, self.duration_s), 1),
            "requests": sent,
            "failed": sum(self.errors.values()),
            "skipped": 0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "failures": [{"due_s": round(t, 3), "error": e} for t, e in self.failures[:200]],
            "connections": self.connections,
            "started_at": round(self.started_at, 4),
            "latency_ms": {
                "p50": _pct(lat, 50),
                "p90": _pct(lat, 90),
                "p99": _pct(lat, 99),
                "max": round(lat[-1], 3) if lat else None,
            },
        }


def _pct(ordered: list[float], pct: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered)))) - 1], 3)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.status = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.done = True
        if not self.parser.should_keep_alive():
            self.close()
        self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(exc or ConnectionResetError("closed by the server"))

    def _finish(self, exc: BaseException | None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(self.status)
            else:
                waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.done = False
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class _Pool:
    def __init__(self, host: str, port: int, result: LoadResult) -> None:
        self.host, self.port = host, port
        self.idle: list[_Conn] = []
        self.open = 0
        self.result = result

    async def take(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable:
                return conn
            self.open -= 1
        self.open += 1
        self.result.connections += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _Conn(self), self.host, self.port
            )
        except BaseException:
            self.open -= 1
            raise
        return conn

    def give(self, conn: _Conn) -> None:
        if conn.usable:
            self.idle.append(conn)
        else:
            self.open -= 1


async def run(
    url: str,
    fqdn: str,
    paths: list[str],
    rps: float,
    duration_s: float,
    *,
    timeout_s: float = 10.0,
    max_connections: int = MAX_CONNECTIONS,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Send `rps` requests per second for `duration_s` seconds; see the module notes."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = LoadResult(rps, duration_s)
    pool = _Pool(host, port, result)
    slots = asyncio.Semaphore(max_connections)
    total = max(1, round(rps * duration_s))
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: {fqdn}\r\nUser-Agent: flame-netns-load\r\n\r\n".encode()
        for p in paths
    ]
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    started = clock()
    result.started_at = time.time()
    if on_start is not None:
        on_start()

    async def one(i: int, due: float) -> None:
        error: str | None = None
        try:
            async with asyncio.timeout(due + timeout_s - clock()), slots:
                conn = await pool.take()
                try:
                    status = await conn.send(requests[i % len(requests)])
                finally:
                    pool.give(conn)
                    if not conn.done:  # cut or timed out mid-exchange: never reused
                        conn.close()
            result.statuses[status] += 1
            if status >= 400:
                error = f"HTTP {status}"
        except TimeoutError:
            error = "timeout"
        except OSError as exc:
            error = type(exc).__name__
        result.latencies_ms.append((clock() - due) * 1000)
        if error is not None:
            result.errors[error] += 1
            result.failures.append((due - started, error))

    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        due = started + i / rps
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    result.sent_by = clock() - started
    await asyncio.gather(*tasks)
    for conn in pool.idle:
        conn.close()
    result.failures.sort()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flame.sandbox.netns_load")
    parser.add_argument("--url", required=True, help="the SR, e.g. http://10.200.0.3:8080")
    parser.add_argument("--fqdn", required=True)
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--rps", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not (math.isfinite(args.rps) and args.rps > 0 and args.duration > 0):
        parser.error("--rps and --duration must be positive")
    job = run(
        args.url,
        args.fqdn,
        args.path or ["/"],
        args.rps,
        args.duration,
        timeout_s=args.timeout,
        on_start=lambda: print(STARTED, file=sys.stderr, flush=True),
    )
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        result = asyncio.run(job)
    else:
        result = uvloop.run(job)
    print(json.dumps(result.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
