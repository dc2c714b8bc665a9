"""What a shared cache may do with an origin answer (RFC 9111, the parts an edge cache needs).

`storable` and `lifetime` read Cache-Control: ``no-store`` and ``private`` forbid storing;
``s-maxage`` (for shared caches) wins over ``max-age``; ``no-cache`` stores but revalidates on
every use (lifetime 0); without any of these the cache's default TTL applies. Negative
answers (404, 410) get at most the short negative TTL.
"""

from __future__ import annotations

__all__ = ["NEGATIVE_STATUSES", "lifetime", "parse_cache_control", "storable"]

NEGATIVE_STATUSES = frozenset({404, 410})


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives in lower case; quoted arguments unquoted (a bad one is kept as written)."""
    out: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, eq, arg = part.strip().partition("=")
        if not name:
            continue
        out[name.strip().lower()] = arg.strip().strip('"') if eq else None
    return out


def _seconds(arg: str | None) -> float | None:
    if arg is None or not arg.isdigit():
        return None  # an invalid delta-seconds is treated as stale (RFC 9111 1.2.2)
    return float(arg)


def storable(status: int, directives: dict[str, str | None]) -> bool:
    if "no-store" in directives or "private" in directives:
        return False
    return status == 200 or status in NEGATIVE_STATUSES


def lifetime(
    status: int, directives: dict[str, str | None], *, default_ttl: float, negative_ttl: float
) -> float:
    """Seconds the answer stays fresh."""
    if "no-cache" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            seconds = _seconds(directives[name])
            ttl = 0.0 if seconds is None else seconds
            break
    else:
        ttl = default_ttl
    if status in NEGATIVE_STATUSES:
        ttl = min(ttl, negative_ttl)
    return ttl
