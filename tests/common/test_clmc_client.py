"""The one CLMC client (`flame.common.clmc_client`, issue 18 item 4; CLMC-8 measurements).

Against a real CLMC (`flame.clmc.build.build_clmc` served by uvicorn over https with the
platform CA and a token store): points arrive and can be queried; a wrong CA or token is not
the client's crash. Against a small real HTTP server answering scripted statuses: 503/429 keep
the points and back off at least as long as Retry-After, 400 drops them and logs the CLMC's
message once per kind, never the token; the buffer is bounded (oldest dropped, counted), a full
batch is sent before the interval, close() keeps its deadline against a CLMC that never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn

from eventually import eventually, eventually_async
from flame.clmc.build import ClmcSettings, build_clmc
from flame.common.auth import Role, TokenStore
from flame.common.clmc_client import (
    ClmcTarget,
    ClmcWriter,
    ThreadedClmcWriter,
    retry_after_s,
)
from flame.common.lineproto import line
from flame.common.pki import PlatformCA
from flame.common.ports import free_port
from flame.common.tls import client_verify
from flame.media.content.reporter import ClmcReporter as MediaReporter
from flame.sandbox.ue import LoadSpec, Second
from flame.sandbox.ue_clmc import ClmcReporter as UeReporter

# -- a real CLMC -------------------------------------------------------------------------------


@dataclass
class RealClmc:
    url: str
    token: str
    ca_file: Path

    def query(self, q: str) -> list[list[object]]:
        response = httpx.get(
            self.url + "/query",
            params={"db": "flame", "q": q, "read_your_writes": "true"},
            headers={"Authorization": f"Bearer {self.token}"},
            verify=client_verify(self.ca_file),
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        series = response.json()["results"][0].get("series", [])
        return [row for one in series for row in one["values"]]


@pytest.fixture
def real_clmc(tmp_path: Path) -> Iterator[RealClmc]:
    ca = PlatformCA.open(tmp_path / "ca")
    issued = ca.issue(["localhost"], ip_addresses=["127.0.0.1"])
    (tmp_path / "clmc.crt").write_text(issued.chain_pem)
    (tmp_path / "clmc.key").write_text(issued.key_pem)
    port = free_port()
    settings = ClmcSettings(
        directory=tmp_path / "clmc",
        tokens_path=tmp_path / "tokens.json",
        own_url=f"https://127.0.0.1:{port}",
        sfemc_url="http://127.0.0.1:7080/v1/sfemc/events",
    )
    token = TokenStore(tmp_path / "tokens.json").issue("ops", Role.OPERATOR)
    built = build_clmc(settings, warn=lambda _: None, note=lambda _: None)
    config = uvicorn.Config(
        built.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        ssl_certfile=str(tmp_path / "clmc.crt"),
        ssl_keyfile=str(tmp_path / "clmc.key"),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, what="the CLMC to start")
        yield RealClmc(f"https://127.0.0.1:{port}", token, ca.cert_path)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.asyncio
async def test_clmc8_points_reach_a_real_clmc_over_https_with_a_token(
    real_clmc: RealClmc, caplog: pytest.LogCaptureFixture
) -> None:
    target = ClmcTarget(real_clmc.url, "flame", real_clmc.token, real_clmc.ca_file)
    writer = ClmcWriter(target, interval_s=0.05)
    runner = asyncio.create_task(writer.run())
    try:
        for i in range(3):
            text = line("h3_probe", {"host": "h 1", "empty": ""}, {"n": i, "gone": None}, i + 1)
            assert text is not None
            writer.add(text)
        await eventually_async(lambda: writer.sent == 3, what="3 points sent")
        rows = await asyncio.to_thread(real_clmc.query, 'SELECT "n" FROM "h3_probe"')
        assert [row[1] for row in rows] == [0, 1, 2]
    finally:
        runner.cancel()
        await writer.close()
    # The platform CA is what makes the CLMC's certificate trusted: without it, an error the
    # writer survives (kept for a retry), not a crash.
    untrusting = ClmcWriter(ClmcTarget(real_clmc.url, "flame", real_clmc.token, verify=True))
    untrusting.add("h3_probe n=9i 9")
    assert await untrusting.flush() is False
    assert untrusting.queued == 1
    assert "SSL" in (untrusting.last_error or "").upper()
    await untrusting.close(deadline_s=0.1)
    # A wrong token: refused (401) with the CLMC's words, dropped, never logged itself.
    caplog.set_level(logging.INFO, logger="flame.common.clmc_client")
    secret = "flm_not-a-real-token-0123456789"
    wrong = ClmcWriter(ClmcTarget(real_clmc.url, "flame", secret, real_clmc.ca_file))
    wrong.add("h3_probe n=1i 10")
    assert await wrong.flush() is False
    assert (wrong.refused, wrong.dropped, wrong.queued) == (1, 1, 0)
    await wrong.close()
    assert "HTTP 401" in caplog.text
    assert secret not in caplog.text


# -- a scripted HTTP server --------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Scripted:
    """Answers each request with the next scripted reply (the last one repeats); `hang` makes it
    accept and never answer."""

    replies: list[Reply]
    hang: bool = False
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hang
    writers: list[asyncio.StreamWriter] = field(default_factory=list)  # closed at the end

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return [text for _, _, body in self.requests for text in body.decode().splitlines()]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                first, *rest = head.decode().split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (h.split(":", 1) for h in rest if ":" in h)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((first.split()[1], headers, body))
                self.arrived.set()
                if self.hang:
                    await self.release.wait()
                reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(reply.body)}\r\n"
                    f"{extra}\r\n".encode()
                    + reply.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Scripted]:
    state = Scripted([Reply(204)])
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        await _shut_down(server, state)


async def _shut_down(server: asyncio.Server, state: Scripted) -> None:
    """Stop `server` and end the connections the client left open while its loop still runs:
    one collected after the loop closed is an unraisable warning in whichever test comes next."""
    state.release.set()
    server.close()
    await asyncio.sleep(0)  # a connection accepted just now starts its handler
    for writer in state.writers:
        writer.close()  # its handler's read ends: it returns
    me = asyncio.current_task()
    handlers = [
        task
        for task in asyncio.all_tasks()
        if task is not me and getattr(task.get_coro(), "__qualname__", "") == "Scripted.handle"
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)


def _writer(url: str, **options: object) -> ClmcWriter:
    return ClmcWriter(ClmcTarget(url, "flame", "flm_secret-token-xyz"), **options)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [503, 429])
async def test_busy_clmc_keeps_the_points_and_waits_at_least_retry_after(
    scripted: Scripted, status: int
) -> None:
    scripted.replies = [Reply(status, b'{"error": "busy"}', {"Retry-After": "30"}), Reply(204)]
    writer = _writer(scripted.url, interval_s=0.02, backoff_s=(0.01, 0.01))
    writer.add_many(["m v=1i 1", "m v=2i 2"])
    runner = asyncio.create_task(writer.run())
    try:
        await asyncio.wait_for(scripted.arrived.wait(), 30)
        await eventually_async(lambda: writer.batches_failed == 1, what="the refusal settled")
        assert (writer.queued, writer.dropped) == (2, 0)
        assert writer.last_error == f"HTTP {status}: busy"
        # Back-off alone would retry every 10 ms; Retry-After asks for 30 s. A stalled machine
        # could only make fewer attempts, so this wait cannot fail a working client.
        await asyncio.sleep(0.5)
        assert writer.backing_off
        assert len(scripted.requests) == 1
    finally:
        runner.cancel()
    assert await writer.flush() is True  # an explicit flush does not wait
    assert scripted.lines() == ["m v=1i 1", "m v=2i 2"] * 2
    assert writer.sent == 2
    assert not writer.backing_off
    headers = scripted.requests[-1][1]
    assert headers["authorization"] == "Bearer flm_secret-token-xyz"
    assert scripted.requests[-1][0] == "/write?db=flame&precision=ns"
    await writer.close()


@pytest.mark.asyncio
async def test_refused_points_are_dropped_and_each_kind_logged_once(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flame.common.clmc_client")
    message = "unable to parse 'bad': missing fields"
    scripted.replies = [Reply(400, json.dumps({"error": message}).encode())]
    writer = _writer(scripted.url, batch_points=1)
    writer.add_many(["bad 1", "bad 2", "bad 3"])
    assert await writer.flush() is False
    assert len(scripted.requests) == 3  # a refusal does not hold back the next batch
    assert (writer.refused, writer.dropped, writer.queued, writer.sent) == (3, 3, 0, 0)
    assert not writer.backing_off  # the CLMC answered: nothing to wait for
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert message in refusals[0].getMessage()
    assert "flm_secret-token-xyz" not in caplog.text
    await writer.close()


@pytest.mark.asyncio
async def test_without_retry_a_failed_batch_is_dropped_and_counted(scripted: Scripted) -> None:
    scripted.replies = [Reply(503), Reply(204)]
    settled: list[tuple[int, bool]] = []
    writer = _writer(scripted.url, retry=False, on_batch=lambda n, ok: settled.append((n, ok)))
    writer.add_many(["m v=1i 1", "m v=2i 2"])
    assert await writer.flush() is False
    assert (writer.dropped, writer.queued) == (2, 0)
    writer.add("m v=3i 3")
    assert await writer.flush() is True
    assert settled == [(2, False), (1, True)]
    await writer.close()


@pytest.mark.asyncio
async def test_the_buffer_is_bounded_oldest_first_and_kept_in_order_across_failures(
    scripted: Scripted,
) -> None:
    scripted.replies = [Reply(503), Reply(204)]
    writer = _writer(scripted.url, max_points=5, batch_points=2)
    writer.add_many(f"m v={i}i {i}" for i in range(4))
    assert await writer.flush() is False  # busy: the first batch goes back in front
    writer.add_many(f"m v={i}i {i}" for i in range(4, 8))
    assert (writer.queued, writer.dropped) == (5, 3)  # the three oldest made room
    assert await writer.flush() is True
    assert scripted.lines()[2:] == [f"m v={i}i {i}" for i in range(3, 8)]
    assert [len(body.splitlines()) for _, _, body in scripted.requests] == [2, 2, 2, 1]
    await writer.close()


@pytest.mark.asyncio
async def test_a_full_batch_is_sent_before_the_interval(scripted: Scripted) -> None:
    writer = _writer(scripted.url, interval_s=3600, batch_points=3)
    runner = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0)  # run() is waiting
        writer.add_many(["m v=1i 1", "m v=2i 2"])
        writer.add("m v=3i 3")
        await asyncio.wait_for(scripted.arrived.wait(), 30)  # an hour early
        await eventually_async(lambda: writer.sent == 3, what="the full batch sent")
    finally:
        runner.cancel()
        await writer.close()


@pytest.mark.asyncio
async def test_close_keeps_its_deadline_against_a_clmc_that_never_answers(
    scripted: Scripted,
) -> None:
    scripted.hang = True
    writer = _writer(scripted.url, interval_s=3600)
    writer.add_many(["m v=1i 1", "m v=2i 2"])
    started = time.monotonic()
    await writer.close(deadline_s=0.3)
    # 0.3 s asked; 30 s is the bound (100x) that only a hang would cross.
    assert time.monotonic() - started < 30
    assert scripted.requests  # it did try
    assert (writer.dropped, writer.queued, writer.sent) == (2, 0, 0)


def test_the_threaded_writer_takes_points_from_any_thread(scripted_thread: str) -> None:
    writer = ThreadedClmcWriter(ClmcTarget(scripted_thread), interval_s=0.05)
    writer.start()
    try:

        def produce(k: int) -> None:
            for i in range(50):
                writer.add(f"m,t={k} v={i}i {i}")

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eventually(lambda: writer.writer.sent == 200, what="200 points sent")
    finally:
        writer.close()
    assert writer.writer.dropped == 0


@pytest.fixture
def scripted_thread() -> Iterator[str]:
    """A scripted 204 server on a loop of its own, for the threaded writer."""
    loop = asyncio.new_event_loop()
    state = Scripted([Reply(204)])
    server = loop.run_until_complete(asyncio.start_server(state.handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(_shut_down(server, state), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    def response(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_s(response("7")) == 7.0
    assert retry_after_s(response("Wed, 21 Oct 2015 07:28:10 GMT"), now=1445412480.0) == 10.0
    assert retry_after_s(response("Wed, 21 Oct 2015 07:28:00 GMT"), now=1445412490.0) == 0.0
    assert retry_after_s(response("soon")) is None
    assert retry_after_s(httpx.Response(503)) is None


def test_the_token_is_never_in_a_target_repr() -> None:
    assert "flm_secret" not in repr(ClmcTarget("http://x", token="flm_secret"))


# -- reporters on the client, against the real CLMC ---------------------------------------------


@pytest.mark.asyncio
async def test_clmc8_a_media_sf_creates_its_tenant_database_and_reports(
    real_clmc: RealClmc, tmp_path: Path
) -> None:
    """A tenant's database need not exist: the reporter creates it (as InfluxDB clients do)."""
    tenant_token = TokenStore(tmp_path / "tokens.json").issue("acme-sf", Role.TENANT, "acme")
    reporter = MediaReporter(
        real_clmc.url, tenant_token, "acme", {"sf": "cache"}, verify=real_clmc.ca_file
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(reporter.run(stop))
    try:
        reporter.point("media_cache", {"hits": 3, "ratio": math.nan})
        await eventually_async(lambda: reporter.stats()["sent"] == 1, what="the point sent")
    finally:
        stop.set()
        await runner
        await reporter.close()
    assert reporter.stats()["dropped"] == 0
    response = httpx.get(
        real_clmc.url + "/query",
        params={"db": "acme", "q": 'SELECT "hits" FROM "media_cache"', "read_your_writes": "1"},
        headers={"Authorization": f"Bearer {tenant_token}"},
        verify=client_verify(real_clmc.ca_file),
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    (series,) = response.json()["results"][0]["series"]
    assert [row[1] for row in series["values"]] == [3]


@pytest.mark.asyncio
async def test_clmc8_a_ue_reports_its_seconds_and_close_sends_the_last(scripted: Scripted) -> None:
    spec = LoadSpec("http://127.0.0.1:1", "vod.example", 10.0, 1.0, ue="ue-1")
    reporter = UeReporter(scripted.url, "flame", "flm_secret-token-xyz", spec)
    reporter.second(0, Second(requests=4, errors=1, latency_sum_ms=20.0))
    await reporter.close()  # long before the writer's first interval: close() sends it
    (text,) = scripted.lines()
    assert text.startswith("ue,ue=ue-1,fqdn=vod.example,sr=http://127.0.0.1:1 ")
    assert " requests=4i,errors=1i,response_time=5.0 " in text
    assert reporter.dropped == 0


@pytest.mark.asyncio
async def test_a_media_sf_flushing_on_its_own_clock_waits_out_a_busy_clmc(
    scripted: Scripted,
) -> None:
    """The LOD and vCDN SFs call `flush()` every interval: against a CLMC that said
    Retry-After: 30 that must not mean one request per interval (CLMC-8)."""
    scripted.replies = [Reply(503, b'{"error": "busy"}', {"Retry-After": "30"})]
    reporter = MediaReporter(scripted.url, "flm_secret-token-xyz", "flame", {"sf": "lod"})
    try:
        reporter.point("lod_requests", {"requests": 1})
        assert await reporter.flush() is False
        assert len(scripted.requests) == 1
        reporter.point("lod_requests", {"requests": 2})
        for _ in range(3):  # three more intervals' flushes while backing off
            assert await reporter.flush() is False
        assert len(scripted.requests) == 1
        assert reporter.stats()["queued"] == 2  # kept for when the CLMC takes them
    finally:
        await reporter.close()
