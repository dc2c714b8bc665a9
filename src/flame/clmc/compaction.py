"""The store's housekeeping between writes (`Store.compact_idle`: DuckDB's checkpoint), run
by ingest's applier when writes pause for a second or come slowly, never inside a burst."""

from __future__ import annotations

import logging
import math
import time

from flame.clmc.store.base import Store

__all__ = ["IdleCompactor"]

log = logging.getLogger("flame.clmc.ingest")


class IdleCompactor:
    """`run()` compacts if the store finds it worth it; counts what it did (for /health) and,
    after a failure, skips every call for `retry_s` (one log line, not one per write)."""

    def __init__(self, store: Store, *, retry_s: float = 30.0) -> None:
        self.store = store
        self.retry_s = retry_s
        self.done = 0  # compactions run
        self.last_s: float | None = None  # the last one's seconds
        self._failed_at = -math.inf

    def run(self) -> None:
        started = time.monotonic()
        if started - self._failed_at < self.retry_s:
            return
        try:
            if self.store.compact_idle():
                self.done += 1
                self.last_s = round(time.monotonic() - started, 3)
                log.debug("store compacted between writes in %.2fs", self.last_s)
        except Exception:
            self._failed_at = time.monotonic()
            log.exception(
                "compacting the store between writes failed; tried again in %.0fs at the "
                "soonest (DuckDB checkpoints by itself meanwhile)",
                self.retry_s,
            )
