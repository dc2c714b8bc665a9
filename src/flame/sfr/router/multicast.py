"""Coincidental multicast (FLIPS): one upstream fetch streamed to every client that asked.

A `SharedFetch` is the `ResponseSink` of one forwarded GET and fans its response out to its
`Waiter`s as it arrives, not after the whole body (nginx's `proxy_cache_lock` makes the others
wait for the complete response). Each waiter has a cursor into the received chunks and is fed
while its connection takes bytes; a waiter that drains later catches up from its cursor. While
the join window is open every chunk is kept, so a late joiner gets the bytes so far replayed,
then the rest, and the upstream is paused only when even the fastest waiter lags more than
`backlog_limit` bytes. Once it closes, chunks every waiter has taken are dropped and the
upstream is paused when the slowest waiter lags more than `backlog_limit` bytes.

The request sent upstream is the leader's. When the response varies (`Vary`) on fields the
key did not include, the first response decides: waiters whose values of those fields differ
from the leader's are told to `regroup` (fetch again, sharing with requests like theirs), and
later joiners must match too; after `Vary: *` only the leader gets it. A response that is not
shareable (private, no-store, Set-Cookie) goes to the first waiter only; the others are told to
`refetch` on their own. Errors reach every waiter: before the head as the error answer, after
it as a cut connection.

`Coalescer` keeps the fetches in flight by `CoalesceKey`, starts one `Forwarding` per fetch and
learns from each response what the resource varies on (`VaryTable`), re-keying the fetch so
that later requests with the leader's values join it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from flame.sfr.models import Endpoint
from flame.sfr.router.coalesce import (
    ANY,
    CoalesceKey,
    JoinWindow,
    Names,
    VaryTable,
    coalesce_key,
    may_join,
    request_fields,
    response_vary,
)
from flame.sfr.router.errors import RouterError
from flame.sfr.router.interfaces import ResponseSink, SourceControl, Waiter
from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import ResponseHead

if TYPE_CHECKING:
    from flame.sfr.router.forward import Forwarder, Forwarding
    from flame.sfr.router.relay import Siblings

__all__ = ["Coalescer", "SharedFetch"]

log = logging.getLogger(__name__)


class _Slot:
    __slots__ = ("cursor", "req", "taken", "waiter")

    def __init__(self, waiter: Waiter, cursor: int, req: RequestHead | None) -> None:
        self.waiter = waiter
        self.req = req  # None only for waiters joined without a request (unit tests)
        self.cursor = cursor  # absolute index of the next chunk to deliver
        self.taken = 0  # body bytes delivered


class SharedFetch(ResponseSink):
    """One upstream response and the clients it goes to."""

    def __init__(
        self,
        key: CoalesceKey,
        *,
        version: int | None,
        started_at: float,
        window: JoinWindow,
        backlog_limit: int,
        clock: Callable[[], float],
        on_closed: Callable[[SharedFetch], None] = lambda fetch: None,
        on_abandoned: Callable[[SharedFetch], None] = lambda fetch: None,
        on_head: Callable[[SharedFetch], None] = lambda fetch: None,
        on_regrouped: Callable[[SharedFetch, int], None] = lambda fetch, n: None,
    ) -> None:
        self.key = key
        self.version = version
        self.started_at = started_at
        self.window = window
        self.backlog_limit = backlog_limit
        self._clock = clock
        self._on_closed = on_closed
        self._on_abandoned = on_abandoned
        self._on_head = on_head
        self._on_regrouped = on_regrouped
        self.head: ResponseHead | None = None
        self.endpoint: Endpoint | None = None
        self.error: RouterError | None = None
        self.finished = False  # the upstream response ended (well or not)
        self.exclusive = False  # not shareable: only the first waiter gets it
        self.received = 0
        self.joined = 0  # waiters beyond the first
        self.leader: Waiter | None = None  # the first waiter: its request is the one sent
        self.leader_req: RequestHead | None = None
        self.vary: Names | None = None  # what the response varies on beyond the key
        self._leader_values: list[bytes | None] | None = None  # the leader's, of `vary`
        self._chunks: list[bytes] = []
        self._base = 0  # absolute index of _chunks[0]
        self._kept = 0  # bytes in _chunks
        self._retain = True  # the join window is open: keep every chunk for late joiners
        self._slots: dict[Waiter, _Slot] = {}
        self._source: SourceControl | None = None
        self._source_paused = False
        self.forwarding: Forwarding | None = None

    # -- joining ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.finished or self.exclusive

    def joinable(self, now: float, table_version: int | None) -> bool:
        return self._retain and may_join(
            self.window,
            age=now - self.started_at,
            received=self.received,
            closed=self.closed,
            fetch_version=self.version,
            table_version=table_version,
        )

    def accepts(self, req: RequestHead) -> bool:
        """Whether `req` wants the variant this fetch brings (always, until the head says)."""
        names = self.vary
        if names is None:
            return True
        want = self._leader_values
        return want is not None and request_fields(req, names) == want

    def join(self, waiter: Waiter, req: RequestHead | None = None) -> None:
        if self._slots:
            self.joined += 1
        elif self.leader is None:
            self.leader = waiter
            self.leader_req = req
        slot = self._slots[waiter] = _Slot(waiter, self._base, req)
        if self.head is not None and self.endpoint is not None:
            waiter.deliver_head(self.head, self.endpoint)
            self._pump(slot)

    def leave(self, waiter: Waiter) -> None:
        """The waiter's client went away."""
        if self._slots.pop(waiter, None) is None:
            return
        if not self._slots and not self.finished:
            self._on_abandoned(self)  # nobody left to deliver to: stop fetching
            self._close()
        else:
            self._after_progress()

    def waiter_writable(self, waiter: Waiter) -> None:
        """The waiter's connection drained: feed it more."""
        slot = self._slots.get(waiter)
        if slot is not None:
            self._pump(slot)
            self._after_progress()

    @property
    def waiters(self) -> int:
        return len(self._slots)

    # -- ResponseSink ----------------------------------------------------------------------------

    def bind_source(self, source: SourceControl | None) -> None:
        self._source = source

    def response_head(self, head: ResponseHead, endpoint: Endpoint) -> None:
        self.head = head
        self.endpoint = endpoint
        self.vary = vary = response_vary(head)
        self._on_head(self)
        if vary is not None and self._slots:
            if vary == ANY:
                self._leader_only()
            else:
                self._split(vary)
        if not head.shareable() and self._slots:
            first, *others = self._slots.values()
            self.exclusive = True
            self._retain = False
            self._slots = {first.waiter: first}
            self._close()  # no joiners any more
            for slot in others:
                slot.waiter.refetch()
        for slot in list(self._slots.values()):
            slot.waiter.deliver_head(head, endpoint)

    def response_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._kept += len(data)
        self.received += len(data)
        if self._retain and (
            self.received > self.window.max_bytes
            or self._clock() - self.started_at > self.window.max_age
        ):
            self._retain = False  # the window closes: keep only what a waiter still needs
        for slot in list(self._slots.values()):
            self._pump(slot)
        self._after_progress()

    def response_flush(self) -> None:
        for slot in self._slots.values():
            slot.waiter.flush()

    def response_end(self) -> None:
        self.finished = True
        self._close()
        for slot in list(self._slots.values()):
            self._pump(slot)

    def response_failed(self, error: RouterError) -> None:
        self.finished = True
        self.error = error
        self._close()
        slots, self._slots = list(self._slots.values()), {}
        self._chunks = []
        for slot in slots:
            slot.waiter.deliver_error(error)

    # -- Vary ----------------------------------------------------------------------------------

    def _split(self, names: Names) -> None:
        """Keep the waiters that want the leader's variant; the others fetch again."""
        leader = self.leader_req
        want = request_fields(leader, names) if leader is not None else None
        self._leader_values = want
        moved = [
            slot
            for slot in self._slots.values()
            if slot.waiter is not self.leader
            and (want is None or slot.req is None or request_fields(slot.req, names) != want)
        ]
        if moved:
            self._regroup(moved, alone=False)

    def _leader_only(self) -> None:
        """`Vary: *`: the response is for the request that was sent, nobody else."""
        moved = [slot for slot in self._slots.values() if slot.waiter is not self.leader]
        self.exclusive = True
        self._retain = False
        self._close()  # no joiners any more
        if moved:
            self._regroup(moved, alone=True)

    def _regroup(self, moved: list[_Slot], *, alone: bool) -> None:
        for slot in moved:
            del self._slots[slot.waiter]
        self.joined -= len(moved)
        self._on_regrouped(self, len(moved))
        if not self._slots:
            # The leader has gone and nobody left wants this variant: stop fetching it.
            self.exclusive = True
            self._retain = False
            self._close()
            self._on_abandoned(self)
        for slot in moved:
            if alone or slot.req is None:
                slot.waiter.refetch()
            else:
                slot.waiter.regroup()

    # -- internals ------------------------------------------------------------------------------

    def _pump(self, slot: _Slot) -> None:
        waiter = slot.waiter
        chunks = self._chunks
        i = slot.cursor - self._base
        n = len(chunks)
        while i < n:
            if not waiter.writable:
                slot.cursor = self._base + i
                waiter.flush()
                return
            chunk = chunks[i]
            waiter.deliver_body(chunk)
            slot.taken += len(chunk)
            i += 1
        slot.cursor = self._base + n
        if self.finished and self.error is None and waiter in self._slots:
            del self._slots[waiter]
            waiter.deliver_end()
        else:
            waiter.flush()

    def _after_progress(self) -> None:
        slots = self._slots
        if self._retain:
            # Window open: every chunk is kept for late joiners; hold the endpoint back only
            # when even the fastest waiter lags (nobody is taking the bytes).
            lag = self.received - max((s.taken for s in slots.values()), default=self.received)
        else:
            # Window closed: keep only what the slowest waiter still needs, and let it lag
            # at most backlog_limit bytes behind the endpoint.
            if slots:
                low = min(s.cursor for s in slots.values())
                drop = low - self._base
                if drop > 0:
                    self._kept -= sum(len(c) for c in self._chunks[:drop])
                    del self._chunks[:drop]
                    self._base = low
            else:
                self._base += len(self._chunks)
                self._chunks = []
                self._kept = 0
            lag = self._kept
        source = self._source
        if source is None:
            return
        if not self._source_paused and lag > self.backlog_limit:
            self._source_paused = True
            source.pause_reading()
        elif self._source_paused and lag <= self.backlog_limit // 2:
            self._source_paused = False
            source.resume_reading()

    def _close(self) -> None:
        self._on_closed(self)


class Coalescer:
    """The shared fetches in flight of one worker."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        window: JoinWindow,
        backlog_limit: int,
        current_version: Callable[[], int | None],
        siblings: Siblings | None = None,
        vary: VaryTable | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.vary = vary if vary is not None else VaryTable()
        self.siblings = siblings
        self.window = window
        self.backlog_limit = backlog_limit
        self._current_version = current_version
        self._loop = asyncio.get_running_loop()
        self.inflight: dict[CoalesceKey, SharedFetch] = {}
        self.fetches = 0
        self.coalesced = 0
        self.regrouped = 0  # joiners sent to fetch again: another variant (Vary) was wanted

    def join(
        self, key: CoalesceKey, req: RequestHead, head: bytes, waiter: Waiter
    ) -> tuple[SharedFetch, bool]:
        """Attach `waiter` to the fetch in flight for `key` (True), or start one (False)."""
        now = self._loop.time()
        version = self._current_version()
        fetch = self.inflight.get(key)
        if fetch is not None and fetch.joinable(now, version) and fetch.accepts(req):
            self.coalesced += 1
            fetch.join(waiter, req)
            return fetch, True
        fetch = SharedFetch(
            key,
            version=version,
            started_at=now,
            window=self.window,
            backlog_limit=self.backlog_limit,
            clock=self._loop.time,
            on_closed=self._closed,
            on_abandoned=self._abandoned,
            on_head=self._answered,
            on_regrouped=self._regrouped,
        )
        self.inflight[key] = fetch
        self.fetches += 1
        fetch.join(waiter, req)
        try:
            fetch.forwarding = self.forwarder.forward(req, head, None, fetch)
        except Exception as exc:
            # Our bug: every waiter still gets an answer.
            log.exception("internal error starting a shared fetch for %s", req.fqdn)
            if not fetch.finished:
                fetch.response_failed(RouterError(f"internal error while fetching: {exc!r}"))
        return fetch, False

    def _closed(self, fetch: SharedFetch) -> None:
        if self.inflight.get(fetch.key) is fetch:
            del self.inflight[fetch.key]
            if self.siblings is not None:
                self.siblings.release(fetch.key)

    def _answered(self, fetch: SharedFetch) -> None:
        if self.siblings is not None and fetch.head is not None:
            self.siblings.answered(fetch.key, fetch.head)
        leader = fetch.leader_req
        if leader is None:
            return
        names = fetch.vary
        if names is None:
            if leader.fqdn in self.vary.fqdns:
                self.vary.learn(leader.fqdn, leader.target, None)  # it stopped varying
            return
        self.vary.learn(leader.fqdn, leader.target, names)
        if names != ANY:
            self._rekey(fetch, leader)

    def _rekey(self, fetch: SharedFetch, leader: RequestHead) -> None:
        """File the fetch under its leader's key with what was just learnt, so that later
        requests wanting the same variant join it."""
        key = coalesce_key(leader, self.vary)
        if key is None or key == fetch.key:
            return
        if self.inflight.get(fetch.key) is fetch:
            del self.inflight[fetch.key]
            if self.siblings is not None:
                self.siblings.release(fetch.key)
        fetch.key = key
        if key not in self.inflight:
            self.inflight[key] = fetch

    def _regrouped(self, fetch: SharedFetch, n: int) -> None:
        self.coalesced -= n
        self.regrouped += n

    def _abandoned(self, fetch: SharedFetch) -> None:
        # Later, not now: this may run inside the fetch's own upstream callbacks.
        self._loop.call_soon(self._cancel, fetch)

    def _cancel(self, fetch: SharedFetch) -> None:
        if fetch.forwarding is not None and not fetch.forwarding.done:
            fetch.forwarding.cancel()
