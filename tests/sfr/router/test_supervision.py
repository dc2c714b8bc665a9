"""Issue 14: long-lived tasks are supervised, client connections are capped.

- A background task that raises (here the table source) is started again after a back-off,
  and its state is in /.flame/status and /.flame/health meanwhile.
- A burst of idle (half-open) client connections beyond the worker's cap is answered 503 and
  closed, and counted; the table source, which needs file descriptors of its own to poll the
  PCE, keeps applying new tables. This runs a real SR process with a small open files limit
  against a PCE stand-in that closes its connection after every answer (so every poll needs a
  new socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio

from flame.sfr.models import ForwardingTable
from flame.sfr.router import Limits, Router, RouterConfig, Timeouts
from flame.sfr.router.config import FD_RESERVE, client_connection_cap
from flame.sfr.router.subscriber import ApplyTable

from .helpers import SR, Client, Upstream, request_bytes, table

pytestmark = pytest.mark.asyncio


class FailingSource:
    """A table source that starts with `first`, fails its first `failures` runs, then
    delivers `then` and stays."""

    def __init__(self, first: ForwardingTable, then: ForwardingTable, failures: int) -> None:
        self.first = first
        self.table = then
        self.failures = failures
        self.runs = 0

    def initial(self) -> ForwardingTable | None:
        return self.first

    async def run(self, apply: ApplyTable) -> None:
        self.runs += 1
        await asyncio.sleep(0.05)
        if self.runs <= self.failures:
            raise OSError(24, "Too many open files")
        apply(self.table, False)
        await asyncio.Event().wait()


async def get(port: int, path: str, host: str = "_flame") -> tuple[int, dict]:
    c = await Client.connect(port)
    try:
        resp = await c.get(path, host=host)
    finally:
        await c.close()
    return resp.status, resp.json() if resp.body.startswith(b"{") else {}


async def test_a_failing_table_source_is_restarted_and_shown(upstreams) -> None:
    up = await upstreams("a")
    source = FailingSource(
        table(1, {"old.example": [(up.endpoint(fqdn="old.example"), 1.0)]}),
        table(2, {"vod.example": [(up.endpoint(), 1.0)]}),
        failures=2,
    )
    router = Router(RouterConfig(sr_id=SR, port=0), source=source)
    await router.start()
    try:
        seen: set[tuple[int, str]] = set()
        async with asyncio.timeout(10):
            while router.routing.version == 1:
                status, body = await get(router.port, "/.flame/health")
                seen.add((status, body.get("status", "")))
                if body.get("status") == "failing":
                    failing = body["failing_tasks"]["sr-table-source"]
                    assert failing["state"] == "restarting"
                    assert failing["last_error"] == "OSError(24, 'Too many open files')"
                await asyncio.sleep(0.02)
        assert (503, "failing") in seen  # the failure showed while it lasted
        assert source.runs == 3
        status, health = await get(router.port, "/.flame/health")
        assert (status, health["status"]) == (200, "ok")
        tasks = (await get(router.port, "/.flame/status"))[1]["tasks"]
        task = tasks["sr-table-source"]
        assert (task["state"], task["restarts"], task["failures"]) == ("running", 2, 2)
        assert task["last_error"] == "OSError(24, 'Too many open files')"
        assert tasks["sr-sweeper"]["state"] == "running"
        status, _ = await get(router.port, "/", host="vod.example")
        assert status == 200
    finally:
        await router.shutdown(grace=0.5)


async def test_a_failing_non_essential_task_is_degraded_not_unhealthy(
    upstreams, make_router
) -> None:
    """A non-essential task (like the CLMC reporter) failing: health 200 "degraded"."""
    up = await upstreams("a")
    r = await make_router(table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("a bug")

    r.tasks.supervise(broken, name="sr-extra", essential=False)
    async with asyncio.timeout(5):
        while True:
            status, body = await get(r.port, "/.flame/health")
            if body.get("status") == "degraded":
                break
            await asyncio.sleep(0.02)
    assert status == 200
    assert body["failing_tasks"]["sr-extra"]["last_error"] == "ValueError('a bug')"
    assert r.stats()["tasks"]["sr-extra"]["essential"] is False


async def test_client_connection_cap_is_derived_from_the_open_files_limit(monkeypatch) -> None:
    import resource

    assert client_connection_cap(Limits(max_client_connections=77)) == 77
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    assert client_connection_cap(Limits()) == (1024 - FD_RESERVE) // 2
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (100, 100))
    assert client_connection_cap(Limits()) == 16
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (10**7, 10**7))
    assert client_connection_cap(Limits()) == 32768


async def test_connections_beyond_the_cap_are_answered_503_and_counted(
    upstreams, make_router
) -> None:
    up = await upstreams("a")
    r = await make_router(
        table(1, {"vod.example": [(up.endpoint(), 1.0)]}),
        limits=Limits(max_client_connections=4),
    )
    idle = [await Client.connect(r.port) for _ in range(4)]
    try:
        extra = await Client.connect(r.port)
        resp = await extra.response()
        assert resp.status == 503
        assert resp.header("retry-after") == "1"
        assert resp.json()["error"] == "too_many_connections"
        assert await extra.closed()
        await extra.close()
        # The admitted ones work; when one goes, a new one is admitted.
        assert (await idle[0].get("/")).status == 200
        await idle.pop().close()
        await asyncio.sleep(0.05)
        idle.append(await Client.connect(r.port))
        assert (await idle[-1].get("/")).status == 200
        assert r.stats()["connections_refused"] == 1
        assert r.stats()["connection_limit"] == 4
    finally:
        for c in idle:
            await c.close()


async def test_per_address_limit(upstreams, make_router) -> None:
    up = await upstreams("a")
    r = await make_router(
        table(1, {"vod.example": [(up.endpoint(), 1.0)]}),
        limits=Limits(max_connections_per_ip=2),
    )
    first = [await Client.connect(r.port) for _ in range(2)]
    third = await Client.connect(r.port)
    try:
        assert (await third.response()).status == 503
        assert (await first[1].get("/")).status == 200
    finally:
        for c in [*first, third]:
            await c.close()
    await asyncio.sleep(0.05)
    again = await Client.connect(r.port)  # the count went back down
    try:
        assert (await again.get("/")).status == 200
    finally:
        await again.close()
    assert r.context.per_ip == {b"127.0.0.1": 1}


async def test_idle_new_connections_are_closed_after_the_header_time_out(
    upstreams, make_router
) -> None:
    """Half-open connections (nothing sent) go after `timeouts.header`, freeing the cap."""
    up = await upstreams("a")
    r = await make_router(
        table(1, {"vod.example": [(up.endpoint(), 1.0)]}),
        limits=Limits(max_client_connections=3),
        timeouts=Timeouts(header=0.3),
    )
    idle = [await Client.connect(r.port) for _ in range(3)]
    try:
        assert all([await c.closed(timeout=2) for c in idle])
        c = await Client.connect(r.port)
        assert (await c.get("/")).status == 200
        await c.close()
    finally:
        for c in idle:
            await c.close()


# -- a real SR process out of file descriptors ------------------------------------------------

RUNNER = """
import json, logging, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
from flame.sfr.router import RouterConfig, serve
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
serve(RouterConfig.from_dict(json.loads(sys.argv[1])), on_ready=lambda h, p: print("READY", p, flush=True))
"""


class PceStandIn:
    """GET /v1/tables/{sr}?since=V&wait=S: the table if newer, else 304 after `wait`; every
    answer closes its connection. Records the `since` of every poll."""

    def __init__(self, sr: str) -> None:
        self.sr = sr
        self.tables: list[ForwardingTable] = []
        self.since: list[int] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def publish(self, table: ForwardingTable) -> None:
        self.tables.append(table)
        self.changed.set()
        self.changed = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            query = parse_qs(urlsplit(target).query)
            since = int(query["since"][0])
            self.since.append(since)
            if self.tables[-1].version <= since:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), float(query["wait"][0]))
            latest = self.tables[-1]
            if latest.version > since:
                body = json.dumps(latest.to_dict()).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"X-Flame-Pce-Generation: g1\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
            else:
                writer.write(
                    b"HTTP/1.1 304 Not Modified\r\nX-Flame-Pce-Generation: g1\r\n"
                    b"Connection: close\r\n\r\n"
                )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@pytest_asyncio.fixture
async def pce() -> AsyncIterator[PceStandIn]:
    stand_in = PceStandIn(SR)
    yield stand_in
    await stand_in.close()


@pytest.mark.slow
async def test_half_open_connection_burst_leaves_the_table_source_working(
    upstreams, pce: PceStandIn
) -> None:
    up: Upstream = await upstreams("a")
    pce.publish(table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    pce_port = await pce.start()
    files = 200  # the SR's open files limit: its cap is (200 - 128) // 2 = 36 clients
    config = RouterConfig(
        sr_id=SR,
        port=0,
        workers=1,
        pce_urls=(f"http://127.0.0.1:{pce_port}",),
        poll_wait=0.3,
        timeouts=Timeouts(header=6.0),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNNER,
        json.dumps(config.to_dict()),
        str(files),
        stdout=asyncio.subprocess.PIPE,
    )
    burst: list[asyncio.StreamWriter] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        port = int(line.split()[1])
        async with asyncio.timeout(10):
            while 1 not in pce.since:  # the SR has table 1
                await asyncio.sleep(0.02)
        # The burst: idle connections, more than the SR has file descriptors, and more coming
        # all the time (any descriptor the SR frees is taken by the next one it accepts).
        stop = asyncio.Event()

        async def pressure() -> None:
            while not stop.is_set():
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                burst.append(writer)
                if len(burst) > files + 200:
                    burst.pop(0).close()
                await asyncio.sleep(0.001)

        attack = asyncio.create_task(pressure())
        try:
            await asyncio.sleep(1.0)
            # A new table under attack: the SR must still poll (a new socket each time) and
            # apply it within a couple of polls, not once the idle connections time out.
            pce.publish(table(2, {"vod.example": [(up.endpoint(), 1.0)], "new.example": []}))
            async with asyncio.timeout(3):
                while 2 not in pce.since:
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            await attack
        for writer in burst:
            writer.close()
        burst.clear()
        await asyncio.sleep(0.3)
        c = await Client.connect(port)
        try:
            await c.send(request_bytes("GET", "/.flame/status", "_flame"))
            status = (await c.response()).json()
            health = await c.get("/.flame/health", host="_flame")
            routed = await c.get("/", host="vod.example")
        finally:
            await c.close()
        assert status["table_version"] == 2
        assert status["table_source"]["failures"] == 0  # no poll ever lacked a socket
        assert status["connection_limit"] == (files - FD_RESERVE) // 2
        assert status["connections_refused"] > 0
        assert status["tasks"]["sr-table-source"]["state"] == "running"
        assert (health.status, health.json()["status"]) == (200, "ok")
        assert routed.status == 200
    finally:
        for writer in burst:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
