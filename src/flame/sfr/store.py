"""Persisted PCE state in SQLite, and the lease that makes one PCE active (SFR-11, SFR-20).

What a PCE needs to rebuild exactly the same forwarding tables after a restart, or on a standby
taking over: the run-time topology changes (replayed over the topology file), the registrations
made through the API (static ones come from the file), delegations, routing policies, the
registry version, and each SR's table version with a digest of its content, so versions keep
growing across PCEs and an unchanged table keeps its version.

Several PCE processes may open one database file (WAL mode: readers never block the writer).
Exactly one is active: it holds the row in `lease` and renews its expiry; the others are
standbys polling `acquire()`, and the first to find the lease expired takes it (SFR-20). Every
write transaction re-checks the lease under SQLite's write lock (`BEGIN IMMEDIATE`), so a PCE
that stalled past its expiry and lost the lease cannot write over its successor: it gets
`NotActive` instead. Times are wall-clock seconds (`time.time`), shared by processes on one host;
across hosts, the lease TTL must exceed the clock skew.

After `COMPACT_AFTER` changes the active PCE folds them into a snapshot of the topology, so a
restart replays a bounded log. Editing the topology file supersedes the run-time changes: if
the file's content differs from the one they were made on, they are dropped at load.

Exception tree::

    FlameError
    └── NotActive   503  this PCE is a standby (or just lost its lease); ask the active one
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from flame.common.errors import FlameError
from flame.sfr.models import (
    AddNode,
    LinkCost,
    LinkLatency,
    LinkState,
    RemoveNode,
    RoutingPolicy,
    TopologyChange,
)
from flame.sfr.registry import Delegation, Registration
from flame.topology.geo import GeoPoint
from flame.topology.model import (
    Link,
    Node,
    NodeKind,
    Resources,
    Topology,
    Vim,
)
from flame.topology.model import (
    LinkState as LinkUpDown,
)

__all__ = [
    "COMPACT_AFTER",
    "LeaseInfo",
    "LeaseOutcome",
    "NotActive",
    "PersistedState",
    "Store",
    "Writer",
    "decode_change",
    "decode_link",
    "decode_node",
    "encode_change",
    "encode_link",
    "encode_node",
    "topology_digest",
]

SCHEMA_VERSION = 1
COMPACT_AFTER = 1000  # changes kept as a log before they are folded into a snapshot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, change TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (sfe TEXT PRIMARY KEY, registration TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS delegations (name TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (fqdn TEXT PRIMARY KEY, policy TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tables (sr TEXT PRIMARY KEY, version INTEGER NOT NULL, digest TEXT NOT NULL);
"""


class NotActive(FlameError):
    """This PCE is not the active one: it is a standby, or it has just lost its lease.

    Temporary: the caller should ask another PCE, or this one again after `Retry-After`.
    """

    code: ClassVar[str] = "pce_not_active"
    http_status: ClassVar[int] = 503


class LeaseOutcome(enum.StrEnum):
    ACQUIRED = "acquired"  # we hold the lease now and did not (or it had expired on us)
    RENEWED = "renewed"  # we held it and still do
    HELD = "held"  # another PCE holds it


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    holder: str
    expires: float
    epoch: int  # grows each time the lease changes hands


@dataclass(slots=True)
class PersistedState:
    """Everything `load()` read, in one consistent snapshot of the database."""

    generation: str  # random, made with the database: versions only compare within one
    topology_digest: str | None  # of the topology file the changes were made on
    snapshot: tuple[tuple[Node, ...], tuple[Link, ...]] | None  # compacted changes, if any
    changes: list[TopologyChange] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    delegations: list[Delegation] = field(default_factory=list)
    policies: list[RoutingPolicy] = field(default_factory=list)
    registry_version: int = 0
    tables: dict[str, tuple[int, str]] = field(default_factory=dict)  # sr -> (version, digest)


class Store:
    """One PCE's handle on the shared database; `holder` names this PCE in the lease."""

    def __init__(
        self,
        path: str | Path,
        holder: str | None = None,
        *,
        lease_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        self.path = Path(path)
        self.holder = holder or f"pce-{uuid.uuid4().hex[:12]}"
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._lock = threading.RLock()  # one connection, used by the loop and by load threads
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, IMMEDIATE for writes.
        self._db = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Statement by statement: executescript() would commit our transaction first.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('generation', ?)", (uuid.uuid4().hex,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            found = self._meta("schema_version")
        if found != str(SCHEMA_VERSION):
            raise FlameError(
                f"PCE database {self.path} has schema version {found}, this PCE reads "
                f"{SCHEMA_VERSION}; upgrade the PCE or start with a new database file",
                path=str(self.path),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the lease (SFR-20) ------------------------------------------------------------------

    def acquire(self) -> LeaseOutcome:
        """Take the lease if it is free or expired, or renew it if we hold it."""
        with self._lock, self._transaction():
            now = self._clock()
            row = self._db.execute("SELECT holder, expires, epoch FROM lease").fetchone()
            expires = now + self.lease_ttl
            if row is None:
                self._db.execute("INSERT INTO lease VALUES (1, ?, ?, 1)", (self.holder, expires))
                return LeaseOutcome.ACQUIRED
            holder, old_expires, epoch = row
            if holder == self.holder and old_expires > now:
                self._db.execute("UPDATE lease SET expires = ?", (expires,))
                return LeaseOutcome.RENEWED
            if old_expires <= now:
                self._db.execute(
                    "UPDATE lease SET holder = ?, expires = ?, epoch = ?",
                    (self.holder, expires, epoch + 1),
                )
                return LeaseOutcome.ACQUIRED
            return LeaseOutcome.HELD

    def release(self) -> None:
        """Give the lease up at once (a clean shutdown), so a standby need not wait it out."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE lease SET expires = 0 WHERE holder = ?", (self.holder,))

    def lease(self) -> LeaseInfo | None:
        with self._lock:
            row = self._db.execute("SELECT holder, expires, epoch FROM lease").fetchone()
        return None if row is None else LeaseInfo(str(row[0]), float(row[1]), int(row[2]))

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> PersistedState:
        """Read the whole state in one read transaction (a consistent snapshot under WAL)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                snapshot_text = self._meta("snapshot")
                state = PersistedState(
                    generation=self._meta("generation") or "",
                    topology_digest=self._meta("topology_digest"),
                    snapshot=_decode_snapshot(snapshot_text) if snapshot_text else None,
                    changes=[
                        decode_change(json.loads(text))
                        for (text,) in self._db.execute("SELECT change FROM changes ORDER BY seq")
                    ],
                    registrations=[
                        Registration.from_dict(json.loads(text))
                        for (text,) in self._db.execute(
                            "SELECT registration FROM registrations ORDER BY sfe"
                        )
                    ],
                    delegations=[
                        Delegation(name, tenant)
                        for name, tenant in self._db.execute(
                            "SELECT name, tenant FROM delegations ORDER BY name"
                        )
                    ],
                    policies=[
                        RoutingPolicy.from_dict(json.loads(text))
                        for (text,) in self._db.execute("SELECT policy FROM policies ORDER BY fqdn")
                    ],
                    registry_version=int(self._meta("registry_version") or 0),
                    tables={
                        sr: (int(version), digest)
                        for sr, version, digest in self._db.execute(
                            "SELECT sr, version, digest FROM tables"
                        )
                    },
                )
            finally:
                self._db.execute("COMMIT")
        return state

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Writer]:
        """A write transaction, only while this PCE holds the lease (which it also renews).

        Raises NotActive, writing nothing, if another PCE holds the lease or ours expired.
        """
        with self._lock, self._transaction():
            now = self._clock()
            row = self._db.execute("SELECT holder, expires FROM lease").fetchone()
            if row is None or row[0] != self.holder or row[1] <= now:
                raise NotActive(
                    "this PCE no longer holds the lease; another PCE is (or will be) active",
                    holder=self.holder,
                )
            self._db.execute("UPDATE lease SET expires = ?", (now + self.lease_ttl,))
            yield Writer(self._db)

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


class Writer:
    """The operations of one write transaction; see `Store.write`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add_change(self, change: TopologyChange) -> int:
        """Append a topology change; return how many are logged since the last snapshot."""
        self._db.execute(
            "INSERT INTO changes (change) VALUES (?)", (_dumps(encode_change(change)),)
        )
        (count,) = self._db.execute("SELECT count(*) FROM changes").fetchone()
        return int(count)

    def snapshot(self, topology: Topology) -> None:
        """Fold the change log into a snapshot of the topology as it is now."""
        self._set_meta(
            "snapshot",
            _dumps(
                {
                    "nodes": [encode_node(n) for n in topology.nodes.values()],
                    "links": [encode_link(k) for k in topology.links],
                }
            ),
        )
        self._db.execute("DELETE FROM changes")

    def rebase(self, digest: str) -> None:
        """Start over from a (new) topology file: drop the change log and the snapshot."""
        self._db.execute("DELETE FROM changes")
        self._db.execute("DELETE FROM meta WHERE key = 'snapshot'")
        self._set_meta("topology_digest", digest)

    def put_registration(self, registration: Registration) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO registrations VALUES (?, ?)",
            (registration.endpoint.sfe, _dumps(registration.to_dict())),
        )

    def delete_registration(self, sfe: str) -> None:
        self._db.execute("DELETE FROM registrations WHERE sfe = ?", (sfe,))

    def put_delegation(self, delegation: Delegation) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO delegations VALUES (?, ?)", (delegation.name, delegation.tenant)
        )

    def delete_delegation(self, name: str) -> None:
        self._db.execute("DELETE FROM delegations WHERE name = ?", (name,))

    def put_policy(self, policy: RoutingPolicy) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO policies VALUES (?, ?)", (policy.fqdn, _dumps(policy.to_dict()))
        )

    def delete_policy(self, fqdn: str) -> None:
        self._db.execute("DELETE FROM policies WHERE fqdn = ?", (fqdn,))

    def set_registry_version(self, version: int) -> None:
        self._set_meta("registry_version", str(version))

    def put_tables(self, versions: Mapping[str, tuple[int, str]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO tables VALUES (?, ?, ?)",
            [(sr, version, digest) for sr, (version, digest) in versions.items()],
        )

    def delete_tables(self, srs: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM tables WHERE sr = ?", [(sr,) for sr in srs])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


# -- JSON codecs for topology values -----------------------------------------------------------
#
# Also the wire format of `POST /v1/topology/nodes` answers and `GET /v1/topology`.


def _dumps(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _point(data: Mapping[str, Any] | None) -> GeoPoint | None:
    return None if data is None else GeoPoint(float(data["latitude"]), float(data["longitude"]))


def _resources(data: Mapping[str, Any] | None) -> Resources | None:
    if data is None:
        return None
    return Resources(float(data["cpus"]), int(data["memory_bytes"]), int(data["disk_bytes"]))


def _resources_dict(r: Resources | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"cpus": r.cpus, "memory_bytes": r.memory_bytes, "disk_bytes": r.disk_bytes}


def encode_node(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "kind": node.kind.value,
        "location": (
            None
            if node.location is None
            else {"latitude": node.location.latitude, "longitude": node.location.longitude}
        ),
        "location_name": node.location_name,
        "sr": node.sr,
        "address": node.address,
        "capacity": _resources_dict(node.capacity),
        "reserved": _resources_dict(node.reserved),
        "vim": None if node.vim is None else node.vim.value,
    }


def decode_node(data: Mapping[str, Any]) -> Node:
    return Node(
        id=str(data["id"]),
        kind=NodeKind(data["kind"]),
        location=_point(data.get("location")),
        location_name=data.get("location_name"),
        sr=data.get("sr"),
        address=data.get("address"),
        capacity=_resources(data.get("capacity")),
        reserved=_resources(data.get("reserved")),
        vim=None if data.get("vim") is None else Vim(data["vim"]),
    )


def encode_link(link: Link) -> dict[str, Any]:
    return {
        "a": link.a,
        "b": link.b,
        "latency_ms": link.latency_ms,
        "bandwidth_bps": link.bandwidth_bps,
        "cost": link.cost,
        "state": link.state.value,
        "class": link.link_class,
    }


def decode_link(data: Mapping[str, Any]) -> Link:
    bandwidth, cost = data.get("bandwidth_bps"), data.get("cost")
    return Link(
        a=str(data["a"]),
        b=str(data["b"]),
        latency_ms=float(data.get("latency_ms", 1.0)),
        bandwidth_bps=None if bandwidth is None else float(bandwidth),
        cost=None if cost is None else float(cost),
        state=LinkUpDown(data.get("state", "up")),
        link_class=data.get("class"),
    )


def encode_change(change: TopologyChange) -> dict[str, Any]:
    match change:
        case LinkState(a=a, b=b, up=up):
            return {"type": "link_state", "a": a, "b": b, "up": up}
        case LinkLatency(a=a, b=b, latency_ms=latency):
            return {"type": "link_latency", "a": a, "b": b, "latency_ms": latency}
        case LinkCost(a=a, b=b, cost=cost):
            return {"type": "link_cost", "a": a, "b": b, "cost": cost}
        case AddNode(node=node, links=links):
            return {
                "type": "add_node",
                "node": encode_node(node),
                "links": [encode_link(k) for k in links],
            }
        case RemoveNode(node=node_id):
            return {"type": "remove_node", "node": node_id}
    raise TypeError(f"not a topology change: {change!r}")


def decode_change(data: Mapping[str, Any]) -> TopologyChange:
    kind = data.get("type")
    if kind == "link_state":
        return LinkState(str(data["a"]), str(data["b"]), bool(data["up"]))
    if kind == "link_latency":
        return LinkLatency(str(data["a"]), str(data["b"]), float(data["latency_ms"]))
    if kind == "link_cost":
        cost = data.get("cost")
        return LinkCost(str(data["a"]), str(data["b"]), None if cost is None else float(cost))
    if kind == "add_node":
        return AddNode(decode_node(data["node"]), tuple(decode_link(k) for k in data["links"]))
    if kind == "remove_node":
        return RemoveNode(str(data["node"]))
    raise ValueError(f"unknown topology change type {kind!r}")


def _decode_snapshot(text: str) -> tuple[tuple[Node, ...], tuple[Link, ...]]:
    data = json.loads(text)
    return (
        tuple(decode_node(n) for n in data["nodes"]),
        tuple(decode_link(k) for k in data["links"]),
    )


def topology_digest(topology: Topology) -> str:
    """A digest of what routing depends on in a topology file (not its comments or layout)."""
    doc = {
        "nodes": [encode_node(n) for n in topology.nodes.values()],
        "links": [encode_link(k) for k in topology.links],
        "locations": {
            name: [p.latitude, p.longitude] for name, p in sorted(topology.locations.items())
        },
    }
    return hashlib.sha256(_dumps(doc).encode("utf-8")).hexdigest()
