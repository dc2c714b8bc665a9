"""TOSCA primitive values: scalar-units, versions, ranges and timestamps.

Scalar-units are normalised to a base unit (bytes, seconds, hertz, bits per second) so that
constraints compare `512 MB` with `1 GB` correctly.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

SIZE_UNITS = {
    "B": 1,
    "kB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
    "TB": 1000**4,
    "TiB": 1024**4,
}
TIME_UNITS = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "ns": 1e-9,
}
FREQUENCY_UNITS = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}
BITRATE_UNITS = {
    "bps": 1,
    "Kbps": 1000,
    "Kibps": 1024,
    "Mbps": 1000**2,
    "Mibps": 1024**2,
    "Gbps": 1000**3,
    "Gibps": 1024**3,
    "Tbps": 1000**4,
    "Tibps": 1024**4,
    "Bps": 8,
    "KBps": 8 * 1000,
    "KiBps": 8 * 1024,
    "MBps": 8 * 1000**2,
    "MiBps": 8 * 1024**2,
    "GBps": 8 * 1000**3,
    "GiBps": 8 * 1024**3,
    "TBps": 8 * 1000**4,
    "TiBps": 8 * 1024**4,
}

SCALAR_UNITS: dict[str, dict[str, float]] = {
    "scalar-unit.size": {k: float(v) for k, v in SIZE_UNITS.items()},
    "scalar-unit.time": TIME_UNITS,
    "scalar-unit.frequency": FREQUENCY_UNITS,
    "scalar-unit.bitrate": {k: float(v) for k, v in BITRATE_UNITS.items()},
}

_SCALAR = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]+)\s*$")
_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+(?:\.[A-Za-z0-9_]+(?:-\d+)?)?)?$")


class ScalarError(ValueError):
    """A scalar-unit string that cannot be read; `hint` says what would be accepted."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _unit_lookup(units: dict[str, float], unit: str) -> str | None:
    if unit in units:
        return unit
    # TOSCA 1.3 says units are case-insensitive for size, time and frequency; bitrate keeps
    # case because b (bit) and B (byte) differ.
    if "bps" in next(iter(units)) or "Bps" in unit:
        return None
    lowered = unit.lower()
    for name in units:
        if name.lower() == lowered:
            return name
    return None


def parse_scalar(value: object, scalar_type: str) -> float:
    """Normalise `'2 GB'` to 2e9 (base unit of `scalar_type`); raise ScalarError otherwise."""
    units = SCALAR_UNITS[scalar_type]
    examples = ", ".join(list(units)[:6])
    if not isinstance(value, str):
        raise ScalarError(
            f"{scalar_type} value must be a number followed by a unit, got {value!r}",
            f"write it like '{value} {next(iter(units))}' (units: {examples} ...)",
        )
    match = _SCALAR.match(value)
    if not match:
        raise ScalarError(
            f"'{value}' is not a {scalar_type} value",
            f"write a number, a space and a unit, e.g. '2 {list(units)[min(3, len(units) - 1)]}'",
        )
    number, unit = match.groups()
    canonical = _unit_lookup(units, unit)
    if canonical is None:
        raise ScalarError(
            f"unknown unit '{unit}' for {scalar_type}",
            f"use one of {', '.join(units)}",
        )
    result = float(number) * units[canonical]
    if not math.isfinite(result):
        raise ScalarError(
            f"'{value}' is out of range for {scalar_type}",
            f"give a finite amount, e.g. '2 {list(units)[min(3, len(units) - 1)]}'",
        )
    return result


def is_version(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        value = str(value)
    return isinstance(value, str) and bool(_VERSION.match(value))


def version_key(value: object) -> tuple[int, ...]:
    text = str(value)
    parts: list[int] = []
    for part in text.split(".")[:3]:
        parts.append(int(part) if part.isdigit() else 0)
    return tuple(parts)


def is_timestamp(value: object) -> bool:
    if isinstance(value, _dt.date):
        return True
    if not isinstance(value, str):
        return False
    try:
        _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def is_range(value: object) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    low, high = value
    if isinstance(low, bool) or not isinstance(low, int):
        return False
    if high == "UNBOUNDED":
        return True
    return isinstance(high, int) and not isinstance(high, bool) and low <= high
