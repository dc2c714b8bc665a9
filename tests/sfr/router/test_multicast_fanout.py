"""FLIPS coincidental multicast without sockets: one SharedFetch, fake waiters.

Bytes reach every waiter as they arrive, late joiners get what came before replayed, a slow
waiter holds the upstream back only once the join window has closed, private answers go to
the first requester only, errors reach everyone.
"""

from __future__ import annotations

from flame.sfr.models import Endpoint
from flame.sfr.router.coalesce import JoinWindow
from flame.sfr.router.errors import RouterError, UpstreamReset
from flame.sfr.router.multicast import SharedFetch
from flame.sfr.router.response import ResponseHead

from .helpers import endpoint

EP = endpoint("a", 1001)


class FakeWaiter:
    def __init__(self, writable: bool = True) -> None:
        self.writable = writable
        self.head: ResponseHead | None = None
        self.body = bytearray()
        self.ended = False
        self.error: RouterError | None = None
        self.refetched = False
        self.regrouped = False

    def deliver_head(self, head: ResponseHead, endpoint: Endpoint) -> None:
        assert self.head is None
        self.head = head

    def deliver_body(self, data: bytes) -> None:
        assert self.head is not None
        assert not self.ended
        self.body += data

    def flush(self) -> None:
        pass

    def deliver_end(self) -> None:
        self.ended = True

    def deliver_error(self, error: RouterError) -> None:
        self.error = error

    def refetch(self) -> None:
        self.refetched = True

    def regroup(self) -> None:
        self.regrouped = True


class Source:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make(max_bytes: int = 1000, backlog: int = 10) -> tuple[SharedFetch, Clock, list[str]]:
    clock = Clock()
    events: list[str] = []
    fetch = SharedFetch(
        ("vod.example", b"/", None, None, None),
        version=1,
        started_at=0.0,
        window=JoinWindow(max_age=10.0, max_bytes=max_bytes),
        backlog_limit=backlog,
        clock=clock,
        on_closed=lambda f: events.append("closed"),
        on_abandoned=lambda f: events.append("abandoned"),
    )
    return fetch, clock, events


def ok(headers: list[tuple[bytes, bytes]] | None = None) -> ResponseHead:
    return ResponseHead(200, b"OK", headers or [], content_length=None, chunked=True)


def test_bytes_stream_to_all_and_late_joiners_get_a_replay() -> None:
    fetch, _, events = make()
    first = FakeWaiter()
    fetch.join(first)
    fetch.response_head(ok(), EP)
    fetch.response_body(b"abc")
    assert first.body == b"abc"  # as it arrives, not at the end
    late = FakeWaiter()
    assert fetch.joinable(1.0, 1)
    fetch.join(late)
    assert late.head is not None
    assert late.body == b"abc"
    fetch.response_body(b"def")
    fetch.response_end()
    for w in (first, late):
        assert w.body == b"abcdef"
        assert w.ended
    assert not fetch.joinable(1.0, 1)
    assert fetch.joined == 1
    assert "closed" in events


def test_join_window_closes_on_age_size_and_table_version() -> None:
    fetch, _clock, _ = make(max_bytes=5)
    fetch.join(FakeWaiter())
    fetch.response_head(ok(), EP)
    assert fetch.joinable(1.0, 1)
    assert not fetch.joinable(1.0, 2)  # the table changed
    assert not fetch.joinable(10.5, 1)
    fetch.response_body(b"123456")
    assert not fetch.joinable(1.0, 1)


def test_slow_waiter_holds_the_upstream_back_after_the_window() -> None:
    fetch, _, _ = make(max_bytes=4, backlog=10)
    source = Source()
    fast, slow = FakeWaiter(), FakeWaiter(writable=False)
    fetch.join(fast)
    fetch.join(slow)
    fetch.bind_source(source)
    fetch.response_head(ok(), EP)
    for _ in range(4):
        fetch.response_body(b"12345")  # the window closes past 4 bytes
    assert fast.body == b"12345" * 4
    assert slow.body == b""
    assert source.paused  # 20 bytes kept for the slow one, more than the backlog of 10
    slow.writable = True
    fetch.waiter_writable(slow)
    assert slow.body == b"12345" * 4
    assert not source.paused
    fetch.response_end()
    assert fast.ended
    assert slow.ended


def test_private_answer_goes_to_the_first_requester_others_refetch() -> None:
    fetch, _, events = make()
    first, second = FakeWaiter(), FakeWaiter()
    fetch.join(first)
    fetch.join(second)
    fetch.response_head(ok([(b"Set-Cookie", b"session=1")]), EP)
    assert first.head is not None
    assert second.head is None
    assert second.refetched
    assert not fetch.joinable(0.0, 1)
    assert "closed" in events
    fetch.response_body(b"mine")
    fetch.response_end()
    assert first.body == b"mine"
    assert first.ended
    assert second.body == b""


def test_errors_reach_every_waiter_before_and_after_the_head() -> None:
    error = UpstreamReset("gone", sfe="a", endpoint="127.0.0.1:1")
    fetch, _, _ = make()
    waiters = [FakeWaiter(), FakeWaiter()]
    for w in waiters:
        fetch.join(w)
    fetch.response_failed(error)
    assert all(w.error is error and w.head is None for w in waiters)

    fetch, _, _ = make()
    waiters = [FakeWaiter(), FakeWaiter()]
    for w in waiters:
        fetch.join(w)
    fetch.response_head(ok(), EP)
    fetch.response_body(b"part")
    fetch.response_failed(error)
    assert all(w.error is error and w.body == b"part" and not w.ended for w in waiters)


def test_everyone_leaving_abandons_the_fetch() -> None:
    fetch, _, events = make()
    a, b = FakeWaiter(), FakeWaiter()
    fetch.join(a)
    fetch.join(b)
    fetch.leave(a)
    assert "abandoned" not in events
    fetch.leave(b)
    assert events == ["abandoned", "closed"]
