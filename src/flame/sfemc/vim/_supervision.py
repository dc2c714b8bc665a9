"""Supervision of running process SFEs: restart on exit with exponential back-off, a health
probe once per interval, and the restart with a renewed endpoint certificate once a third of
its life is left. Kept apart from process.py: the supervisor drives the VIM only through the
few calls it is given (launch, terminate, record) and its certificate and health
collaborators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from flame.common.backoff import Backoff
from flame.sfemc.vim._health import HealthProber
from flame.sfemc.vim._sfe import Sfe, cert_due, exit_code, log_task_failure, wait_exit
from flame.sfemc.vim._sfe_certs import RENEW_RETRY_S, SfeCerts, StateWriter
from flame.sfemc.vim.base import VimError

__all__ = ["STABLE_S", "Supervisor"]

log = logging.getLogger("flame.sfemc.vim.process")  # the lifecycle's log, as before

STABLE_S = 10.0  # a process up this long resets the crash back-off

SfeAction = Callable[[Sfe], Awaitable[None]]


class Supervisor:
    """`launch(rec)`: start the process with the certificate fetched for it and wait until
    healthy (VimError if not); `terminate(rec)`: end its process group; `record`: the VIM's
    state writer. Every restart happens under the SFE's lock."""

    def __init__(
        self,
        *,
        certs: SfeCerts,
        health: HealthProber,
        host_of: Callable[[Sfe], str],
        launch: SfeAction,
        terminate: SfeAction,
        record: StateWriter,
        backoff_s: tuple[float, float],
    ) -> None:
        self._certs = certs
        self._health = health
        self._host_of = host_of
        self._launch = launch
        self._terminate = terminate
        self._record = record
        self._backoff_s = backoff_s

    def watch(self, rec: Sfe) -> None:
        """Supervise `rec` (once: a second call while it is watched changes nothing)."""
        if rec.task is None or rec.task.done():
            rec.task = asyncio.get_running_loop().create_task(
                self._run(rec), name=f"process-vim supervisor {rec.name}"
            )
            rec.task.add_done_callback(log_task_failure)

    async def unwatch(self, rec: Sfe) -> None:
        task, rec.task = rec.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, rec: Sfe) -> None:
        """Keep a `running` SFE running: restart on exit with exponential back-off."""
        backoff = Backoff(*self._backoff_s)
        health, _ = self._health.target(rec)
        interval = health.interval_s if health else 1.0
        while rec.desired == "running":
            if rec.alive():
                # Exits are seen at once (pidfd); health is probed once per interval.
                if not await wait_exit(rec, interval):
                    rec.healthy = await self._health.probe(rec)
                    if cert_due(rec):
                        await self._renew(rec)
                continue
            code = exit_code(rec)
            if time.monotonic() - rec.started_at > STABLE_S:
                backoff.reset()
            delay = backoff.failure()
            why = f"exited with status {code}" if code is not None else "was found not running"
            self._record(
                rec,
                restarts=int(rec.doc.get("restarts", 0)) + 1,
                reason=f"the process {why}; restart {backoff.failures} in {delay:g}s",
            )
            rec.healthy = False
            log.warning("%s %s: restarting in %gs", rec.name, why, delay)
            await asyncio.sleep(delay)
            async with rec.lock:
                if rec.desired != "running" or rec.alive():
                    continue
                with contextlib.suppress(VimError):
                    await self._terminate(rec)  # leftovers of the dead group
                await self._relaunch(rec, fetch_cert=True)

    async def _renew(self, rec: Sfe) -> None:
        """Restart a TLS SFE with a fresh certificate once a third of its certificate's life
        is left: SFs load their certificate at start only (`serve_app`). The PCE away: the
        old one serves on and renewal is tried again every `RENEW_RETRY_S`."""
        if time.monotonic() < rec.renew_after:
            return
        async with rec.lock:
            if rec.desired != "running" or not rec.alive():
                return
            try:
                await self._certs.fetch(rec, self._host_of(rec))
            except VimError as exc:
                rec.renew_after = time.monotonic() + RENEW_RETRY_S
                log.warning("%s: certificate not renewed now: %s", rec.name, exc.reason)
                return
            log.info("%s: restarting it with a renewed endpoint certificate", rec.name)
            await self._terminate(rec)
            if await self._relaunch(rec, fetch_cert=False):
                self._record(rec, reason=None)

    async def _relaunch(self, rec: Sfe, *, fetch_cert: bool) -> bool:
        """Start it again (with a fresh certificate); on failure leave it to the back-off."""
        try:
            if fetch_cert:
                await self._certs.fetch(rec, self._host_of(rec))
            await self._launch(rec)
        except VimError as exc:
            self._record(rec, reason=exc.reason)
            await self._terminate(rec)
            rec.started_at = time.monotonic()
            return False
        return True
