"""Writing InfluxDB line protocol: what the SRs, the SFEMC, the VIMs, UEs and media SFs send to
the CLMC (the CLMC's own parser is `flame.clmc.lineproto`; `flame.common.clmc_client` sends).
Small and dependency-free, so the data plane can use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

__all__ = ["FieldValue", "escape_tag", "line", "point", "string_field"]

FieldValue = int | float | bool | str


def escape_tag(value: str) -> str:
    """A tag key or value escaped: commas, equals signs, spaces (see `_escape`)."""
    return _escape(value, ",= ")


def _escape(value: str, specials: str, odd_runs: re.Pattern[str] | None = None) -> str:
    """`value` with each of `specials` escaped; line breaks become spaces (a point may not span
    lines). A backslash is literal (parsers unescape only one before a special character), but
    one cannot end a name or tag value (it would escape the delimiter), so trailing ones are
    left out; in a field key parsers also pair backslashes before a delimiter (`odd_runs`), so
    an odd run there loses one (tests/common/test_lineproto_encoder.py checks every spelling
    against the CLMC's parser)."""
    if _PLAIN.fullmatch(value):  # the usual name or tag: nothing to do
        return value
    value = value.replace("\n", " ").replace("\r", " ")
    if "\\" in value:
        value = value.rstrip("\\")
        if odd_runs is not None:
            value = odd_runs.sub(lambda m: m[0][:-1] if len(m[0]) % 2 else m[0], value)
    for c in specials:
        value = value.replace(c, "\\" + c)
    return value


_PLAIN = re.compile(r'[^,= "\\\n\r]*')
_FIELD_KEY_RUNS = re.compile(r"\\+(?=[,= ])")


def _field_key(key: str) -> str:
    return _escape(key, ',= "', _FIELD_KEY_RUNS)


def _measurement(name: str) -> str:
    return _escape(name, ", ")


def string_field(value: str) -> str:
    """A string field value, quoted."""
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{text}"'


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int to Python
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return string_field(value)


def _optional_field(value: object) -> str | None:
    """A field value, or None for one to leave out: missing, or a float with no line-protocol
    spelling (NaN, infinities). Other types are written as their string."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, int | float | str):  # bool is an int
        return _field(value)
    return string_field(str(value))


def line(
    measurement: str,
    tags: Mapping[str, object],
    fields: Mapping[str, object],
    timestamp_ns: int,
) -> str | None:
    """`point` for values that may be missing: tags that are None or empty and fields that are
    None or not finite are left out, tags sorted (the CLMC's and InfluxDB's preferred order);
    None when no field is left (a point needs one)."""
    values = ((k, _optional_field(v)) for k, v in fields.items())
    field_part = ",".join(f"{_field_key(k)}={v}" for k, v in values if v is not None)
    if not field_part:
        return None
    tag_part = _tags((k, str(v)) for k, v in sorted(tags.items()) if v is not None)
    return f"{_measurement(measurement)}{tag_part} {field_part} {timestamp_ns}"


def _tags(pairs: Iterable[tuple[str, str]]) -> str:
    out = []
    for k, v in pairs:
        key, value = escape_tag(k), escape_tag(v)
        if key and value:  # empty ones are not allowed
            out.append(f",{key}={value}")
    return "".join(out)


def point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    timestamp_ns: int,
) -> str:
    """One point; empty tags are left out (the format forbids them)."""
    tag_part = _tags(tags.items())
    field_part = ",".join(f"{_field_key(k)}={_field(v)}" for k, v in fields.items())
    return f"{_measurement(measurement)}{tag_part} {field_part} {timestamp_ns}"
