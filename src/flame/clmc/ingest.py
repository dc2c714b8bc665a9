"""Write path (CLMC-8, 9): parse, check types, log durably, acknowledge, apply in big batches.

    request thread:  parse body -> drop type conflicts (types reserved under a lock, so two
                     racing writes cannot both introduce a field with different types)
                     -> WAL commit (group fsync) -> answer
    applier thread:  queue of durable records -> merge per table -> store.append_many(rows,
                     meta = WAL position) in one transaction

Acknowledged means durable: the answer goes out only after the record is fsynced. A restart
replays the WAL from the position the store last recorded. A backlog over `max_backlog_bytes`
refuses new writes with `Overloaded` (503 + Retry-After) rather than queueing without bound.
Queries call `wait_applied()` first, so a client reads its own acknowledged writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.errors import DatabaseNotFound, Overloaded, RetentionPolicyNotFound
from flame.clmc.lineproto import Dropped, MeasurementBatch, parse
from flame.clmc.store.base import FIELD, KIND_KEY, FieldType, Store
from flame.clmc.wal import Position, WriteAheadLog, format_position, parse_position

__all__ = ["Ingest", "WriteOutcome"]

log = logging.getLogger("flame.clmc.ingest")

_META_KEY = "flame.wal.applied"
_U32 = struct.Struct("<I")

Item = tuple[str, str, str, pa.Table]  # database, rp, measurement, rows


@dataclass
class WriteOutcome:
    """What one write did, and InfluxDB's error text for it (None = 204)."""

    points: int = 0
    parse_errors: list[str] = field(default_factory=list)
    first_error_line: int | None = None
    dropped: list[Dropped] = field(default_factory=list)

    def error(self) -> str | None:
        if self.dropped:
            return f"partial write: {self.dropped[0].message} dropped={len(self.dropped)}"
        if not self.parse_errors:
            return None
        joined = "\n".join(self.parse_errors)
        return f"partial write: {joined} dropped=0" if self.points else joined

    def error_line(self) -> int | None:
        if self.dropped:
            return self.dropped[0].line
        return self.first_error_line


def _field_index(table: pa.Table, key: str) -> int:
    for i, f in enumerate(table.schema):
        if f.name == key and (f.metadata or {}).get(KIND_KEY) == FIELD:
            return i
    raise KeyError(key)


def encode_items(items: Sequence[Item]) -> bytes:
    out = [_U32.pack(len(items))]
    for db, rp, m, table in items:
        head = json.dumps([db, rp, m]).encode()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        body = sink.getvalue().to_pybytes()
        out += [_U32.pack(len(head)), head, _U32.pack(len(body)), body]
    return b"".join(out)


def decode_items(payload: bytes) -> list[Item]:
    (n,) = _U32.unpack_from(payload, 0)
    off = _U32.size
    items: list[Item] = []
    for _ in range(n):
        (hl,) = _U32.unpack_from(payload, off)
        db, rp, m = json.loads(payload[off + 4 : off + 4 + hl])
        off += 4 + hl
        (bl,) = _U32.unpack_from(payload, off)
        table = pa.ipc.open_stream(pa.py_buffer(payload[off + 4 : off + 4 + bl])).read_all()
        off += 4 + bl
        items.append((db, rp, m, table))
    return items


class Ingest:
    """The write path over one store; `start()` replays the WAL, `stop()` drains and closes."""

    def __init__(
        self,
        store: Store,
        wal_dir: Path,
        *,
        max_backlog_bytes: int = 512 << 20,
        batch_rows: int = 500_000,
        linger_s: float = 0.05,
        fsync: bool = True,
    ) -> None:
        self.store = store
        self._max_backlog = max_backlog_bytes
        self._batch_rows = batch_rows
        self._linger_s = linger_s
        self._queue: queue.Queue[tuple[Position, list[Item], int] | None] = queue.Queue()
        self._types_lock = threading.Lock()
        self._types: dict[tuple[str, str, str], dict[str, FieldType]] = {}
        self._state = threading.Condition()
        self._backlog = 0
        self._durable: Position = (0, 0)
        self._applied: Position = (0, 0)
        self._sizes: dict[Position, int] = {}
        self._thread: threading.Thread | None = None
        self.apply_errors = 0
        # Called with (database, measurement, rows) for every batch applied to the store, on
        # the applier thread: the alert engine folds data in as it lands (CLMC-19..22).
        self.observers: list[Callable[[str, str, pa.Table], None]] = []
        self._running = threading.Event()  # cleared while applying is paused
        self._running.set()
        self._abandon = False
        self._wal = WriteAheadLog(wal_dir, self._on_durable, fsync=fsync)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> int:
        """Replay what the store has not applied yet, then start applying; returns records replayed."""
        after = parse_position(self.store.get_meta(_META_KEY))
        replayed = 0
        for pos, payload in self._wal.replay(after):
            self._apply([(pos, decode_items(payload), 0)])
            replayed += 1
        self._wal.move_past(after)
        with self._state:
            self._applied = self._durable = max(after, self._wal.position)
        self._wal.drop_applied(self._applied)
        self._thread = threading.Thread(target=self._run, name="clmc-apply", daemon=True)
        self._thread.start()
        if replayed:
            log.info("replayed %d write-ahead-log records; now accepting writes", replayed)
        return replayed

    def stop(self, drain: bool = True) -> None:
        """Stop applying and close the log. `drain=False` leaves queued records to the replay
        at the next start (a fast stop; nothing acknowledged is lost either way)."""
        if self._thread is not None:
            self._abandon = not drain
            self._queue.put(None)
            self._running.set()
            self._thread.join()
            self._thread = None
        self._wal.close()

    # -- writing --------------------------------------------------------------------------------

    def check_target(self, database: str, rp: str | None) -> str:
        """The retention policy a write goes to; raises if the database or policy is unknown."""
        if database not in self.store.databases():
            raise DatabaseNotFound(database)
        policies = self.store.retention_policies(database)
        if rp:
            if not any(p.name == rp for p in policies):
                raise RetentionPolicyNotFound(rp)
            return rp
        return next((p.name for p in policies if p.default), "autogen")

    def write(
        self,
        database: str,
        rp: str | None,
        body: bytes,
        precision: str | None = "n",
        now_ns: int | None = None,
    ) -> WriteOutcome:
        """Parse and durably log one write body (blocking: run it in a worker thread)."""
        target_rp = self.check_target(database, rp)
        with self._state:
            if self._backlog > self._max_backlog:
                raise Overloaded(
                    f"ingest backlog of {self._backlog >> 20} MiB is over its bound; retry shortly"
                )
        result = parse(body, precision, now_ns, lambda m: self._known(database, target_rp, m))
        outcome = WriteOutcome(parse_errors=[e.influx_message for e in result.errors])
        if result.errors:
            outcome.first_error_line = result.errors[0].line_no
        items: list[Item] = []
        with self._types_lock:
            for batch in result.batches:
                kept = self._check_types(database, target_rp, batch, outcome.dropped)
                if kept.table.num_rows:
                    items.append((database, target_rp, batch.measurement, kept.table))
        outcome.dropped = sorted([*result.dropped, *outcome.dropped], key=lambda d: d.line)
        outcome.points = sum(t.num_rows for *_, t in items)
        if items:
            payload = encode_items(items)
            with self._state:
                self._backlog += len(payload)
            try:
                self._wal.commit(payload, items)
            except BaseException:
                with self._state:
                    self._backlog -= len(payload)
                raise
        return outcome

    def forget_types(self) -> None:
        """Drop the field types cached from the store (after DROP/DELETE changed the schema)."""
        with self._types_lock:
            self._types.clear()

    def _known(self, db: str, rp: str, measurement: str) -> dict[str, FieldType]:
        with self._types_lock:
            return dict(self._types_for(db, rp, measurement))

    def _types_for(self, db: str, rp: str, measurement: str) -> dict[str, FieldType]:
        key = (db, rp, measurement)
        known = self._types.get(key)
        if known is None:
            schema = self.store.schema(db, rp, measurement)
            known = dict(schema.field_types) if schema is not None else {}
            self._types[key] = known
        return known

    def _check_types(
        self, db: str, rp: str, batch: MeasurementBatch, dropped: list[Dropped]
    ) -> MeasurementBatch:
        """Drop rows whose field types clash with the stored (or just reserved) ones."""
        known = self._types_for(db, rp, batch.measurement)
        drop = np.zeros(batch.table.num_rows, dtype=bool)
        clashing: set[str] = set()
        for k, t in batch.field_types().items():
            existing = known.get(k)
            if existing is None or existing == t:
                continue
            clashing.add(k)
            col = batch.table.column(_field_index(batch.table, k))
            hit = col.is_valid().to_numpy(zero_copy_only=False) & ~drop
            message = (
                f'field type conflict: input field "{k}" on measurement '
                f'"{batch.measurement}" is type {t}, already exists as type {existing}'
            )
            dropped.extend(Dropped(int(line), message) for line in batch.lines[hit])
            drop |= hit
        if clashing:
            batch = batch.without_rows(drop)
            # What is left of a clashing column is all null: remove it, it must not add a type.
            keep = [
                i
                for i, f in enumerate(batch.table.schema)
                if not (f.name in clashing and (f.metadata or {}).get(KIND_KEY) == FIELD)
            ]
            batch = MeasurementBatch(batch.measurement, batch.table.select(keep), batch.lines)
        for k, t in batch.field_types().items():
            known.setdefault(k, t)
        return batch

    def _on_durable(self, pos: Position, payload: bytes, items: object) -> None:
        decoded: list[Item] = items if isinstance(items, list) else decode_items(payload)
        with self._state:
            self._durable = pos
        self._queue.put((pos, decoded, len(payload)))

    # -- applying -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold applying (writes are still logged and acknowledged), e.g. for a store backup."""
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def _run(self) -> None:
        busy_until = 0.0
        while True:
            first = self._queue.get()
            self._running.wait()
            if first is None or self._abandon:
                return
            batch = [first]
            rows = sum(t.num_rows for *_, t in first[1])
            # Under load (the last apply was moments ago), wait a little for more records:
            # fewer, bigger transactions. Idle, apply at once: a lone write is readable sooner.
            linger_end = time.monotonic() + (self._linger_s if time.monotonic() < busy_until else 0)
            stop = False
            while rows < self._batch_rows:
                try:
                    left = linger_end - time.monotonic()
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                rows += sum(t.num_rows for *_, t in nxt[1])
            self._apply(batch)
            busy_until = time.monotonic() + 0.1
            if stop:
                return

    def _apply(self, records: list[tuple[Position, list[Item], int]]) -> None:
        last = records[-1][0]
        merged: dict[tuple[str, str, str], list[pa.Table]] = {}
        for _, items, _ in records:
            for db, rp, m, table in items:
                merged.setdefault((db, rp, m), []).append(table)
        items_out: list[Item] = []
        for (db, rp, m), tables in merged.items():
            try:
                table = (
                    tables[0]
                    if len(tables) == 1
                    else pa.concat_tables(tables, promote_options="default")
                )
                items_out.append((db, rp, m, table))
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
                items_out.extend((db, rp, m, t) for t in tables)
        meta = {_META_KEY: format_position(last)}
        try:
            self.store.append_many(items_out, meta)
        except Exception:
            log.exception("applying a batch failed; applying it one table at a time")
            for item in items_out:
                try:
                    self.store.append_many([item], meta)
                except Exception:
                    self.apply_errors += 1
                    log.exception(
                        "could not apply %d rows to %s/%s/%s; they stay in the write-ahead log",
                        item[3].num_rows,
                        *item[:3],
                    )
            self.store.append_many([], meta)
        for db, _rp, m, table in items_out:
            for observe in self.observers:
                try:
                    observe(db, m, table)
                except Exception:
                    log.exception("an observer of %s/%s failed; the data is stored", db, m)
        with self._state:
            self._applied = last
            self._backlog -= sum(size for *_, size in records)
            self._state.notify_all()
        if last[0] > 1:
            self._wal.drop_applied(last)

    def wait_applied(self, timeout_s: float = 10.0) -> bool:
        """Block until every write acknowledged so far is applied to the store."""
        deadline = time.monotonic() + timeout_s
        with self._state:
            target = self._durable
            while self._applied < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.wait(left)
        return True

    @property
    def backlog_bytes(self) -> int:
        return self._backlog
