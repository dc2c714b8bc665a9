"""The vectorised fast path of the line-protocol parser (see `lineproto` for the design).

Plain lines (no escapes, quotes, tabs, comments) are cut at their delimiters (' ', ',', '=')
with numpy over the whole body. Lines are grouped by measurement once; within a measurement,
lines of one *shape* (tag keys, field keys and types, timestamp or not) have the same delimiter
sequence, so their delimiter positions form a matrix and key bytes are compared column-wise,
8 bytes at a time. A shape only records where its values are: the value bytes of every shape
of the body are gathered and cast by Arrow together, one pass per type at the end, so a body
of 200 measurements costs a fixed number of conversions, not 200 times as many. Whatever does
not fit is handed back for the slow path.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from numpy.lib.stride_tricks import as_strided

from flame.clmc._lpscan import MAX_NS, MIN_NS
from flame.clmc.store.base import FieldType

__all__ = ["ARROW_TYPES", "MAX_FAST_LINE", "Chunk", "Tokens", "fast_path"]

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
# Shapes tried per measurement before its remaining lines go the slow way (a pass costs
# O(lines of the measurement), so many shapes of one measurement would cost their product).
_MAX_SHAPES = 32
# A measurement with fewer lines costs less through the reference scanner than a shape pass.
_MIN_LINES = 3
# Longer lines go the slow way: only they can exceed InfluxDB's 64 KiB key limit, which the
# reference scanner checks and words.
MAX_FAST_LINE = 65_000


def _byte_table(chars: bytes) -> np.ndarray:
    t = np.zeros(256, dtype=bool)
    t[np.frombuffer(chars, dtype=np.uint8)] = True
    return t


_QUOTE = ord('"')
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


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a shape's lines look like, precomputed once per shape (cached across bodies)."""

    shape: _Shape
    pattern: np.ndarray  # the delimiter sequence
    key_cols: np.ndarray  # token columns holding keys ...
    value_cols: np.ndarray  # ... and values
    key_lengths: np.ndarray
    # per token (with its delimiter), its least length and how much longer it may be
    min_length: np.ndarray
    length_span: np.ndarray
    # the keys as 8-byte words to compare: (token column, offset from the delimiter before
    # the key, value, mask) per word
    words: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    tag_cols: np.ndarray  # bounds column before each tag value
    field_cols: dict[FieldType, tuple[np.ndarray, tuple[str, ...]]]  # per type: columns, keys


@functools.lru_cache(maxsize=4096)
def _layout(shape: _Shape) -> _Layout:
    keys = [shape.measurement, *(x for k in shape.tags for x in (k, None))]
    keys += [x for k, _ in shape.fields for x in (k, None)]
    if shape.has_time:
        keys.append(None)
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
    p = b",=" * len(shape.tags) + b" =" + b",=" * (len(shape.fields) - 1)
    names = [shape.measurement, *shape.tags, *(k for k, _ in shape.fields)]
    base = 1 + 2 * len(shape.tags)
    by_type: dict[FieldType, tuple[list[int], list[str]]] = {}
    for j, (k, t) in enumerate(shape.fields):
        c, n = by_type.setdefault(t, ([], []))
        c.append(base + 2 * j + 1)
        n.append(k)
    return _Layout(
        shape=shape,
        pattern=np.frombuffer(p + (b" " if shape.has_time else b""), dtype=np.uint8),
        key_cols=np.array([i for i, k in enumerate(keys) if k is not None]),
        value_cols=np.array([i for i, k in enumerate(keys) if k is None]),
        key_lengths=np.array([len(k.encode()) for k in names]),
        min_length=np.array([2 if k is None else len(k.encode()) + 1 for k in keys], np.int64),
        length_span=np.array([2**30 if k is None else 0 for k in keys], np.uint64),
        words=(
            np.array(cols),
            np.array(offs),
            np.array(vals, dtype=np.uint64),
            np.array(masks, dtype=np.uint64),
        ),
        tag_cols=np.array([2 + 2 * j for j in range(len(shape.tags))], dtype=np.int64),
        field_cols={t: (np.array(c, dtype=np.int64), tuple(n)) for t, (c, n) in by_type.items()},
    )


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
    if v[0] == '"':  # a plain string: no quote, blank, comma, equals sign or backslash in it
        return FieldType.STRING if len(v) >= 2 and v[-1] == '"' and '"' not in v[1:-1] else None
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
    """Delimiter positions of a body, and per line where its delimiters start and end.

    `token(j)` is the text before delimiter j (from just after delimiter j - 1) *with*
    delimiter j: the tokens tile the body, so all of them are one zero-copy Arrow array over
    the body's bytes, and a column of values is one `take` and one `binary_slice` in Arrow."""

    def __init__(self, body: bytes, starts: np.ndarray, ends: np.ndarray) -> None:
        raw = np.frombuffer(body, dtype=np.uint8)
        # zero padding: a key comparison may look past the end of a short last line
        self.raw = np.concatenate((raw, np.zeros(_PAD, dtype=np.uint8)))
        # every 8-byte window of the body as a little-endian word (stride 1 byte)
        self.u64 = np.ndarray((len(self.raw) - 7,), dtype="<u8", buffer=self.raw, strides=(1,))
        # byte positions as int32 when they fit: half the memory traffic of int64
        self.index_type = np.int32 if len(self.raw) < 2**31 else np.int64
        found = np.flatnonzero((raw == 32) | (raw == 44) | (raw == 61) | (raw == 10))
        self.pos = found.astype(self.index_type, copy=False)
        self.chars = self.raw[self.pos]
        self.starts, self.ends = starts, ends
        self.first = np.searchsorted(self.pos, starts)
        self.count = np.searchsorted(self.pos, ends) - self.first
        self._body = body
        self._tokens: pa.Array | None = None
        self._quotes: np.ndarray | None = None if b'"' in body else np.zeros(len(starts), np.int64)

    def same_measurement(self, lines: np.ndarray) -> bool:
        """Whether every line of `lines` starts with the same measurement (compared 8 bytes
        at a time: a few passes over the lines, no strings built)."""
        starts = self.starts[lines]
        length = self.pos[self.first[lines]] - starts
        size = int(length[0])
        if size >= _PAD or not np.all(length == size):
            return False
        for off in range(0, size, 8):
            mask = np.uint64((1 << (8 * min(8, size - off))) - 1)
            words = self.u64[starts + off] & mask
            if not np.all(words == words[0]):
                return False
        return True

    def quotes(self, lines: np.ndarray) -> np.ndarray:
        """How many double quotes each of `lines` holds."""
        if self._quotes is None:
            q = np.flatnonzero(self.raw[: len(self._body)] == _QUOTE)
            line = np.searchsorted(self.starts, q, side="right") - 1
            self._quotes = np.bincount(line, minlength=len(self.starts))
        return np.asarray(self._quotes[lines])

    @property
    def tokens(self) -> pa.Array:
        """Token j (binary): the bytes after delimiter j - 1 up to and including delimiter j
        (the last one closed by a newline added past the end of the body)."""
        if self._tokens is None:
            body = self._body
            data = body if body.endswith(b"\n") else body + b"\n"
            wide = len(data) >= 2**31
            offsets = np.empty(len(self.pos) + 2, dtype=np.int64 if wide else np.int32)
            offsets[0] = 0
            offsets[1:-1] = self.pos + 1
            offsets[-1] = len(data)
            self._tokens = pa.Array.from_buffers(
                pa.large_binary() if wide else pa.binary(),
                len(self.pos) + 1,
                [None, pa.py_buffer(offsets), pa.py_buffer(data)],
            )
        return self._tokens

    def texts(self, idx: np.ndarray, strip: int = 1, start: int = 0) -> pa.Array:
        """Tokens `idx` less their last `strip` bytes (the delimiter, and a type suffix or a
        closing quote) and their first `start` ones, as strings (the body is valid UTF-8:
        `lineproto.parse` made it so)."""
        taken = self.tokens.take(pa.array(idx))
        text = pc.binary_slice(taken, start, -strip)
        return text.view(pa.large_string() if pa.types.is_large_binary(text.type) else pa.string())

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


def fast_path(
    tok: Tokens,
    lines: np.ndarray,
    mult: int,
    chunks: list[Chunk],
    width: tuple[int, int] = (0, 0),
) -> list[int]:
    """Turn the given lines (indexes) into chunks where they fit a shape; return the rest
    (lines of shapes wider than `width`, (max fields, max tags), go back too: the slow path
    refuses them)."""
    slow: list[int] = []
    long = (tok.ends[lines] - tok.starts[lines] > MAX_FAST_LINE) | (tok.count[lines] == 0)
    slow.extend(lines[long].tolist())
    lines = lines[~long]
    if not len(lines):
        return slow
    conv = _Conversions(tok, mult)
    pending: list[_Pending] = []
    for measurement_lines in _by_measurement(tok, lines):
        group = measurement_lines
        if len(group) < _MIN_LINES:
            slow.extend(group.tolist())
            continue
        for _ in range(_MAX_SHAPES):
            if not len(group):
                break
            shape = _shape_of(tok.line_text(int(group[0])))
            if shape is not None and _too_wide(shape, width):
                shape = None
            took = np.zeros(len(group), dtype=bool)
            if shape is not None:
                took = _take_shape(tok, group, shape, conv, pending)
            if not took[0]:  # the line that gave the shape must leave, or we would loop forever
                slow.append(int(group[0]))
                took[0] = True
            group = group[~took]
        slow.extend(group.tolist())
    conv.run()
    for p in pending:
        chunk, failed = p.finish(conv)
        slow.extend(failed.tolist())
        if chunk is not None:
            chunks.append(chunk)
    slow.sort()
    return slow


def _by_measurement(tok: Tokens, lines: np.ndarray) -> list[np.ndarray]:
    """`lines` grouped by measurement, each group in body order."""
    if tok.same_measurement(lines):  # one measurement, the usual body of an agent or an SR
        return [lines]
    # Measurement of each line as a small integer; each measurement's lines in body order.
    names = tok.texts(tok.first[lines])
    codes = pc.dictionary_encode(names).indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    cut = np.flatnonzero(np.diff(codes[order])) + 1
    return list(np.split(lines[order], cut))


def _take_shape(
    tok: Tokens, lines: np.ndarray, shape: _Shape, conv: _Conversions, pending: list[_Pending]
) -> np.ndarray:
    """Which of `lines` (one measurement's) fit `shape`; their values go to `conv`."""
    lay = _layout(shape)
    pattern = lay.pattern
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
    bounds = np.empty((len(li), d + 2), dtype=tok.index_type)
    bounds[:, 0] = tok.starts[li] - 1
    bounds[:, 1:-1] = delims
    bounds[:, -1] = tok.ends[li]
    # every token's length: a key's exactly its own, a value's at least 1 (one pass: a value
    # token's bound is [1, huge], a key's [length, length])
    lengths = np.diff(bounds, axis=1)
    unsigned = np.uint32 if lengths.dtype == np.int32 else np.uint64
    above = (lengths - lay.min_length.astype(lengths.dtype)).view(unsigned)
    ok &= np.all(above <= lay.length_span.astype(unsigned), axis=1)
    # Key bytes compared 8 at a time (unaligned little-endian words; padding keeps them in range).
    w_cols, w_offs, w_vals, w_masks = lay.words
    ok &= np.all((tok.u64[bounds[:, w_cols] + w_offs] & w_masks) == w_vals, axis=1)
    raw = tok.raw
    for t, (cols, _) in lay.field_cols.items():
        if t is FieldType.BOOLEAN:  # checked by value when converted
            continue
        fb = raw[bounds[:, cols] + 1]
        lb = raw[bounds[:, cols + 1] - 1]
        if t is FieldType.FLOAT:
            good = _FLOAT_FIRST[fb] & (lb != ord("i")) & (lb != ord("u"))
        elif t is FieldType.INTEGER:
            good = _INT_FIRST[fb] & (lb == ord("i"))
        elif t is FieldType.UNSIGNED:
            good = _UINT_FIRST[fb] & (lb == ord("u"))
        else:  # a string: quoted, and its quotes the only ones of the line (see below)
            good = (fb == _QUOTE) & (lb == _QUOTE) & (bounds[:, cols + 1] - bounds[:, cols] > 2)
        ok &= np.all(good, axis=1)
    strings = lay.field_cols.get(FieldType.STRING)
    ok &= tok.quotes(li) == (0 if strings is None else 2 * len(strings[0]))
    if shape.has_time:
        ok &= _INT_FIRST[raw[bounds[:, -2] + 1]]
    rows = np.flatnonzero(ok)
    if not len(rows):
        return took
    # the value after bounds column c of a row is token `first + c` (see `Tokens`)
    f = first[rows][:, None]
    n = len(rows)
    fields: list[tuple[str, FieldType, int]] = []
    for t, (cols, keys) in lay.field_cols.items():
        off = conv.add(t, (f + cols).T.ravel())  # every column of this type, one after another
        fields.extend((k, t, off + j * n) for j, k in enumerate(keys))
    tags: list[tuple[str, int]] = []
    if len(lay.tag_cols):
        off = conv.add(None, (f + lay.tag_cols).T.ravel())
        tags = [(k, off + j * n) for j, k in enumerate(shape.tags)]
    time = conv.add(_TIME, f[:, 0] + d) if shape.has_time else None
    pending.append(_Pending(shape.measurement, li[rows], tags, fields, time))
    took[cand[rows]] = True
    return took


def _too_wide(shape: _Shape, width: tuple[int, int]) -> bool:
    max_fields, max_tags = width
    return bool(max_fields and len(shape.fields) > max_fields) or bool(
        max_tags and len(shape.tags) > max_tags
    )


_TIME = "time"  # the conversion kind of timestamps


@dataclass
class _Conversions:
    """Values of every shape of a body, converted together: one `take` and one cast per kind
    (tag values, each field type, timestamps), then sliced back per column."""

    tok: Tokens
    mult: int
    parts: dict[object, list[np.ndarray]] = field(default_factory=dict)
    sizes: dict[object, int] = field(default_factory=dict)
    values: dict[object, pa.Array] = field(default_factory=dict)
    ok: dict[object, np.ndarray] = field(default_factory=dict)

    def add(self, kind: object, tokens: np.ndarray) -> int:
        """Queue the values in `tokens` (token indexes); returns their offset in `kind`'s."""
        offset = self.sizes.get(kind, 0)
        self.parts.setdefault(kind, []).append(tokens)
        self.sizes[kind] = offset + len(tokens)
        return offset

    def run(self) -> None:
        tok = self.tok
        for kind, parts in self.parts.items():
            idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
            suffixed = kind in (FieldType.INTEGER, FieldType.UNSIGNED, FieldType.STRING)
            text = tok.texts(idx, 2 if suffixed else 1, 1 if kind is FieldType.STRING else 0)
            if kind is None or kind is FieldType.STRING:  # text as is
                self.values[kind] = text
                self.ok[kind] = np.ones(len(text), dtype=bool)
                continue
            t = FieldType.INTEGER if kind is _TIME else kind
            assert isinstance(t, FieldType)
            arr = _convert(text, t)
            if arr is None:
                ok = ~_bad_values(text, t)
                safe = pc.if_else(pa.array(ok), text, pa.scalar("0"))
                converted = _convert(safe, t)
                assert converted is not None
                arr = converted
            else:
                ok = np.ones(len(text), dtype=bool)
            if kind is _TIME:
                ts = arr.to_numpy(zero_copy_only=False)
                limit = MAX_NS // self.mult
                ok &= (ts <= limit) & (ts >= -limit) & (ts <= MAX_NS) & (ts >= MIN_NS)
                arr = pa.array(ts * self.mult if self.mult > 1 else ts)
            elif t is FieldType.FLOAT and arr.null_count == 0:
                ok &= pc.is_finite(arr).to_numpy(zero_copy_only=False)
            self.values[kind] = arr
            self.ok[kind] = ok

    def take(self, kind: object, offset: int, n: int) -> tuple[pa.Array, np.ndarray]:
        return self.values[kind].slice(offset, n), self.ok[kind][offset : offset + n]


@dataclass
class _Pending:
    """A shape's rows, waiting for the body's conversions."""

    measurement: str
    lines: np.ndarray  # line indexes
    tags: list[tuple[str, int]]
    fields: list[tuple[str, FieldType, int]]
    time: int | None

    def finish(self, conv: _Conversions) -> tuple[Chunk | None, np.ndarray]:
        """The chunk of the rows whose values converted, and the lines of the others."""
        n = len(self.lines)
        good = np.ones(n, dtype=bool)
        fields: dict[str, tuple[FieldType, pa.Array]] = {}
        for k, t, off in self.fields:
            arr, ok = conv.take(t, off, n)
            good &= ok
            fields[k] = (t, arr)
        if self.time is None:
            time = pa.nulls(n, pa.int64())
        else:
            time, ok = conv.take(_TIME, self.time, n)
            good &= ok
        tags = {k: conv.take(None, off, n)[0] for k, off in self.tags}
        chunk = Chunk(self.measurement, self.lines + 1, time, tags, fields)
        if good.all():
            return chunk, np.empty(0, np.int64)
        failed = self.lines[~good]
        if not good.any():
            return None, failed
        return chunk.filter(good), failed


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
