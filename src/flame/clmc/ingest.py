"""Write path (CLMC-8, 9): parse, check, log durably, acknowledge, apply in big batches.

    request thread:  parse body (a big one in a parse process, `_parseproc`, when one is
                     free: the other cores) -> per measurement: retention, limits, field types
                     (reserved under a lock, so two racing writes cannot both introduce a
                     field with different types) -> series and tag values of every
                     measurement in one pass (`Store.admit_many`) -> WAL commit (group
                     fsync) -> answer
    applier thread:  queue of durable records -> merge per table -> store.append_many(rows,
                     meta = WAL position) in one transaction (the store applies last write wins);
                     between bursts (1 s idle, or slow writes) the store's `compaction`

Acknowledged means durable (answered after the fsync); a restart replays the WAL past the store.

What is refused is answered as InfluxDB does, `partial write: <reason> dropped=N` with the rest
stored: points beyond the retention policy, field-type conflicts, and the limits of `Limits`.

Back-pressure, before latency explodes: a write is refused with `Overloaded` (503 +
Retry-After) when the apply backlog is over `max_backlog_bytes` or would take more than
`max_lag_s` to apply at the measured apply rate, and when more than `parse_slots` bodies are
being parsed and none frees up within `slot_wait_s`.

Queries do not wait for the backlog (`before_query`): a query sees what is applied, so under a
write storm it may miss writes acknowledged in the last moments (at most `max_lag_s` worth;
about one apply cycle, under a second, in steady state). While writes arrive slowly (under
`storm_rate` points/s) and little is pending (at most `settle_rows`), a query waits for it, up
to `settle_s`, so a quiet client reads its own writes. `read_your_writes=True` always waits (up
to 10 s) for every write acknowledged before the query.

Nothing acknowledged is lost silently: a record or table the store refuses (an error, DuckDB's
memory limit, a table over the limits written by an older version) is set aside in
`<wal>/quarantine/` (Arrow IPC files, `index.jsonl`), logged and counted (`stats()["quarantined"]`);
a record that kills the process twice in a row while replayed is quarantined at the next start
instead, so a restart can never crash-loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc._parseproc import MIN_BYTES, ParsePool, process_count
from flame.clmc.compaction import IdleCompactor
from flame.clmc.errors import DatabaseNotFound, Overloaded, RetentionPolicyNotFound
from flame.clmc.ingest_batches import (
    _admitted,
    _agrees,
    _field_type,
    _kind,
    _Known,
    _present,
    _refuse,
    _without,
)
from flame.clmc.limits import Limits, over
from flame.clmc.lineproto import Dropped, MeasurementBatch, ParseResult, parse
from flame.clmc.outcome import WriteOutcome
from flame.clmc.store.base import (
    FIELD,
    SID_COLUMN,
    TAG,
    FieldType,
    Store,
)
from flame.clmc.wal import (
    Item,
    Position,
    WriteAheadLog,
    decode_items,
    encode_items,
    format_position,
    parse_position,
    quarantine_record,
    quarantine_table,
    read_replay_marker,
    write_replay_marker,
)

__all__ = ["Ingest", "WriteOutcome", "decode_items", "encode_items"]

log = logging.getLogger("flame.clmc.ingest")

_META_KEY = "flame.wal.applied"


class Ingest:
    """The write path over one store; `start()` replays the WAL, `stop()` drains and closes."""

    def __init__(
        self,
        store: Store,
        wal_dir: Path,
        *,
        max_backlog_bytes: int = 512 << 20,
        batch_rows: int = 1_000_000,
        linger_s: float = 0.05,
        busy_window_s: float = 0.1,
        fsync: bool = True,
        limits: Limits | None = None,
        max_lag_s: float = 10.0,
        parse_slots: int | None = None,
        slot_wait_s: float = 5.0,
        settle_rows: int = 50_000,
        settle_s: float = 1.0,
        storm_rate: float = 20_000.0,
        parse_process: bool | None = None,
        parse_processes: int | None = None,
        idle_compact_s: float = 1.0,
        compact_retry_s: float = 30.0,
    ) -> None:
        self.store = store
        self.limits = limits if limits is not None else Limits.from_env()
        self._max_backlog = max_backlog_bytes
        self._max_lag_s = max_lag_s
        self._batch_rows = batch_rows
        self._linger_s = linger_s
        self._idle_compact_s = idle_compact_s  # no record for this long: the store's housekeeping
        self._busy_window_s = busy_window_s  # an apply this recent means "under load"
        self._settle_rows = settle_rows
        self._settle_s = settle_s
        self._storm_rate = storm_rate
        self._window_start = time.monotonic()
        self._window_rows = 0
        self._last_rate = 0.0
        self._slots = threading.BoundedSemaphore(parse_slots or max(2, os.cpu_count() or 2))
        self._slot_wait_s = slot_wait_s
        self._queue: queue.Queue[tuple[Position, list[Item], int] | _Wake | None] = queue.Queue()
        self._waiters = 0  # threads in `wait_applied`: the applier does not linger for them
        self._types_lock = threading.Lock()
        self._known: dict[tuple[str, str, str], _Known] = {}
        self._state = threading.Condition()
        self._backlog = 0
        self._backlog_rows = 0
        self._rate = 200_000.0  # rows/s applied, smoothed; a guess until measured
        self._durable: Position = (0, 0)
        self._applied: Position = (0, 0)
        self._thread: threading.Thread | None = None
        self.apply_errors = 0
        self.quarantined = 0
        # Called with (database, measurement, rows) for every batch applied to the store, on
        # the applier thread: the alert engine folds data in as it lands (CLMC-19..22).
        self.observers: list[Callable[[str, str, pa.Table], None]] = []
        self._running = threading.Event()  # cleared while applying is paused
        self._running.set()
        self._abandon = False
        self.wal_dir = wal_dir
        self.quarantine_dir = wal_dir / "quarantine"
        self.compactor = IdleCompactor(store, retry_s=compact_retry_s)
        self._wal = WriteAheadLog(wal_dir, self._on_durable, fsync=fsync)
        if parse_process is None:  # on unless FLAME_CLMC_PARSE_PROCESS=0
            parse_process = os.environ.get("FLAME_CLMC_PARSE_PROCESS", "1") != "0"
        self.pool = ParsePool(process_count(parse_processes) if parse_process else 0)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> int:
        """Replay what the store has not applied yet, then start applying; returns records replayed.

        Each record is applied on its own; one the store refuses is quarantined, and one that
        killed the process twice while being applied (`replaying.json` names it) is quarantined
        without being applied again."""
        after = parse_position(self.store.get_meta(_META_KEY))
        marker = self.wal_dir / "replaying.json"
        suspect = read_replay_marker(marker)
        replayed = 0
        for pos, payload in self._wal.replay(after):
            attempts = suspect[1] if suspect is not None and suspect[0] == pos else 0
            try:
                items = decode_items(payload)
            except Exception as exc:
                log.error(
                    "write-ahead-log record %s does not decode: %s", format_position(pos), exc
                )
                self._quarantine_raw(pos, payload, f"undecodable: {exc}")
                self.store.append_many([], {_META_KEY: format_position(pos)})
                continue
            if attempts >= 2:
                log.error(
                    "write-ahead-log record %s was being applied when the CLMC died, %d times: "
                    "quarantined, not applied again",
                    format_position(pos),
                    attempts,
                )
                for item in items:
                    self._quarantine(pos, item, "the process died applying it (twice)")
                self.store.append_many([], {_META_KEY: format_position(pos)})
                continue
            write_replay_marker(marker, pos, attempts + 1)
            self._apply([(pos, items, 0)])
            replayed += 1
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
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
        self.pool.close()
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

    def _admission_check(self) -> None:
        with self._state:
            if self._backlog > self._max_backlog:
                raise Overloaded(
                    f"ingest backlog of {self._backlog >> 20} MiB is over its bound; retry shortly"
                )
            lag = self._backlog_rows / max(self._rate, 1.0)
            if lag > self._max_lag_s:
                raise Overloaded(
                    f"ingest backlog of {self._backlog_rows} points would take {lag:.0f}s to "
                    "apply; retry shortly",
                    retry_after_s=max(1, math.ceil(lag - self._max_lag_s)),
                )

    def write(
        self,
        database: str,
        rp: str | None,
        body: bytes,
        precision: str | None = "n",
        now_ns: int | None = None,
    ) -> WriteOutcome:
        """Parse, check and durably log one write body (blocking: run it in a worker thread)."""
        target_rp = self.check_target(database, rp)
        self._admission_check()
        if not self._slots.acquire(timeout=self._slot_wait_s):
            raise Overloaded("too many writes being parsed; retry shortly")
        try:
            if now_ns is None:
                now_ns = time.time_ns()
            result = self._parse(database, target_rp, body, precision, now_ns)
            return self._log(database, target_rp, result.batches, result, now_ns)
        finally:
            self._slots.release()

    def _parse(
        self, db: str, rp: str, body: bytes, precision: str | None, now_ns: int
    ) -> ParseResult:
        """The body parsed by the parse process when it is free (another core), else here.
        It parses without the stored field types: a result with a drop, or a field of
        another type than the stored one, is parsed again here, with them (rare: an error)."""
        cutoff = self._cutoff(db, rp, now_ns)
        max_fields, max_tags = self.limits.max_fields_per_point, self.limits.max_tags_per_point
        if len(body) >= MIN_BYTES:
            result = self.pool.parse(body, precision, now_ns, max_fields, max_tags, cutoff)
            if result is not None and not result.dropped:
                with self._types_lock:
                    known = [self._known_for(db, rp, b.measurement) for b in result.batches]
                if all(
                    _agrees(k, b.table.schema) for k, b in zip(known, result.batches, strict=True)
                ):
                    return result
        return parse(
            body,
            precision,
            now_ns,
            lambda m: self._types(db, rp, m),
            max_fields=max_fields,
            max_tags=max_tags,
            cutoff=cutoff,
        )

    def _log(
        self,
        database: str,
        rp: str,
        batches: list[MeasurementBatch],
        result: ParseResult,
        now_ns: int,
    ) -> WriteOutcome:
        errors = result.errors
        outcome = WriteOutcome(parse_errors=[e.influx_message for e in errors])
        if errors:
            outcome.first_error_line = errors[0].line_no
        dropped: list[Dropped] = list(result.dropped)
        outcome.beyond_retention.extend(result.beyond_retention)
        checked = [
            b for b in (self._check(database, rp, b, dropped) for b in batches) if b is not None
        ]
        # series and tag values of every measurement in one pass (`Store.admit_many`)
        admissions = self.store.admit_many(
            database, rp, [(b.measurement, b.table) for b in checked], self.limits
        )
        items: list[Item] = []
        for batch, admission in zip(checked, admissions, strict=True):
            kept = _admitted(batch, admission, dropped)
            if kept.table.num_rows:
                items.append((database, rp, batch.measurement, kept.table))
        outcome.dropped = sorted(dropped, key=lambda d: d.line)
        outcome.beyond_retention.sort()
        outcome.points = sum(t.num_rows for *_, t in items)
        if items:
            payload = encode_items(items)
            rows = outcome.points
            with self._state:
                self._backlog += len(payload)
                self._backlog_rows += rows
                self._window_rows += rows
            try:
                self._wal.commit(payload, items)
            except BaseException:
                with self._state:
                    self._backlog -= len(payload)
                    self._backlog_rows -= rows
                raise
        return outcome

    def _cutoff(self, db: str, rp: str, now_ns: int) -> int | None:
        """Points before this time are beyond the retention policy (None: kept forever)."""
        for p in self.store.retention_policies(db):
            if p.name == rp and p.duration_ns > 0:
                return now_ns - p.duration_ns
        return None

    def forget_types(self) -> None:
        """Drop the field types cached from the store (after DROP/DELETE changed the schema)."""
        with self._types_lock:
            self._known.clear()

    def _types(self, db: str, rp: str, measurement: str) -> dict[str, FieldType]:
        with self._types_lock:
            return dict(self._known_for(db, rp, measurement).types)

    def _known_for(self, db: str, rp: str, measurement: str) -> _Known:
        key = (db, rp, measurement)
        known = self._known.get(key)
        if known is None:
            schema = self.store.schema(db, rp, measurement)
            if schema is None:
                known = _Known({}, set())
            else:
                known = _Known(dict(schema.field_types), set(schema.tag_keys))
            self._known[key] = known
        return known

    def _check(
        self,
        db: str,
        rp: str,
        batch: MeasurementBatch,
        dropped: list[Dropped],
    ) -> MeasurementBatch | None:
        """The batch less what InfluxDB's rules and our per-point and per-measurement limits
        refuse (appended to `dropped`); reserves the field types and tag keys of what stays.
        (`parse` already dropped the points beyond the retention policy, first, as InfluxDB
        does; series and tag values are the store's, `admit_many`.)"""
        m = batch.measurement
        table = batch.table
        n = table.num_rows
        drop = np.zeros(n, dtype=bool)
        kinds = [_kind(f) for f in table.schema]
        tag_idx = [i for i, k in enumerate(kinds) if k == TAG]
        field_idx = [i for i, k in enumerate(kinds) if k == FIELD]
        limits = self.limits
        for idx, limit, what in (
            (field_idx, limits.max_fields_per_point, "fields"),
            (tag_idx, limits.max_tags_per_point, "tags"),
        ):
            if over(limit, len(idx)):
                count = _present(table, idx)
                hit = (count > limit) & ~drop
                if hit.any():
                    first = int(count[np.flatnonzero(hit)[0]])
                    _refuse(
                        dropped,
                        batch.lines[hit],
                        f'max-{what}-per-point limit exceeded ({first}/{limit}): measurement="{m}"',
                    )
                    drop |= hit
        remove: set[int] = set()
        with self._types_lock:
            known = self._known_for(db, rp, m)
            if not drop.any() and known.covers(table.schema, field_idx, tag_idx):
                return batch  # the usual case: nothing new, nothing to refuse or reserve
            for i in field_idx:
                f = table.schema.field(i)
                t = _field_type(f.type)
                existing = known.types.get(f.name)
                if existing is None or existing == t:
                    continue
                hit = table.column(i).is_valid().to_numpy(zero_copy_only=False) & ~drop
                _refuse(
                    dropped,
                    batch.lines[hit],
                    f'field type conflict: input field "{f.name}" on measurement "{m}" is type '
                    f"{t}, already exists as type {existing}",
                )
                drop |= hit
                remove.add(i)  # what is left of it is null: it must not add a type
            for idx, have, limit, what, label in (
                (
                    field_idx,
                    known.types,
                    limits.max_fields_per_measurement,
                    "fields-per-measurement",
                    "field",
                ),
                (
                    tag_idx,
                    known.tags,
                    limits.max_tag_keys_per_measurement,
                    "tag-keys-per-measurement",
                    "tag",
                ),
            ):
                fresh = [
                    i for i in idx if i not in remove and table.schema.field(i).name not in have
                ]
                room = max(0, limit - len(have)) if limit > 0 else len(fresh)
                for i in fresh[room:]:
                    name = table.schema.field(i).name
                    hit = table.column(i).is_valid().to_numpy(zero_copy_only=False) & ~drop
                    _refuse(
                        dropped,
                        batch.lines[hit],
                        f"max-{what} limit exceeded ({len(have) + len(fresh)}/{limit}): "
                        f'measurement="{m}" {label}="{name}"',
                    )
                    drop |= hit
                    remove.add(i)
            if drop.all():
                return None
            if drop.any() or remove:
                batch = _without(batch, drop, remove)
                table = batch.table
            # reserve what stays (a column all null after the drops adds nothing)
            for f, col in zip(table.schema, table.columns, strict=True):
                kind = _kind(f)
                if kind is None or col.null_count == len(col):
                    continue
                if kind == FIELD:
                    known.types.setdefault(f.name, _field_type(f.type))
                else:
                    known.tags.add(f.name)
        return batch if table.num_rows else None

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
        applied_since_idle = False
        while True:
            try:
                first = (
                    self._queue.get(timeout=self._idle_compact_s)
                    if applied_since_idle
                    else self._queue.get()
                )
            except queue.Empty:  # writes paused: the store's deferred work now, not in a burst
                applied_since_idle = False
                self._compact_idle()
                continue
            self._running.wait()
            if first is None or self._abandon:
                return
            if isinstance(first, _Wake):
                continue
            batch = [first]
            rows = sum(t.num_rows for *_, t in first[1])
            # Under load (the last apply was moments ago), wait a little for more records:
            # fewer, bigger transactions. Idle, apply at once: a lone write is readable sooner.
            # Everything queued goes in (up to batch_rows): the busier, the bigger the batch, so
            # the cost per table and per transaction shrinks as the load grows. Never while a
            # reader waits for what is queued (`wait_applied`): lingering would only delay it.
            linger = self._linger_s if time.monotonic() < busy_until and not self._waiters else 0
            linger_end = time.monotonic() + linger
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
                if isinstance(nxt, _Wake):  # a reader started waiting: apply what is here now
                    linger_end = 0.0
                    continue
                batch.append(nxt)
                rows += sum(t.num_rows for *_, t in nxt[1])
            self._apply(batch)
            applied_since_idle = True
            busy_until = time.monotonic() + self._busy_window_s
            if self._queue.empty() and self._trickling():
                # writes that never pause for a second (agents reporting every 0.5 s) but come
                # slowly: the housekeeping between two of them, as cheap as when idle
                self._compact_idle()
            if stop:
                return

    def _apply(self, records: list[tuple[Position, list[Item], int]]) -> None:
        started = time.monotonic()
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
        items_out = [i for i in items_out if self._applicable(last, i)]
        meta = {_META_KEY: format_position(last)}
        try:
            self.store.append_many(items_out, meta)
        except Exception:
            log.exception("applying a batch failed; applying it one table at a time")
            for item in items_out:
                try:
                    self.store.append_many([item], meta)
                except Exception as exc:
                    self.apply_errors += 1
                    self._quarantine(last, item, f"{type(exc).__name__}: {exc}")
            self.store.append_many([], meta)
        for db, _rp, m, applied in items_out:
            sid = applied.schema.get_field_index(SID_COLUMN)
            rows_seen = applied.remove_column(sid) if sid >= 0 and self.observers else applied
            for observe in self.observers:
                try:
                    observe(db, m, rows_seen)
                except Exception:
                    log.exception("an observer of %s/%s failed; the data is stored", db, m)
        rows = sum(t.num_rows for _, items, _ in records for *_, t in items)
        elapsed = time.monotonic() - started
        with self._state:
            self._applied = last
            self._backlog -= sum(size for *_, size in records)
            self._backlog_rows = max(0, self._backlog_rows - rows)
            if rows >= 1000 and elapsed > 0:
                self._rate = 0.7 * self._rate + 0.3 * (rows / elapsed)
            self._state.notify_all()
        if last[0] > 1:
            self._wal.drop_applied(last)

    def _trickling(self) -> bool:
        with self._state:
            return self._recent_rate() < self._storm_rate

    def _compact_idle(self) -> None:
        if self._running.is_set():  # not while applying is paused (the files being copied)
            self.compactor.run()

    def _applicable(self, pos: Position, item: Item) -> bool:
        """False (and quarantined) for a table no write could have passed today's limits with
        (a record from an older version: replaying it could exhaust memory)."""
        _, _, _, table = item
        kinds = [_kind(f) for f in table.schema]
        fields, tags = kinds.count(FIELD), kinds.count(TAG)
        limits = self.limits
        if over(limits.max_fields_per_measurement, fields) or over(
            limits.max_tag_keys_per_measurement, tags
        ):
            self._quarantine(
                pos, item, f"over the limits ({fields} fields, {tags} tags in one batch)"
            )
            return False
        return True

    # -- quarantine -----------------------------------------------------------------------------

    def _quarantine(self, pos: Position, item: Item, reason: str) -> None:
        """Keep rows the store refused in `quarantine/` (never dropped silently), log, count."""
        self.quarantined += 1
        quarantine_table(self.quarantine_dir, pos, item, reason)

    def _quarantine_raw(self, pos: Position, payload: bytes, reason: str) -> None:
        self.quarantined += 1
        quarantine_record(self.quarantine_dir, pos, payload, reason)

    # -- reading --------------------------------------------------------------------------------

    def wait_applied(self, timeout_s: float = 10.0) -> bool:
        """Block until every write acknowledged so far is applied to the store."""
        deadline = time.monotonic() + timeout_s
        with self._state:
            target = self._durable
            if self._applied >= target:
                return True
            self._waiters += 1
            self._queue.put(_WAKE)  # ends a linger under way (see `_run`)
            try:
                while self._applied < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._state.wait(left)
            finally:
                self._waiters -= 1
        return True

    def before_query(self, read_your_writes: bool = False) -> None:
        """What a query waits for: everything acknowledged (up to 10 s) with
        `read_your_writes`; else, while writes arrive slowly (under `storm_rate` points/s),
        a small backlog (`settle_rows`, up to `settle_s`): a quiet client reads its own
        writes, and a query under a write storm runs at once on what is applied."""
        if read_your_writes:
            self.wait_applied(10.0)
            return
        with self._state:
            quiet = self._recent_rate() < self._storm_rate
            small = self._backlog_rows <= self._settle_rows
        if quiet and small:
            self.wait_applied(self._settle_s)

    def _recent_rate(self) -> float:
        """Points acknowledged per second, lately (call with `_state` held)."""
        elapsed = time.monotonic() - self._window_start
        if elapsed > 2.0:  # a stale window: what came since it began, then start anew
            rate = self._window_rows / elapsed
            self._window_start, self._window_rows = time.monotonic(), 0
            self._last_rate = rate
            return rate
        return max(self._last_rate, self._window_rows / max(elapsed, 0.5))

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    def stats(self) -> dict[str, object]:
        """For /health and the logs: backlog, apply rate and lag, refusals set aside."""
        with self._state:
            rows, size, rate = self._backlog_rows, self._backlog, self._rate
        return {
            "backlog_points": rows,
            "backlog_bytes": size,
            "apply_points_per_s": round(rate),
            "apply_lag_s": round(rows / max(rate, 1.0), 3),
            "quarantined": self.quarantined,
            "quarantine_dir": str(self.quarantine_dir),
            "apply_errors": self.apply_errors,
            "idle_compactions": self.compactor.done,
            "last_idle_compaction_s": self.compactor.last_s,
            "parse_process": self.pool.stats(),
        }


class _Wake: ...  # queued by a reader (`wait_applied`): the applier stops lingering


_WAKE = _Wake()
