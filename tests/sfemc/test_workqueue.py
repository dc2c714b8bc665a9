"""The deduplicating work queue: one entry per key, no key processed twice at once, back-off."""

from __future__ import annotations

import asyncio

import pytest

from flame.sfemc.workqueue import WorkQueue


@pytest.mark.asyncio
async def test_duplicates_collapse_and_dirty_keys_come_back() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "a"]:
        q.add(key)
    assert len(q) == 2
    first = await q.get()
    assert first == "a"
    q.add("a")  # changed while processing: must be processed again, but not concurrently
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")
    assert await q.get() == "a"
    q.done("a")
    q.done("b")
    await asyncio.wait_for(q.wait_idle(), 1)


@pytest.mark.asyncio
async def test_backoff_doubles_up_to_the_cap_and_forget_resets() -> None:
    q = WorkQueue(base_delay_s=0.01, max_delay_s=0.05)
    delays = [q.backoff("k") for _ in range(5)]
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert await asyncio.wait_for(q.get(), 1) == "k"  # re-added by the timer
    q.done("k")
    q.forget("k")
    assert q.backoff("k") == 0.01
    q.close()


@pytest.mark.asyncio
async def test_idle_waits_for_pending_retries() -> None:
    q = WorkQueue(base_delay_s=0.05)
    q.backoff("k")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.wait_idle(), 0.02)
    assert await q.get() == "k"
    q.done("k")
    await asyncio.wait_for(q.wait_idle(), 1)
