"""One active PCE (SFR-20): the lease task, taking over and stepping down, and the state a PCE
rebuilds from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flame.common.errors import UserError
from flame.sfr.models import ForwardingTable
from flame.sfr.pce import shortest_paths_status
from flame.sfr.registry import Registry
from flame.sfr.service.core import PceRole, _Core, _Loaded, _State
from flame.sfr.service.published import PublishedTable, _entry_digest
from flame.sfr.store import LeaseOutcome, NotActive, PersistedState, Writer, topology_digest
from flame.topology.model import Topology

log = logging.getLogger("flame.sfr.service")


class _Lease(_Core):
    """The lease life cycle; see `flame.sfr.service`."""

    async def start(self) -> None:
        """Try for the lease once (so an active PCE serves when this returns), then keep it
        renewed, or keep polling for it as a standby, in a background task."""
        log.info("PCE %s: %s", self.holder, shortest_paths_status())
        self._kick = asyncio.Event()  # bound to the running loop
        await self._lease_tick()
        self._task = asyncio.create_task(self._lease_loop(), name=f"pce-lease-{self.holder}")
        self._task.add_done_callback(_log_task_end)

    async def stop(self) -> None:
        """Stop the lease task, give the lease up (a standby takes over at once), wake waiters."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        was_active = self._role is PceRole.ACTIVE
        self._role = PceRole.STOPPED
        self._state = None
        self._wake_all()
        if was_active:
            await asyncio.to_thread(self._store.release)
            log.info("PCE %s stopped and released the lease", self.holder)

    async def _lease_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._renew_every)
            self._kick.clear()
            try:
                await self._lease_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A temporary fault (database locked, disk full): try again next tick. If the
                # lease runs out meanwhile, the renewal reports HELD and we step down.
                log.exception(
                    "PCE %s: lease renewal failed; retrying in %.1fs",
                    self.holder,
                    self._renew_every,
                )

    async def _lease_tick(self) -> None:
        outcome = await asyncio.to_thread(self._store.acquire)
        if outcome is LeaseOutcome.HELD:
            if self._role is PceRole.ACTIVE:
                self._demote("another PCE holds the lease")
            elif self._role is PceRole.STARTING:
                self._role = PceRole.STANDBY
                log.info(
                    "PCE %s is a standby; polling for the lease every %.1fs",
                    self.holder,
                    self._renew_every,
                )
            return
        if outcome is LeaseOutcome.RENEWED and self._state is not None:
            if self._certs is not None and self._certs.due():
                self._sync_certs(force=True)  # renewals
            return
        # Taking over, or recovering after a failed write: rebuild from the database.
        if self._role is PceRole.ACTIVE:
            self._demote("the lease had expired on it; reloading")
        loop = asyncio.get_running_loop()
        started = loop.time()
        persisted = await asyncio.to_thread(self._store.load)
        loaded = await asyncio.to_thread(self._build, persisted)
        if await asyncio.to_thread(self._store.acquire) is not LeaseOutcome.RENEWED:
            # The lease ran out while we built: someone may have written since. Start over.
            self._role = PceRole.STANDBY
            log.warning(
                "PCE %s took %.1fs to build its state, longer than its lease (%.1fs); "
                "retrying. Raise the lease TTL if this repeats.",
                self.holder,
                loop.time() - started,
                self._store.lease_ttl,
            )
            return
        try:
            with self._store.write() as w:
                loaded.writes(w)
        except NotActive:
            self._role = PceRole.STANDBY
            log.warning("PCE %s lost the lease while loading; staying a standby", self.holder)
            return
        self._generation = persisted.generation
        self._versions = loaded.versions
        self._state = loaded.state
        self._role = PceRole.ACTIVE
        if self._certs is not None:
            try:
                await asyncio.to_thread(self._certs.load)  # a standby's copy may be stale
            except Exception:
                log.exception("PCE %s: cannot read the certificate store", self.holder)
            self._routed = {}
            self._sync_certs(force=True)
        self._wake_all()
        log.info(
            "PCE %s is active: %d SR table(s) (%d with new versions), %d registration(s), "
            "%d polic(ies)",
            self.holder,
            len(loaded.state.tables),
            loaded.updated,
            len(loaded.state.registry.registrations()),
            len(loaded.state.policies),
        )

    def drain(self) -> None:
        """The server is shutting down: answer every long poll now (304, the SR asks again,
        maybe another PCE) instead of holding it until the shutdown cancels it."""
        self._draining = True
        self._wake_all()

    # -- building the state ---------------------------------------------------------------------

    def _build(self, persisted: PersistedState) -> _Loaded:
        """The state a PCE reaches from the database, and what to write back.

        Runs in a worker thread (big topologies take a while): it touches nothing shared.
        """
        base = self._file_topology
        digest = topology_digest(base)
        rebase = persisted.topology_digest != digest
        changes = persisted.changes
        if rebase:
            if persisted.topology_digest is not None and (changes or persisted.snapshot):
                log.warning(
                    "the topology file %s differs from the one the run-time changes were made "
                    "on; dropping them: the file is the new starting point",
                    base.source,
                )
            changes = []
        elif persisted.snapshot is not None:
            nodes, links = persisted.snapshot
            base = Topology(
                name=base.name,
                source=base.source,
                nodes={n.id: n for n in nodes},
                links=links,
                locations=dict(base.locations),
                registrations=base.registrations,
            )
        engine = self._engine_factory(base)
        for change in changes:
            try:
                engine.apply(change)
            except UserError as exc:  # only if the engine's rules changed between versions
                log.warning("skipping a stored change that no longer applies: %s", exc.message)
        registry = Registry.restore(
            persisted.registrations, persisted.delegations, persisted.registry_version
        )
        displaced = registry.configure(base.registrations)
        for registration in displaced:
            log.warning(
                "API registration of '%s' replaced by the topology file's entry",
                registration.endpoint.sfe,
            )
        registry_changed = registry.version != persisted.registry_version
        state = _State(
            engine=engine,
            topology=engine.topology,
            registry=registry,
            policies={p.fqdn: p for p in persisted.policies},
            tables={},
            links={},
        )
        state.refresh_topology()
        srs = sorted(state.topology.service_routers)
        computed = engine.tables(registry.endpoints(), state.policies, srs)
        versions = dict(persisted.tables)
        updated: dict[str, tuple[int, str]] = {}
        for sr in srs:
            fresh = computed.get(sr, {})
            routes = {fqdn: tuple(fresh[fqdn]) for fqdn in sorted(fresh)}
            entries = {fqdn: _entry_digest(rs) for fqdn, rs in routes.items()}
            table = PublishedTable(ForwardingTable(sr, 0, routes), entries)
            version, last_digest = versions.get(sr, (0, ""))
            if table.digest != last_digest:  # content differs from what SRs may hold
                version += 1
                updated[sr] = versions[sr] = (version, table.digest)
            table.table = ForwardingTable(sr, version, routes)
            state.tables[sr] = table
        registrations = registry.registrations()

        def writes(w: Writer) -> None:
            if rebase:
                w.rebase(digest)
            if registry_changed:
                for r in persisted.registrations:
                    w.delete_registration(r.endpoint.sfe)
                for r in registrations:
                    w.put_registration(r)
                w.set_registry_version(registry.version)
            w.put_tables(updated)

        return _Loaded(state, versions, writes, len(updated))


def _log_task_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error(
            "PCE lease task %s died: %r; this PCE can no longer take over or renew",
            task.get_name(),
            exc,
            exc_info=exc,
        )
