"""Which requests may share one upstream fetch (FLIPS coincidental multicast): pure decisions.

Two requests are the same when they are GETs without a body for the same FQDN and target
(path + query) with the same Accept, Accept-Encoding and Range values. A request carrying
Authorization or a Cookie is never shared: its answer may be personal.

A shared fetch takes new joiners while its response is in flight, for at most
`JoinWindow.max_age` seconds after it started and `max_bytes` of body received (the bytes a
late joiner gets replayed), and only under the table version it started with, so that a
table switch (SFR-14) is not undone by joining a fetch to the old endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from flame.sfr.router.request import RequestHead

__all__ = ["CoalesceKey", "JoinWindow", "coalesce_key", "may_join"]

CoalesceKey = tuple[str, bytes, bytes | None, bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class JoinWindow:
    max_age: float = 10.0  # seconds after the fetch started
    max_bytes: int = 64 * 1024 * 1024  # body bytes received (and kept for replay)


def coalesce_key(req: RequestHead) -> CoalesceKey | None:
    """The identity of a shareable request, or None if it must be fetched on its own."""
    if req.method != b"GET" or req.credentials or req.has_body:
        return None
    target = req.target
    proto = req.forwarded_proto
    if proto is not None:
        # An answer over https (X-Forwarded-Proto set by the TLS listener) may differ from
        # the plain one (an endpoint redirecting to https): never shared between the two.
        target = proto + b"|" + target
    return (req.fqdn, target, req.accept, req.accept_encoding, req.range)


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
