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

Modules: `state` (what is stored, and `Writer`: one write transaction, in either SQL dialect),
`sqlite` (`Store`), `postgres` (`PgStore`), `codec` (the JSON of topology values).
"""

from __future__ import annotations

from pathlib import Path

from flame.common.errors import FlameError
from flame.sfr.store.codec import (
    decode_change,
    decode_link,
    decode_node,
    encode_change,
    encode_link,
    encode_node,
    topology_digest,
)
from flame.sfr.store.postgres import PgStore, _redact
from flame.sfr.store.sqlite import Store
from flame.sfr.store.state import (
    COMPACT_AFTER,
    LeaseInfo,
    LeaseOutcome,
    NotActive,
    PersistedState,
    Writer,
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
