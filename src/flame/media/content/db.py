"""SQLite (default) or PostgreSQL behind one small interface, used from asyncio.

Every statement runs on one dedicated thread per database, so the event loop never waits for
the disk or the network, and statements of one process are serialised (a read-check-write
done inside `transaction` is atomic in this process; across processes sharing a PostgreSQL
database it is a real transaction). Statements are written once with ``?`` placeholders;
PostgreSQL gets ``%s``. JSON columns are ``TEXT`` in SQLite and ``JSONB`` in PostgreSQL
(`JSON` in the DDL below is replaced), and always travel as text here.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from flame.common.errors import ConfigError

__all__ = ["Database", "Tx"]

T = TypeVar("T")


class Tx(Protocol):
    """What a transaction function gets: statements with ``?`` placeholders."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, tuple(params))
        cols = [d[0] for d in cur.description or ()]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            if cur.description is None:
                return []
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return int(cur.rowcount)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="media-db")
        self._lock = threading.Lock()
        self._conn: Any = self._pool.submit(self._connect).result()

    @property
    def kind(self) -> str:
        return "postgresql" if self.postgres else "sqlite"

    def _connect(self) -> Any:
        if self.postgres:
            try:
                import psycopg  # noqa: PLC0415 - only with a PostgreSQL URL
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise ConfigError(
                    "PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'"
                ) from exc
            try:
                return psycopg.connect(self.url, autocommit=True)
            except psycopg.Error as exc:
                raise ConfigError(f"cannot connect to {self._redacted()}: {exc}") from None
        path = self.url.removeprefix("sqlite:///").removeprefix("sqlite://")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _redacted(self) -> str:
        _, at, tail = self.url.rpartition("@")
        return f"postgresql://***@{tail}" if at else self.url

    def ddl(self, text: str) -> str:
        """The schema text for this database (``JSON`` -> ``JSONB``, ``REAL`` -> double)."""
        if self.postgres:
            return text.replace(" JSON", " JSONB").replace(" REAL", " DOUBLE PRECISION")
        return text

    def _run_tx(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    return fn(_PgTx(self._conn))
            conn: sqlite3.Connection = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(_SqliteTx(conn))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def transaction_sync(self, fn: Callable[[Tx], T]) -> T:
        return self._pool.submit(self._run_tx, fn).result()

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in one transaction on the database thread."""
        loop = asyncio.get_running_loop()
        return await asyncio.wrap_future(self._pool.submit(self._run_tx, fn), loop=loop)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self.transaction(lambda tx: tx.query(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self.transaction(lambda tx: tx.execute(sql, params))

    def script(self, statements: Sequence[str]) -> None:
        def run(tx: Tx) -> None:
            for stmt in statements:
                tx.execute(self.ddl(stmt))

        self.transaction_sync(run)

    def close(self) -> None:
        def shut() -> None:
            self._conn.close()

        self._pool.submit(shut).result()
        self._pool.shutdown(wait=True)
