"""Writes held to the end of the loop iteration (flow.py's `Outbox`, SFR-1 data plane).

The router holds small writes until every event of the current loop iteration is handled,
so the wake-ups of readers come together instead of preempting it once per request. What
must hold whatever the sequence of writes, closes and aborts: the transport gets the bytes
in order, nothing written before a close is lost, nothing waits past the iteration, and a
large write is not held (the transport's buffer is what drives back-pressure).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.sfr.router.flow import HOLD_LIMIT, FlowControl, Outbox


class Transport:
    """What FlowControl asks of a transport, recording every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closed = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def received(self) -> bytes:
        return b"".join(data for kind, data in self.calls if kind == "write")


async def _next_iteration() -> None:
    # The outbox flushes from a call_soon callback; one sleep(0) lets it run.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_writes_in_one_iteration_reach_the_transport_as_one_write_after_it() -> None:
    transport = Transport()
    flow = FlowControl(transport, Outbox(asyncio.get_running_loop()))  # type: ignore[arg-type]
    flow.write(b"HTTP/1.1 200 OK\r\n")
    flow.writelines((b"Content-Length: 2\r\n\r\n", b"ok"))
    assert transport.calls == []  # held while this iteration's events are handled
    await _next_iteration()
    assert transport.calls == [("write", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]


@pytest.mark.asyncio
async def test_a_large_write_is_not_held() -> None:
    transport = Transport()
    flow = FlowControl(transport, Outbox(asyncio.get_running_loop()))  # type: ignore[arg-type]
    flow.write(b"head")
    flow.write(b"x" * HOLD_LIMIT)  # the transport's buffer must see it now (back-pressure)
    assert transport.received() == b"head" + b"x" * HOLD_LIMIT


@pytest.mark.asyncio
async def test_close_sends_the_held_bytes_first_and_abort_drops_them() -> None:
    loop = asyncio.get_running_loop()
    closed, aborted = Transport(), Transport()
    flow = FlowControl(closed, Outbox(loop))  # type: ignore[arg-type]
    flow.write(b"last response")
    flow.close()
    assert closed.calls == [("write", b"last response"), ("close", b"")]
    flow = FlowControl(aborted, Outbox(loop))  # type: ignore[arg-type]
    flow.write(b"never sent")
    flow.abort()
    await _next_iteration()
    assert aborted.calls == [("abort", b"")]


@pytest.mark.asyncio
async def test_without_an_outbox_writes_go_straight_through() -> None:
    transport = Transport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    flow.write(b"a")
    assert transport.calls == [("write", b"a")]


_op = st.one_of(
    st.tuples(st.just("write"), st.binary(max_size=64)),
    st.tuples(st.just("big"), st.integers(HOLD_LIMIT // 2, 2 * HOLD_LIMIT)),
    st.tuples(st.just("lines"), st.lists(st.binary(max_size=16), max_size=4)),
    st.tuples(st.just("iterate"), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=40), end=st.sampled_from(["close", "iterate"]))
def test_any_sequence_of_writes_arrives_whole_and_in_order(
    ops: list[tuple[str, object]], end: str
) -> None:
    async def run() -> None:
        transport = Transport()
        flow = FlowControl(transport, Outbox(asyncio.get_running_loop()))  # type: ignore[arg-type]
        sent = bytearray()
        for kind, arg in ops:
            if kind == "write":
                assert isinstance(arg, bytes)
                flow.write(arg)
                sent += arg
            elif kind == "big":
                assert isinstance(arg, int)
                flow.write(b"b" * arg)
                sent += b"b" * arg
            elif kind == "lines":
                assert isinstance(arg, list)
                flow.writelines(arg)
                sent += b"".join(arg)
            else:
                await _next_iteration()
                assert transport.received() == sent  # nothing waits past the iteration
            # What the transport has not got yet is small: back-pressure stays with it.
            assert len(sent) - len(transport.received()) < HOLD_LIMIT
        if end == "close":
            flow.close()
            assert transport.calls[-1] == ("close", b"")
        else:
            await _next_iteration()
        assert transport.received() == bytes(sent)

    asyncio.run(run())
