"""The PCE's state and lease in one SQLite file (WAL); see `flame.sfr.store`."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from flame.common.errors import FlameError
from flame.sfr.store.state import (
    SCHEMA_VERSION,
    SQLITE,
    LeaseInfo,
    LeaseOutcome,
    NotActive,
    PersistedState,
    Writer,
    meta_value,
    read_state,
)

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
            found = meta_value(self._db, SQLITE, "schema_version")
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
                return read_state(self._db, SQLITE)
            finally:
                self._db.execute("COMMIT")

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
