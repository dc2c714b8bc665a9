"""Writing InfluxDB line protocol: what the SRs, the SFEMC and UEs send to the CLMC (the CLMC's
own parser is `flame.clmc.lineproto`). Small and dependency-free, so the data plane can use it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FieldValue", "escape_tag", "point", "string_field"]

FieldValue = int | float | bool | str


def escape_tag(value: str) -> str:
    """A tag key or value (or field key) escaped: commas, equals signs, spaces, backslashes;
    line breaks become spaces, since a point may not span lines."""
    value = value.replace("\n", " ").replace("\r", " ")
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


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


def point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    timestamp_ns: int,
) -> str:
    """One point; empty tag values are left out (the format forbids them)."""
    tag_part = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags.items() if v)
    field_part = ",".join(f"{escape_tag(k)}={_field(v)}" for k, v in fields.items())
    name = measurement.replace(",", "\\,").replace(" ", "\\ ")
    return f"{name}{tag_part} {field_part} {timestamp_ns}"
