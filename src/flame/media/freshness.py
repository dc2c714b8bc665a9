"""What a shared cache may do with an origin answer (RFC 9111 and RFC 5861, the parts an edge
cache needs).

`storable` and `lifetime` read Cache-Control: ``no-store`` and ``private`` forbid storing;
``s-maxage`` (for shared caches) wins over ``max-age``; ``no-cache`` stores but revalidates on
every use (lifetime 0); without any of these the cache's default TTL applies. Negative
answers (404, 410) get at most the short negative TTL.

`stale_windows` reads RFC 5861's ``stale-while-revalidate`` and ``stale-if-error``: how long
after expiry a stale copy may be served while it is revalidated in the background, and how
long it may cover an origin failure. ``must-revalidate`` and ``proxy-revalidate`` forbid
serving stale at all (RFC 9111 5.2.2.2, 5.2.2.8); ``s-maxage`` implies proxy-revalidate
(5.2.2.10), so with it only the origin's explicit stale-* directives apply, not our default.

`vary_names` and `surrogate_keys` read the response headers that key variants (``Vary``) and
tag objects for bans (``Surrogate-Key``, space-separated, and ``Cache-Tag``, comma-separated).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "MAX_TAGS",
    "NEGATIVE_STATUSES",
    "StaleWindows",
    "lifetime",
    "parse_cache_control",
    "stale_windows",
    "storable",
    "surrogate_keys",
    "vary_names",
]

NEGATIVE_STATUSES = frozenset({404, 410})
MAX_TAGS = 32  # tags kept per object; more are dropped (an origin cannot grow our index unbounded)
MAX_TAG_LEN = 128
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 5.1)


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


def storable(status: int, directives: dict[str, str | None], vary: str | None = None) -> bool:
    if "no-store" in directives or "private" in directives:
        return False
    if vary is not None and "*" in (v.strip() for v in vary.split(",")):
        return False  # Vary: * never matches a later request (RFC 9111 4.1)
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


class StaleWindows(NamedTuple):
    """Seconds after expiry a stale copy may be served: while revalidating, on an origin error."""

    while_revalidate: float
    if_error: float


def stale_windows(directives: dict[str, str | None], *, default_if_error: float) -> StaleWindows:
    """RFC 5861's windows; `default_if_error` applies when the origin says nothing of errors."""
    if "must-revalidate" in directives or "proxy-revalidate" in directives:
        return StaleWindows(0.0, 0.0)
    swr = _seconds(directives.get("stale-while-revalidate"))
    sie = _seconds(directives.get("stale-if-error"))
    if sie is None:
        sie = 0.0 if "s-maxage" in directives else default_if_error
    return StaleWindows(swr or 0.0, sie)


def vary_names(value: str | None) -> tuple[str, ...]:
    """The request header names a response varies on, lower case, sorted, without duplicates.

    ``Accept-Encoding`` is left out: the cache always fetches the identity encoding, so every
    encoding a client accepts gets the same bytes."""
    if not value:
        return ()
    names = {n.strip().lower() for n in value.split(",")}
    names.discard("")
    names.discard("accept-encoding")
    return tuple(sorted(n for n in names if _TOKEN.fullmatch(n)))


def surrogate_keys(surrogate_key: str | None, cache_tag: str | None) -> tuple[str, ...]:
    """The tags an origin put on an object, at most `MAX_TAGS`, each at most `MAX_TAG_LEN`."""
    found: list[str] = []
    for raw in [*(surrogate_key or "").split(), *(cache_tag or "").split(",")]:
        tag = raw.strip()
        if tag and len(tag) <= MAX_TAG_LEN and tag not in found:
            found.append(tag)
            if len(found) == MAX_TAGS:
                break
    return tuple(found)
