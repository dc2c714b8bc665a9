"""Measurements of the media SFs to the CLMC, as InfluxDB line protocol.

``POST <CLMC_URL>/write?db=<CLMC_DB>&precision=ns`` with ``Authorization: Bearer
<CLMC_TOKEN>`` (a token of the SF's tenant: the CLMC lets a tenant write only to its own
databases, ``<tenant>`` and ``<tenant>_*``, and this creates its database when missing).
Sending is the common CLMC writer's (`flame.common.clmc_client`): points are queued in memory
(at most `max_lines`; the oldest go first when the CLMC is away, counted in `dropped`), sent
once a second, kept and retried after a back-off while the CLMC is away or busy, dropped when
it refuses them (4xx). Every point carries the SF's identity tags (``sfc``, ``sfci``, ``sf``,
``sfe``, ``cluster``, ``tenant``) from the ``FLAME_*`` variables the VIM sets. Measurement
names and fields are listed in docs/media.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from flame.common.clmc_client import ClmcTarget, ClmcWriter, Verify
from flame.common.lineproto import line

__all__ = ["ClmcReporter", "line"]


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
        verify: Verify = True,  # the platform CA for an https CLMC
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.database = database
        self.tags = {k: v for k, v in tags.items() if v}
        self.interval_s = interval_s
        self._writer: ClmcWriter | None = None
        if self.url and database:
            self._writer = ClmcWriter(
                ClmcTarget(self.url, database, token, verify),
                interval_s=interval_s,
                max_points=max_lines,
                create_database=True,
            )

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def point(
        self, measurement: str, fields: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> None:
        if self._writer is None:
            return
        text = line(measurement, {**self.tags, **(tags or {})}, fields, time.time_ns())
        if text is not None:
            self._writer.add(text)

    async def run(self, stop: asyncio.Event) -> None:
        """Send in the background until `stop` is set, then once more."""
        if self._writer is None:
            return
        runner = asyncio.ensure_future(self._writer.run())
        try:
            await stop.wait()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await self.flush()

    async def flush(self) -> bool:
        """Send what is buffered now, unless the writer is backing off from a failing CLMC
        (SFs that flush on their own clock must not retry every interval); False if not sent."""
        if self._writer is None:
            return True
        if self._writer.backing_off:
            return False
        return await self._writer.flush()

    def stats(self) -> dict[str, Any]:
        writer = self._writer.stats() if self._writer is not None else {}
        return {
            "enabled": self.enabled,
            "url": self.url,
            "database": self.database,
            "queued": writer.get("queued", 0),
            "sent": writer.get("sent", 0),
            "dropped": writer.get("dropped", 0),
            "failures": writer.get("batches_failed", 0),
            "last_error": writer.get("last_error"),
        }

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
