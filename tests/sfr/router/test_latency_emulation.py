"""FLAME-in-a-box link emulation: with `emulate_latency`, each attempt waits its route's
round-trip path latency before going upstream, so that nearer endpoints answer sooner on a
machine where every hop is loopback. Off by default."""

from __future__ import annotations

import time

import pytest

from .helpers import Client, table

pytestmark = pytest.mark.asyncio


async def _timed_get(port: int) -> tuple[bytes, float]:
    client = await Client.connect(port)
    started = time.perf_counter()
    response = await client.get("/")
    elapsed = time.perf_counter() - started
    client.writer.close()
    return response.body, elapsed


async def test_route_latency_is_added_as_a_round_trip(upstreams, make_router) -> None:
    far = await upstreams("far")
    router = await make_router(
        table(1, {"vod.example": [(far.endpoint(), 60.0)]}), emulate_latency=True
    )
    _, elapsed = await _timed_get(router.address[1])
    assert elapsed >= 0.120  # 2 x 60 ms


async def test_off_by_default(upstreams, make_router) -> None:
    far = await upstreams("far")
    router = await make_router(table(1, {"vod.example": [(far.endpoint(), 2000.0)]}))
    _, elapsed = await _timed_get(router.address[1])
    # Emulated, it would be 4 s (2 x 2 s); a few ms here: 3 s of room for a stalled machine.
    assert elapsed < 3.0


async def test_nearer_endpoint_answers_sooner(upstreams, make_router) -> None:
    near, far = await upstreams("near"), await upstreams("far")
    near_router = await make_router(
        table(1, {"vod.example": [(near.endpoint(), 1.0)]}), emulate_latency=True
    )
    far_router = await make_router(
        table(1, {"vod.example": [(far.endpoint(), 40.0)]}), emulate_latency=True
    )
    _, near_time = await _timed_get(near_router.address[1])
    _, far_time = await _timed_get(far_router.address[1])
    assert far_time - near_time > 0.06  # 2 x (40 - 1) ms, less scheduling noise
