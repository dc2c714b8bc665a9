"""Sends the worker's measurements to the CLMC as line protocol (CLMC-8), off the data path.

Every `interval` seconds a background task takes the interval's counters (metrics.py) and
POSTs them to `{clmc_url}/write?db=flame` (InfluxDB 1.x write API) with httpx. Requests never
wait for it: counting is a few additions, sending happens in this task only. If the CLMC does
not accept a batch within the time-out (down, slow, refusing), the batch is dropped and
counted (`batches_dropped`, `points_dropped` in the status document) and the next interval
starts fresh: a dead CLMC costs memory for one interval, never a stall.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import httpx

from flame.sfr.router.metrics import RouterMetrics

__all__ = ["ClmcReporter"]

log = logging.getLogger(__name__)


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
        self.write_url = url.rstrip("/") + "/write"
        self.interval = interval
        self.db = db
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        # A batch must be settled before the next one is due.
        self._timeout = timeout if timeout is not None else min(5.0, max(0.5, interval * 0.8))
        self._client = httpx.AsyncClient(
            transport=transport, trust_env=False, timeout=self._timeout, verify=verify
        )
        self._failing = False

    async def run(self) -> None:
        """Flush every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Send the interval's points now; False if they were dropped."""
        lines = self.metrics.collect(time.time_ns())
        if not lines:
            return True
        metrics = self.metrics
        try:
            response = await self._client.post(
                self.write_url,
                params={"db": self.db, "precision": "ns"},
                content=("\n".join(lines) + "\n").encode(),
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code in (200, 204):
                metrics.batches_sent += 1
                if self._failing:
                    self._failing = False
                    log.info("the CLMC at %s accepts measurements again", self.write_url)
                return True
            reason = f"HTTP {response.status_code}: {response.text[:200]}"
        metrics.batches_dropped += 1
        metrics.points_dropped += len(lines)
        if not self._failing:
            self._failing = True
            log.warning(
                "dropping %d measurements: the CLMC at %s did not take them (%s); "
                "routing goes on, later batches are tried as usual",
                len(lines),
                self.write_url,
                reason,
            )
        return False

    async def aclose(self) -> None:
        await self._client.aclose()
