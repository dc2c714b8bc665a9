"""One CLMC process: DuckDB store + write-ahead log + ingest + HTTP API, started and stopped
together by the app's lifespan (so `uvicorn` and tests drive it the same way).

Layout of `directory`: `clmc.duckdb` (the store) and `wal/` (the write-ahead log). A background
task enforces retention policies every `retention_interval_s`.

`delegations` (the FQDNs of each tenant, `flame.clmc.tenancy`; polled from the PCE by
`HttpDelegations`, started and stopped with the app) narrow what tenants read of the platform
database `flame`, in queries and, when tokens are checked, in their alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import FastAPI

from flame.clmc.alerts.service import AlertService
from flame.clmc.api import create_app
from flame.clmc.influxql.scope import RowScope
from flame.clmc.ingest import Ingest
from flame.clmc.store.duckdb_store import DuckDBStore
from flame.clmc.tenancy import PLATFORM_DATABASE, Delegations
from flame.common.auth import TokenStore

__all__ = ["ClmcService"]

log = logging.getLogger("flame.clmc.service")


class ClmcService:
    def __init__(
        self,
        directory: Path,
        tokens: TokenStore | None = None,
        *,
        retention_interval_s: float = 60.0,
        fsync: bool = True,
        max_body_bytes: int = 25_000_000,
        max_backlog_bytes: int = 512 << 20,
        alerts: AlertService | None = None,
        delegations: Delegations | None = None,
    ) -> None:
        self.directory = directory
        self.alerts = alerts
        self.delegations = delegations
        self._interval = retention_interval_s
        self._fsync = fsync
        self._max_backlog = max_backlog_bytes
        self.ingest: Ingest | None = None
        if tokens is not None and delegations is None:
            log.warning(
                "no delegations (flame serve clmc --pce URL): tenants see no rows of %s and "
                "their alert rules on it see no data",
                PLATFORM_DATABASE,
            )
        if alerts is not None and tokens is not None:
            alerts.engine.scopes = self._scope_of
            alerts.engine.shared = PLATFORM_DATABASE
        self.app = create_app(
            self._current,
            tokens,
            max_body_bytes=max_body_bytes,
            lifespan=self._lifespan,
            delegations=delegations,
            alerts=alerts,
        )

    def _scope_of(self, tenant: str) -> RowScope | None:
        known = None if self.delegations is None else self.delegations.current()
        return None if known is None else known.scope_of(tenant)

    def _current(self) -> Ingest:
        if self.ingest is None:
            raise RuntimeError("the CLMC is not started (the app's lifespan starts it)")
        return self.ingest

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        store = DuckDBStore(self.directory / "clmc.duckdb")
        ingest = Ingest(
            store, self.directory / "wal", fsync=self._fsync, max_backlog_bytes=self._max_backlog
        )
        if PLATFORM_DATABASE not in store.databases():
            # The SRs, the SFEMC and the UEs report here from their first second.
            store.create_database(PLATFORM_DATABASE)
        replayed = await anyio.to_thread.run_sync(ingest.start)
        log.info("CLMC store open in %s (%d WAL records replayed)", self.directory, replayed)
        self.ingest = ingest
        start = getattr(self.delegations, "start", None)
        if start is not None:
            await start()
        if self.alerts is not None:
            ingest.observers.append(self.alerts.observe)
            self.alerts.start()
        retention = asyncio.create_task(self._retention(store), name="clmc-retention")
        try:
            yield
        finally:
            if self.alerts is not None:
                await self.alerts.stop()
            stop = getattr(self.delegations, "stop", None)
            if stop is not None:
                await stop()
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
            await anyio.to_thread.run_sync(ingest.stop)
            store.close()

    async def _retention(self, store: DuckDBStore) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                gone = await anyio.to_thread.run_sync(store.enforce_retention, time.time_ns())
                if gone:
                    log.info("retention removed %d rows", gone)
            except Exception:
                log.exception("retention enforcement failed; trying again in %ss", self._interval)
