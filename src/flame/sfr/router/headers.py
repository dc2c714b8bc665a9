"""Header rules shared by requests and responses: hop-by-hop fields and `Host` -> FQDN.

Pure functions on bytes, as httptools hands them over; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = [
    "HOP_BY_HOP",
    "connection_tokens",
    "fqdn_from_host",
    "is_hop_by_hop",
    "join_values",
    "lower_name",
    "parse_host",
]

# RFC 9110 §7.6.1 and the older hop-by-hop list of RFC 2616 §13.5.1: they describe one
# connection, so a router consumes them instead of forwarding them. Content-Length is not
# hop-by-hop but is re-written with the framing the router chooses, so callers drop it too.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_HOST_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")
_IPV6_CHARS: Final = frozenset(b"0123456789abcdef:.")


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-cased field names and options listed in `Connection` header values."""
    tokens: set[bytes] = set()
    for value in values:
        for raw in value.split(b","):
            token = raw.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def is_hop_by_hop(lname: bytes, listed: frozenset[bytes]) -> bool:
    """Whether the (lower-case) field name must not be forwarded."""
    # Proxy-Connection, Proxy-Authorization, Proxy-Authenticate: all addressed to a proxy.
    return lname in HOP_BY_HOP or lname.startswith(b"proxy-") or lname in listed


def join_values(values: Iterable[bytes]) -> bytes:
    """Several field lines of one list-valued header as one value (RFC 9110 §5.3)."""
    return b", ".join(v.strip() for v in values if v.strip())


_FQDN_CACHE: Final[dict[bytes, str | None]] = {}
_FQDN_CACHE_SIZE: Final = 4096


def fqdn_from_host(host: bytes) -> str | None:
    """Cached `parse_host`: the same few Host values arrive again and again."""
    try:
        return _FQDN_CACHE[host]
    except KeyError:
        pass
    fqdn = parse_host(host)
    if len(_FQDN_CACHE) >= _FQDN_CACHE_SIZE:
        _FQDN_CACHE.clear()  # random Host values must not grow memory; cheap to rebuild
    _FQDN_CACHE[host] = fqdn
    return fqdn


_LOWER: Final[dict[bytes, bytes]] = {}
_LOWER_SIZE: Final = 1024


def lower_name(name: bytes) -> bytes:
    """A header name in lower case, from a small cache: the same few names arrive on every
    message, and a dict hit costs less than `bytes.lower()`; the cached object also keeps its
    hash for the set lookups that follow."""
    lname = _LOWER.get(name)
    if lname is None:
        lname = name.lower()
        if len(_LOWER) >= _LOWER_SIZE:
            _LOWER.clear()  # random names must not grow memory
        _LOWER[name] = lname
    return lname


def parse_host(host: bytes) -> str | None:
    """`Host` value -> the FQDN the forwarding table is keyed by; None if it is not a host.

    The port is dropped, the name lower-cased and a trailing dot removed:
    ``b"VoD.Example.COM.:8080"`` -> ``"vod.example.com"``. IPv6 literals keep their
    brackets (``"[::1]"``).
    """
    host = host.strip().lower()
    if not host:
        return None
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 2 or not set(host[1:end]) <= _IPV6_CHARS:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(b":") and (rest == b":" or _is_port(rest[1:]))):
            return None
        return host[: end + 1].decode("ascii")
    name, sep, port = host.rpartition(b":")
    if sep:
        # `host:` (empty port) is allowed by RFC 3986's authority grammar.
        if port and not _is_port(port):
            return None
        host = name
    if host.endswith(b"."):
        host = host[:-1]
    if not host or not set(host) <= _HOST_CHARS or b".." in host or host.startswith(b"."):
        return None
    return host.decode("ascii")


def _is_port(value: bytes) -> bool:
    return 0 < len(value) <= 5 and value.isdigit() and int(value) <= 65535
