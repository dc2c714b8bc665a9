"""InfluxDB line protocol to columnar (Arrow) batches, one per measurement (CLMC-8).

Speed comes from treating a body as columns, not lines (`_lpfast`): lines and delimiters are
found with numpy over the whole body, then lines are grouped by *shape* (measurement, tag keys,
field keys and types, timestamp or not). The first line not yet placed gives a shape; one pass
of array operations checks every line of that measurement against it and turns the matching
ones into typed columns; the rest wait for the next shape. An agent's body has a handful of
shapes, so a body costs a handful of passes of C loops.

Anything the fast path cannot vouch for (escapes, quotes, tabs, comments, leading blanks, odd
numbers, duplicate keys, the reserved key `time`, ...) goes line by line through `_lpscan`, the
reference scanner, which also words every error exactly as InfluxDB 1.x does. Property tests
check that both paths agree.

InfluxDB rules kept here: a point without a timestamp gets the server time of the request
(truncated to the precision); a field's type is the stored one, or for a new field its first
appearance in the body; later points with another type are dropped as field-type conflicts;
the last duplicate field wins; a field called `time` is dropped (the point too if nothing is
left) and a tag called `time` drops its point. Unlike InfluxDB 1.6, unsigned integers (`1u`)
are accepted, as 1.8 does.
"""

from __future__ import annotations

import logging
import re
import time as _time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc._lpfast import ARROW_TYPES, Chunk, Tokens, fast_path
from flame.clmc._lpscan import Point, ScanError, line_end, scan_line
from flame.clmc.errors import LineProtocolError
from flame.clmc.limits import MAX_KEY_BYTES
from flame.clmc.store.base import FIELD, KIND_KEY, TAG, FieldType

__all__ = [
    "Dropped",
    "MeasurementBatch",
    "ParseResult",
    "parse",
    "precision_multiplier",
]

log = logging.getLogger("flame.clmc.lineproto")

_MULTIPLIERS = {"u": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60 * 10**9, "h": 3600 * 10**9}
_BAD_BYTES = b"\\\t\0\r"
_KEY_END = re.compile(r"(?<!\\) ")  # where InfluxDB's scanKey stops


def precision_multiplier(precision: str | None) -> int:
    """Nanoseconds per unit; like InfluxDB 1.x, an unknown precision means nanoseconds."""
    return _MULTIPLIERS.get(precision or "n", 1)


@dataclass(frozen=True, slots=True)
class Dropped:
    """A parsed point the write must drop (field-type conflict, reserved key), as InfluxDB."""

    line: int
    message: str


@dataclass
class MeasurementBatch:
    measurement: str
    table: pa.Table  # time + tag columns (KIND_KEY=TAG) + field columns (KIND_KEY=FIELD)
    lines: np.ndarray  # 1-based line number of each row

    def field_types(self) -> dict[str, FieldType]:
        return {
            f.name: _type_of(f.type)
            for f in self.table.schema
            if (f.metadata or {}).get(KIND_KEY) == FIELD
        }

    def without_rows(self, mask: np.ndarray) -> MeasurementBatch:
        """This batch less the rows where `mask` is true."""
        keep = pa.array(~mask)
        return MeasurementBatch(self.measurement, self.table.filter(keep), self.lines[~mask])


@dataclass
class ParseResult:
    batches: list[MeasurementBatch] = field(default_factory=list)
    errors: list[LineProtocolError] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    beyond_retention: list[int] = field(default_factory=list)  # lines before `cutoff`

    @property
    def points(self) -> int:
        return sum(b.table.num_rows for b in self.batches)

    def influx_error(self) -> str | None:
        """InfluxDB's joined parse-error text, or None when every line parsed."""
        if not self.errors:
            return None
        return "\n".join(e.influx_message for e in self.errors)


def _type_of(dtype: pa.DataType) -> FieldType:
    for t, a in ARROW_TYPES.items():
        if a == dtype:
            return t
    raise TypeError(f"no field type for {dtype}")


# -- entry point ------------------------------------------------------------------------------


def parse(
    body: bytes,
    precision: str | None = "n",
    now_ns: int | None = None,
    known: Callable[[str], Mapping[str, FieldType]] | None = None,
    *,
    max_fields: int = 0,
    max_tags: int = 0,
    cutoff: int | None = None,
) -> ParseResult:
    """Parse a whole write body. Never raises for bad input: errors are in the result.

    `known(measurement)` gives the field types already stored: they win over the types a body
    introduces, as in InfluxDB (without it, the first appearance in the body wins).

    A point with more than `max_fields` fields or `max_tags` tags (0: no limit) is dropped
    (`Limits`), before any of its columns is built. A point older than `cutoff` (the retention
    policy's) is dropped before anything else is checked, as InfluxDB does, and listed in
    `beyond_retention`.

    Should the vectorised path ever fail on a body (a bug), the body is parsed again line by
    line by the reference scanner; should that fail too, every line is refused. Either way the
    failure is logged and the caller gets a result, never an exception.
    """
    rules = _Rules(max_fields, max_tags, cutoff)
    try:
        return _parse(body, precision, now_ns, known, rules, fast=True)
    except Exception:
        log.exception("the line-protocol fast path failed on a body; parsing it line by line")
    try:
        return _parse(body, precision, now_ns, known, rules, fast=False)
    except Exception:
        log.exception("the line-protocol parser failed on a body; refusing all of its lines")
    return _refuse_all(body)


def _refuse_all(body: bytes) -> ParseResult:
    result = ParseResult()
    text = body.decode("utf-8", "replace")
    for i, line in enumerate(text.split("\n")):
        if line.strip(" \t") and not line.lstrip(" \t").startswith("#"):
            result.errors.append(LineProtocolError(i + 1, line, "invalid line"))
    return result


def _parse(
    body: bytes,
    precision: str | None,
    now_ns: int | None,
    known: Callable[[str], Mapping[str, FieldType]] | None,
    rules: _Rules,
    *,
    fast: bool,
) -> ParseResult:
    mult = precision_multiplier(precision)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # InfluxDB keeps raw bytes; we store text, and show bad bytes as U+FFFD as it does.
        body = body.decode("utf-8", "replace").encode("utf-8")
    result = ParseResult()
    chunks: list[Chunk] = []
    starts, ends = _line_bounds(body)
    slow = _slow_candidates(body, starts, ends)
    if b'"' in body:
        slow |= _odd_quotes(body, starts, ends)
    if b'"' in body or b"\\" in body:
        slow, skip = _join_lines(body, starts, ends, slow)
    else:
        skip = np.zeros(len(starts), dtype=bool)
    if not fast:
        slow = ~skip & (ends > starts)
    plain = np.flatnonzero(~slow & ~skip & (ends > starts))
    rest: list[int] = []
    if len(plain):
        rest = fast_path(Tokens(body, starts, ends), plain, mult, chunks, rules.width)
    slow_idx = sorted([*np.flatnonzero(slow).tolist(), *rest])
    if slow_idx:
        _slow_path(body, starts, ends, slow_idx, mult, chunks, result, known, rules)
    result.batches = _assemble(chunks, mult, now_ns, result, known, rules.cutoff)
    result.beyond_retention.sort()
    result.errors.sort(key=lambda e: e.line_no)
    result.dropped.sort(key=lambda d: d.line)
    return result


def _line_bounds(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(body, dtype=np.uint8)
    nl = np.flatnonzero(raw == 10)
    starts = np.concatenate(([0], nl + 1)).astype(np.int64)
    ends = np.concatenate((nl, [len(body)])).astype(np.int64)
    if len(body) and body[-1] == 10:  # no empty line after a final newline
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends


def _slow_candidates(body: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines the fast path must not take: special bytes, or a blank/'#' first byte."""
    raw = np.frombuffer(body, dtype=np.uint8)
    slow = np.zeros(len(starts), dtype=bool)
    for c in _BAD_BYTES:
        if c in body:
            bad_pos = np.flatnonzero(raw == c)
            slow[np.searchsorted(starts, bad_pos, side="right") - 1] = True
    nonempty = ends > starts
    first = np.zeros(len(starts), dtype=np.uint8)
    first[nonempty] = raw[starts[nonempty]]
    slow |= nonempty & ((first == ord(" ")) | (first == ord("#")))
    return slow


def _odd_quotes(body: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines whose double quotes are anything but plain string values (`k="..."`: the quote
    after an equals sign, the closing one before a comma, a blank or the end of the line, no
    blank, comma or equals sign between): those take the slow path, and only they can join
    the next line (`_join_lines`)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    q = np.flatnonzero(raw == ord('"'))
    line = np.searchsorted(starts, q, side="right") - 1
    k = np.arange(len(q)) - np.searchsorted(q, starts[line])  # index of the quote in its line
    opening = k % 2 == 0
    before = np.where(q > starts[line], raw[np.maximum(q - 1, 0)], 0)
    after_pos = q + 1
    at_end = after_pos >= ends[line]
    after = raw[np.minimum(after_pos, len(raw) - 1)]
    closes = at_end | (after == ord(",")) | (after == ord(" "))
    good = np.where(opening, before == ord("="), closes)
    odd = np.zeros(len(starts), dtype=bool)
    odd[line[~good]] = True
    odd |= np.bincount(line, minlength=len(starts)) % 2 == 1
    # nothing that delimits between an opening quote and the next one
    delims = np.flatnonzero((raw == 32) | (raw == 44) | (raw == 61) | (raw == 92))
    pairs = np.flatnonzero(opening[:-1] & (line[1:] == line[:-1])) if len(q) > 1 else q[:0]
    inside = np.searchsorted(delims, q[pairs + 1]) - np.searchsorted(delims, q[pairs])
    odd[line[pairs[inside > 0]]] = True
    return odd


def _join_lines(
    body: bytes, starts: np.ndarray, ends: np.ndarray, slow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Glue lines as InfluxDB does: a newline inside a quoted string value, or right after a
    backslash, does not end a line (`_lpscan.line_end`). Only lines with a quote or a
    backslash (all slow) can start such a join."""
    skip = np.zeros(len(starts), dtype=bool)
    n = len(starts)
    cand = np.flatnonzero(slow)
    k = 0
    while k < len(cand):
        i = int(cand[k])
        k += 1
        if skip[i]:
            continue
        end = line_end(body, int(starts[i]))
        if end > ends[i]:
            j = int(np.searchsorted(starts, end, side="right")) - 1
            j = min(j, n - 1)
            skip[i + 1 : j + 1] = True
            # InfluxDB strips one newline off the end of a block (an escaped one, or the
            # body's last byte when a quote is still open)
            ends[i] = end - 1 if body[end - 1 : end] == b"\n" else end
    return slow & ~skip, skip


# -- the slow path ------------------------------------------------------------------------------


def _slow_path(
    body: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    idx: Iterable[int],
    mult: int,
    chunks: list[Chunk],
    result: ParseResult,
    known: Callable[[str], Mapping[str, FieldType]] | None,
    rules: _Rules,
) -> None:
    points: list[tuple[int, Point]] = []
    for i in idx:
        raw = body[starts[i] : ends[i]].decode("utf-8")
        j, n = 0, len(raw)
        while j < n and raw[j] in " \t\0":
            j += 1
        line = raw[j:]
        if not line or line[0] == "#":
            continue
        if len(line) > MAX_KEY_BYTES:  # a key over 64 KiB is refused without scanning it
            blank = _KEY_END.search(line)
            if blank is not None and "\\" not in line[: blank.start()]:
                key_len = len(line[: blank.start()].encode())
                if key_len > MAX_KEY_BYTES:
                    reason = f"max key length exceeded: {key_len} > {MAX_KEY_BYTES}"
                    result.errors.append(LineProtocolError(i + 1, line, reason))
                    continue
        try:
            points.append((i + 1, scan_line(line, mult)))
        except ScanError as exc:
            result.errors.append(LineProtocolError(i + 1, line, str(exc)))
        except Exception:  # a bug of ours: refuse the line, keep the rest of the body
            log.exception("the line-protocol scanner failed on line %d", i + 1)
            result.errors.append(LineProtocolError(i + 1, line, "invalid line"))
    by_measurement: dict[str, list[tuple[int, Point]]] = {}
    for line_no, p in points:
        by_measurement.setdefault(p.measurement, []).append((line_no, p))
    for m, pts in by_measurement.items():
        chunk = _points_chunk(m, pts, result, dict(known(m)) if known else {}, rules)
        if chunk is not None:
            chunks.append(chunk)


def _points_chunk(
    m: str,
    pts: list[tuple[int, Point]],
    result: ParseResult,
    types: dict[str, FieldType],
    rules: _Rules | None = None,
) -> Chunk | None:
    rules = rules or _Rules()
    rows: list[tuple[int, Point, dict[str, object]]] = []
    for line_no, p in pts:
        if rules.cutoff is not None and p.time is not None and p.time < rules.cutoff:
            result.beyond_retention.append(line_no)
            continue
        if any(k == "time" for k, _ in p.tags):
            result.dropped.append(
                Dropped(
                    line_no, f'invalid tag key: input tag "time" on measurement "{m}" is invalid'
                )
            )
            continue
        fields = [(k, t, v) for k, t, v in p.fields if k != "time"]
        if not fields:
            result.dropped.append(
                Dropped(
                    line_no,
                    f'invalid field name: input field "time" on measurement "{m}" is invalid',
                )
            )
            continue
        refused = _too_wide(m, len(fields), len(p.tags), rules.width)
        if refused is not None:
            result.dropped.append(Dropped(line_no, refused))
            continue
        conflict = next(((k, t) for k, t, _ in fields if types.get(k, t) != t), None)
        if conflict is not None:
            k, t = conflict
            result.dropped.append(Dropped(line_no, _conflict_text(m, k, t, types[k])))
            continue
        for k, t, _ in fields:
            types.setdefault(k, t)
        rows.append((line_no, p, {k: v for k, _, v in fields}))
    if not rows:
        return None
    tag_keys = sorted({k for _, p, _ in rows for k, _ in p.tags})
    tag_rows = [dict(p.tags) for _, p, _ in rows]
    return Chunk(
        m,
        np.array([r[0] for r in rows], dtype=np.int64),
        pa.array([p.time for _, p, _ in rows], pa.int64()),
        {k: pa.array([t.get(k) for t in tag_rows], pa.string()) for k in tag_keys},
        {
            k: (t, pa.array([f.get(k) for _, _, f in rows], ARROW_TYPES[t]))
            for k, t in types.items()
            if any(k in f for _, _, f in rows)
        },
    )


@dataclass(frozen=True, slots=True)
class _Rules:
    """What a write's points must respect beyond the syntax (see `parse`)."""

    max_fields: int = 0
    max_tags: int = 0
    cutoff: int | None = None

    @property
    def width(self) -> tuple[int, int]:
        return (self.max_fields, self.max_tags)


def _too_wide(m: str, fields: int, tags: int, width: tuple[int, int]) -> str | None:
    """Why a point is over the per-point limits (`Limits`), or None."""
    max_fields, max_tags = width
    if max_fields and fields > max_fields:
        return f'max-fields-per-point limit exceeded ({fields}/{max_fields}): measurement="{m}"'
    if max_tags and tags > max_tags:
        return f'max-tags-per-point limit exceeded ({tags}/{max_tags}): measurement="{m}"'
    return None


def _conflict_text(m: str, k: str, got: FieldType, existing: FieldType) -> str:
    return (
        f'field type conflict: input field "{k}" on measurement "{m}" is type {got}, '
        f"already exists as type {existing}"
    )


def _np(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


# -- assembling per-measurement batches ---------------------------------------------------------


def _assemble(
    chunks: list[Chunk],
    mult: int,
    now_ns: int | None,
    result: ParseResult,
    known: Callable[[str], Mapping[str, FieldType]] | None,
    cutoff: int | None = None,
) -> list[MeasurementBatch]:
    if now_ns is None:
        now_ns = _time.time_ns()
    server_time = now_ns - now_ns % mult
    by_m: dict[str, list[Chunk]] = {}
    for c in sorted(chunks, key=lambda c: int(c.lines[0]) if len(c.lines) else 0):
        by_m.setdefault(c.measurement, []).append(c)
    out: list[MeasurementBatch] = []
    for m, group in by_m.items():
        types: dict[str, FieldType] = dict(known(m)) if known else {}
        kept: list[Chunk] = []
        for chunk in group:
            c = chunk
            drop = np.zeros(len(c.lines), dtype=bool)
            if cutoff is not None and c.time.null_count < len(c.time):
                # beyond the retention policy: dropped before anything else, as InfluxDB does
                old = _np(pc.fill_null(pc.less(c.time, cutoff), False))
                if old.any():
                    result.beyond_retention.extend(int(x) for x in c.lines[old])
                    drop |= old
            for k, (t, arr) in c.fields.items():
                existing = types.get(k)
                if existing is not None and existing != t:
                    hit = _np(pc.is_valid(arr)) & ~drop
                    for line in c.lines[hit]:
                        result.dropped.append(Dropped(int(line), _conflict_text(m, k, t, existing)))
                    drop |= hit
            if drop.any():
                c = c.filter(~drop)
            # What is left of a conflicting column is all null: drop the column itself.
            c.fields = {k: v for k, v in c.fields.items() if types.get(k, v[0]) == v[0]}
            if len(c.lines) == 0:
                continue
            for k, (t, _) in c.fields.items():
                types.setdefault(k, t)
            kept.append(c)
        if kept:
            present = {k for c in kept for k in c.fields}
            out.append(_batch(m, kept, {k: types[k] for k in present}, server_time))
    return out


def _batch(
    m: str, chunks: list[Chunk], types: dict[str, FieldType], server_time: int
) -> MeasurementBatch:
    tag_keys = tuple(sorted({k for c in chunks for k in c.tags}))
    field_keys = tuple(sorted(types))
    time = chunks[0].time if len(chunks) == 1 else pa.concat_arrays([c.time for c in chunks])
    if time.null_count:
        time = pc.fill_null(time, server_time)
    arrays = [time]
    for k in tag_keys:
        arrays.append(_concat([c.tags.get(k) for c in chunks], chunks, pa.string()))
    for k in field_keys:
        dtype = ARROW_TYPES[types[k]]
        cols = [c.fields[k][1] if k in c.fields else None for c in chunks]
        arrays.append(_concat(cols, chunks, dtype))
    schema = _schema(tag_keys, tuple((k, types[k]) for k in field_keys))
    table = pa.Table.from_arrays(arrays, schema=schema)
    if len(chunks) == 1:
        return MeasurementBatch(m, table, chunks[0].lines)
    # rows in body order, so that of two writes of one point in a body the last one wins
    lines = np.concatenate([c.lines for c in chunks])
    order = np.argsort(lines, kind="stable")
    return MeasurementBatch(m, table.take(pa.array(order)), lines[order])


_SCHEMAS: dict[tuple[tuple[str, ...], tuple[tuple[str, FieldType], ...]], pa.Schema] = {}


def _schema(tags: tuple[str, ...], fields: tuple[tuple[str, FieldType], ...]) -> pa.Schema:
    """A batch's schema (cached: agents send the same few shapes again and again)."""
    key = (tags, fields)
    schema = _SCHEMAS.get(key)
    if schema is None:
        if len(_SCHEMAS) > 10_000:
            _SCHEMAS.clear()
        schema = _SCHEMAS[key] = pa.schema(
            [pa.field("time", pa.int64(), nullable=False)]
            + [pa.field(k, pa.string(), metadata={KIND_KEY: TAG}) for k in tags]
            + [pa.field(k, ARROW_TYPES[t], metadata={KIND_KEY: FIELD}) for k, t in fields]
        )
    return schema


def _concat(cols: list[pa.Array | None], chunks: list[Chunk], dtype: pa.DataType) -> pa.Array:
    parts = [
        pa.nulls(len(c.lines), dtype) if a is None else a for a, c in zip(cols, chunks, strict=True)
    ]
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
