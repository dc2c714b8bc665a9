"""The series of every table, in memory: what the limits on series and tag values count (when a
write arrives, `admit`) and what last-write-wins needs (when rows are applied, `overlaps`).

A series is a measurement's tag set; within a table it is identified by a 64-bit hash of its
(tag key, value) pairs, order-free, so a row's series id is a few vectorised operations per tag
column. For each series the index keeps the greatest timestamp stored (`RESERVED` while it is
only admitted) and the least: a new row can only overwrite a stored point if its time lies
between the two, so ingest of fresh data (almost everything) and of data older than what is
stored (a backfill, a client sending newest first) never looks at the stored rows. Per table
it keeps the spans of time applied, so a body landing in a gap between stored ones (two writers
interleaving) is not looked up either, and each tag key's values (for max-values-per-tag).

A table's entry is loaded from the store on first use (one `GROUP BY` over the table, giving
`max(time)` and, if the store gives it, `min(time)`: without it any time up to the greatest may
overlap); a database's entries are loaded together, since the series limit counts them all.
DROP, DELETE and retention make entries stale (an upper bound of what is stored), so the store
calls `forget` and the next use reloads them. Memory: about 120 bytes per series plus the tag
values, and at most 256 spans per table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from flame.clmc.limits import Limits

__all__ = [
    "MAX_COLUMN",
    "MIN_COLUMN",
    "RESERVED",
    "Admission",
    "Overlap",
    "RowHashes",
    "SeriesIndex",
    "hash_strings",
    "hash_tags_many",
    "merge_last",
    "series_ids",
    "value_hashes",
]

RESERVED = -(2**63)  # a series admitted, with nothing applied yet
MAX_COLUMN = "\x1fmax"  # the loader's column of max(time)
MIN_COLUMN = "\x1fmin"  # ... and of min(time) (optional)
_MASK = (1 << 64) - 1

Key = tuple[str, str, str]  # database, retention policy, measurement
# (key) -> the table's distinct tag sets with `max(time)` as column MAX_COLUMN (and, optional,
# `min(time)` as MIN_COLUMN), tag columns named by their keys; None when the table does not exist
Loader = Callable[[Key], pa.Table | None]


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


Tags = Sequence[tuple[str, pa.Array | pa.ChunkedArray]]  # (tag key, its column) pairs


def series_ids(n: int, tags: Tags) -> np.ndarray:
    """The series id (uint64) of each of `n` rows from their tag columns (null: no such tag)."""
    return _sum_ids(n, [value_hashes(name, column) for name, column in tags])


def _sum_ids(n: int, hashed: Sequence[_Hashed]) -> np.ndarray:
    """Series ids from each tag column's row hashes (0 where null): order-free sums."""
    sid = np.zeros(n, dtype=np.uint64)
    for h in hashed:
        sid += h.rows
    return sid


@dataclass(frozen=True, slots=True)
class _Hashed:
    rows: np.ndarray  # per row: the hash of its (key, value), 0 where null
    valid: np.ndarray  # per row: has the tag
    distinct: np.ndarray  # the distinct values' hashes, in order of first appearance
    index: np.ndarray  # per row: its value's index in `distinct`, -1 where null


def value_hashes(name: str, column: pa.Array | pa.ChunkedArray) -> _Hashed:
    """A 64-bit hash of each distinct (tag key, value) of a column (hashed once each, over the
    value bytes with numpy: no Python per value), and each row's."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(col)
    distinct = _distinct_hashes(name, encoded.dictionary)
    indices = encoded.indices
    if indices.null_count:
        index = pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = index >= 0
        picked = (
            distinct[np.maximum(index, 0)] if len(distinct) else np.zeros(len(index), np.uint64)
        )
        rows = np.where(valid, picked, np.uint64(0))  # (a column all null has no values)
    else:
        index = indices.to_numpy(zero_copy_only=False).astype(np.int64)
        valid = np.ones(len(index), dtype=bool)
        rows = distinct[index] if len(distinct) else np.zeros(len(index), dtype=np.uint64)
    return _Hashed(rows, valid, distinct, index)


# (key, value) -> hash, for the few values a batch of one measurement usually has (hosts,
# interfaces, ...): a dict lookup costs less than a pass of numpy over them. Bounded.
_KNOWN: dict[tuple[str, str], int] = {}
_KNOWN_MAX = 200_000
_FEW = 64


def _distinct_hashes(name: str, values: pa.Array) -> np.ndarray:
    if len(values) > _FEW:
        return hash_strings(values, _key_seed(name))
    texts = values.to_pylist()
    out = np.empty(len(texts), dtype=np.uint64)
    missing = []
    for i, v in enumerate(texts):
        h = _KNOWN.get((name, v))
        if h is None:
            missing.append(i)
        else:
            out[i] = h
    if missing:
        fresh = hash_strings(values.take(pa.array(missing)), _key_seed(name)).tolist()
        if len(_KNOWN) + len(missing) > _KNOWN_MAX:
            _KNOWN.clear()
        for i, h in zip(missing, fresh, strict=True):
            out[i] = h
            _KNOWN[(name, texts[i])] = h
    return out


@dataclass(frozen=True, slots=True)
class RowHashes:
    """One tag column of one table, hashed: per row the hash of its (key, value), 0 where null."""

    rows: np.ndarray
    valid: np.ndarray


def hash_tags_many(tag_sets: Sequence[Tags]) -> list[list[RowHashes]]:
    """The tag columns of several tables hashed as `value_hashes` does, in one pass per tag
    key over all the tables that have it: a body of 200 measurements that all have a `host`
    tag costs one dictionary encoding and one hash of its distinct hosts, not 200."""
    by_name: dict[str, list[tuple[int, int, pa.Array]]] = {}
    out: list[list[RowHashes]] = []
    for t, tags in enumerate(tag_sets):
        for j, (name, col) in enumerate(tags):
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if not pa.types.is_string(arr.type):
                arr = arr.cast(pa.string())
            by_name.setdefault(name, []).append((t, j, arr))
        out.append([_NO_ROWS] * len(tags))
    for name, cols in by_name.items():
        arrays = [a for *_, a in cols]
        h = value_hashes(name, arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays))
        off = 0
        for t, j, a in cols:
            n = len(a)
            out[t][j] = RowHashes(h.rows[off : off + n], h.valid[off : off + n])
            off += n
    return out


_NO_ROWS = RowHashes(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool))


def _first_seen(values: np.ndarray) -> np.ndarray:
    """The distinct values of a uint64 array in order of first appearance (hash-based)."""
    return np.asarray(pc.unique(pa.array(values, pa.uint64())).to_numpy(zero_copy_only=False))


def _per_series(
    sids: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct series id: its oldest and newest time in the batch, and whether a time
    repeats. Sorting for a small batch, Arrow's hash group-by (O(rows)) for a big one."""
    if len(sids) <= 4096:
        return _per_series_sorted(sids, times)
    stats = (
        pa.table({"s": pa.array(sids, pa.uint64()), "t": pa.array(times, pa.int64())})
        .group_by("s", use_threads=False)
        .aggregate([("t", "min"), ("t", "max")])
    )
    distinct = stats.column("s").to_numpy()
    # a (series, time) twice? One hash pass says no for almost every batch (a collision
    # of the combined keys only costs the exact check)
    combined = sids ^ (times.view(np.uint64) * _M1)
    if len(pc.unique(pa.array(combined, pa.uint64()))) == len(sids):
        repeated = np.zeros(len(distinct), dtype=bool)
    else:
        exact = _per_series_sorted(sids, times)
        repeated = np.isin(distinct, exact[0][exact[3]])
    return distinct, stats.column("t_min").to_numpy(), stats.column("t_max").to_numpy(), repeated


def _per_series_sorted(
    sids: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((times, sids))
    s, t = sids[order], times[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(s)) - 1
    dup = np.zeros(len(s), dtype=bool)
    dup[1:] = ~first[1:] & (t[1:] == t[:-1])
    repeated = np.add.reduceat(dup, starts) > 0 if len(s) else np.zeros(0, dtype=bool)
    return s[starts], t[starts], t[ends], repeated


@dataclass
class Overlap:
    """What `overlaps` found of a batch, and what `applied` records after it is stored."""

    sids: np.ndarray  # per row
    maybe: np.ndarray  # per row: may replace a stored or an earlier row of the batch
    distinct: np.ndarray  # the batch's series ids ...
    newest: np.ndarray  # ... and each one's greatest time in the batch ...
    oldest: np.ndarray  # ... and least


_P = np.uint64(0x100000001B3)  # FNV-1a's prime: any odd multiplier spreads the bytes
_POWERS = [np.ones(1, dtype=np.uint64)]  # _P ** i, grown on demand
_SEEDS: dict[str, np.uint64] = {}


def _key_seed(name: str) -> np.uint64:
    """The tag key's part of its values' hashes. Deterministic (not Python's `hash`, salted per
    process): series ids travel in WAL records from one process to the next."""
    seed = _SEEDS.get(name)
    if seed is None:
        if len(_SEEDS) > 100_000:
            _SEEDS.clear()
        seed = _SEEDS[name] = hash_strings(pa.array([name], pa.string()), _KEY_SALT)[0]
    return seed


_KEY_SALT = np.uint64(0x6A09E667F3BCC908)


def _powers(n: int) -> np.ndarray:
    powers = _POWERS[0]
    if len(powers) < n:
        size = max(n, 2 * len(powers))
        powers = np.empty(size, dtype=np.uint64)
        powers[0] = 1
        np.cumprod(np.full(size - 1, _P, dtype=np.uint64), out=powers[1:])
        _POWERS[0] = powers
    return powers[:n]


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit. (Array arithmetic
    wraps around silently, as a hash wants.)"""
    h = h ^ (h >> _S30)
    h *= _M1
    h ^= h >> _S27
    h *= _M2
    return np.asarray(h ^ (h >> _S31))


def hash_strings(values: pa.Array, seed: np.uint64) -> np.ndarray:
    """A 64-bit hash per string (no nulls) of an Arrow string array, vectorised."""
    if not len(values):
        return np.zeros(0, dtype=np.uint64)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    if values.null_count:  # a null's bytes are empty, whatever they are: hash them as such
        values = pc.fill_null(values, "")
    wide = pa.types.is_large_string(values.type)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if wide else np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    rel = np.asarray(offsets - start, dtype=np.int64)
    lengths = np.diff(rel)
    h = lengths.astype(np.uint64) ^ seed
    if end > start:
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:end].astype(np.uint64)
        pos = np.arange(end - start) - np.repeat(rel[:-1], lengths)
        contrib = (data + np.uint64(1)) * _powers(int(lengths.max()))[pos]
        nonempty = lengths > 0
        cuts: np.ndarray = rel[:-1] if nonempty.all() else rel[:-1][nonempty]
        sums = _mix(np.add.reduceat(contrib, cuts))
        if nonempty.all():
            h += sums
        else:
            h[nonempty] += sums
    return _mix(h)


def merge_last(table: pa.Table, keys: list[str]) -> pa.Table:
    """One row per distinct `keys`, each other column its last non-null value (rows in write
    order): InfluxDB's merge of points written twice with the same series and time."""
    others = [n for n in table.column_names if n not in keys]
    grouped = table.group_by(keys, use_threads=False).aggregate([(n, "last") for n in others])
    return grouped.rename_columns(
        [
            n[: -len("_last")] if n.endswith("_last") and n[: -len("_last")] in others else n
            for n in grouped.column_names
        ]
    )


@dataclass
class _Table:
    hw: dict[int, int] = field(default_factory=dict)  # series id -> greatest time stored
    # series id -> least time stored; missing for a series with stored rows: unknown (any
    # time up to `hw` may be stored)
    lo: dict[int, int] = field(default_factory=dict)
    # tag key -> its values' hashes (`value_hashes`), sorted
    values: dict[str, np.ndarray] = field(default_factory=dict)
    # the table's stored times lie within these spans (sorted, disjoint, inclusive): two
    # writers interleaving bodies leave gaps in a series' range that no stored point is in
    spans: list[tuple[int, int]] = field(default_factory=list)

    def add_span(self, low: int, high: int) -> None:
        """Times [low, high] may now be stored; at most `_MAX_SPANS` spans are kept (the two
        closest merged: a wider span only sends more rows the exact way)."""
        spans = self.spans
        keep = [sp for sp in spans if sp[1] < low - 1 or sp[0] > high + 1]
        touching = [sp for sp in spans if not (sp[1] < low - 1 or sp[0] > high + 1)]
        if touching:
            low = min(low, touching[0][0])
            high = max(high, touching[-1][1])
        keep.append((low, high))
        keep.sort()
        while len(keep) > _MAX_SPANS:
            gaps = [keep[i + 1][0] - keep[i][1] for i in range(len(keep) - 1)]
            i = gaps.index(min(gaps))
            keep[i : i + 2] = [(keep[i][0], keep[i + 1][1])]
        self.spans = keep

    def in_spans(self, times: np.ndarray) -> np.ndarray:
        """Per time, whether it lies in a stored span."""
        if not self.spans:
            return np.zeros(len(times), dtype=bool)
        lows = np.array([sp[0] for sp in self.spans], dtype=np.int64)
        highs = np.array([sp[1] for sp in self.spans], dtype=np.int64)
        at = np.searchsorted(lows, times, side="right") - 1
        return np.asarray((at >= 0) & (times <= highs[np.maximum(at, 0)]))

    def known(self, name: str) -> np.ndarray:
        return self.values.get(name, _EMPTY)

    def add_values(self, name: str, hashes: np.ndarray) -> None:
        if len(hashes):
            self.values[name] = np.union1d(self.known(name), hashes)


_EMPTY = np.zeros(0, dtype=np.uint64)
_MAX_SPANS = 256


def _isin_sorted(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    return np.asarray(sorted_set[pos] == x)


@dataclass
class Admission:
    """What `admit` decided: the rows to keep, and for the others why (row mask, reason)."""

    keep: np.ndarray
    refused: list[tuple[np.ndarray, str]] = field(default_factory=list)
    sids: np.ndarray | None = None  # every row's series id


class SeriesIndex:
    def __init__(self, loader: Loader, tables: Callable[[str], Sequence[Key]]) -> None:
        """`loader` reads one table's series; `tables(db)` names a database's tables."""
        self._load = loader
        self._tables_of = tables
        self._lock = threading.RLock()
        self._tables: dict[Key, _Table] = {}
        self._loaded: set[str] = set()  # databases whose tables are all loaded
        self._count: dict[str, int] = {}  # series per database
        self._applied_unloaded: dict[str, int] = {}  # applies to a database not loaded

    # -- loading -------------------------------------------------------------------------------

    def _ensure(self, db: str) -> None:
        """Load `db`'s tables unless loaded. Reads the store without holding the index's lock
        (a store read may wait for an apply that itself waits for this lock); rows applied
        while it reads make it read again."""
        while True:
            with self._lock:
                if db in self._loaded:
                    return
                generation = self._applied_unloaded.get(db, 0)
            entries = {key: self._read(key) for key in self._tables_of(db)}
            with self._lock:
                if db in self._loaded:
                    return
                if self._applied_unloaded.get(db, 0) != generation:
                    continue  # an apply landed meanwhile: what was read may miss it
                for key, entry in entries.items():
                    self._tables[key] = entry
                self._count[db] = sum(len(e.hw) for e in entries.values())
                self._loaded.add(db)
                return

    def _read(self, key: Key) -> _Table:
        rows = self._load(key)
        entry = _Table()
        if rows is None or rows.num_rows == 0:
            return entry
        tags = [n for n in rows.column_names if n not in (MAX_COLUMN, MIN_COLUMN)]
        sids = series_ids(rows.num_rows, [(n, rows.column(n)) for n in tags])
        maxes = _column(rows, MAX_COLUMN).to_numpy(zero_copy_only=False)
        for sid, t in zip(sids.tolist(), maxes.tolist(), strict=True):
            prev = entry.hw.get(sid)
            entry.hw[sid] = t if prev is None else max(prev, t)
        least = RESERVED  # (unknown without the store's min(time): any time up to the greatest)
        if MIN_COLUMN in rows.column_names:
            mins = _column(rows, MIN_COLUMN).to_numpy(zero_copy_only=False)
            for sid, t in zip(sids.tolist(), mins.tolist(), strict=True):
                prev = entry.lo.get(sid)
                entry.lo[sid] = t if prev is None else min(prev, t)
            least = int(mins.min())
        entry.add_span(least, int(maxes.max()))
        for name in tags:
            entry.values[name] = np.unique(value_hashes(name, rows.column(name)).distinct)
        return entry

    def _entry(self, key: Key) -> _Table:
        """The table's entry (its database loaded: call `_ensure` first, without the lock)."""
        entry = self._tables.get(key)
        if entry is None:
            entry = self._tables[key] = _Table()
        return entry

    def forget(self, db: str) -> None:
        """Drop what is known of `db` (after DROP, DELETE, retention): reloaded on next use."""
        with self._lock:
            for key in [k for k in self._tables if k[0] == db]:
                del self._tables[key]
            self._loaded.discard(db)
            self._count.pop(db, None)

    def series_count(self, db: str) -> int:
        self._ensure(db)
        with self._lock:
            return self._count.get(db, 0)

    # -- writes --------------------------------------------------------------------------------

    def admit_many(
        self, db: str, rp: str, batches: Sequence[tuple[str, pa.Table, Tags]], limits: Limits
    ) -> list[Admission]:
        """`admit` for several tables of one database (one write's measurements), in order;
        their tags are hashed together (`hash_tags_many`)."""
        hashed = hash_tags_many([tags for _, _, tags in batches])
        while True:
            self._ensure(db)
            with self._lock:  # taken once for them all (an RLock: `admit` takes it again)
                if db in self._loaded:  # else forgotten meanwhile: load it, without the lock
                    return [
                        self.admit((db, rp, m), table, tags, limits, h)
                        for (m, table, tags), h in zip(batches, hashed, strict=True)
                    ]

    def admit(
        self,
        key: Key,
        table: pa.Table,
        tags: Tags,
        limits: Limits,
        hashed: Sequence[RowHashes] | None = None,
    ) -> Admission:
        """Check the batch's new series and tag values against the limits; reserve those
        admitted. Rows refused are dropped by the caller with the reason given. (`hashed`:
        the tag columns already hashed.)"""
        db, _, measurement = key
        n = table.num_rows
        keep = np.ones(n, dtype=bool)
        out = Admission(keep)
        if n == 0:
            return out
        if hashed is None:
            hashed = hash_tags_many([tags])[0]
        sids = np.zeros(n, dtype=np.uint64)
        for h in hashed:
            sids += h.rows
        out.sids = sids
        self._ensure(db)
        with self._lock:
            if db not in self._loaded:  # forgotten meanwhile
                return self.admit(key, table, tags, limits, hashed)
            entry = self._entry(key)
            new_values: dict[str, np.ndarray] = {}
            for (name, col), h in zip(tags, hashed, strict=True):
                refused = self._new_values(entry, name, h, limits, new_values)
                hit = refused & keep
                if hit.any():
                    have, limit = len(entry.known(name)), limits.max_values_per_tag
                    value = col[int(np.flatnonzero(hit)[0])].as_py()
                    out.refused.append(
                        (
                            hit,
                            f"max-values-per-tag limit exceeded ({have + len(new_values[name])}"
                            f'/{limit}): measurement="{measurement}" tag="{name}" value="{value}"',
                        )
                    )
                    keep &= ~hit
            self._admit_series(db, entry, sids, keep, limits, out)
            for name, hashes in new_values.items():
                entry.add_values(name, hashes)
        return out

    @staticmethod
    def _new_values(
        entry: _Table, name: str, h: RowHashes, limits: Limits, new_values: dict[str, np.ndarray]
    ) -> np.ndarray:
        """The tag's values not known yet, within the limit, into `new_values[name]` (in order
        of first appearance); returns the rows whose value is over the limit."""
        values = h.rows if h.valid.all() else h.rows[h.valid]
        known = entry.known(name)
        if len(known) and _isin_sorted(values, known).all():  # the usual case: all known
            return np.zeros(len(h.rows), dtype=bool)
        distinct, first = np.unique(values, return_index=True)
        fresh = ~_isin_sorted(distinct, entry.known(name))
        if not fresh.any():
            return np.zeros(len(h.rows), dtype=bool)
        fresh_vals = distinct[fresh][np.argsort(first[fresh], kind="stable")]
        have, limit = len(entry.known(name)), limits.max_values_per_tag
        room = len(fresh_vals) if limit <= 0 else max(0, limit - have)
        new_values[name] = fresh_vals[:room]
        if len(fresh_vals) <= room:
            return np.zeros(len(h.rows), dtype=bool)
        return np.asarray(h.valid & np.isin(h.rows, fresh_vals[room:]))

    def _admit_series(
        self,
        db: str,
        entry: _Table,
        sids: np.ndarray,
        keep: np.ndarray,
        limits: Limits,
        out: Admission,
    ) -> None:
        """Reserve the batch's new series within the database's limit (call with the lock)."""
        hw = entry.hw
        kept = sids if keep.all() else sids[keep]
        fresh_sids = [s for s in np.unique(kept).tolist() if s not in hw]
        count = self._count.get(db, 0)
        room = len(fresh_sids)
        if limits.max_series_per_database > 0:
            room = max(0, min(room, limits.max_series_per_database - count))
        if room < len(fresh_sids):  # the first ones to appear get in
            fresh_sids = [s for s in _first_seen(kept).tolist() if s not in hw]
            refused_sids = np.array(fresh_sids[room:], dtype=np.uint64)
            hit = np.isin(sids, refused_sids) & keep
            out.refused.append(
                (
                    hit,
                    f"max-series-per-database limit exceeded: ({limits.max_series_per_database})",
                )
            )
            keep &= ~hit
        for sid in fresh_sids[:room]:
            hw[sid] = RESERVED
        self._count[db] = count + room

    # -- applying ------------------------------------------------------------------------------

    def overlaps(
        self, key: Key, table: pa.Table, tags: Tags, sids: np.ndarray | None = None
    ) -> Overlap:
        """Series ids of the rows (`sids` if known), and which rows may share series and time
        with a stored row or another row of the batch (last-write-wins must look at those):
        those within their series' stored time range. Hash-based (Arrow group-by) and
        vectorised, so a batch costs O(rows) plus a dict lookup per series."""
        n = table.num_rows
        if sids is None:
            sids = series_ids(n, tags)
        times = _column(table, "time").to_numpy(zero_copy_only=False)
        maybe = np.zeros(n, dtype=bool)
        if not n:
            return Overlap(sids, maybe, sids, times, times)
        distinct, oldest, newest, repeated = _per_series(sids, times)
        self._ensure(key[0])
        with self._lock:
            entry = self._entry(key)
            hw, lo = entry.hw, entry.lo
            listed = distinct.tolist()
            hi = np.fromiter((hw.get(s, RESERVED) for s in listed), np.int64, len(listed))
            low = np.fromiter((lo.get(s, RESERVED) for s in listed), np.int64, len(listed))
        # a series with a row within [least, greatest] stored (nothing stored: hi is RESERVED)
        late = (hi != RESERVED) & (oldest <= hi) & (newest >= low)
        if late.any():
            order = np.argsort(distinct)
            at = order[np.searchsorted(distinct, sids, sorter=order)]  # each row's series
            maybe = late[at] & (times <= hi[at]) & (times >= low[at])
            if maybe.any():
                with self._lock:
                    maybe &= entry.in_spans(times)
        if repeated.any():  # the same series and time twice in the batch
            idx = np.flatnonzero(np.isin(sids, distinct[repeated]))
            order = np.lexsort((times[idx], sids[idx]))
            s, t = sids[idx][order], times[idx][order]
            same = (s[1:] == s[:-1]) & (t[1:] == t[:-1])
            maybe[idx[order[1:][same]]] = True
            maybe[idx[order[:-1][same]]] = True
        return Overlap(sids, maybe, distinct, newest, oldest)

    def applied(self, key: Key, overlap: Overlap) -> None:
        """The rows `overlaps` looked at are now stored."""
        if not len(overlap.distinct):
            return
        with self._lock:
            entry = self._tables.get(key) if key[0] in self._loaded else None
            if entry is None:  # not loaded: a load under way must read again
                self._applied_unloaded[key[0]] = self._applied_unloaded.get(key[0], 0) + 1
                return
            hw, lo = entry.hw, entry.lo
            fresh = 0
            for sid, top, bottom in zip(
                overlap.distinct.tolist(),
                overlap.newest.tolist(),
                overlap.oldest.tolist(),
                strict=True,
            ):
                prev = hw.get(sid)
                if prev is None:
                    fresh += 1
                if prev is None or prev == RESERVED:  # nothing stored before: the range is ours
                    lo[sid] = bottom
                elif sid in lo:  # (unknown stays unknown)
                    lo[sid] = min(lo[sid], bottom)
                hw[sid] = top if prev is None or top > prev else prev
            entry.add_span(int(overlap.oldest.min()), int(overlap.newest.max()))
            if fresh and key[0] in self._count:
                self._count[key[0]] += fresh
