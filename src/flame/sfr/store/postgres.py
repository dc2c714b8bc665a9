"""The PCE's state and lease in PostgreSQL (psycopg 3); see `flame.sfr.store`."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError, FlameError
from flame.sfr.store.sqlite import Store
from flame.sfr.store.state import (
    POSTGRES,
    SCHEMA_VERSION,
    LeaseInfo,
    LeaseOutcome,
    NotActive,
    PersistedState,
    Writer,
    meta_value,
    read_state,
)

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
            found = meta_value(db, POSTGRES, "schema_version")
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
            return read_state(db, POSTGRES)

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
            yield Writer(db, POSTGRES)
