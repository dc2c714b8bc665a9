"""Persisted PCE state in SQLite or PostgreSQL, and the lease that makes one PCE active
(SFR-11, SFR-20).

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

PostgreSQL (`PgStore`, `open_pce_store("postgresql://...")`) needs no shared file: PCEs on
several hosts share one database server (or a replicated one behind one address). The same
tables (prefixed `pce_`, so the SFEMC's may live in the same database) and the same lease, with
two differences: times are the *database's* clock (no clock skew between PCE hosts), and a lease
whose holder's database session has ended (its process killed, its host gone: the server sees
the connection close) is free at once rather than after its expiry. A PCE that loses its own
session treats its lease as lost (it steps down; it will take it back if nobody else did), so
two PCEs are never both active for longer than a renewal interval. Each write transaction locks
the lease row (`SELECT ... FOR UPDATE`) and re-checks it, as SQLite's `BEGIN IMMEDIATE` does.

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

from flame.common.errors import ConfigError, FlameError
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
    "PgStore",
    "Store",
    "Writer",
    "decode_change",
    "decode_link",
    "decode_node",
    "encode_change",
    "encode_link",
    "encode_node",
    "open_pce_store",
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


# -- PostgreSQL ------------------------------------------------------------------------------------

_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pce_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        expires DOUBLE PRECISION NOT NULL,
        epoch BIGINT NOT NULL,
        backend INTEGER
    )""",
    "CREATE TABLE IF NOT EXISTS pce_changes (seq BIGSERIAL PRIMARY KEY, change TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pce_registrations (
        sfe TEXT PRIMARY KEY, registration TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS pce_delegations (name TEXT PRIMARY KEY, tenant TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pce_policies (fqdn TEXT PRIMARY KEY, policy TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pce_tables (
        sr TEXT PRIMARY KEY, version BIGINT NOT NULL, digest TEXT NOT NULL)""",
    # The row always exists (free: nobody, expired), so taking it is always an UPDATE.
    "INSERT INTO pce_lease VALUES (1, '', 0, 0, NULL) ON CONFLICT (id) DO NOTHING",
)
_NOW = "extract(epoch from clock_timestamp())::double precision"
# The lease row, the database's time, and whether its holder's session has ended.
_LEASE_ROW = f"""
    SELECT holder, expires, epoch, {_NOW},
           backend IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM pg_stat_activity WHERE pid = pce_lease.backend)
    FROM pce_lease WHERE id = 1 FOR UPDATE"""
_SCHEMA_LOCK = 0x666C616D65504345  # pg_advisory_xact_lock key: "flamePCE"


def _redact(url: str) -> str:
    """Hide a password in a connection URL before it reaches a message or a log."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"


class PgStore(Store):
    """The PCE's state and lease in PostgreSQL (psycopg 3); see the module docstring.

    One connection, used under a lock by the event loop and the loading threads; a connection
    that fails is dropped and made again on the next call. `path` holds the URL, password
    hidden, for messages.
    """

    def __init__(
        self,
        url: str,
        holder: str | None = None,
        *,
        lease_ttl: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        try:
            import psycopg  # noqa: PLC0415 - needed only for PostgreSQL
        except ImportError:
            raise FlameError(
                "a PostgreSQL PCE store needs psycopg 3: pip install 'psycopg[binary]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.path = Path(_redact(url))  # what messages show (`flame serve pce` prints it)
        self.holder = holder or f"pce-{uuid.uuid4().hex[:12]}"
        self.lease_ttl = lease_ttl
        self.connect_timeout_s = connect_timeout_s
        self._clock = time.time  # unused: the database's clock decides
        self._lock = threading.RLock()
        self._conn: Any = None
        try:
            self._create_schema()
        except NotActive as exc:  # at start-up: the operator's to fix (or to retry)
            raise ConfigError(exc.message, path=str(self.path)) from None

    def _create_schema(self) -> None:
        with self._lock, self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _PG_SCHEMA:
                db.execute(statement)
            db.execute(
                "INSERT INTO pce_meta VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            db.execute(
                "INSERT INTO pce_meta VALUES ('generation', %s) ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex,),
            )
            found = self._pg_meta(db, "schema_version")
        if found != str(SCHEMA_VERSION):
            raise FlameError(
                f"PCE database {self.path} has schema version {found}, this PCE reads "
                f"{SCHEMA_VERSION}; upgrade the PCE or use a new database",
                path=str(self.path),
            )

    # -- connection ---------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._psycopg.connect(
                    self.url,
                    connect_timeout=max(1, round(self.connect_timeout_s)),
                    application_name=f"flame-pce {self.holder}"[:63],
                    autocommit=True,  # transactions only where `_tx` opens one
                )
            except self._psycopg.OperationalError as exc:
                self._conn = None
                raise NotActive(
                    f"cannot reach the PCE database {self.path}: {str(exc).strip()}",
                    holder=self.holder,
                ) from None
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, snapshot: bool = False) -> Iterator[Any]:
        """One transaction on our connection; a failed connection is dropped (NotActive)."""
        conn = self._connection()
        try:
            if snapshot:
                conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            else:
                conn.isolation_level = self._psycopg.IsolationLevel.READ_COMMITTED
            with conn.transaction():
                yield conn
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            raise NotActive(
                f"lost the PCE database {self.path}: {str(exc).strip() or type(exc).__name__}",
                holder=self.holder,
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # -- the lease ----------------------------------------------------------------------------

    def acquire(self) -> LeaseOutcome:
        """As `Store.acquire`, on the database's clock; a lease whose holder's session has
        ended is free at once. A PCE that cannot reach the database reports HELD: it cannot
        know that it still holds the lease, so it must not act as if it did."""
        with self._lock:
            try:
                with self._tx() as db:
                    holder, expires, epoch, now, gone = db.execute(_LEASE_ROW).fetchone()
                    new_expiry = now + self.lease_ttl
                    mine = holder == self.holder
                    if mine and expires > now:
                        db.execute(
                            "UPDATE pce_lease SET expires = %s, backend = pg_backend_pid() "
                            "WHERE id = 1",
                            (new_expiry,),
                        )
                        return LeaseOutcome.RENEWED
                    if expires <= now or gone or mine:
                        db.execute(
                            "UPDATE pce_lease SET holder = %s, expires = %s, epoch = %s, "
                            "backend = pg_backend_pid() WHERE id = 1",
                            (self.holder, new_expiry, int(epoch) + 1),
                        )
                        return LeaseOutcome.ACQUIRED
                    return LeaseOutcome.HELD
            except NotActive:
                return LeaseOutcome.HELD

    def release(self) -> None:
        with self._lock, contextlib.suppress(NotActive), self._tx() as db:
            db.execute("UPDATE pce_lease SET expires = 0 WHERE holder = %s", (self.holder,))

    def lease(self) -> LeaseInfo | None:
        with self._lock:
            try:
                with self._tx() as db:
                    row = db.execute("SELECT holder, expires, epoch FROM pce_lease").fetchone()
            except NotActive:
                return None
        if row is None or not row[0]:
            return None
        return LeaseInfo(str(row[0]), float(row[1]), int(row[2]))

    # -- reading and writing --------------------------------------------------------------------

    def load(self) -> PersistedState:
        """The whole state from one snapshot (REPEATABLE READ)."""
        with self._lock, self._tx(snapshot=True) as db:
            snapshot_text = self._pg_meta(db, "snapshot")
            return PersistedState(
                generation=self._pg_meta(db, "generation") or "",
                topology_digest=self._pg_meta(db, "topology_digest"),
                snapshot=_decode_snapshot(snapshot_text) if snapshot_text else None,
                changes=[
                    decode_change(json.loads(text))
                    for (text,) in db.execute("SELECT change FROM pce_changes ORDER BY seq")
                ],
                registrations=[
                    Registration.from_dict(json.loads(text))
                    for (text,) in db.execute(
                        "SELECT registration FROM pce_registrations ORDER BY sfe"
                    )
                ],
                delegations=[
                    Delegation(name, tenant)
                    for name, tenant in db.execute(
                        "SELECT name, tenant FROM pce_delegations ORDER BY name"
                    )
                ],
                policies=[
                    RoutingPolicy.from_dict(json.loads(text))
                    for (text,) in db.execute("SELECT policy FROM pce_policies ORDER BY fqdn")
                ],
                registry_version=int(self._pg_meta(db, "registry_version") or 0),
                tables={
                    sr: (int(version), digest)
                    for sr, version, digest in db.execute(
                        "SELECT sr, version, digest FROM pce_tables"
                    )
                },
            )

    @contextlib.contextmanager
    def write(self) -> Iterator[Writer]:
        """A write transaction, only while this PCE holds the lease (renewed by it); NotActive,
        writing nothing, otherwise or when the database is lost mid-way."""
        with self._lock, self._tx() as db:
            holder, expires, _epoch, now, _gone = db.execute(_LEASE_ROW).fetchone()
            if holder != self.holder or expires <= now:
                raise NotActive(
                    "this PCE no longer holds the lease; another PCE is (or will be) active",
                    holder=self.holder,
                )
            db.execute(
                "UPDATE pce_lease SET expires = %s, backend = pg_backend_pid() WHERE id = 1",
                (now + self.lease_ttl,),
            )
            yield PgWriter(db)

    @staticmethod
    def _pg_meta(db: Any, key: str) -> str | None:
        row = db.execute("SELECT value FROM pce_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])


class PgWriter(Writer):
    """`Writer` in PostgreSQL's dialect (upserts with ON CONFLICT)."""

    def __init__(self, db: Any) -> None:  # a psycopg connection inside a transaction
        self._pg = db

    def add_change(self, change: TopologyChange) -> int:
        self._pg.execute(
            "INSERT INTO pce_changes (change) VALUES (%s)", (_dumps(encode_change(change)),)
        )
        (count,) = self._pg.execute("SELECT count(*) FROM pce_changes").fetchone()
        return int(count)

    def snapshot(self, topology: Topology) -> None:
        self._set_meta(
            "snapshot",
            _dumps(
                {
                    "nodes": [encode_node(n) for n in topology.nodes.values()],
                    "links": [encode_link(k) for k in topology.links],
                }
            ),
        )
        self._pg.execute("DELETE FROM pce_changes")

    def rebase(self, digest: str) -> None:
        self._pg.execute("DELETE FROM pce_changes")
        self._pg.execute("DELETE FROM pce_meta WHERE key = 'snapshot'")
        self._set_meta("topology_digest", digest)

    def put_registration(self, registration: Registration) -> None:
        self._pg.execute(
            "INSERT INTO pce_registrations VALUES (%s, %s) "
            "ON CONFLICT (sfe) DO UPDATE SET registration = EXCLUDED.registration",
            (registration.endpoint.sfe, _dumps(registration.to_dict())),
        )

    def delete_registration(self, sfe: str) -> None:
        self._pg.execute("DELETE FROM pce_registrations WHERE sfe = %s", (sfe,))

    def put_delegation(self, delegation: Delegation) -> None:
        self._pg.execute(
            "INSERT INTO pce_delegations VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET tenant = EXCLUDED.tenant",
            (delegation.name, delegation.tenant),
        )

    def delete_delegation(self, name: str) -> None:
        self._pg.execute("DELETE FROM pce_delegations WHERE name = %s", (name,))

    def put_policy(self, policy: RoutingPolicy) -> None:
        self._pg.execute(
            "INSERT INTO pce_policies VALUES (%s, %s) "
            "ON CONFLICT (fqdn) DO UPDATE SET policy = EXCLUDED.policy",
            (policy.fqdn, _dumps(policy.to_dict())),
        )

    def delete_policy(self, fqdn: str) -> None:
        self._pg.execute("DELETE FROM pce_policies WHERE fqdn = %s", (fqdn,))

    def set_registry_version(self, version: int) -> None:
        self._set_meta("registry_version", str(version))

    def put_tables(self, versions: Mapping[str, tuple[int, str]]) -> None:
        with self._pg.cursor() as cur:
            cur.executemany(
                "INSERT INTO pce_tables VALUES (%s, %s, %s) ON CONFLICT (sr) "
                "DO UPDATE SET version = EXCLUDED.version, digest = EXCLUDED.digest",
                [(sr, version, digest) for sr, (version, digest) in versions.items()],
            )

    def delete_tables(self, srs: Iterable[str]) -> None:
        with self._pg.cursor() as cur:
            cur.executemany("DELETE FROM pce_tables WHERE sr = %s", [(sr,) for sr in srs])

    def _set_meta(self, key: str, value: str) -> None:
        self._pg.execute(
            "INSERT INTO pce_meta VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )


def open_pce_store(db: str | Path, holder: str | None = None, *, lease_ttl: float = 10.0) -> Store:
    """The PCE's store for `db`: `postgresql://...` (`PgStore`), else a SQLite file path (or
    `sqlite:///PATH`)."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PgStore(text, holder, lease_ttl=lease_ttl)
    if "://" in text and not text.startswith("sqlite:///"):
        raise FlameError(
            f"unsupported PCE database {_redact(text)!r}: give a SQLite file path, "
            "sqlite:///PATH or postgresql://user@host:port/db"
        )
    return Store(text.removeprefix("sqlite:///"), holder, lease_ttl=lease_ttl)


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
