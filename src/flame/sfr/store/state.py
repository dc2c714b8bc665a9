"""What the PCE store holds and says, whichever database it is in: the lease's outcomes, the
persisted state, and `Writer`, the operations of one write transaction in either SQL dialect.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flame.common.errors import FlameError
from flame.sfr.models import RoutingPolicy, TopologyChange
from flame.sfr.registry import Delegation, Registration
from flame.sfr.store.codec import (
    decode_change,
    decode_snapshot,
    dumps,
    encode_change,
    encode_link,
    encode_node,
)
from flame.topology.model import Link, Node, Topology

SCHEMA_VERSION = 1
COMPACT_AFTER = 1000  # changes kept as a log before they are folded into a snapshot


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


# -- the two SQL dialects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells the store's statements: written once, with `{p}` before each
    table name and `?` for each parameter, and translated by `sql`."""

    name: str
    prefix: str  # of every table name ("pce_" in PostgreSQL, where the SFEMC's may live too)
    mark: str  # the parameter placeholder
    # Upserts: SQLite's INSERT OR REPLACE, or INSERT ... ON CONFLICT (key) DO UPDATE.
    replace: bool

    def sql(self, text: str) -> str:
        return _translate(self, text)

    def upsert(self, table: str, key: str, *columns: str) -> str:
        """Insert a row of (key, *columns), or overwrite the row with that key."""
        marks = ", ".join("?" * (1 + len(columns)))
        if self.replace:
            return self.sql(f"INSERT OR REPLACE INTO {{p}}{table} VALUES ({marks})")
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
        return self.sql(
            f"INSERT INTO {{p}}{table} VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )


@functools.cache
def _translate(dialect: Dialect, text: str) -> str:
    return text.replace("{p}", dialect.prefix).replace("?", dialect.mark)


SQLITE = Dialect("sqlite", prefix="", mark="?", replace=True)
POSTGRES = Dialect("postgresql", prefix="pce_", mark="%s", replace=False)


def meta_value(db: Any, dialect: Dialect, key: str) -> str | None:
    """A value of the `meta` table, on a DB-API connection (sqlite3 or psycopg)."""
    row = db.execute(dialect.sql("SELECT value FROM {p}meta WHERE key = ?"), (key,)).fetchone()
    return None if row is None else str(row[0])


def read_state(db: Any, dialect: Dialect) -> PersistedState:
    """The whole state, inside a read transaction the caller opened (one consistent snapshot)."""

    def rows(text: str) -> Any:
        return db.execute(dialect.sql(text))

    snapshot_text = meta_value(db, dialect, "snapshot")
    return PersistedState(
        generation=meta_value(db, dialect, "generation") or "",
        topology_digest=meta_value(db, dialect, "topology_digest"),
        snapshot=decode_snapshot(snapshot_text) if snapshot_text else None,
        changes=[
            decode_change(json.loads(text))
            for (text,) in rows("SELECT change FROM {p}changes ORDER BY seq")
        ],
        registrations=[
            Registration.from_dict(json.loads(text))
            for (text,) in rows("SELECT registration FROM {p}registrations ORDER BY sfe")
        ],
        delegations=[
            Delegation(name, tenant)
            for name, tenant in rows("SELECT name, tenant FROM {p}delegations ORDER BY name")
        ],
        policies=[
            RoutingPolicy.from_dict(json.loads(text))
            for (text,) in rows("SELECT policy FROM {p}policies ORDER BY fqdn")
        ],
        registry_version=int(meta_value(db, dialect, "registry_version") or 0),
        tables={
            sr: (int(version), digest)
            for sr, version, digest in rows("SELECT sr, version, digest FROM {p}tables")
        },
    )


class Writer:
    """The operations of one write transaction (`Store.write`), on a DB-API connection inside
    the transaction: sqlite3's, or psycopg's with `POSTGRES`."""

    def __init__(self, db: Any, dialect: Dialect = SQLITE) -> None:
        self._db = db
        self._dialect = dialect

    def _run(self, text: str, params: tuple[Any, ...] | None = None) -> Any:
        sql = self._dialect.sql(text)
        return self._db.execute(sql) if params is None else self._db.execute(sql, params)

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        # A cursor: psycopg's connections have no executemany (sqlite3's make one for it).
        with contextlib.closing(self._db.cursor()) as cursor:
            cursor.executemany(sql, rows)

    def add_change(self, change: TopologyChange) -> int:
        """Append a topology change; return how many are logged since the last snapshot."""
        self._run("INSERT INTO {p}changes (change) VALUES (?)", (dumps(encode_change(change)),))
        (count,) = self._run("SELECT count(*) FROM {p}changes").fetchone()
        return int(count)

    def snapshot(self, topology: Topology) -> None:
        """Fold the change log into a snapshot of the topology as it is now."""
        self._set_meta(
            "snapshot",
            dumps(
                {
                    "nodes": [encode_node(n) for n in topology.nodes.values()],
                    "links": [encode_link(k) for k in topology.links],
                }
            ),
        )
        self._run("DELETE FROM {p}changes")

    def rebase(self, digest: str) -> None:
        """Start over from a (new) topology file: drop the change log and the snapshot."""
        self._run("DELETE FROM {p}changes")
        self._run("DELETE FROM {p}meta WHERE key = 'snapshot'")
        self._set_meta("topology_digest", digest)

    def put_registration(self, registration: Registration) -> None:
        self._db.execute(
            self._dialect.upsert("registrations", "sfe", "registration"),
            (registration.endpoint.sfe, dumps(registration.to_dict())),
        )

    def delete_registration(self, sfe: str) -> None:
        self._run("DELETE FROM {p}registrations WHERE sfe = ?", (sfe,))

    def put_delegation(self, delegation: Delegation) -> None:
        self._db.execute(
            self._dialect.upsert("delegations", "name", "tenant"),
            (delegation.name, delegation.tenant),
        )

    def delete_delegation(self, name: str) -> None:
        self._run("DELETE FROM {p}delegations WHERE name = ?", (name,))

    def put_policy(self, policy: RoutingPolicy) -> None:
        self._db.execute(
            self._dialect.upsert("policies", "fqdn", "policy"),
            (policy.fqdn, dumps(policy.to_dict())),
        )

    def delete_policy(self, fqdn: str) -> None:
        self._run("DELETE FROM {p}policies WHERE fqdn = ?", (fqdn,))

    def set_registry_version(self, version: int) -> None:
        self._set_meta("registry_version", str(version))

    def put_tables(self, versions: Mapping[str, tuple[int, str]]) -> None:
        self._many(
            self._dialect.upsert("tables", "sr", "version", "digest"),
            [(sr, version, digest) for sr, (version, digest) in versions.items()],
        )

    def delete_tables(self, srs: Iterable[str]) -> None:
        self._many(self._dialect.sql("DELETE FROM {p}tables WHERE sr = ?"), [(sr,) for sr in srs])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(self._dialect.upsert("meta", "key", "value"), (key, value))
