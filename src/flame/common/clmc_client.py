"""The one client every component uses to send measurements to the CLMC (CLMC-8).

`ClmcWriter` is an asyncio batching writer for the CLMC's InfluxDB 1.x write API
(``POST {url}/write?db=...&precision=ns`` with ``Authorization: Bearer <token>``):

- `add()` only appends to a bounded buffer (thread-safe, no I/O): when it is full the oldest
  points go first, counted in `dropped`, so a CLMC that is away costs bounded memory;
- `run()` sends what is buffered every `interval_s`, or sooner once `batch_points` are waiting;
- a failed attempt (no connection, time-out, 5xx, 429) backs off (`flame.common.backoff`),
  never sooner than the CLMC's ``Retry-After``; the points are kept for the next attempt
  (`retry=True`) or dropped and counted (`retry=False`, for figures that are stale by then);
- a 4xx is the points' or the token's problem, which resending will not fix: the batch is
  dropped (`refused`), the CLMC's message logged once per kind;
- `close()` flushes within a deadline; what is still buffered after it is counted as dropped.

Logs never carry the token (it lives only in the request headers); a CLMC that keeps failing
is reported once when it starts and once when it recovers. `ThreadedClmcWriter` is the same
writer for code without an event loop: it runs the writer on a loop of its own in a thread;
`ThreadedReporter` is the base of the reporters built on it (counters, flush, close).
`ClmcTarget` also builds the plain HTTP clients of non-measurement calls (the orchestrator's
alert rules), so every CLMC call shares the token header and TLS verification.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import email.utils
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from flame.common.backoff import Backoff
from flame.common.tls import client_verify

__all__ = [
    "ClmcTarget",
    "ClmcWriter",
    "ThreadedClmcWriter",
    "ThreadedReporter",
    "Verify",
    "error_text",
    "retry_after_s",
]

log = logging.getLogger(__name__)

Verify = ssl.SSLContext | bool | str | os.PathLike[str]
BatchObserver = Callable[[int, bool], None]  # (points, sent) once a batch is settled

# Kinds of refusal logged so far are remembered to log each once; bounded against a CLMC
# that words every refusal differently.
_MAX_LOGGED_KINDS = 64


@dataclass(frozen=True, slots=True)
class ClmcTarget:
    """Where and as whom to write: the CLMC's URL, database, token and TLS trust."""

    url: str
    database: str = "flame"
    token: str | None = field(default=None, repr=False)  # never in a repr, so never in a log
    verify: Verify = True  # True: the system CAs; a path: the platform CA (and the system's)
    timeout_s: float = 5.0

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ssl_verify(self) -> ssl.SSLContext | bool:
        if isinstance(self.verify, ssl.SSLContext | bool):
            return self.verify
        return client_verify(self.verify)

    def async_client(self, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self.headers(),
            timeout=self.timeout_s,
            verify=self.ssl_verify(),
            transport=transport,
            trust_env=False,  # a proxy from the environment must not see the token
        )

    def sync_client(self) -> httpx.Client:
        return httpx.Client(
            headers=self.headers(),
            timeout=self.timeout_s,
            verify=self.ssl_verify(),
            trust_env=False,
        )


def error_text(response: httpx.Response) -> str:
    """The CLMC's own words for a refusal: its JSON ``error``/``message``, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip()
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:300]


def retry_after_s(response: httpx.Response, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or bad."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ClmcWriter:
    """Batches line-protocol points to the CLMC from one event loop; see the module doc."""

    def __init__(
        self,
        target: ClmcTarget,
        *,
        interval_s: float = 1.0,
        max_points: int = 10_000,
        batch_points: int = 5_000,
        retry: bool = True,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        max_retry_after_s: float = 300.0,
        create_database: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if interval_s <= 0 or max_points < 1 or batch_points < 1:
            raise ValueError("interval_s, max_points and batch_points must be positive")
        self.target = target
        self.interval_s = interval_s
        self.max_points = max_points
        self.batch_points = min(batch_points, max_points)
        self.retry = retry
        self.max_retry_after_s = max_retry_after_s
        self.create_database = create_database  # on "database not found", as a tenant may
        self._on_batch = on_batch
        self._client = target.async_client(transport)
        self._write_url = f"{target.base}/write"
        self._buffer: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()  # add() may come from any thread
        self._send_lock = asyncio.Lock()  # one flush at a time: the loop's or an explicit one
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff = Backoff(*backoff_s)
        self._not_before = 0.0  # monotonic time before which run() does not try again
        self._failing = False
        self._closing = False
        self._logged_kinds: set[tuple[int, str]] = set()
        self.sent = 0  # points the CLMC took
        self.dropped = 0  # points accepted by add() that will never be sent (any reason)
        self.refused = 0  # of those, the ones the CLMC refused (4xx)
        self.batches_sent = 0
        self.batches_failed = 0  # attempts that failed (no answer, 5xx, 429, 4xx)
        self.last_error: str | None = None

    # -- the producer's side: no I/O ---------------------------------------------------------

    def add(self, line: str) -> None:
        """Queue one point (one line, no newline); the oldest goes when the buffer is full."""
        with self._lock:
            if len(self._buffer) >= self.max_points:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(line)
            full = len(self._buffer) == self.batch_points
        if full:
            self._poke()

    def add_many(self, lines: Iterable[str]) -> None:
        with self._lock:
            before = len(self._buffer)
            self._buffer.extend(lines)
            self._trim()
            full = before < self.batch_points <= len(self._buffer)
        if full:
            self._poke()

    @property
    def queued(self) -> int:
        return len(self._buffer)

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self._not_before

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "dropped": self.dropped,
            "refused": self.refused,
            "batches_sent": self.batches_sent,
            "batches_failed": self.batches_failed,
            "last_error": self.last_error,
        }

    def _trim(self) -> None:
        """Drop the oldest points beyond `max_points` (the caller holds the lock)."""
        over = len(self._buffer) - self.max_points
        for _ in range(max(over, 0)):
            self._buffer.popleft()
        self.dropped += max(over, 0)

    def _poke(self) -> None:
        """Wake `run()` early: a batch is full."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    # -- sending -----------------------------------------------------------------------------

    async def run(self, collect: Callable[[], Iterable[str]] | None = None) -> None:
        """Send every `interval_s` (sooner when a batch is full) until cancelled or closed,
        pausing while backing off. `collect`, if given, is asked for new points first."""
        self._loop = asyncio.get_running_loop()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                if collect is not None:
                    self.add_many(collect())
                    self._wake.clear()  # what `collect` filled is sent now, not again at once
                if not self.backing_off:
                    await self.flush()
            except Exception:  # never die silently: the next interval tries again
                log.exception(
                    "collecting or sending measurements for the CLMC at %s failed; trying again",
                    self.target.base,
                )

    async def flush(self) -> bool:
        """Send everything buffered now (back-off or not); False if a batch was not taken."""
        async with self._send_lock:
            ok = True
            while batch := self._take():
                result = await self._send(batch)
                if result is None:
                    return False  # no answer or busy: the rest waits for the next attempt
                ok = ok and result
            return ok

    def _take(self) -> list[str]:
        with self._lock:
            return [
                self._buffer.popleft() for _ in range(min(self.batch_points, len(self._buffer)))
            ]

    def _requeue(self, batch: list[str]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(batch))
            self._trim()

    async def _send(self, batch: list[str]) -> bool | None:
        """True: taken; False: refused (dropped); None: not answered (kept or dropped)."""
        body = ("\n".join(batch) + "\n").encode()
        try:
            response = await self._post(body)
            if (
                response.status_code == 404
                and self.create_database
                and "database not found" in response.text
            ):
                await self._create_database()
                response = await self._post(body)
        except httpx.HTTPError as exc:
            self._failed(batch, f"{type(exc).__name__}: {exc}", None)
            return None
        except BaseException:  # cancelled mid-send (a close deadline): keep the points
            self._requeue(batch)
            raise
        status = response.status_code
        if status < 300:
            self._succeeded(batch)
            return True
        if status == 429 or status >= 500:
            self._failed(batch, f"HTTP {status}: {error_text(response)}", retry_after_s(response))
            return None
        self._refused(batch, status, error_text(response))
        return False

    async def _post(self, body: bytes) -> httpx.Response:
        return await self._client.post(
            self._write_url,
            params={"db": self.target.database, "precision": "ns"},
            content=body,
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )

    async def _create_database(self) -> None:
        # Like InfluxDB, the CLMC writes only to databases that exist; a tenant may create
        # its own (`<tenant>`, `<tenant>_*`).
        name = self.target.database.replace("\\", "\\\\").replace('"', '\\"')
        await self._client.post(
            f"{self.target.base}/query", params={"q": f'CREATE DATABASE "{name}"'}
        )

    def _succeeded(self, batch: list[str]) -> None:
        self._backoff.reset()
        self._not_before = 0.0
        self.sent += len(batch)
        self.batches_sent += 1
        if self._failing:
            self._failing = False
            log.info("the CLMC at %s takes measurements again", self.target.base)
        self._settled(len(batch), True)

    def _failed(self, batch: list[str], reason: str, retry_after: float | None) -> None:
        delay = self._backoff.failure()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        self._not_before = time.monotonic() + delay
        self.batches_failed += 1
        self.last_error = reason
        if self.retry:
            self._requeue(batch)
        else:
            self.dropped += len(batch)
            self._settled(len(batch), False)
        if not self._failing:  # once per outage, not once per attempt
            self._failing = True
            log.warning(
                "the CLMC at %s did not take %d points (%s); %s, next try in %.1fs",
                self.target.base,
                len(batch),
                reason,
                f"keeping them (up to {self.max_points})" if self.retry else "dropped them",
                delay,
            )

    def _refused(self, batch: list[str], status: int, message: str) -> None:
        # The CLMC answered: it is up, so no back-off; the batch itself is the problem.
        self._backoff.reset()
        self._not_before = 0.0
        self._failing = False
        self.refused += len(batch)
        self.dropped += len(batch)
        self.batches_failed += 1
        self.last_error = f"HTTP {status}: {message}"
        kind = (status, message[:80])
        if kind not in self._logged_kinds and len(self._logged_kinds) < _MAX_LOGGED_KINDS:
            self._logged_kinds.add(kind)
            log.warning(
                "the CLMC at %s refused %d points (db %s): HTTP %d %s; such points are dropped",
                self.target.base,
                len(batch),
                self.target.database,
                status,
                message,
            )
        self._settled(len(batch), False)

    def _settled(self, points: int, sent: bool) -> None:
        if self._on_batch is not None:
            self._on_batch(points, sent)

    async def close(self, deadline_s: float = 3.0) -> None:
        """Stop `run()`, send what is buffered within `deadline_s`, release the connection."""
        self._closing = True
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), deadline_s)
        finally:
            await self._client.aclose()
            with self._lock:
                left = len(self._buffer)
                self._buffer.clear()
                self.dropped += left
            if left:
                log.warning(
                    "%d points for the CLMC at %s were not sent before shutdown",
                    left,
                    self.target.base,
                )


class ThreadedClmcWriter:
    """A `ClmcWriter` for code without an event loop: the writer runs on a loop of its own in
    a daemon thread; `add()` stays a buffer append, `flush()` and `close()` block."""

    def __init__(self, target: ClmcTarget, *, name: str = "clmc-writer", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.writer = ClmcWriter(target, **options)
        self._runner: concurrent.futures.Future[None] | None = None

    def add(self, line: str) -> None:
        self.writer.add(line)

    def add_many(self, lines: Iterable[str]) -> None:
        self.writer.add_many(lines)

    def start(self, collect: Callable[[], Iterable[str]] | None = None) -> None:
        """Send in the background (see `ClmcWriter.run`)."""
        if self._runner is None:
            self._runner = asyncio.run_coroutine_threadsafe(self.writer.run(collect), self._loop)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send what is buffered now; False if it was not all taken."""
        future = asyncio.run_coroutine_threadsafe(self.writer.flush(), self._loop)
        return future.result(timeout_s)

    def close(self, deadline_s: float = 3.0) -> None:
        if self._loop.is_closed():
            return
        if self._runner is not None:
            self._runner.cancel()
        future = asyncio.run_coroutine_threadsafe(self.writer.close(deadline_s), self._loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(deadline_s + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


class ThreadedReporter:
    """What a component's CLMC reporter without an event loop shares: its own
    `ThreadedClmcWriter`, the counters, `flush()` and `close()`. A subclass only decides what
    to send: points it `_writer.add()`s on events, or a `collect` it passes to `_writer.start()`.
    """

    def __init__(
        self, target: ClmcTarget, *, name: str, interval_s: float, max_backlog: int
    ) -> None:
        self._writer = ThreadedClmcWriter(
            target, name=name, interval_s=interval_s, max_points=max_backlog
        )

    @property
    def sent(self) -> int:
        """Points the CLMC has taken."""
        return self._writer.writer.sent

    @property
    def dropped(self) -> int:
        """Points given up: pushed out of a full backlog, refused, or unsent at close."""
        return self._writer.writer.dropped

    @property
    def backlog(self) -> int:
        """Points waiting for the CLMC."""
        return self._writer.writer.queued

    def flush(self) -> bool:
        """Send what is waiting now; False if the CLMC did not take it all."""
        return self._writer.flush()

    def close(self) -> None:
        self._writer.close()
