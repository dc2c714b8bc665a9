"""The UE's own measurements (`ue` measurement) sent to the CLMC once a second, never blocking
the load: a failed write is counted and dropped."""

from __future__ import annotations

import asyncio
import time

import httpx

from flame.common.lineproto import point
from flame.sandbox.ue import LoadSpec, Second

__all__ = ["ClmcReporter"]


class ClmcReporter:
    def __init__(self, url: str, db: str, token: str | None, spec: LoadSpec) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=2.0, trust_env=False
        )
        self._db = db
        self._tags = {"ue": spec.ue, "fqdn": spec.fqdn, "sr": spec.base_url}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def second(self, _t: int, stats: Second) -> None:
        mean = stats.latency_sum_ms / stats.requests if stats.requests else 0.0
        fields = {"requests": stats.requests, "errors": stats.errors, "response_time": mean}
        line = point("ue", self._tags, fields, time.time_ns())
        task = asyncio.get_running_loop().create_task(self._send(line))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, line: str) -> None:
        try:
            response = await self._client.post("/write", params={"db": self._db}, content=line)
            if response.status_code >= 300:
                self.dropped += 1
        except httpx.HTTPError:
            self.dropped += 1

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3)
        await self._client.aclose()
