"""The PCE service: topology, registry, policies and versioned forwarding tables (SFR-4..20).

`PceService` is what `flame serve pce` runs behind the HTTP API (`flame.sfr.api`). It owns the
run-time topology and a path engine (`PathComputer`), the FQDN registry, the routing policies
and the `Store`, and keeps one `ForwardingTable` per service router:

* **Versions only grow, and only with content.** After every change the service recomputes just
  the tables the change can touch (the SRs whose trees a link change altered; every SR for the
  one FQDN a registration or policy names) and gives a table a new version only if its routes
  differ. Versions are persisted with a digest of the content, so a restarted or standby PCE
  keeps the versions of unchanged tables and continues above the others: an SR never sees a
  version go back, and never applies an older table over a newer one (SFR-11).
* **Persist, then publish.** A change is written (with the new table versions) in one SQLite
  transaction before any SR can see a table that depends on it; if the write fails, the
  in-memory state is thrown away and rebuilt from the database.
* **Long-poll distribution.** `wait_table(sr, since, timeout)` returns as soon as the SR's
  table is newer than `since`; per-SR events wake only the waiters of tables that changed.
* **One active PCE (SFR-20).** The service is ACTIVE while it holds the store's lease, which a
  background task renews; a STANDBY polls for the lease and, when the active PCE's lease
  expires, rebuilds the state from the database (topology file + replayed changes) and takes
  over. Every operation on a standby raises `NotActive` (HTTP 503): SRs keep forwarding on their
  last tables and try the next PCE.

Everything except the lease task runs on the event loop's thread: the API's handlers are
`async`, and the operations here are synchronous and short, so they never interleave.

* **Content certificates (SFR-22, SFR-23).** With a `CertManager` (`flame.sfr.certs`), the
  service keeps each routed FQDN's certificate (uploaded, or issued by the platform CA) and
  a versioned bundle per SR of the certificates of the FQDNs its table routes, brought in
  line after every table change, delegation change and, for renewals, lease tick; SRs
  long-poll it (`wait_certs`) like their tables. A certificate failure is logged and never
  stops routing.

Exceptions raised (all carry structured context; see `registry` and `store` for the tree)::

    UserError            400  a malformed change, endpoint, policy or name
    PermissionDenied     403  a tenant acting on names it does not own, or on operator routes
    NotFound             404  unknown SR, node, link, registration, delegation or policy
    Conflict             409  a node that exists, an SR that clusters still attach to, ...
    NotActive            503  this PCE is a standby
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol

from flame.common.auth import Principal, require_router
from flame.common.errors import UserError
from flame.common.yamlshape import did_you_mean
from flame.sfr.certs import CertBundle, CertManager, CertRecord
from flame.sfr.models import (
    AddNode,
    Endpoint,
    ForwardingTable,
    LinkCost,
    LinkLatency,
    LinkState,
    RemoveNode,
    Route,
    RoutingPolicy,
    TopologyChange,
)
from flame.sfr.pce import PathComputer, shortest_paths_status
from flame.sfr.registry import (
    Conflict,
    Delegation,
    NotFound,
    Registration,
    Registry,
    RegistryChange,
    normalise_fqdn,
)
from flame.sfr.store import (
    COMPACT_AFTER,
    LeaseOutcome,
    NotActive,
    PersistedState,
    Store,
    Writer,
    topology_digest,
)
from flame.topology.model import Link, Node, NodeKind, Topology
from flame.topology.model import LinkState as LinkUpDown

__all__ = [
    "CertsDisabled",
    "ChangeResult",
    "PathEngine",
    "PceRole",
    "PceService",
    "PublishedTable",
]

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


@dataclass(slots=True)
class PublishedTable:
    """A table as distributed, with the digest persisted for it and its JSON made once.

    The digest is built from one digest per FQDN entry, so a change to one FQDN rehashes one
    entry per SR, not the whole table (tables hold every FQDN: that would dominate the cost).
    """

    table: ForwardingTable
    entry_digests: dict[str, str]  # fqdn -> digest of its routes
    digest: str = ""
    _body: bytes | None = None
    # Where each FQDN's routes are in `_body`; a newer version of the table copies the entries
    # it shares (the same tuple) from `_previous`'s body rather than serialising them again.
    _spans: dict[str, tuple[int, int]] | None = None
    _previous: PublishedTable | None = None

    def __post_init__(self) -> None:
        if not self.digest:
            lines = "".join(f"{fqdn}\0{d}\n" for fqdn, d in sorted(self.entry_digests.items()))
            self.digest = hashlib.sha256(lines.encode()).hexdigest()

    def body(self) -> bytes:
        """The JSON every SR worker polling this version receives (serialised once)."""
        if self._body is None:
            self._body, self._spans = _table_json(self.table, self._previous)
            self._previous = None
        return self._body

    def successor(self, table: ForwardingTable, entry_digests: dict[str, str]) -> PublishedTable:
        """The next version: its body reuses this one's text of the entries they share."""
        previous = self if self._body is not None else self._previous  # one body kept at most
        return PublishedTable(table, entry_digests, _previous=previous)


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


def _entry_digest(routes: tuple[Route, ...]) -> str:
    """Stable across processes: reprs of frozen dataclasses of str, int, float and tuples (if a
    model gains a field, every digest changes once and tables get one new version)."""
    return hashlib.blake2b(_routes_repr(routes).encode(), digest_size=16).hexdigest()


# -- table text: the same as repr() and json.dumps(), made faster -------------------------------
# A table holds ~1,000 routes; the dataclasses' generic repr and to_dict + json.dumps cost ~5 ms
# each per table on the PCE benchmark, ten times building the routes. Every SR's routes share
# the same Endpoint objects and, per egress, the same path tuple: their text is made once.

_ENCODE = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)
_ROUTE_FIELDS = ("endpoint", "egress_sr", "cost", "latency_ms", "path", "egress_address")
_FAST_ROUTES = tuple(f.name for f in fields(Route) if f.repr) == _ROUTE_FIELDS and all(
    f.name in _ROUTE_FIELDS for f in fields(Route)
)  # else (a field added): the generic repr and to_dict
_ENDPOINTS_KEPT = 1 << 16
# id(endpoint) -> (endpoint, its repr, its JSON); holding the endpoint keeps its id unique.
_endpoint_text: dict[int, tuple[Endpoint, str, str]] = {}


def _endpoint(endpoint: Endpoint) -> tuple[Endpoint, str, str]:
    found = _endpoint_text.get(id(endpoint))
    if found is None:
        if len(_endpoint_text) >= _ENDPOINTS_KEPT:  # bounded: start again (registrations churn)
            _endpoint_text.clear()
        text = json.dumps(endpoint.to_dict(), separators=(",", ":"))
        found = _endpoint_text[id(endpoint)] = (endpoint, repr(endpoint), text)
    return found


def _routes_repr(routes: tuple[Route, ...]) -> str:
    """repr(routes), to the character."""
    if not _FAST_ROUTES or type(routes) is not tuple:
        return repr(routes)
    parts: list[str] = []
    paths: dict[int, str] = {}  # id(path) -> repr; the tuple lives as long as `routes`
    for r in routes:
        if type(r) is not Route:
            parts.append(repr(r))
            continue
        path = paths.get(id(r.path))
        if path is None:
            path = paths[id(r.path)] = repr(r.path)
        parts.append(
            f"Route(endpoint={_endpoint(r.endpoint)[1]}, egress_sr={r.egress_sr!r}, "
            f"cost={r.cost!r}, latency_ms={r.latency_ms!r}, path={path}, "
            f"egress_address={r.egress_address!r})"
        )
    if len(parts) == 1:
        return f"({parts[0]},)"
    return f"({', '.join(parts)})"


def _routes_json(routes: Iterable[Route]) -> str:
    """json.dumps([r.to_dict() for r in routes], separators=(",", ":")), to the character."""
    parts: list[str] = []
    paths: dict[int, str] = {}  # id(path) -> JSON; the tuple lives as long as `routes`
    for r in routes:
        cost, latency, egress, address = r.cost, r.latency_ms, r.egress_sr, r.egress_address
        if not (
            _FAST_ROUTES
            and type(r) is Route
            and type(cost) is float
            and type(latency) is float
            and math.isfinite(cost)
            and math.isfinite(latency)
            and type(egress) is str
            and (address is None or type(address) is str)
        ):
            parts.append(json.dumps(r.to_dict(), separators=(",", ":")))
            continue
        path = paths.get(id(r.path))
        if path is None:
            if all(type(node) is str for node in r.path):
                path = f"[{','.join(map(_ENCODE, r.path))}]"
            else:
                path = json.dumps(list(r.path), separators=(",", ":"))
            paths[id(r.path)] = path
        # float.__repr__ is json's own text for a finite float.
        parts.append(
            f'{{"endpoint":{_endpoint(r.endpoint)[2]},"egress_sr":{_ENCODE(egress)},'
            f'"cost":{cost!r},"latency_ms":{latency!r},"path":{path},"egress_address":'
            f"{'null' if address is None else _ENCODE(address)}}}"
        )
    return f"[{','.join(parts)}]"


def _table_json(
    table: ForwardingTable, previous: PublishedTable | None = None
) -> tuple[bytes, dict[str, tuple[int, int]] | None]:
    """json.dumps(table.to_dict(), separators=(",", ":")) to the byte, and where each FQDN's
    routes are in it; entries that `previous` has too (the same tuple) are copied from it."""

    def generic() -> tuple[bytes, None]:
        return json.dumps(table.to_dict(), separators=(",", ":")).encode(), None

    if type(table.sr) is not str or type(table.version) is not int:
        return generic()
    old = previous.table.routes if previous is not None else {}
    old_body, old_spans = (
        (previous._body, previous._spans) if previous is not None else (None, None)
    )
    parts = [f'{{"sr":{_ENCODE(table.sr)},"version":{table.version},"routes":{{'.encode()]
    at, spans = len(parts[0]), {}
    for i, (fqdn, routes) in enumerate(table.routes.items()):
        if type(fqdn) is not str:  # json.dumps turns other keys into strings its own way
            return generic()
        head = f"{',' if i else ''}{_ENCODE(fqdn)}:".encode()
        span = old_spans.get(fqdn) if old_spans is not None and old.get(fqdn) is routes else None
        if span is not None and old_body is not None:
            text = old_body[span[0] : span[1]]
        else:
            text = _routes_json(routes).encode()  # ASCII: json's escapes, numbers, null
        parts += (head, text)
        at += len(head)
        spans[fqdn] = (at, at + len(text))
        at += len(text)
    parts.append(b"}}")
    return b"".join(parts), spans


class PceService:
    """The active (or standby) PCE: see the module docstring."""

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

    def _demote(self, reason: str) -> None:
        log.warning(
            "PCE %s steps down (%s); answering 503 until it holds the lease", self.holder, reason
        )
        self._role = PceRole.STANDBY
        self._state = None
        self._wake_all()
        self._kick.set()

    def drain(self) -> None:
        """The server is shutting down: answer every long poll now (304, the SR asks again,
        maybe another PCE) instead of holding it until the shutdown cancels it."""
        self._draining = True
        self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()
        if self._certs is not None:
            self._certs.wake_all()

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
            certs.sync(routed, state.registry.owner_of)
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

    # -- topology (SFR-7, SFR-13) ---------------------------------------------------------------

    def topology(self) -> Topology:
        """The topology as it is now: the file with every run-time change applied."""
        return self._active().topology

    def set_link_state(self, a: str, b: str, up: bool) -> ChangeResult:
        """Take a link down or bring it back up (SFR-13); a no-op if it already is."""
        links = self._links(a, b)
        wanted = LinkUpDown.UP if up else LinkUpDown.DOWN
        if all(k.state is wanted for k in links):
            return ChangeResult(changed=False)
        return self.apply_changes([LinkState(a, b, up)])

    def update_link(
        self,
        a: str,
        b: str,
        *,
        latency_ms: float | None = None,
        cost: float | None = None,
        set_cost: bool = False,
    ) -> ChangeResult:
        """Change a link's latency and/or cost (`set_cost` with `cost=None` clears the cost);
        both in one step, so a table gets at most one new version."""
        if latency_ms is None and not set_cost:
            raise UserError("give latency_ms, cost or both", link=[a, b])
        for what, value in (("latency_ms", latency_ms), ("cost", cost)):
            if value is not None and not 0 <= value < math.inf:
                raise UserError(
                    f"link {a}—{b}: {what} must be a finite, non-negative number, got {value}",
                    link=[a, b],
                )
        links = self._links(a, b)
        changes: list[TopologyChange] = []
        if latency_ms is not None and any(k.latency_ms != latency_ms for k in links):
            changes.append(LinkLatency(a, b, latency_ms))
        if set_cost and any(k.cost != cost for k in links):
            changes.append(LinkCost(a, b, cost))
        return self.apply_changes(changes) if changes else ChangeResult(changed=False)

    def add_node(self, node: Node, links: Sequence[Link] = ()) -> ChangeResult:
        """A node joins with its links (SFR-7); SRs that now reach it get new tables."""
        state = self._active()
        if node.id in state.topology.nodes:
            raise Conflict(f"node '{node.id}' exists; remove it first", node=node.id)
        return self.apply_changes([AddNode(node, tuple(links))])

    def remove_node(self, node_id: str) -> ChangeResult:
        """A node leaves with its links; an SR only once nothing attaches to it."""
        state = self._active()
        node = self._node(state, node_id)
        if node.kind is NodeKind.SERVICE_ROUTER:
            attached = sorted(k for k, n in state.topology.nodes.items() if n.sr == node_id)
            if attached:
                raise Conflict(
                    f"service router '{node_id}' still serves {', '.join(attached)}; remove "
                    "those first",
                    node=node_id,
                    attached=attached,
                )
        return self.apply_changes([RemoveNode(node_id)])

    def apply_changes(self, changes: Sequence[TopologyChange]) -> ChangeResult:
        """Apply, recompute only the affected SRs' tables, persist, publish (SFR-13)."""
        state = self._active()
        if not changes:
            return ChangeResult(changed=False)
        for change in changes:
            if isinstance(change, LinkState | LinkLatency | LinkCost):
                self._links(change.a, change.b)
        before = set(state.topology.service_routers)
        # The engine checks a change before it alters anything: the first is safe outside.
        affected = set(state.engine.apply(changes[0]))
        with self._committing():
            for change in changes[1:]:
                affected |= state.engine.apply(change)
            state.refresh_topology()
            after = set(state.topology.service_routers)
            removed = before - after
            for sr in removed:
                state.tables.pop(sr, None)
            updates = self._recompute(state, affected | (after - before), None)

            def persist(w: Writer) -> None:
                logged = 0
                for change in changes:
                    logged = w.add_change(change)
                if logged >= COMPACT_AFTER:
                    w.snapshot(state.topology)

            self._commit(state, persist, updates)
        for sr in removed:
            event = self._waiters.pop(sr, None)
            if event is not None:
                event.set()
        log.info(
            "topology change (%s): %d SR tree(s) changed, %d new table version(s)",
            ", ".join(type(c).__name__ for c in changes),
            len(affected),
            len(updates),
        )
        return ChangeResult(
            changed=True,
            affected_srs=tuple(sorted(affected)),
            versions={sr: t.table.version for sr, t in sorted(updates.items())},
            removed_srs=tuple(sorted(removed)),
        )

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

    # -- registrations and delegations (SFR-10, SFR-11, SFEMC-7) ----------------------------------

    def registrations(self, principal: Principal) -> list[Registration]:
        return self._active().registry.registrations(principal)

    @property
    def registry_version(self) -> int:
        return self._active().registry.version

    def register(self, principal: Principal, endpoint: Endpoint) -> RegistryChange:
        """Connect an endpoint (the SFEMC, or a tenant for its own names) and redistribute."""
        state = self._active()
        state.registry.require_fqdn(principal, normalise_fqdn(endpoint.fqdn))  # 403 before 400
        if endpoint.cluster not in state.topology.clusters:
            hint = did_you_mean(endpoint.cluster, state.topology.clusters, dotted=False)
            raise UserError(
                f"endpoint '{endpoint.sfe}': unknown cluster '{endpoint.cluster}'"
                + (f" ({hint})" if hint else ""),
                sfe=endpoint.sfe,
                cluster=endpoint.cluster,
            )
        change = state.registry.register(principal, endpoint)
        if change.changed:
            self._registry_changed(state, change)
        return change

    def withdraw(self, principal: Principal, sfe: str) -> RegistryChange:
        """Disconnect an endpoint: new requests go elsewhere once SRs have the new tables."""
        state = self._active()
        change = state.registry.withdraw(principal, sfe)
        self._registry_changed(state, change)
        return change

    def _registry_changed(self, state: _State, change: RegistryChange) -> None:
        with self._committing():
            updates = self._recompute(state, state.topology.service_routers, change.fqdns)

            def persist(w: Writer) -> None:
                if change.after is not None:
                    w.put_registration(change.after)
                elif change.before is not None:
                    w.delete_registration(change.before.endpoint.sfe)
                w.set_registry_version(state.registry.version)

            self._commit(state, persist, updates)
        log.info(
            "endpoint %s %s for %s: %d new table version(s)",
            next(r.endpoint.sfe for r in (change.after, change.before) if r is not None),
            "registered" if change.after is not None else "withdrawn",
            ", ".join(sorted(change.fqdns)),
            len(updates),
        )

    def delegations(self, principal: Principal) -> list[Delegation]:
        return self._active().registry.delegations(principal)

    def delegate(self, principal: Principal, name: str, tenant: str) -> Delegation:
        state = self._active()
        version = state.registry.version
        delegation = state.registry.delegate(principal, name, tenant)
        if state.registry.version != version:
            with self._committing():

                def persist(w: Writer) -> None:
                    w.put_delegation(delegation)
                    w.set_registry_version(state.registry.version)

                self._commit(state, persist, {})
            self._sync_certs(force=True)
        return delegation

    def undelegate(self, principal: Principal, name: str) -> Delegation:
        state = self._active()
        delegation = state.registry.undelegate(principal, name)
        with self._committing():

            def persist(w: Writer) -> None:
                w.delete_delegation(delegation.name)
                w.set_registry_version(state.registry.version)

            self._commit(state, persist, {})
        self._sync_certs(force=True)  # its certificates leave every SR
        return delegation

    # -- policies (SFR-5, SFR-6) ----------------------------------------------------------------

    def policy(self, principal: Principal, fqdn: str) -> RoutingPolicy:
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, "read the policy of")
        policy = state.policies.get(fqdn)
        if policy is None:
            raise NotFound(
                f"no routing policy for '{fqdn}' (the default: lowest latency)", fqdn=fqdn
            )
        return policy

    def policies(self, principal: Principal) -> list[RoutingPolicy]:
        state = self._active()
        return [
            p for f, p in sorted(state.policies.items()) if state.registry.may_manage(principal, f)
        ]

    def set_policy(self, principal: Principal, policy: RoutingPolicy) -> Mapping[str, int]:
        """Set an FQDN's routing policy; return the SRs with new table versions."""
        state = self._active()
        fqdn = normalise_fqdn(policy.fqdn)
        if fqdn != policy.fqdn:
            policy = replace(policy, fqdn=fqdn)
        state.registry.require_fqdn(principal, fqdn, "set the policy of")
        state.engine.check_policy(policy)
        if state.policies.get(fqdn) == policy:
            return {}
        return self._policy_changed(state, fqdn, policy)

    def delete_policy(self, principal: Principal, fqdn: str) -> Mapping[str, int]:
        self.policy(principal, fqdn)  # authorises; NotFound if there is none
        return self._policy_changed(self._active(), normalise_fqdn(fqdn), None)

    def _policy_changed(
        self, state: _State, fqdn: str, policy: RoutingPolicy | None
    ) -> Mapping[str, int]:
        with self._committing():
            if policy is None:
                del state.policies[fqdn]
            else:
                state.policies[fqdn] = policy
            updates = self._recompute(state, state.topology.service_routers, frozenset({fqdn}))

            def persist(w: Writer) -> None:
                if policy is None:
                    w.delete_policy(fqdn)
                else:
                    w.put_policy(policy)

            self._commit(state, persist, updates)
        return {sr: t.table.version for sr, t in sorted(updates.items())}

    # -- tables and routes (SFR-4, SFR-11) ------------------------------------------------------

    def table(self, principal: Principal, sr: str) -> PublishedTable:
        """An SR's current table (SRs and operators only: it names every tenant's endpoints)."""
        require_router(principal)
        return self._table(self._active(), sr)

    async def wait_table(
        self, principal: Principal, sr: str, since: int, timeout: float
    ) -> PublishedTable | None:
        """The SR's table once its version exceeds `since`; None after `timeout` seconds."""
        require_router(principal)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout, 0.0), MAX_WAIT_S)
        while True:
            table = self._table(self._active(), sr)
            if table.table.version > since:
                return table
            remaining = deadline - loop.time()
            if remaining <= 0 or self._draining:
                return None
            event = self._waiters.setdefault(sr, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    def _table(self, state: _State, sr: str) -> PublishedTable:
        table = state.tables.get(sr)
        if table is None:
            hint = did_you_mean(sr, state.topology.service_routers, dotted=False)
            raise NotFound(
                f"'{sr}' is not a service router" + (f" ({hint})" if hint else ""), sr=sr
            )
        return table

    def routes(
        self, principal: Principal, fqdn: str, from_node: str | None = None
    ) -> list[ForwardingTable]:
        """The ranked routes for one FQDN, per SR (or from one SR, or a UE's or cluster's SR),
        as tables holding that FQDN only."""
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, "read the routes of")
        if from_node is None:
            srs = sorted(state.tables)
        else:
            node = self._node(state, from_node)
            sr = from_node if node.kind is NodeKind.SERVICE_ROUTER else node.sr
            if sr is None:
                raise UserError(
                    f"'{from_node}' is a {node.kind.value.replace('_', ' ')}; requests enter "
                    "at a service router (or a user equipment's or cluster's SR)",
                    node=from_node,
                )
            srs = [sr]
        found = [
            ForwardingTable(sr, table.table.version, {fqdn: table.table.routes[fqdn]})
            for sr in srs
            if (table := state.tables.get(sr)) is not None and fqdn in table.table.routes
        ]
        if not found:
            raise NotFound(
                f"no routes for '{fqdn}': no endpoint is registered for it and it has no policy",
                fqdn=fqdn,
            )
        return found

    # -- content certificates (SFR-22, SFR-23) --------------------------------------------------

    def _cert_manager(self) -> CertManager:
        if self._certs is None:
            raise CertsDisabled(
                "this PCE manages no certificates (start it with a state directory: "
                "'flame serve pce' does)"
            )
        return self._certs

    def _cert_fqdn(self, principal: Principal, fqdn: str, action: str) -> tuple[_State, str]:
        state = self._active()
        fqdn = normalise_fqdn(fqdn)
        state.registry.require_fqdn(principal, fqdn, action)
        return state, fqdn

    def certs(self, principal: Principal) -> list[dict[str, Any]]:
        """Metadata of the certificates of the FQDNs `principal` manages (no chain, no key)."""
        certs = self._cert_manager()
        state = self._active()
        return [
            r.public(redirect_http=certs.redirects.get(f, False), with_chain=False)
            for f, r in sorted(certs.records.items())
            if state.registry.may_manage(principal, f)
        ]

    def cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """One FQDN's certificate chain and metadata (never its key)."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "read the certificate of")
        return certs.get(fqdn).public(redirect_http=certs.redirects.get(fqdn, False))

    def put_cert(
        self,
        principal: Principal,
        fqdn: str,
        chain_pem: str,
        key_pem: str,
        redirect_http: bool | None = None,
    ) -> dict[str, Any]:
        """Upload an FQDN's chain and key (SFR-22); it replaces the platform's certificate."""
        certs = self._cert_manager()
        state, fqdn = self._cert_fqdn(principal, fqdn, "upload a certificate for")
        record = certs.put_manual(fqdn, state.registry.owner_of(fqdn), chain_pem, key_pem)
        if redirect_http is not None:
            certs.set_redirect(fqdn, redirect_http)
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False))

    def set_cert_options(
        self, principal: Principal, fqdn: str, *, redirect_http: bool
    ) -> dict[str, Any]:
        """Redirect plain HTTP for `fqdn` to https at the SRs (or stop)."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "change the TLS options of")
        certs.set_redirect(fqdn, redirect_http)
        self._sync_certs(force=True)
        return {"fqdn": fqdn, "redirect_http": redirect_http}

    def delete_cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """Remove an uploaded certificate; the platform issues one again if the FQDN is
        delegated and routed."""
        certs = self._cert_manager()
        _, fqdn = self._cert_fqdn(principal, fqdn, "delete the certificate of")
        record = certs.delete_manual(fqdn)
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False), with_chain=False)

    def renew_cert(self, principal: Principal, fqdn: str) -> dict[str, Any]:
        """Issue an FQDN's platform certificate again now (SFR-23)."""
        certs = self._cert_manager()
        state, fqdn = self._cert_fqdn(principal, fqdn, "renew the certificate of")
        record: CertRecord = certs.renew(fqdn, state.registry.owner_of(fqdn))
        self._sync_certs(force=True)
        return record.public(redirect_http=certs.redirects.get(fqdn, False))

    def ca_certificate(self) -> str:
        return self._cert_manager().ca_pem()

    async def wait_certs(
        self, principal: Principal, sr: str, since: int, timeout: float
    ) -> tuple[CertBundle | None, CertBundle, str]:
        """(the SR's bundle once newer than `since` or None after `timeout`, the current one,
        the store's generation)."""
        require_router(principal)
        certs = self._cert_manager()
        self._table(self._active(), sr)  # 404 for an unknown SR
        bundle = await certs.wait(
            sr, since, min(max(timeout, 0.0), MAX_WAIT_S), lambda: self._draining
        )
        return bundle, certs.bundle(sr), certs.generation

    def cert_body(self, bundle: CertBundle) -> bytes:
        return self._cert_manager().body(bundle)

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
