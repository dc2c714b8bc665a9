"""The UE's own measurements (`ue` measurement) sent to the CLMC once a second by the common
CLMC writer, never blocking the load: a second the CLMC did not take is counted and dropped
(it describes a moment that has passed)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from flame.common.clmc_client import ClmcTarget, ClmcWriter
from flame.common.lineproto import point
from flame.sandbox.ue import LoadSpec, Second

__all__ = ["ClmcReporter"]


class ClmcReporter:
    def __init__(self, url: str, db: str, token: str | None, spec: LoadSpec) -> None:
        self._writer = ClmcWriter(ClmcTarget(url, db, token, timeout_s=2.0), retry=False)
        self._tags = {"ue": spec.ue, "fqdn": spec.fqdn, "sr": spec.base_url}
        self._runner: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._writer.dropped

    def second(self, _t: int, stats: Second) -> None:
        mean = stats.latency_sum_ms / stats.requests if stats.requests else 0.0
        fields = {"requests": stats.requests, "errors": stats.errors, "response_time": mean}
        self._writer.add(point("ue", self._tags, fields, time.time_ns()))
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._writer.run())

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._writer.close(deadline_s=3.0)
