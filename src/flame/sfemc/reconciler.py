"""The reconciler: drive each endpoint from its observed state to its desired state (SFEMC-5).

Level-triggered and idempotent: `reconcile(sfe)` reads the endpoint's persisted state and desired
state and takes one legal step at a time until they agree, whatever happened before. A transient
state (placing, booting, ...) means an operation may have been cut short by a crash: its VIM or
registrar call is repeated (they are idempotent) and the transition completed. So a restart after
`kill -9` resumes exactly where the store says, and `resync` (at start and periodically) removes
what the VIMs run without a record (orphans) and re-queues every endpoint.

Failures are classified (kopf style):

* temporary (`RegistrarUnavailable`, connection errors, a `VimError` not marked permanent): the
  state stays, retried with back-off (a VIM error only `temporary_attempts` times);
* unreachable (`VimUnreachable`: a cluster agent down, restarting or cut off): the state stays
  and nothing is concluded, however long it lasts; the endpoint is asked about again as soon as
  a probe finds the VIM back (and every few seconds meanwhile). An agent that comes back
  reports what it runs, so nothing is placed twice and nothing running is withdrawn;
* permanent (`VimError(permanent=True)`, `RegistrationRefused`, a cluster without a VIM): the
  endpoint moves to `failed` with the reason, then back-off, then `failed -> removing ->
  unplaced` and a new try.

Every log line says what happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

from flame.common.errors import FlameError
from flame.sfemc.lifecycle import Lifecycle, LifecycleState, StaleState, rank
from flame.sfemc.registrar import Registrar, RegistrarUnavailable, RegistrationRefused
from flame.sfemc.store import ABSENT, EndpointRecord, SfemcStore, encode_spec
from flame.sfemc.vim.base import VimDriver, VimError, VimState, VimStatus, VimUnreachable
from flame.sfemc.workqueue import WorkQueue
from flame.sfr.models import Endpoint

__all__ = ["PermanentError", "Reconciler", "spec_hash"]

log = logging.getLogger("flame.sfemc.reconciler")

S = LifecycleState
_UP = {S.UNPLACED: S.PLACING, S.PLACED: S.BOOTING, S.BOOTED: S.CONNECTING}
_DOWN = {S.CONNECTED: S.DISCONNECTING, S.BOOTED: S.STOPPING, S.PLACED: S.REMOVING}
_ALIVE = {VimState.RUNNING, VimState.STARTING}
_HOLDS_NAME = {S.CONNECTING, S.CONNECTED, S.DISCONNECTING}


class PermanentError(FlameError):
    """Retrying the same operation unchanged will fail again: the endpoint goes to failed."""

    code: ClassVar[str] = "permanent_error"


def spec_hash(record: EndpointRecord) -> str:
    return hashlib.sha256(encode_spec(record.spec).encode()).hexdigest()[:16]


class Reconciler:
    def __init__(
        self,
        store: SfemcStore,
        lifecycle: Lifecycle,
        vims: Mapping[str, VimDriver],
        registrar: Registrar,
        *,
        workers: int = 8,
        resync_s: float = 30.0,
        drain_s: float = 1.0,
        base_delay_s: float = 0.05,
        max_delay_s: float = 30.0,
        temporary_attempts: int = 5,
        unreachable_retry_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.unreachable_retry_s = unreachable_retry_s
        self.temporary_attempts = temporary_attempts
        self.lifecycle = lifecycle
        self.vims = vims
        self.registrar = registrar
        self.workers = workers
        self.resync_s = resync_s
        self.drain_s = drain_s
        self.clock = clock
        self.queue = WorkQueue(base_delay_s, max_delay_s)
        self._tasks: list[asyncio.Task[None]] = []
        # Placements run one at a time per VIM: each unpacks and hashes an image (disk and CPU
        # bound) and allocates ports, which concurrent placements have been seen to race on.
        self._place_locks: dict[int, asyncio.Lock] = {}
        # Endpoints whose last attempt found the PCE unreachable: retried as soon as a probe
        # finds it back, not when their (growing) back-off happens to end.
        self._parked: set[str] = set()
        self._probe: asyncio.Task[None] | None = None
        # Endpoints waiting for an unreachable VIM (by VIM), and the probe of each such VIM.
        self._vim_parked: dict[int, set[str]] = {}
        self._vim_probes: dict[int, asyncio.Task[None]] = {}
        # sfe -> whether it was registered with `tls` (hop-by-hop TLS): a VIM restart that
        # changed it (the PCE's switch moved meanwhile) is registered again.
        self._registered_tls: dict[str, bool] = {}

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resync(startup=True)
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"sfemc-worker-{i}"))
        if self.resync_s > 0:
            self._tasks.append(asyncio.create_task(self._resync_loop(), name="sfemc-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.queue.close()

    def enqueue(self, sfe: str) -> None:
        self.queue.add(sfe)

    async def _worker(self) -> None:
        while True:
            sfe = await self.queue.get()
            try:
                await self.reconcile(sfe)
            except asyncio.CancelledError:
                raise
            except VimUnreachable as exc:
                # Not a failure of the endpoint: no back-off grows, no attempt is counted.
                self.queue.add_after(sfe, self.unreachable_retry_s)
                self._park_for_vim(sfe)
                log.warning(
                    "endpoint %s: %s; its state stays %s until the VIM answers",
                    sfe,
                    exc.reason,
                    getattr(self.store.endpoint(sfe), "state", "unknown"),
                )
            except Exception as exc:
                delay = self.queue.backoff(sfe)
                if isinstance(exc, RegistrarUnavailable):
                    self._park(sfe)
                level = logging.WARNING if isinstance(exc, FlameError) else logging.ERROR
                log.log(
                    level,
                    "endpoint %s: %s; retrying in %.2fs (attempt %d)",
                    sfe,
                    exc,
                    delay,
                    self.queue.failures(sfe),
                    exc_info=not isinstance(exc, FlameError),
                )
            else:
                self.queue.forget(sfe)
            finally:
                self.queue.done(sfe)

    def _park(self, sfe: str) -> None:
        self._parked.add(sfe)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_registrar(), name="sfemc-pce-probe")
            self._tasks.append(self._probe)

    async def _probe_registrar(self, every_s: float = 0.2) -> None:
        """Probe the registrar every `every_s` while endpoints wait for it; wake them all once
        it answers (after a PCE restart the pending switches apply at once)."""
        while self._parked:
            await asyncio.sleep(every_s)
            try:
                back = await self.registrar.available()
            except Exception:  # a probe that fails is a PCE still away
                back = False
            if back:
                parked, self._parked = self._parked, set()
                log.info("PCE reachable again: retrying %d endpoint(s) now", len(parked))
                for sfe in sorted(parked):
                    self.queue.retry_now(sfe)
        if self._probe in self._tasks:
            self._tasks.remove(self._probe)

    def _park_for_vim(self, sfe: str) -> None:
        record = self.store.endpoint(sfe)
        vim = self.vims.get(record.cluster) if record is not None else None
        if vim is None:
            return
        key = id(vim)
        self._vim_parked.setdefault(key, set()).add(sfe)
        probe = self._vim_probes.get(key)
        if probe is None or probe.done():
            self._vim_probes[key] = task = asyncio.create_task(
                self._probe_vim(key, vim), name=f"sfemc-vim-probe-{key}"
            )
            self._tasks.append(task)

    async def _probe_vim(self, key: int, vim: VimDriver, every_s: float = 0.2) -> None:
        """While endpoints wait for `vim`, probe it every `every_s`; retry them all at once
        when it answers (an agent restarted: its SFEs are asked about straight away)."""
        available = getattr(vim, "available", None)
        while self._vim_parked.get(key):
            await asyncio.sleep(every_s)
            try:
                back = bool(await available()) if available is not None else True
            except Exception:
                back = False
            if back:
                parked = self._vim_parked.pop(key, set())
                log.info("a VIM is reachable again: asking about %d endpoint(s) now", len(parked))
                for sfe in sorted(parked):
                    self.queue.retry_now(sfe)
        task = self._vim_probes.pop(key, None)
        if task is not None and task in self._tasks:
            self._tasks.remove(task)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resync failed; next one in %.0fs", self.resync_s)

    async def resync(self, *, startup: bool = False) -> None:
        """Remove orphans, withdraw stale registrations, re-queue every endpoint."""
        records = {r.sfe: r for r in self.store.endpoints()}
        for vim in {id(v): v for v in self.vims.values()}.values():
            try:
                found = await vim.list()
            except VimError as exc:
                # An agent away: its orphans are checked at the next resync; everything else
                # (other VIMs, registrations, re-queueing) goes on.
                log.warning("resync: %s VIM not listed (%s); next resync retries", vim.kind, exc)
                continue
            for status in found:
                if status.state is not VimState.ABSENT and self._orphan(status.sfe, startup):
                    log.warning(
                        "removing orphan %s from %s VIM (no placed record)", status.sfe, vim.kind
                    )
                    await vim.remove(status.sfe)
        try:
            for endpoint in await self.registrar.registered():
                if endpoint.sfe in records and self._stale_name(endpoint.sfe, startup):
                    log.warning("withdrawing stale registration of %s", endpoint.sfe)
                    await self.registrar.withdraw(endpoint.sfe)
        except RegistrarUnavailable as exc:
            log.warning("resync: registrations not checked (%s); next resync retries", exc)
        for sfe in records:
            self.enqueue(sfe)

    # Both re-read the record at the moment of deciding (after the awaits before it) and leave
    # alone an endpoint a worker holds: its state may be one step ahead of the store.
    def _orphan(self, sfe: str, startup: bool) -> bool:
        record = self.store.endpoint(sfe)
        if record is None:
            return True
        return record.state is S.UNPLACED and (startup or sfe not in self.queue.pending())

    def _stale_name(self, sfe: str, startup: bool) -> bool:
        record = self.store.endpoint(sfe)
        if record is None or record.state in _HOLDS_NAME:
            return False
        return startup or sfe not in self.queue.pending()

    async def wait_idle(self, timeout: float) -> None:
        await asyncio.wait_for(self.queue.wait_idle(), timeout)

    # -- one endpoint -------------------------------------------------------------------------

    def _vim(self, record: EndpointRecord) -> VimDriver:
        vim = self.vims.get(record.cluster)
        if vim is None:
            raise PermanentError(
                f"cluster '{record.cluster}' has no VIM driver configured in this SFEMC; "
                f"configured: {', '.join(sorted(self.vims)) or 'none'}",
                cluster=record.cluster,
            )
        return vim

    def _target(self, record: EndpointRecord) -> LifecycleState:
        if record.desired == ABSENT:
            return S.UNPLACED
        target = S(record.desired)
        placed = record.placed_spec
        # A changed spec (new image, ports, environment...) means replacing what runs.
        if placed is not None and placed != spec_hash(record) and record.state is not S.UNPLACED:
            return S.UNPLACED
        return target

    async def reconcile(self, sfe: str) -> None:
        for _ in range(64):  # a bound against a bug looping forever; each step is one transition
            record = self.store.endpoint(sfe)
            if record is None:
                return
            if not await self.step(record):
                return
        raise FlameError(f"endpoint '{sfe}' did not settle in 64 steps", sfe=sfe)

    async def step(self, record: EndpointRecord) -> bool:
        """Take one step towards the desired state; False when there is nothing to do."""
        state, target = record.state, self._target(record)
        try:
            if state in _UP or state in _DOWN or state is S.UNPLACED:
                if state is target:
                    return await self._settled(record)
                nxt = _UP[state] if rank(state) < rank(target) else _DOWN[state]
                self.lifecycle.transition(record.sfe, state, nxt)
                return True
            await self._finish(record)
            return True
        except StaleState:
            return True  # someone else moved it; look again
        except VimUnreachable as exc:
            # Nothing is known: the state stays (a connected endpoint stays registered; the
            # SRs eject it themselves if it really stopped answering).
            self.store.set_reason(record.sfe, exc.reason)
            raise
        except (VimError, PermanentError, RegistrationRefused) as exc:
            reason = exc.reason if isinstance(exc, VimError) else exc.message
            # A VIM error not marked permanent is retried in place a few times first.
            temporary = isinstance(exc, VimError) and not getattr(exc, "permanent", True)
            if temporary and self.queue.failures(record.sfe) < self.temporary_attempts - 1:
                attempt = self.queue.failures(record.sfe) + 1
                self.store.set_reason(
                    record.sfe, f"{reason} (attempt {attempt} of {self.temporary_attempts})"
                )
                raise
            if state is not S.UNPLACED and state is not S.FAILED:
                self.lifecycle.transition(record.sfe, state, S.FAILED, reason)
                log.warning(
                    "endpoint %s failed while %s: %s; will clean up and retry",
                    record.sfe,
                    state,
                    reason,
                )
            raise

    async def _settled(self, record: EndpointRecord) -> bool:
        if record.state is S.UNPLACED:
            if record.desired == ABSENT:
                self.store.forget_endpoint(record.sfe)
            return False
        # Stable and wanted: check the VIM still agrees (a crashed process, a lost placement).
        status = await self._vim(record).status(record.sfe)
        lost = status.state is VimState.ABSENT or status.state is VimState.FAILED
        if record.state in (S.BOOTED, S.CONNECTED) and status.state not in _ALIVE:
            lost = True
        if lost:
            reason = status.reason or f"the VIM reports it {status.state}"
            self.lifecycle.transition(record.sfe, record.state, S.FAILED, reason)
            log.warning(
                "endpoint %s was %s but %s; will clean up and retry",
                record.sfe,
                record.state,
                reason,
            )
            return True
        if (
            record.state is S.CONNECTED
            and record.sfe in self._registered_tls
            and self._registered_tls[record.sfe] != status.tls
        ):
            log.info(
                "endpoint %s now serves %s: registering it again",
                record.sfe,
                "TLS" if status.tls else "plain HTTP",
            )
            await self._register(record, status)
        if record.reason is not None:
            # Stable, wanted and confirmed by the VIM: a reason left by a VIM that could not be
            # asked (or a retried error) no longer holds.
            self.store.set_reason(record.sfe, None)
        return False

    async def _finish(self, record: EndpointRecord) -> None:
        """Complete the operation a transient state stands for, then the transition."""
        sfe, state = record.sfe, record.state
        if state is S.FAILED:
            self.lifecycle.transition(sfe, state, S.REMOVING)
        elif state is S.PLACING:
            vim = self._vim(record)
            async with self._place_locks.setdefault(id(vim), asyncio.Lock()):
                await vim.place(record.spec)
            self.store.set_placed_spec(sfe, spec_hash(record))
            self.lifecycle.transition(sfe, state, S.PLACED)
        elif state is S.BOOTING:
            await self._vim(record).boot(sfe)
            self.lifecycle.transition(sfe, state, S.BOOTED)
        elif state is S.CONNECTING:
            await self._register(record, await self._vim(record).status(sfe))
            self.lifecycle.transition(sfe, state, S.CONNECTED)
        elif state is S.DISCONNECTING:
            await self.registrar.withdraw(sfe)
            self._registered_tls.pop(sfe, None)
            # Let in-flight requests finish on this endpoint before anything may stop it.
            await asyncio.sleep(self.drain_s)
            self.lifecycle.transition(sfe, state, S.BOOTED)
        elif state is S.STOPPING:
            await self._vim(record).stop(sfe)
            self.lifecycle.transition(sfe, state, S.PLACED)
        elif state is S.REMOVING:
            await self.registrar.withdraw(sfe)
            self._registered_tls.pop(sfe, None)
            if record.cluster in self.vims:
                await self.vims[record.cluster].remove(sfe)
            self.lifecycle.transition(sfe, state, S.UNPLACED)
            self.store.set_placed_spec(sfe, None)
        else:  # pragma: no cover - the state machine has no other transient state
            raise FlameError(f"endpoint '{sfe}': no operation for state {state}")

    async def _register(self, record: EndpointRecord, status: VimStatus) -> None:
        await self.registrar.register(self._endpoint(record, status))
        self._registered_tls[record.sfe] = status.tls

    def _endpoint(self, record: EndpointRecord, status: VimStatus) -> Endpoint:
        if status.state not in _ALIVE or status.host is None or not status.ports:
            raise VimError(
                record.sfe,
                f"cannot connect: the VIM reports it {status.state} with no address "
                f"({status.reason or 'no reason given'})",
            )
        name = record.spec.ports[0].name if record.spec.ports else next(iter(status.ports))
        port = status.ports.get(name) or next(iter(status.ports.values()))
        return Endpoint(
            sfe=record.sfe,
            fqdn=record.fqdn,
            cluster=record.cluster,
            host=status.host,
            port=port,
            sfc=record.sfc,
            tenant=record.tenant,
            tls=status.tls,  # the SR reaches it over mutual TLS
        )
