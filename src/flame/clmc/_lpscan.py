"""The reference line-protocol scanner: one line at a time, following InfluxDB 1.x's rules and
error texts exactly (`models/points.go`: scanKey, scanFields, scanNumber, scanBoolean, scanTime).

`lineproto` sends here only the lines its vectorised fast path cannot vouch for (escapes, quotes,
anything odd), so this code favours fidelity over speed. Lines arrive as `str` (the body decoded
as UTF-8 with replacement, which is also how InfluxDB's JSON shows invalid bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flame.clmc.limits import MAX_KEY_BYTES
from flame.clmc.store.base import FieldType

__all__ = ["MAX_NS", "MIN_NS", "Point", "ScanError", "line_end", "scan_line", "split_lines"]

MIN_NS = -(2**63) + 2
MAX_NS = 2**63 - 2
TIME_RANGE_ERROR = f"time outside range {MIN_NS} - {MAX_NS}"
_INT_MAX = 2**63 - 1
_UINT_MAX = 2**64 - 1

FieldValue = float | int | str | bool


class ScanError(Exception):
    """InfluxDB's reason for rejecting a line (the text after `unable to parse '...': `)."""


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldType, FieldValue], ...]
    time: int | None  # ns, None = server time


def split_lines(body: str) -> list[str]:
    """Split a body into InfluxDB's lines (`scanLine`): see `line_end`."""
    data = body.encode("utf-8")
    out: list[str] = []
    i = 0
    while i < len(data):
        j = line_end(data, i)
        out.append(data[i:j].decode("utf-8"))
        i = j + 1
    if data.endswith(b"\n") or not data:
        out.append("")
    return out


_LINE_SPECIAL = re.compile(rb'[\\ =,"\n]')


def line_end(body: bytes, i: int) -> int:
    """Where the line starting at `i` ends (the index of its newline, or `len(body)`).

    As InfluxDB's `scanLine`: a backslash takes the next byte with it (a newline too) unless it
    is among the last two bytes of the body, and once past the first blank, a double quote
    after more `=` than `,` opens or closes a string in which newlines do not end the line.
    """
    n = len(body)
    quoted = fields = False
    equals = commas = 0
    search = _LINE_SPECIAL.search
    while True:
        m = search(body, i)
        if m is None:
            return n
        i = m.start()
        c = body[i]
        if c == 0x5C:  # backslash
            i += 2 if i + 2 < n else 1
            continue
        if c == 0x20:
            fields = True
        if fields:
            if not quoted and c == 0x3D:
                equals += 1
            elif not quoted and c == 0x2C:
                commas += 1
            elif c == 0x22 and equals > commas:
                quoted = not quoted
        if c == 0x0A and not quoted:
            return i
        i += 1


def _unescape_measurement(s: str) -> str:
    if "\\" not in s:
        return s
    return s.replace("\\,", ",").replace("\\ ", " ")


def _unescape_tag(s: str) -> str:
    if "\\" not in s:
        return s
    return s.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def _unescape_string(s: str) -> str:
    if "\\" not in s:
        return s
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in '\\"':
            out.append(s[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t\0":
        i += 1
    return i


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def scan_line(line: str, multiplier: int) -> Point:
    """Parse one non-blank, non-comment line (leading whitespace already removed)."""
    i, measurement, tags = _scan_key(line)
    key_len = _utf8_len(line[:i]) if i * 4 > MAX_KEY_BYTES else i
    if key_len > MAX_KEY_BYTES:
        raise ScanError(f"max key length exceeded: {key_len} > {MAX_KEY_BYTES}")
    i, fields = _scan_fields(line, i, key_len)
    if not fields:
        raise ScanError("missing fields")
    if "\0" in line:  # only here: the fast path leaves every line with a NUL to this scanner
        _refuse_nul_names(measurement, tags, fields)
    ts, i = _scan_time(line, i)
    time: int | None = None
    if ts:
        try:
            value = int(ts)
        except ValueError:
            raise ScanError(f'strconv.ParseInt: parsing "{ts}": invalid syntax') from None
        if not -(2**63) <= value <= _INT_MAX:
            raise ScanError(f'strconv.ParseInt: parsing "{ts}": value out of range')
        time = value * multiplier
        if not MIN_NS <= time <= MAX_NS:
            raise ScanError(TIME_RANGE_ERROR)
        while i < len(line):
            if line[i] != " ":
                raise ScanError("point is invalid")
            i += 1
    return Point(measurement, tags, fields, time)


def _refuse_nul_names(
    measurement: str,
    tags: tuple[tuple[str, str], ...],
    fields: tuple[tuple[str, FieldType, FieldValue], ...],
) -> None:
    """Names become SQL identifiers, which cannot hold a NUL (the engines' C APIs end the
    statement there); tag and string field values may."""
    if "\0" in measurement:
        raise ScanError("measurement contains a NUL character")
    if any("\0" in k for k, _ in tags):
        raise ScanError("tag key contains a NUL character")
    if any("\0" in f[0] for f in fields):
        raise ScanError("field key contains a NUL character")


# A name ends at one of these unless a backslash precedes it, whatever precedes the backslash:
# InfluxDB tests the previous byte only, so `a\\,b` is one measurement.
_MEASUREMENT_END = re.compile(r"(?<!\\)[, ]")
_TAG_END = re.compile(r"(?<!\\)[, =]")


def _scan_key(s: str) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """The series key: the measurement, then `,key=value` tag pairs up to the first blank."""
    i, has_tags = _scan_measurement(s)
    measurement = _unescape_measurement(s[:i])
    if not has_tags:
        return i, measurement, ()
    i, tags = _scan_tags(s, i)
    return i, measurement, tags


def _scan_measurement(s: str) -> tuple[int, bool]:
    """Where the measurement ends, and whether tags follow (`,`) rather than fields (` `)."""
    if not s or s[0] == ",":
        raise ScanError("missing measurement")
    m = _MEASUREMENT_END.search(s, 1)  # the first byte never ends it, even a blank
    if m is None:  # the key runs to the end of the line
        raise ScanError("missing fields")
    i = m.start()
    return i, s[i] == ","


def _scan_tags(s: str, i: int) -> tuple[int, tuple[tuple[str, str], ...]]:
    """The tag pairs after the comma at `i`, up to the blank ending them."""
    tags: list[tuple[str, str]] = []
    more = True
    while more:  # `i` is at the comma before each pair
        key, value, i, more = _scan_tag(s, i + 1)
        tags.append((key, value))
    if len(tags) > 1 and len({k for k, _ in tags}) != len(tags):
        raise ScanError("duplicate tags")
    return i, tuple(tags)


def _scan_tag(s: str, i: int) -> tuple[str, str, int, bool]:
    """One `key=value` pair from `i`: both unescaped, the index of the comma or blank after
    it, and whether another pair follows."""
    n = len(s)
    if i >= n or s[i] in " ,=":
        raise ScanError("missing tag key")
    m = _TAG_END.search(s, i + 1)
    if m is None or m.group() != "=":
        raise ScanError("missing tag value")
    eq = m.start()
    v0 = eq + 1
    if v0 >= n or s[v0] in ", ":
        raise ScanError("missing tag value")
    m = _TAG_END.search(s, v0 + 1)  # a value may begin with `=`
    if m is None:
        raise ScanError("missing fields")
    end = m.start()
    c = s[end]
    if c == "=":
        raise ScanError("invalid tag format")
    return _unescape_tag(s[i:eq]), _unescape_tag(s[v0:end]), end, c == ","


def _scan_fields(
    s: str, i: int, key_len: int = 0
) -> tuple[int, tuple[tuple[str, FieldType, FieldValue], ...]]:
    n = len(s)
    i = _skip_ws(s, i)
    start = i
    quoted = False
    equals = commas = 0
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == '"' and equals > commas:
            quoted = not quoted
            i += 1
            continue
        if c == "=" and not quoted:
            equals += 1
            if s[i - 1] == " " and (i < 2 or s[i - 2] != "\\"):
                raise ScanError("missing field key")
            if s[i - 1] == "," and (i < 2 or s[i - 2] != "\\"):
                raise ScanError("missing field key")
            if i + 1 >= n:
                raise ScanError("missing field value")
            nxt = s[i + 1]
            if nxt in ", ":
                raise ScanError("missing field value")
            if nxt in "0123456789.-Nn":
                i = _scan_number(s, i + 1)
                continue
            if nxt != '"':
                i = _scan_boolean(s, i + 1)
                continue
        if c == "," and not quoted:
            commas += 1
        if c == " " and not quoted:
            break
        i += 1
    if quoted:
        raise ScanError("unbalanced quotes")
    if equals == 0 or commas != equals - 1:
        raise ScanError("invalid field format")
    block = s[start:i]
    if key_len + 4 + _utf8_len(block) > MAX_KEY_BYTES:
        _check_field_keys(block, key_len)
    return i, _parse_fields(block)


def _check_field_keys(block: str, key_len: int) -> None:
    """InfluxDB's `walkFields` check: the series key, `#!~#` and each field key (as written)
    in at most 64 KiB; the first field over it names the size."""
    i, n = 0, len(block)
    while i < n:
        j = i
        while j < n and not (block[j] == "=" and (j == 0 or block[j - 1] != "\\")):
            j += 1
        size = key_len + 4 + _utf8_len(block[i:j])
        if size > MAX_KEY_BYTES:
            raise ScanError(f"max key length exceeded: {size} > {MAX_KEY_BYTES}")
        k = j + 1
        quoted = False
        while k < n:
            c = block[k]
            if c == "\\" and k + 1 < n and block[k + 1] in '"\\':
                k += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == "," and not quoted:
                break
            k += 1
        i = k + 1


_NUMBER_END = re.compile(r"[, ]")
# The shapes nearly every number has, which `_scan_odd_number` would only pass on to
# conversion: they skip its byte-by-byte walk.
_PLAIN_INTEGER = re.compile(r"-?[0-9]+[iu]")
_PLAIN_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _scan_number(s: str, i: int) -> int:
    """Check the number starting at `i` as InfluxDB's `scanNumber` does; where it ends."""
    m = _NUMBER_END.search(s, i)
    end = len(s) if m is None else m.start()
    if _PLAIN_INTEGER.fullmatch(s, i, end):
        _check_integer(s[i : end - 1], unsigned=s[end - 1] == "u")
    elif _PLAIN_FLOAT.fullmatch(s, i, end):
        _check_float(s[i:end])
    else:  # anything odd: the faithful walk finds the same end or InfluxDB's error
        end = _scan_odd_number(s, i)
    return end


def _scan_odd_number(s: str, start: int) -> int:
    end, suffix, decimal, scientific = _number_shape(s, start)
    if suffix and (decimal or scientific):
        raise ScanError("invalid number")
    # InfluxDB counts every byte but the sign, the suffix and the point: `e`, `+` and `-` too.
    digits = end - start - (1 if suffix else 0) - (1 if decimal else 0)
    digits -= 1 if s[start] == "-" else 0
    if digits == 0:
        raise ScanError("invalid number")
    if suffix:
        if s[end - 1] not in "iu":
            raise ScanError("invalid number")
        _check_integer(s[start : end - 1], unsigned=suffix == "u")
    else:
        _check_float(s[start:end])
    return end


def _number_shape(s: str, i: int) -> tuple[int, str, bool, bool]:
    """Walk a number as `scanNumber` does: its end, its suffix (`i`, `u` or none) and whether
    it has a decimal point and an exponent; any byte out of place is an invalid number."""
    n = len(s)
    start = i
    suffix = ""
    decimal = scientific = False
    if s[i] == "-":
        i += 1
        if i == n:
            raise ScanError("invalid number")
    while i < n:
        c = s[i]
        if c in ", ":
            break
        if c in "iu" and i > start and not suffix:
            suffix = c
        elif i > start and c in "eE":
            scientific = True
        elif c in "+-" and s[i - 1] in "eE":
            pass
        elif c == "." and not decimal:
            decimal = True
        elif c not in "0123456789":  # a second point, NaN, Inf: all the same error
            raise ScanError("invalid number")
        i += 1
    return i, suffix, decimal, scientific


def _check_integer(text: str, *, unsigned: bool) -> None:
    try:
        value = int(text)
    except ValueError:  # also past Python's 4300-digit conversion limit
        raise ScanError("invalid number") from None
    if not unsigned and not -(2**63) <= value <= _INT_MAX:
        raise ScanError(
            f'unable to parse integer {text}: strconv.ParseInt: parsing "{text}": '
            "value out of range"
        )
    if unsigned and not 0 <= value <= _UINT_MAX:
        # InfluxDB 1.6 has no unsigned support at all; 1.8's message is this one.
        reason = "value out of range" if value > 0 else "invalid syntax"
        raise ScanError(
            f'unable to parse unsigned {text}: strconv.ParseUint: parsing "{text}": {reason}'
        )


def _check_float(text: str) -> None:
    try:
        value = float(text)
    except ValueError:
        raise ScanError("invalid float") from None
    if value in (float("inf"), float("-inf")):
        raise ScanError("invalid float")


def _scan_boolean(s: str, i: int) -> int:
    n = len(s)
    start = i
    if s[i] not in "tfTF":
        raise ScanError("invalid boolean")
    i += 1
    while i < n and s[i] not in ", ":
        i += 1
    word = s[start:i]
    if len(word) == 1 or word in _BOOL_WORDS:
        return i
    raise ScanError("invalid boolean")


_BOOL_WORDS = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
_BOOL_CHARS = {"t": True, "T": True, "f": False, "F": False}


def _scan_time(s: str, i: int) -> tuple[str, int]:
    n = len(s)
    i = _skip_ws(s, i)
    start = i
    while i < n:
        c = s[i]
        if c in "\n ":
            break
        if i == start and c == "-":
            i += 1
            continue
        if not "0" <= c <= "9":
            raise ScanError("bad timestamp")
        i += 1
    return s[start:i], i


def _parse_fields(block: str) -> tuple[tuple[str, FieldType, FieldValue], ...]:
    """Split a validated field block into typed (key, type, value); the last duplicate wins.

    As InfluxDB reads a stored point (`FieldIterator.Next`, `scanTo`, `scanFieldValue`), which
    is not quite how `scanFields` validated it: keys end at an `=` not preceded by a backslash,
    values at a `,` outside double quotes, a value's type is told by its first byte, and a
    string is the value less its first and last byte. Where the two readings disagree (odd
    quoting InfluxDB accepts) the result is InfluxDB's; a value it could not convert either is
    a `ScanError`, never another exception.
    """
    out: dict[str, tuple[FieldType, FieldValue]] = {}
    i, n = 0, len(block)
    while i < n:
        k0 = j = i
        while j < n and not (block[j] == "=" and (j == 0 or block[j - 1] != "\\")):
            j += 1
        if j > n - 2:
            raise ScanError(f"invalid value: field-key={block[k0:j]}")
        key = _unescape_key(block[k0:j])
        v0 = k = j + 1
        quoted = False
        while k < n:
            c = block[k]
            if c == "\\" and k + 1 < n and block[k + 1] in '"\\':
                k += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == "," and not quoted:
                break
            k += 1
        i = k + 1
        if key:  # InfluxDB skips a field with an empty key
            out[key] = _typed(block[v0:k])
    return tuple((k, t, v) for k, (t, v) in out.items())


def _unescape_key(s: str) -> str:
    """A field key as InfluxDB unescapes it (`escape.AppendUnescaped`: `\\,` `\\"` `\\ ` `\\=`)."""
    if "\\" not in s:
        return s
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] == "\\" and i + 1 < n and s[i + 1] in '," =':
            out.append(s[i + 1])
            i += 2
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def _cut_last(last: str) -> str:
    """What InfluxDB keeps of a string value's last character when it is no closing quote
    (`s=""é`): it drops the value's last *byte*, so a multi-byte character leaves its other
    bytes, each shown as U+FFFD (Go's rendering of an invalid byte)."""
    return "\ufffd" * (len(last.encode("utf-8", "surrogatepass")) - 1) if last > "\x7f" else ""


def _typed(text: str) -> tuple[FieldType, FieldValue]:
    if not text:
        raise ScanError("missing field value")
    c = text[0]
    if c == '"':
        if len(text) < 2:
            raise ScanError("unbalanced quotes")
        return FieldType.STRING, _unescape_string(text[1:-1] + _cut_last(text[-1]))
    if c in "0123456789-.nNiIu":
        last = text[-1]
        try:
            if last == "i":
                if not _INT_TEXT.fullmatch(text, 0, len(text) - 1):
                    raise ValueError(text)
                value = int(text[:-1])
                if not -(2**63) <= value <= _INT_MAX:
                    raise ValueError(text)
                return FieldType.INTEGER, value
            if last == "u":
                if not _INT_TEXT.fullmatch(text, 0, len(text) - 1) or text[0] in "+-":
                    raise ValueError(text)
                value = int(text[:-1])
                if not 0 <= value <= _UINT_MAX:
                    raise ValueError(text)
                return FieldType.UNSIGNED, value
            if not _FLOAT_TEXT.fullmatch(text):
                raise ValueError(text)
            f = float(text)
        except ValueError:
            raise ScanError("invalid number") from None
        if f in (float("inf"), float("-inf")):
            raise ScanError("invalid float")
        return FieldType.FLOAT, f
    if len(text) == 1 and c in _BOOL_CHARS:
        return FieldType.BOOLEAN, _BOOL_CHARS[c]
    if text in _BOOL_WORDS:
        return FieldType.BOOLEAN, _BOOL_WORDS[text]
    raise ScanError("invalid boolean")


_INT_TEXT = re.compile(r"[-+]?[0-9]+")
# Go's strconv.ParseFloat without the forms scanNumber already refuses (inf, nan, hex, '_').
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
