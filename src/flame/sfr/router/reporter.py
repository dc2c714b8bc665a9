"""Sends the worker's measurements to the CLMC as line protocol (CLMC-8), off the data path.

Every `interval` seconds the common CLMC writer (`flame.common.clmc_client`) takes the
interval's counters (metrics.py) and POSTs them to `{clmc_url}/write?db=flame`. Requests never
wait for it: counting is a few additions, sending happens in this task only. A batch the CLMC
does not take within the time-out (down, slow, refusing) is dropped and counted
(`batches_dropped`, `points_dropped` in the status document) and later intervals are tried
after a back-off: a dead CLMC costs bounded memory, never a stall. The counters are a second's
load, stale once the CLMC is back, so they are not kept for a retry.
"""

from __future__ import annotations

import ssl
import time

import httpx

from flame.common.clmc_client import ClmcTarget, ClmcWriter
from flame.sfr.router.metrics import RouterMetrics

__all__ = ["ClmcReporter"]


class ClmcReporter:
    """Periodic line-protocol batches from one worker to the CLMC."""

    def __init__(
        self,
        metrics: RouterMetrics,
        url: str,
        *,
        interval: float = 10.0,
        db: str = "flame",
        token: str | None = None,
        timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        # A batch must be settled before the next one is due.
        timeout_s = timeout if timeout is not None else min(5.0, max(0.5, interval * 0.8))
        self.writer = ClmcWriter(
            ClmcTarget(url, db, token, verify, timeout_s),
            interval_s=interval,
            retry=False,
            backoff_s=(interval, max(30.0, interval)),
            transport=transport,
            on_batch=self._settled,
        )

    def _settled(self, points: int, sent: bool) -> None:
        if sent:
            self.metrics.batches_sent += 1
        else:
            self.metrics.batches_dropped += 1
        self.metrics.points_dropped = self.writer.dropped

    def _collect(self) -> list[str]:
        # Also points pushed out of a full buffer while the CLMC was away.
        self.metrics.points_dropped = self.writer.dropped
        return self.metrics.collect(time.time_ns())

    async def run(self) -> None:
        """Collect and send every interval until cancelled."""
        await self.writer.run(self._collect)

    async def flush(self) -> bool:
        """Send the interval's points now; False if they were dropped."""
        self.writer.add_many(self._collect())
        return await self.writer.flush()

    async def aclose(self) -> None:
        await self.writer.close(deadline_s=1.0)
