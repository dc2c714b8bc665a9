"""The vectorised fast path of the line-protocol parser (see `lineproto` for the design).

Plain lines (no escapes, quotes, tabs, comments) are cut at their delimiters (' ', ',', '=')
with numpy over the whole body. Lines of one *shape* (measurement, tag keys, field keys and
types, timestamp or not) have the same delimiter sequence, so their delimiter positions form a
matrix; key bytes are compared column-wise and value bytes gathered into Arrow string arrays,
then cast to their types by Arrow. Whatever does not fit is handed back for the slow path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from numpy.lib.stride_tricks import as_strided

from flame.clmc._lpscan import MAX_NS, MIN_NS
from flame.clmc.store.base import FieldType

__all__ = ["ARROW_TYPES", "Chunk", "Tokens", "fast_path"]

ARROW_TYPES = {
    FieldType.FLOAT: pa.float64(),
    FieldType.INTEGER: pa.int64(),
    FieldType.UNSIGNED: pa.uint64(),
    FieldType.STRING: pa.string(),
    FieldType.BOOLEAN: pa.bool_(),
}
_TRUE = pa.array(["t", "T", "true", "True", "TRUE"])
_BOOLS = pa.array(["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"])
_PAD = 1024  # longer keys never take the fast path
_MAX_SHAPES = 64  # then the remaining lines go the slow way rather than pass after pass


def _byte_table(chars: bytes) -> np.ndarray:
    t = np.zeros(256, dtype=bool)
    t[np.frombuffer(chars, dtype=np.uint8)] = True
    return t


_FLOAT_FIRST = _byte_table(b"0123456789.-")
_INT_FIRST = _byte_table(b"0123456789-")
_UINT_FIRST = _byte_table(b"0123456789")


@dataclass
class Chunk:
    """Columns for some rows of one measurement."""

    measurement: str
    lines: np.ndarray  # 1-based line numbers
    time: pa.Array  # int64, null = server time
    tags: dict[str, pa.Array]
    fields: dict[str, tuple[FieldType, pa.Array]]

    def filter(self, keep: np.ndarray) -> Chunk:
        k = pa.array(keep)
        return Chunk(
            self.measurement,
            self.lines[keep],
            self.time.filter(k),
            {n: a.filter(k) for n, a in self.tags.items()},
            {n: (t, a.filter(k)) for n, (t, a) in self.fields.items()},
        )


@dataclass(frozen=True, slots=True)
class _Shape:
    measurement: str
    tags: tuple[str, ...]
    fields: tuple[tuple[str, FieldType], ...]
    has_time: bool

    def layout(
        self,
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Token columns holding keys and values, and the keys as 8-byte words to compare:
        (token column, offset from the delimiter before the key, value, mask) per word."""
        keys = [self.measurement, *(x for k in self.tags for x in (k, None))]
        keys += [x for k, _ in self.fields for x in (k, None)]
        if self.has_time:
            keys.append(None)
        key_cols = np.array([i for i, k in enumerate(keys) if k is not None])
        value_cols = np.array([i for i, k in enumerate(keys) if k is None])
        cols, offs, vals, masks = [], [], [], []
        for i, k in enumerate(keys):
            if k is None:
                continue
            data = k.encode()
            for j in range(0, len(data), 8):
                chunk = data[j : j + 8]
                cols.append(i)
                offs.append(1 + j)
                vals.append(int.from_bytes(chunk.ljust(8, b"\0"), "little"))
                masks.append((1 << (8 * len(chunk))) - 1)
        words = (
            np.array(cols),
            np.array(offs),
            np.array(vals, dtype=np.uint64),
            np.array(masks, dtype=np.uint64),
        )
        return key_cols, value_cols, words

    def key_lengths(self) -> np.ndarray:
        names = [self.measurement, *self.tags, *(k for k, _ in self.fields)]
        return np.array([len(k.encode()) for k in names])

    def pattern(self) -> np.ndarray:
        p = b",=" * len(self.tags) + b" =" + b",=" * (len(self.fields) - 1)
        return np.frombuffer(p + (b" " if self.has_time else b""), dtype=np.uint8)


def _shape_of(line: str) -> _Shape | None:
    """The shape of a plain line, or None if the fast path should not take it."""
    parts = line.split(" ")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    key = parts[0].split(",")
    measurement = key[0]
    if not measurement or "=" in measurement:
        return None
    tags: list[str] = []
    for kv in key[1:]:
        k, eq, v = kv.partition("=")
        if not k or not eq or not v or "=" in v:
            return None
        tags.append(k)
    fields: list[tuple[str, FieldType]] = []
    for kv in parts[1].split(","):
        k, eq, v = kv.partition("=")
        if not k or not eq or not v or "=" in v:
            return None
        t = _value_type(v)
        if t is None:
            return None
        fields.append((k, t))
    names = [*tags, *(k for k, _ in fields)]
    if len(set(names)) != len(names) or "time" in names:
        return None
    if max(len(k.encode()) for k in (measurement, *names)) >= _PAD:
        return None
    return _Shape(measurement, tuple(tags), tuple(fields), len(parts) == 3)


def _value_type(v: str) -> FieldType | None:
    if v[-1] == "i":
        return FieldType.INTEGER
    if v[-1] == "u":
        return FieldType.UNSIGNED
    if v[0] in "tTfF":
        return FieldType.BOOLEAN
    if v[0] in "0123456789.-":
        return FieldType.FLOAT
    return None


class Tokens:
    """Delimiter positions of a body, and per line where its delimiters start and end."""

    def __init__(self, body: bytes, starts: np.ndarray, ends: np.ndarray) -> None:
        raw = np.frombuffer(body, dtype=np.uint8)
        # zero padding: a key comparison may look past the end of a short last line
        self.raw = np.concatenate((raw, np.zeros(_PAD, dtype=np.uint8)))
        # every 8-byte window of the body as a little-endian word (stride 1 byte)
        self.u64 = np.ndarray((len(self.raw) - 7,), dtype="<u8", buffer=self.raw, strides=(1,))
        self.pos = np.flatnonzero((raw == 32) | (raw == 44) | (raw == 61) | (raw == 10))
        self.chars = self.raw[self.pos]
        self.starts, self.ends = starts, ends
        self.first = np.searchsorted(self.pos, starts)
        self.count = np.searchsorted(self.pos, ends) - self.first

    def gather(self, s: np.ndarray, e: np.ndarray) -> pa.Array:
        """Bytes [s, e) of each row as one Arrow string array."""
        lengths = e - s
        offsets = np.zeros(len(s) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(s) and lengths.min() > 0:
            # positions by a running sum: +1 inside a row, a jump to the next row's start
            step = np.ones(int(offsets[-1]), dtype=np.int64)
            step[0] = s[0]
            step[offsets[1:-1]] = s[1:] - e[:-1] + 1
            idx = np.cumsum(step)
        else:
            idx = np.repeat(s - offsets[:-1], lengths) + np.arange(offsets[-1])
        data = self.raw[idx]
        return pa.StringArray.from_buffers(
            len(s), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
        )

    def line_text(self, i: int) -> str:
        return bytes(self.raw[self.starts[i] : self.ends[i]]).decode("utf-8")


def fast_path(tok: Tokens, lines: np.ndarray, mult: int, chunks: list[Chunk]) -> list[int]:
    """Turn the given lines (indexes) into chunks where they fit a shape; return the rest."""
    slow: list[int] = []
    # Measurement of each line as a small integer, so a shape only looks at its own lines.
    has_delim = tok.count[lines] > 0
    slow.extend(lines[~has_delim].tolist())
    lines = lines[has_delim]
    meas_end = tok.pos[tok.first[lines]]
    codes = (
        pc.dictionary_encode(tok.gather(tok.starts[lines], meas_end)).indices.to_numpy()
        if len(lines)
        else np.empty(0, np.int32)
    )
    for _ in range(_MAX_SHAPES):
        if len(lines) == 0:
            return slow
        shape = _shape_of(tok.line_text(int(lines[0])))
        if shape is None:
            slow.append(int(lines[0]))
            lines, codes = lines[1:], codes[1:]
            continue
        mine = np.flatnonzero(codes == codes[0])
        took = np.zeros(len(lines), dtype=bool)
        took[mine] = _take_shape(tok, lines[mine], shape, mult, chunks)
        if not took[0]:  # the line that gave the shape must leave, or we would loop forever
            slow.append(int(lines[0]))
            took[0] = True
        lines, codes = lines[~took], codes[~took]
    slow.extend(lines.tolist())
    return slow


def _take_shape(
    tok: Tokens, lines: np.ndarray, shape: _Shape, mult: int, chunks: list[Chunk]
) -> np.ndarray:
    pattern = shape.pattern()
    d = len(pattern)
    took = np.zeros(len(lines), dtype=bool)
    cand = np.flatnonzero(tok.count[lines] == d)
    if not len(cand):
        return took
    li = lines[cand]
    first = tok.first[li]
    n = len(li)
    if n > 1 and li[-1] - li[0] == n - 1 and first[-1] - first[0] == (n - 1) * (d + 1):
        # consecutive lines of d delimiters each (plus the newline): a strided view, no copy
        stride = tok.pos.strides[0]
        delims = as_strided(tok.pos[first[0] :], shape=(n, d), strides=(stride * (d + 1), stride))
        chars = as_strided(tok.chars[first[0] :], shape=(n, d), strides=(d + 1, 1))
        ok = np.all(chars == pattern, axis=1)
    else:
        m = first[:, None] + np.arange(d)
        delims = tok.pos[m]
        ok = np.all(tok.chars[m] == pattern, axis=1)
    # token k spans (bounds[:, k] + 1, bounds[:, k + 1])
    bounds = np.empty((len(li), d + 2), dtype=np.int64)
    bounds[:, 0] = tok.starts[li] - 1
    bounds[:, 1:-1] = delims
    bounds[:, -1] = tok.ends[li]
    lengths = bounds[:, 1:] - bounds[:, :-1] - 1
    key_cols, value_cols, words = shape.layout()
    ok &= np.all(lengths[:, key_cols] == shape.key_lengths(), axis=1)
    ok &= np.all(lengths[:, value_cols] > 0, axis=1)
    # Key bytes compared 8 at a time (unaligned little-endian words; padding keeps them in range).
    w_cols, w_offs, w_vals, w_masks = words
    ok &= np.all((tok.u64[bounds[:, w_cols] + w_offs] & w_masks) == w_vals, axis=1)
    base = 1 + 2 * len(shape.tags)
    for j, (_, t) in enumerate(shape.fields):
        col = base + 2 * j + 1
        fb = tok.raw[bounds[:, col] + 1]
        lb = tok.raw[bounds[:, col + 1] - 1]
        if t is FieldType.FLOAT:
            ok &= _FLOAT_FIRST[fb] & (lb != ord("i")) & (lb != ord("u"))
        elif t is FieldType.INTEGER:
            ok &= _INT_FIRST[fb] & (lb == ord("i"))
        elif t is FieldType.UNSIGNED:
            ok &= _UINT_FIRST[fb] & (lb == ord("u"))
    if shape.has_time:
        ok &= _INT_FIRST[tok.raw[bounds[:, -2] + 1]]
    rows = np.flatnonzero(ok)
    for _ in range(2):  # a second pass without the rows whose values failed to convert
        if not len(rows):
            return took
        got = _convert_rows(tok, bounds[rows], shape, base, mult)
        if isinstance(got, Chunk):
            break
        rows = rows[~got]
    else:
        return took
    got.lines = li[rows] + 1
    took[cand[rows]] = True
    chunks.append(got)
    return took


def _convert_rows(
    tok: Tokens, b: np.ndarray, shape: _Shape, base: int, mult: int
) -> Chunk | np.ndarray:
    """The chunk of these rows, or a mask of the rows with a value InfluxDB would reject."""
    bad = np.zeros(len(b), dtype=bool)
    fields: dict[str, tuple[FieldType, pa.Array]] = {}
    for j, (k, t) in enumerate(shape.fields):
        col = base + 2 * j + 1
        text = tok.gather(b[:, col] + 1, b[:, col + 1] - (0 if t in _NO_SUFFIX else 1))
        arr = _convert(text, t)
        if arr is None:
            bad |= _bad_values(text, t)
        else:
            fields[k] = (t, arr)
    time = pa.nulls(len(b), pa.int64())
    if shape.has_time:
        text = tok.gather(b[:, -2] + 1, b[:, -1])
        ts = _convert(text, FieldType.INTEGER)
        if ts is None:
            bad |= _bad_values(text, FieldType.INTEGER)
        else:
            t_np = ts.to_numpy()
            limit = MAX_NS // mult
            bad |= (t_np > limit) | (t_np < -limit) | (t_np > MAX_NS) | (t_np < MIN_NS)
            time = pa.array(t_np * mult if mult > 1 else t_np)
    if bad.any():
        return bad
    tags = {k: tok.gather(b[:, 2 + 2 * j] + 1, b[:, 3 + 2 * j]) for j, k in enumerate(shape.tags)}
    return Chunk(shape.measurement, np.empty(0, np.int64), time, tags, fields)


def _convert(text: pa.Array, t: FieldType) -> pa.Array | None:
    """Typed values, or None when one of them is not valid for InfluxDB."""
    try:
        if t is FieldType.BOOLEAN:
            if not pc.all(pc.is_in(text, value_set=_BOOLS)).as_py():
                return None
            return pc.is_in(text, value_set=_TRUE)
        if t is FieldType.FLOAT:
            arr = pc.cast(text, pa.float64())
            return arr if pc.all(pc.is_finite(arr)).as_py() else None
        return pc.cast(text, pa.uint64() if t is FieldType.UNSIGNED else pa.int64())
    except pa.ArrowInvalid:
        return None


def _bad_values(text: pa.Array, t: FieldType) -> np.ndarray:
    """Row by row, which values fail (only after a whole-column conversion failed)."""
    regex = _STRICT[t]
    out = []
    for v in text.to_pylist():
        good = regex.fullmatch(v) is not None
        if good and t is FieldType.FLOAT:
            good = math.isfinite(float(v))
        elif good and t is FieldType.INTEGER:
            good = -(2**63) <= int(v) < 2**63
        elif good and t is FieldType.UNSIGNED:
            good = int(v) < 2**64
        out.append(not good)
    return np.array(out, dtype=bool)


_STRICT = {
    FieldType.FLOAT: re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"),
    FieldType.INTEGER: re.compile(r"-?[0-9]+"),
    FieldType.UNSIGNED: re.compile(r"[0-9]+"),
    FieldType.BOOLEAN: re.compile(r"[tT]|true|True|TRUE|[fF]|false|False|FALSE"),
}
_NO_SUFFIX = (FieldType.FLOAT, FieldType.BOOLEAN)
