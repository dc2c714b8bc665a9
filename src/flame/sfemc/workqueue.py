"""A deduplicating work queue with per-item exponential back-off (as Kubernetes controllers use).

* An item queued twice is processed once; an item added while being processed is processed
  again afterwards (never by two workers at once), so no change is lost.
* `backoff(key)` re-adds an item after base * 2^(failures-1) seconds, capped; `forget(key)`
  resets the count after a success.
"""

from __future__ import annotations

import asyncio
from collections import deque

from flame.common.backoff import backoff_delay

__all__ = ["WorkQueue"]


class WorkQueue:
    def __init__(self, base_delay_s: float = 0.05, max_delay_s: float = 30.0) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, key: str) -> None:
        if key in self._queued:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        self._queued.add(key)
        self._queue.append(key)
        self._idle.clear()
        self._wake.set()

    def add_after(self, key: str, delay_s: float) -> None:
        timer = self._timers.pop(key, None)
        loop = asyncio.get_running_loop()
        if timer is not None:
            if timer.when() <= loop.time() + delay_s:
                self._timers[key] = timer  # an earlier retry is already due
                return
            timer.cancel()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)
        self._idle.clear()

    def retry_now(self, key: str) -> None:
        """Run `key` now rather than when its back-off ends (what it waited for is back)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.add(key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def backoff(self, key: str) -> float:
        """Retry `key` later; returns the delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = backoff_delay(failures, self.base_delay_s, self.max_delay_s)
        self.add_after(key, delay)
        return delay

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._queue and not self._processing and not self._timers:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until nothing is queued, processing or waiting for a retry."""
        await self._idle.wait()

    def __len__(self) -> int:
        return len(self._queue)

    def pending(self) -> set[str]:
        return self._queued | self._processing | set(self._timers)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
