"""Measurements of the content SF to the CLMC, as InfluxDB line protocol.

``POST <CLMC_URL>/write?db=<CLMC_DB>&precision=ns`` with ``Authorization: Bearer
<CLMC_TOKEN>`` (a token of the SF's tenant: the CLMC lets a tenant write only to its own
databases, ``<tenant>`` and ``<tenant>_*``). Points are queued in memory (at most
`max_lines`; the oldest go first when the CLMC is away, counted in `dropped`) and sent once a
second. Every point carries the SF's identity tags (``sfc``, ``sfci``, ``sf``, ``sfe``,
``cluster``, ``tenant``) from the ``FLAME_*`` variables the VIM sets. Measurement names and
fields are listed in docs/media.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["ClmcReporter", "line"]

log = logging.getLogger(__name__)


def _escape_key(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if value is None:
        return None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{text}"'


def line(
    measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ns: int
) -> str | None:
    """One line of line protocol; None when no field has a value."""
    parts = [
        f"{_escape_key(k)}={_escape_key(str(v))}"
        for k, v in sorted(tags.items())
        if v not in (None, "")
    ]
    values = [(k, _field(v)) for k, v in fields.items()]
    body = ",".join(f"{_escape_key(k)}={v}" for k, v in values if v is not None)
    if not body:
        return None
    head = ",".join([measurement.replace(",", "\\,").replace(" ", "\\ "), *parts])
    return f"{head} {body} {ts_ns}"


class ClmcReporter:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        database: str | None,
        tags: Mapping[str, str],
        *,
        interval_s: float = 1.0,
        max_lines: int = 10_000,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.database = database
        self.tags = {k: v for k, v in tags.items() if v}
        self.interval_s = interval_s
        self.queue: deque[str] = deque(maxlen=max_lines)
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.database)

    def point(
        self, measurement: str, fields: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> None:
        if not self.enabled:
            return
        text = line(measurement, {**self.tags, **(tags or {})}, fields, time.time_ns())
        if text is None:
            return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(text)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.enabled:
            return
        while not stop.is_set():
            with_timeout = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({with_timeout}, timeout=self.interval_s)
            finally:
                with_timeout.cancel()
            await self.flush()
        await self.flush()

    async def flush(self) -> bool:
        if not self.enabled or not self.queue:
            return True
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0, trust_env=False)
        batch = list(self.queue)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = await self._write(batch, headers)
            if resp.status_code == 404 and "database not found" in resp.text:
                # Like InfluxDB, the CLMC writes only to databases that exist; a tenant may
                # create its own (`<tenant>`, `<tenant>_*`).
                await self._client.post(
                    f"{self.url}/query",
                    params={"q": f'CREATE DATABASE "{self.database}"'},
                    headers={k: v for k, v in headers.items() if k == "Authorization"},
                )
                resp = await self._write(batch, headers)
        except httpx.HTTPError as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cannot write to the CLMC at %s: %s", self.url, self.last_error)
            return False
        if resp.status_code == 401 and not self.token:
            log.warning(
                "the CLMC at %s wants a token and CLMC_TOKEN is empty: measurements are off",
                self.url,
            )
            self.url = None
            self.queue.clear()
            return False
        if resp.status_code >= 300:
            self.failures += 1
            self.last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
            log.warning("the CLMC refused our points: %s", self.last_error)
            if 400 <= resp.status_code < 500 and resp.status_code != 429:
                for _ in batch:  # a refusal will not change on retry: drop them, say so
                    self.queue.popleft()
                self.dropped += len(batch)
            return False
        for _ in batch:
            self.queue.popleft()
        self.sent += len(batch)
        return True

    async def _write(self, batch: list[str], headers: dict[str, str]) -> httpx.Response:
        assert self._client is not None
        return await self._client.post(
            f"{self.url}/write",
            params={"db": self.database, "precision": "ns"},
            content="\n".join(batch).encode(),
            headers=headers,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "url": self.url,
            "database": self.database,
            "queued": len(self.queue),
            "sent": self.sent,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
