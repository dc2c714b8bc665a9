"""Which requests may share one upstream fetch (FLIPS coincidental multicast): pure decisions.

Two requests are the same when they are GETs without a body for the same FQDN and target
(path + query, and X-Forwarded-Proto) with the same Accept, Accept-Encoding and Range values,
the same credentials (Authorization, Cookie, Proxy-Authorization: a keyed hash of their
values, so different users never share and no secret outlives the request) and, for a
resource whose responses said `Vary`, the same values of the request fields named there.

`Vary` is learnt per (FQDN, path) from the responses of shared fetches (`VaryTable`, bounded,
least recently seen dropped first). Before anything is learnt the first response decides: a
waiter whose varying fields differ from those of the request that was sent upstream (the
leader) is sent on to fetch its own (multicast.py). `Vary: *`, or a field the router sets per
client (X-Forwarded-For, Via), stops coalescing for that resource for `ANY_MEMORY` seconds.

A shared fetch takes new joiners while its response is in flight, for at most
`JoinWindow.max_age` seconds after it started and `max_bytes` of body received (the bytes a
late joiner gets replayed), and only under the table version it started with, so that a
table switch (SFR-14) is not undone by joining a fetch to the old endpoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Final

from flame.sfr.router.headers import lower_name
from flame.sfr.router.request import RequestHead
from flame.sfr.router.response import ResponseHead

__all__ = [
    "ANY",
    "CoalesceKey",
    "JoinWindow",
    "VaryTable",
    "coalesce_key",
    "may_join",
    "request_fields",
    "response_vary",
]

# The credential fields are folded into the target part of the key, like the proto and the
# varying fields: the key keeps one shape (inflight.py hashes it across workers).
CoalesceKey = tuple[str, bytes, bytes | None, bytes | None, bytes | None]
Names = tuple[bytes, ...]

ANY: Final[Names] = (b"*",)  # the response may vary on anything: never shared
ANY_MEMORY: Final = 30.0  # seconds a `Vary: *` verdict holds, then the next response decides
VARY_RESOURCES: Final = 4096  # learnt resources per worker
MAX_VARY_NAMES: Final = 16  # more varying fields than this: treated as `Vary: *`
MAX_NAME: Final = 64  # longer field names in Vary: treated as `Vary: *`
MAX_PATH: Final = 2048  # longer paths are not learnt (the first response still decides)

CREDENTIALS: Final = frozenset({b"authorization", b"cookie", b"proxy-authorization"})
# Fields already in the key: a Vary naming them adds nothing.
_KEYED: Final = CREDENTIALS | {b"accept", b"accept-encoding", b"range"}
# Fields the router writes per client: a response varying on them is personal.
_PER_CLIENT: Final = frozenset({b"x-forwarded-for", b"via", b"x-flame-relay-client"})
_TOKEN: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")
# A fresh key per process: the hash of a credential means nothing outside this worker. Each
# request copies the keyed state (a keyed start costs four times a copy).
_KEYED_HASH: Final = hashlib.blake2b(digest_size=16, key=os.urandom(32))


@dataclass(frozen=True, slots=True)
class JoinWindow:
    max_age: float = 10.0  # seconds after the fetch started
    max_bytes: int = 64 * 1024 * 1024  # body bytes received (and kept for replay)


class _Learnt:
    __slots__ = ("names", "until")

    def __init__(self, names: Names, until: float) -> None:
        self.names = names
        self.until = until  # 0.0: until a response says otherwise


class VaryTable:
    """What each resource's responses vary on, learnt from them; one per worker.

    Bounded: past `capacity` resources the one least recently seen in a response goes. Per
    request the cost is one dict look-up by FQDN (`fqdns`) unless that FQDN has a resource
    that varies, then one more by (FQDN, path).
    """

    __slots__ = ("_clock", "_entries", "any_memory", "capacity", "evicted", "fqdns")

    def __init__(
        self,
        capacity: int = VARY_RESOURCES,
        *,
        any_memory: float = ANY_MEMORY,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.capacity = capacity
        self.any_memory = any_memory
        self._clock = clock
        self._entries: dict[tuple[str, bytes], _Learnt] = {}
        self.fqdns: dict[str, int] = {}  # FQDN -> resources learnt under it
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, fqdn: str, target: bytes) -> Names | None:
        """The fields learnt for the resource, `ANY`, or None (nothing learnt)."""
        key = (fqdn, _path(target))
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until and entry.until < self._clock():
            self._drop(key)  # `Vary: *` was a while ago: let the next response decide again
            return None
        return entry.names

    def learn(self, fqdn: str, target: bytes, names: Names | None) -> None:
        """A response for the resource varied on `names` (None: on nothing beyond the key)."""
        path = _path(target)
        key = (fqdn, path)
        if names is None:
            if key in self._entries:
                self._drop(key)
            return
        if len(path) > MAX_PATH:
            return
        entries = self._entries
        if entries.pop(key, None) is None:
            self.fqdns[fqdn] = self.fqdns.get(fqdn, 0) + 1
        until = self._clock() + self.any_memory if names == ANY else 0.0
        entries[key] = _Learnt(names, until)  # (re)inserted last: most recently seen
        while len(entries) > self.capacity:
            self._drop(next(iter(entries)))
            self.evicted += 1

    def _drop(self, key: tuple[str, bytes]) -> None:
        del self._entries[key]
        fqdn = key[0]
        left = self.fqdns[fqdn] - 1
        if left:
            self.fqdns[fqdn] = left
        else:
            del self.fqdns[fqdn]


def _path(target: bytes) -> bytes:
    query = target.find(b"?")
    return target if query < 0 else target[:query]


def coalesce_key(req: RequestHead, vary: VaryTable | None = None) -> CoalesceKey | None:
    """The identity of a shareable request, or None if it must be fetched on its own."""
    if req.method != b"GET" or req.has_body:
        return None
    target = req.target
    if vary is not None and vary.fqdns and req.fqdn in vary.fqdns:
        names = vary.names(req.fqdn, target)
        if names is not None:
            if names == ANY:
                return None
            target = target + _variant(req, names)
    if req.credentials:
        target = target + b"\0c" + _credential_digest(req)
    proto = req.forwarded_proto
    if proto is not None:
        # An answer over https (X-Forwarded-Proto set by the TLS listener) may differ from
        # the plain one (an endpoint redirecting to https): never shared between the two.
        target = proto + b"|" + target
    return (req.fqdn, target, req.accept, req.accept_encoding, req.range)


def response_vary(head: ResponseHead) -> Names | None:
    """The request fields a response varies on beyond the key: None (none), `ANY`, or the
    sorted lower-case names. Hostile values (too many or odd names) count as `ANY`."""
    varies = head.varies
    if varies is None:
        return None
    names: set[bytes] = set()
    for value in varies:
        for raw in value.split(b","):
            name = raw.strip().lower()
            if not name:
                continue
            if name == b"*" or name in _PER_CLIENT or len(name) > MAX_NAME:
                return ANY
            if not set(name) <= _TOKEN:
                return ANY
            if name not in _KEYED:
                names.add(name)
    if not names:
        return None
    if len(names) > MAX_VARY_NAMES:
        return ANY
    return tuple(sorted(names))


def request_fields(req: RequestHead, names: Names) -> list[bytes | None]:
    """The values of the fields `names` as sent upstream (None: absent), in that order."""
    found: dict[bytes, bytes] = {}
    for line in req.lines:  # b"Name: value\r\n", as analyze_request renders them
        colon = line.find(b":")
        lname = lower_name(line[:colon])
        if lname in names:
            value = line[colon + 1 : -2].strip()
            prev = found.get(lname)
            found[lname] = value if prev is None else prev + b", " + value
    values: list[bytes | None] = []
    for name in names:
        # The fields the router writes itself are not in `lines`.
        if name == b"host":
            values.append(req.host)
        elif name == b"x-forwarded-host":
            values.append(req.forwarded_host or req.host)
        elif name == b"x-forwarded-proto":
            values.append(req.forwarded_proto or b"http")
        else:
            values.append(found.get(name))
    return values


def _variant(req: RequestHead, names: Names) -> bytes:
    """The varying fields' names and values, unambiguously (lengths, absent marked)."""
    parts = [b"\0v", b",".join(names)]
    for value in request_fields(req, names):
        if value is None:
            parts.append(b"\0-")
        else:
            parts.append(b"\0%d=" % len(value))
            parts.append(value)
    return b"".join(parts)


def _credential_digest(req: RequestHead) -> bytes:
    digest = _KEYED_HASH.copy()
    for line in req.lines:
        colon = line.find(b":")
        lname = lower_name(line[:colon])
        if lname in CREDENTIALS:
            value = line[colon + 1 : -2].strip()
            digest.update(lname + b"\0%d\0" % len(value))
            digest.update(value)
    return digest.digest()


def may_join(
    window: JoinWindow,
    *,
    age: float,
    received: int,
    closed: bool,
    fetch_version: int | None,
    table_version: int | None,
) -> bool:
    """Whether a new request may join a fetch in flight.

    `closed`: the response has ended, failed, or turned out not shareable.
    """
    return (
        not closed
        and age <= window.max_age
        and received <= window.max_bytes
        and fetch_version == table_version
    )
