"""The `Range` request header (RFC 9110 section 14), for one representation of known size.

`parse_range` never raises. Its three outcomes follow the RFC:

- ``None``: serve the whole representation (200). This is the answer for a header that does
  not parse (a server MUST ignore an invalid range set, 14.2), for a unit other than ``bytes``,
  and for several ranges: the RFC lets a server ignore a Range header, and a multipart answer
  buys HLS players nothing.
- ``UNSATISFIABLE``: the one range is well formed but selects no byte (416 with
  ``Content-Range: bytes */size``).
- a `ByteRange`: the slice to answer with 206.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["UNSATISFIABLE", "ByteRange", "Unsatisfiable", "content_range", "parse_range"]

# 1*DIGIT "-" *DIGIT, or "-" 1*DIGIT (suffix); the unit compares case-insensitively (14.1).
_SPEC = re.compile(r"(\d*)-(\d*)", re.ASCII)
_UNIT = re.compile(r"bytes", re.ASCII | re.IGNORECASE)
_MAX_DIGITS = 19
_HUGE = 10**_MAX_DIGITS


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as Content-Range counts them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def slice(self) -> slice:
        return slice(self.start, self.end + 1)


class Unsatisfiable:
    """The type of `UNSATISFIABLE` (a sentinel with a readable repr)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable()


def parse_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """The range a GET with this `Range` header selects from `size` bytes (see the module doc)."""
    if header is None or size <= 0:
        return None  # nothing to slice: an empty body is answered whole
    unit, eq, specs = header.partition("=")
    if not eq or not _UNIT.fullmatch(unit.strip(" \t")):
        return None
    # A range set is a comma list in which empty elements are allowed (RFC 9110 5.6.1).
    items = [item.strip(" \t") for item in specs.split(",")]
    items = [item for item in items if item]
    if len(items) != 1:
        return None
    m = _SPEC.fullmatch(items[0])
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        if not last:
            return None  # "-" alone is no range
        suffix = _number(last)
        if suffix == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    start = _number(first)
    if last:
        end = _number(last)
        if end < start:
            return None  # invalid: ignored, not 416 (14.1.1)
    else:
        end = size - 1
    if start >= size:
        return UNSATISFIABLE
    return ByteRange(start, min(end, size - 1))


def _number(digits: str) -> int:
    # int() refuses strings of more than 4300 digits; any such number exceeds every size anyway.
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def content_range(selected: ByteRange | Unsatisfiable, size: int) -> str:
    """The Content-Range value of a 206 or 416 answer."""
    if isinstance(selected, ByteRange):
        return f"bytes {selected.start}-{selected.end}/{size}"
    return f"bytes */{size}"
