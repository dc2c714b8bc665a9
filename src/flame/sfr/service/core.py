"""The state `PceService` holds and the one path every change takes: recompute the tables it
can touch, persist, then publish (SFR-4, SFR-11).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from flame.common.errors import UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.certs import CertManager
from flame.sfr.models import Endpoint, ForwardingTable, Route, RoutingPolicy, TopologyChange
from flame.sfr.pce import PathComputer
from flame.sfr.registry import NotFound, Registry
from flame.sfr.service.published import PublishedTable, _entry_digest
from flame.sfr.store import NotActive, Store, Writer
from flame.topology.model import Link, Node, Topology

log = logging.getLogger("flame.sfr.service")


MAX_WAIT_S = 60.0  # the longest a long-poll is held


class PathEngine(Protocol):
    """What the service needs of a path computation element; `flame.sfr.pce.PathComputer`."""

    @property
    def topology(self) -> Topology: ...

    def apply(self, change: TopologyChange) -> frozenset[str]: ...

    def tables(
        self,
        endpoints: Iterable[Endpoint],
        policies: Mapping[str, RoutingPolicy],
        srs: Iterable[str] | None = None,
    ) -> Mapping[str, Mapping[str, tuple[Route, ...]]]: ...

    def check_policy(self, policy: RoutingPolicy) -> None: ...


class CertsDisabled(UserError):
    """The PCE runs without a certificate store (a test or an embedding without state)."""

    code: ClassVar[str] = "certificates_disabled"
    http_status: ClassVar[int] = 501


class PceRole(enum.StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    STANDBY = "standby"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What a topology change did: trees touched and the tables that got new versions."""

    changed: bool
    affected_srs: tuple[str, ...] = ()  # SRs whose shortest-path trees changed
    versions: Mapping[str, int] = field(default_factory=dict)  # SR -> new table version
    removed_srs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "affected_srs": list(self.affected_srs),
            "versions": dict(self.versions),
            "removed_srs": list(self.removed_srs),
        }


@dataclass(slots=True)
class _State:
    """Everything an active PCE holds in memory; replaced wholesale on (re)load."""

    engine: PathEngine
    topology: Topology
    registry: Registry
    policies: dict[str, RoutingPolicy]
    tables: dict[str, PublishedTable]
    links: dict[frozenset[str], list[Link]]

    def refresh_topology(self) -> None:
        self.topology = self.engine.topology
        self.links = _link_index(self.topology.links)


@dataclass(slots=True)
class _Loaded:
    state: _State
    versions: dict[str, tuple[int, str]]
    writes: Callable[[Writer], None]
    updated: int


def _link_index(links: Iterable[Link]) -> dict[frozenset[str], list[Link]]:
    index: dict[frozenset[str], list[Link]] = {}
    for link in links:
        index.setdefault(frozenset((link.a, link.b)), []).append(link)
    return index


class _Core:
    """What every concern of `PceService` shares: its state, the lease role, and the one path
    of a change (recompute, persist, publish)."""

    def __init__(
        self,
        topology: Topology,
        store: Store,
        *,
        engine_factory: Callable[[Topology], PathEngine] = PathComputer,
        renew_every: float | None = None,
        certs: CertManager | None = None,
    ) -> None:
        self._file_topology = topology
        self._certs = certs
        self._routed: dict[str, frozenset[str]] = {}  # SR -> FQDNs of its table (certificates)
        self._store = store
        self._engine_factory = engine_factory
        self._renew_every = renew_every if renew_every is not None else store.lease_ttl / 3
        self._role = PceRole.STARTING
        self._state: _State | None = None
        self._versions: dict[str, tuple[int, str]] = {}  # every SR ever seen: (version, digest)
        self._generation = ""
        self._waiters: dict[str, asyncio.Event] = {}
        self._draining = False  # shutting down: long polls answer at once
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def role(self) -> PceRole:
        return self._role

    @property
    def holder(self) -> str:
        return self._store.holder

    @property
    def generation(self) -> str:
        """Random id of the database: table versions compare only within one generation."""
        return self._generation

    def _demote(self, reason: str) -> None:
        log.warning(
            "PCE %s steps down (%s); answering 503 until it holds the lease", self.holder, reason
        )
        self._role = PceRole.STANDBY
        self._state = None
        self._wake_all()
        self._kick.set()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()
        if self._certs is not None:
            self._certs.wake_all()

    # -- the core: recompute, persist, publish ---------------------------------------------------

    def _recompute(
        self, state: _State, srs: Iterable[str], fqdns: frozenset[str] | None
    ) -> dict[str, PublishedTable]:
        """New tables for those of `srs` whose routes differ (only `fqdns`' routes, if given)."""
        present = state.topology.service_routers
        wanted = sorted({sr for sr in srs if sr in present})
        if not wanted:
            return {}
        if fqdns is None:
            computed = state.engine.tables(state.registry.endpoints(), state.policies, wanted)
        else:
            policies = {f: state.policies[f] for f in fqdns if f in state.policies}
            computed = state.engine.tables(state.registry.endpoints(fqdns), policies, wanted)
        updates: dict[str, PublishedTable] = {}
        for sr in wanted:
            fresh = computed.get(sr, {})
            current = state.tables.get(sr)
            old_routes = current.table.routes if current is not None else {}
            old_entries = current.entry_digests if current is not None else {}
            # The entries that may have changed: all, or only those of `fqdns`.
            touched = set(fresh) | set(old_routes) if fqdns is None else fqdns
            changed = {f for f in touched if old_routes.get(f) != fresh.get(f)}
            if current is not None and not changed:
                continue
            routes: dict[str, tuple[Route, ...]] = {}
            entries: dict[str, str] = {}
            for f in sorted(set(old_routes) | set(fresh)):
                if f in changed:
                    if f in fresh:
                        routes[f] = tuple(fresh[f])
                        entries[f] = _entry_digest(routes[f])
                else:
                    routes[f], entries[f] = old_routes[f], old_entries[f]
            version = self._versions.get(sr, (0, ""))[0] + 1  # above any version it ever had
            table = ForwardingTable(sr, version, routes)
            updates[sr] = (
                current.successor(table, entries)
                if current is not None
                else PublishedTable(table, entries)
            )
        return updates

    def _publish(self, state: _State, updates: Mapping[str, PublishedTable]) -> None:
        for sr, table in updates.items():
            state.tables[sr] = table
            self._versions[sr] = (table.table.version, table.digest)
            event = self._waiters.pop(sr, None)
            if event is not None:
                event.set()
        if self._certs is not None and updates:
            self._sync_certs()

    def _sync_certs(self, *, force: bool = False) -> None:
        """Certificates and bundles after tables or delegations changed (`force`: the FQDN
        sets may be the same, ownership or expiry not). Failures are logged, never raised:
        a certificate problem must not stop routing."""
        certs, state = self._certs, self._state
        if certs is None or state is None:
            return
        routed = {sr: frozenset(t.table.routes) for sr, t in state.tables.items()}
        if not force and routed == self._routed:
            return
        try:
            addresses = {
                n: state.topology.nodes[n].address for n in routed if n in state.topology.nodes
            }
            certs.sync(routed, state.registry.owner_of, addresses)
        except Exception:
            log.exception("PCE %s: certificates could not be brought up to date", self.holder)
            return
        self._routed = routed

    def _active(self) -> _State:
        state = self._state
        if self._role is not PceRole.ACTIVE or state is None:
            lease = self._store.lease()
            active = (
                f"; the active PCE is '{lease.holder}'"
                if lease and lease.holder != self.holder
                else ""
            )
            raise NotActive(
                f"this PCE ('{self.holder}') is {self._role.value}, not active{active}; "
                "ask another PCE or retry shortly",
                role=self._role.value,
            )
        return state

    @contextlib.contextmanager
    def _committing(self) -> Iterator[None]:
        """Around mutation + persistence: any failure leaves memory ahead of the database, so
        the state is dropped and rebuilt from the database by the lease task."""
        try:
            yield
        except NotActive:
            self._demote("lost the lease while writing")
            raise
        except BaseException:
            self._demote("a change could not be persisted")
            raise

    def _commit(
        self,
        state: _State,
        persist: Callable[[Writer], None],
        updates: Mapping[str, PublishedTable],
    ) -> None:
        with self._store.write() as w:
            persist(w)
            w.put_tables({sr: (t.table.version, t.digest) for sr, t in updates.items()})
        self._publish(state, updates)

    def _node(self, state: _State, node_id: str) -> Node:
        node = state.topology.nodes.get(node_id)
        if node is None:
            hint = did_you_mean(node_id, state.topology.nodes, dotted=False)
            raise NotFound(
                f"unknown node '{node_id}'" + (f" ({hint})" if hint else ""), node=node_id
            )
        return node

    def _links(self, a: str, b: str) -> list[Link]:
        state = self._active()
        self._node(state, a)
        self._node(state, b)
        links = state.links.get(frozenset((a, b)))
        if not links:
            raise NotFound(f"no link between '{a}' and '{b}'", link=[a, b])
        return links

    def _table(self, state: _State, sr: str) -> PublishedTable:
        table = state.tables.get(sr)
        if table is None:
            hint = did_you_mean(sr, state.topology.service_routers, dotted=False)
            raise NotFound(
                f"'{sr}' is not a service router" + (f" ({hint})" if hint else ""), sr=sr
            )
        return table

    def status(self) -> dict[str, Any]:
        state = self._state
        return {
            "status": "ok",
            "role": self._role.value,
            "holder": self.holder,
            "generation": self._generation or None,
            "service_routers": len(state.tables) if state else None,
            "registry_version": state.registry.version if state else None,
            "certificates": self._certs.status() if self._certs is not None else None,
        }
