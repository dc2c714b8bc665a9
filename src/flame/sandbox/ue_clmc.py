"""The UE's own measurements (`ue` measurement) sent to the CLMC once a second, never blocking
the load: a failed write is counted and dropped."""

from __future__ import annotations

import asyncio
import time

import httpx

from flame.sandbox.ue import LoadSpec, Second

__all__ = ["ClmcReporter"]


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


class ClmcReporter:
    def __init__(self, url: str, db: str, token: str | None, spec: LoadSpec) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=2.0, trust_env=False
        )
        self._db = db
        self._tags = f"ue,ue={_tag(spec.ue)},fqdn={_tag(spec.fqdn)},sr={_tag(spec.base_url)}"
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def second(self, _t: int, stats: Second) -> None:
        mean = stats.latency_sum_ms / stats.requests if stats.requests else 0.0
        line = (
            f"{self._tags} requests={stats.requests}i,errors={stats.errors}i,"
            f"response_time={mean:.3f} {time.time_ns()}"
        )
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
