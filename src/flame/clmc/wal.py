"""The ingest write-ahead log: a write is acknowledged only once its record is on disk.

Records are framed `[u32 length][u32 crc32][payload]` in numbered segment files
(`00000001.wal`, ...). `commit()` blocks its caller until the record is fsynced, with group
commit: the first waiting thread writes and fsyncs everything queued so far, the others ride
along, so N concurrent requests cost one fsync. A position is `(segment, offset after the
record)`; the store keeps the position of the last applied record in the same transaction as
the rows, so replay after a crash starts exactly where applying stopped (no loss, no duplicate).
A torn record at the tail (a crash mid-write, never acknowledged) ends replay and is cut off.

A payload is ingest's items (`encode_items`); what the store refuses to apply is kept aside in
a quarantine directory (`quarantine_table`, `quarantine_record`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]

from flame.common.atomicfile import atomic_write

log = logging.getLogger("flame.clmc.ingest")

__all__ = [
    "Item",
    "Position",
    "WriteAheadLog",
    "decode_items",
    "encode_items",
    "format_position",
    "parse_position",
    "quarantine_record",
    "quarantine_table",
    "read_replay_marker",
    "write_replay_marker",
]

Position = tuple[int, int]  # (segment number, byte offset just after a record)
_HEADER = struct.Struct("<II")
_SUFFIX = ".wal"
_U32 = struct.Struct("<I")

Item = tuple[str, str, str, pa.Table]  # database, rp, measurement, rows: a record holds several


def encode_items(items: Sequence[Item]) -> bytes:
    """A record's payload: per item its (database, rp, measurement) as JSON and its rows as an
    Arrow IPC stream, each length-prefixed."""
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


def format_position(pos: Position) -> str:
    return f"{pos[0]}:{pos[1]}"


def parse_position(text: str | None) -> Position:
    if not text:
        return (0, 0)
    seg, _, off = text.partition(":")
    return (int(seg), int(off))


class WriteAheadLog:
    """Append-only, fsynced, segmented. `on_durable` gets each record once it is on disk."""

    def __init__(
        self,
        directory: Path,
        on_durable: Callable[[Position, bytes, object], None],
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._on_durable = on_durable
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._flushed = threading.Condition(self._lock)
        self._pending: list[tuple[bytes, object]] = []
        self._next_seq = 0  # sequence number of the next record handed in
        self._durable_seq = 0  # every record below this one is on disk
        self._flushing = False
        self._error: BaseException | None = None
        segments = self.segments()
        self._segment = segments[-1] if segments else 1
        self._file = open(self._path(self._segment), "ab")  # noqa: SIM115 - lives with self
        self._offset = self._file.tell()

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}{_SUFFIX}"

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*" + _SUFFIX) if p.stem.isdigit())

    # -- writing --------------------------------------------------------------------------------

    def commit(self, payload: bytes, attachment: object = None) -> None:
        """Append one record and return once it is durable (raises OSError if the disk failed).

        `attachment` goes to `on_durable` with the record (e.g. its decoded form).
        """
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._error is not None:
                raise OSError(f"write-ahead log is failed: {self._error}") from self._error
            seq = self._next_seq
            self._next_seq += 1
            self._pending.append((frame, attachment))
            while self._durable_seq <= seq:
                if self._error is not None:
                    raise OSError(f"write-ahead log is failed: {self._error}") from self._error
                if not self._flushing:
                    self._flush_locked()
                else:
                    self._flushed.wait()

    def _flush_locked(self) -> None:
        """Leader: write and fsync every pending record, outside the lock, then wake the rest."""
        batch, self._pending = self._pending, []
        end_seq = self._durable_seq + len(batch)
        self._flushing = True
        self._lock.release()
        positions: list[Position] = []
        try:
            for frame, _ in batch:
                if self._offset >= self._segment_bytes:
                    self._rotate()
                self._file.write(frame)
                self._offset += len(frame)
                positions.append((self._segment, self._offset))
            self._file.flush()
            if self._fsync:
                os.fdatasync(self._file.fileno())
            # Hand over in log order, before anyone learns the write is durable.
            for pos, (frame, attachment) in zip(positions, batch, strict=True):
                self._on_durable(pos, frame[_HEADER.size :], attachment)
        except BaseException as exc:
            self._lock.acquire()
            self._error = exc
            self._flushing = False
            self._flushed.notify_all()
            raise
        self._lock.acquire()
        self._durable_seq = end_seq
        self._flushing = False
        self._flushed.notify_all()

    def _rotate(self) -> None:
        self._file.flush()
        if self._fsync:
            os.fdatasync(self._file.fileno())
        self._file.close()
        self._segment += 1
        self._file = open(self._path(self._segment), "ab")  # noqa: SIM115
        self._offset = 0
        if self._fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- reading and cleaning -------------------------------------------------------------------

    def replay(self, after: Position) -> Iterator[tuple[Position, bytes]]:
        """Records after `after`, in order; a torn tail record is cut off the last segment."""
        for seg in self.segments():
            if seg < after[0]:
                continue
            start = after[1] if seg == after[0] else 0
            path = self._path(seg)
            data = path.read_bytes()
            off = start
            while off + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, off)
                end = off + _HEADER.size + length
                payload = data[off + _HEADER.size : end]
                if end > len(data) or zlib.crc32(payload) != crc:
                    break
                off = end
                yield (seg, off), payload
            if off < len(data) and seg == self._segment:
                with self._lock:
                    self._file.truncate(off)
                    self._offset = off

    def move_past(self, pos: Position) -> None:
        """Make every later position greater than `pos` (the store is ahead of this log, e.g.
        the log directory was replaced): start a new segment after it."""
        with self._lock:
            if (self._segment, self._offset) <= pos:
                self._segment = pos[0]
                self._rotate()

    def drop_applied(self, applied: Position) -> None:
        """Delete segments wholly applied (never the one being written)."""
        for seg in self.segments():
            if seg < applied[0] and seg != self._segment:
                self._path(seg).unlink(missing_ok=True)

    @property
    def position(self) -> Position:
        return (self._segment, self._offset)

    def close(self) -> None:
        with self._lock:
            self._file.close()


# -- quarantine: what the store refused, kept aside (see `Ingest`) ----------------------------


def quarantine_table(directory: Path, pos: Position, item: Item, reason: str) -> None:
    """Keep rows the store refused in `directory` (an Arrow IPC file, a line in `index.jsonl`)
    and log it; never raises (they are still in the log then, and that is logged)."""
    db, rp, m, table = item
    try:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{pos[0]:08d}-{pos[1]:012d}-{time.time_ns()}.arrows"
        schema = table.schema.with_metadata(
            {**(table.schema.metadata or {}), b"flame.quarantine": reason.encode()}
        )
        with (
            pa.OSFile(str(directory / name), "wb") as sink,
            pa.ipc.new_stream(sink, schema) as writer,
        ):
            writer.write_table(table.replace_schema_metadata(schema.metadata))
        entry = {
            "file": name,
            "position": format_position(pos),
            "database": db,
            "rp": rp,
            "measurement": m,
            "rows": table.num_rows,
            "reason": reason,
            "time": time.time(),
        }
        with open(directory / "index.jsonl", "a", encoding="utf-8") as index:
            index.write(json.dumps(entry) + "\n")
        log.error(
            "%d rows of %s/%s/%s refused by the store (%s): kept in %s",
            table.num_rows,
            db,
            rp,
            m,
            reason,
            directory / name,
        )
    except Exception:
        log.exception(
            "could not keep %d refused rows of %s/%s/%s in the quarantine directory; they "
            "are still in the write-ahead log at %s",
            table.num_rows,
            db,
            rp,
            m,
            format_position(pos),
        )


def quarantine_record(directory: Path, pos: Position, payload: bytes, reason: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{pos[0]:08d}-{pos[1]:012d}-{time.time_ns()}.record"
        (directory / name).write_bytes(payload)
        with open(directory / "index.jsonl", "a", encoding="utf-8") as index:
            index.write(
                json.dumps({"file": name, "position": format_position(pos), "reason": reason})
                + "\n"
            )
    except Exception:
        log.exception("could not keep an undecodable record in the quarantine directory")


# -- the replay marker: which record a start-up was applying (see `Ingest.start`) ---------------


def read_replay_marker(path: Path) -> tuple[Position, int] | None:
    """The position and attempts the marker names, or None (none, or unreadable)."""
    try:
        data = json.loads(path.read_text())
        return (int(data["position"][0]), int(data["position"][1])), int(data["attempts"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def write_replay_marker(path: Path, pos: Position, attempts: int) -> None:
    # Before each record replayed at start-up; not synced: it counts deaths of the process
    # (the page cache keeps its renames), and an fsync per replayed record slows every replay.
    atomic_write(path, json.dumps({"position": list(pos), "attempts": attempts}), durable=False)
