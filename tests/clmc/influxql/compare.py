"""Equality of result bodies, with a float tolerance for summation order."""

from __future__ import annotations

import math
from typing import Any


def same(a: Any, b: Any, path: str = "$") -> str | None:
    """None if equal, else where they differ. 1 and 1.0 are equal (Go prints 1.0 as 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a is b or (a == b and type(a) is type(b)) else f"{path}: {a!r} != {b!r}"
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
            return None
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            diff = same(a[k], b[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(a, tuple):
        a = list(a)
    if isinstance(b, tuple):
        b = list(b)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = same(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def ties_sorted(body: Any) -> Any:
    """Rows with equal times in a canonical order: InfluxDB merges series with equal times in an
    order of its own (heap order), which we do not reproduce."""
    if isinstance(body, dict):
        out = {k: ties_sorted(v) for k, v in body.items()}
        values = out.get("values")
        if isinstance(values, list) and "columns" in out:
            out["values"] = sorted(values, key=lambda r: (str(r[0]), repr(r)))
        return out
    if isinstance(body, list | tuple):
        return [ties_sorted(x) for x in body]
    return body
