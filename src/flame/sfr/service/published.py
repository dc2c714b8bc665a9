"""Forwarding tables as published to SRs: each with its content digest and its JSON made once
(SFR-11). The text is the same as `repr()` and `json.dumps()` would give, made faster.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

from flame.sfr.models import Endpoint, ForwardingTable, Route


@dataclass(slots=True)
class PublishedTable:
    """A table as distributed, with the digest persisted for it and its JSON made once.

    The digest is built from one digest per FQDN entry, so a change to one FQDN rehashes one
    entry per SR, not the whole table (tables hold every FQDN: that would dominate the cost).
    """

    table: ForwardingTable
    entry_digests: dict[str, str]  # fqdn -> digest of its routes
    digest: str = ""
    _body: bytes | None = None
    # Where each FQDN's routes are in `_body`; a newer version of the table copies the entries
    # it shares (the same tuple) from `_previous`'s body rather than serialising them again.
    _spans: dict[str, tuple[int, int]] | None = None
    _previous: PublishedTable | None = None

    def __post_init__(self) -> None:
        if not self.digest:
            lines = "".join(f"{fqdn}\0{d}\n" for fqdn, d in sorted(self.entry_digests.items()))
            self.digest = hashlib.sha256(lines.encode()).hexdigest()

    def body(self) -> bytes:
        """The JSON every SR worker polling this version receives (serialised once)."""
        if self._body is None:
            self._body, self._spans = _table_json(self.table, self._previous)
            self._previous = None
        return self._body

    def successor(self, table: ForwardingTable, entry_digests: dict[str, str]) -> PublishedTable:
        """The next version: its body reuses this one's text of the entries they share."""
        previous = self if self._body is not None else self._previous  # one body kept at most
        return PublishedTable(table, entry_digests, _previous=previous)


def _entry_digest(routes: tuple[Route, ...]) -> str:
    """Stable across processes: reprs of frozen dataclasses of str, int, float and tuples (if a
    model gains a field, every digest changes once and tables get one new version)."""
    return hashlib.blake2b(_routes_repr(routes).encode(), digest_size=16).hexdigest()


# -- table text: the same as repr() and json.dumps(), made faster -------------------------------
# A table holds ~1,000 routes; the dataclasses' generic repr and to_dict + json.dumps cost ~5 ms
# each per table on the PCE benchmark, ten times building the routes. Every SR's routes share
# the same Endpoint objects and, per egress, the same path tuple: their text is made once.

_ENCODE = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)
_ROUTE_FIELDS = ("endpoint", "egress_sr", "cost", "latency_ms", "path", "egress_address")
_FAST_ROUTES = tuple(f.name for f in fields(Route) if f.repr) == _ROUTE_FIELDS and all(
    f.name in _ROUTE_FIELDS for f in fields(Route)
)  # else (a field added): the generic repr and to_dict
_ENDPOINTS_KEPT = 1 << 16
# id(endpoint) -> (endpoint, its repr, its JSON); holding the endpoint keeps its id unique.
_endpoint_text: dict[int, tuple[Endpoint, str, str]] = {}


def _endpoint(endpoint: Endpoint) -> tuple[Endpoint, str, str]:
    found = _endpoint_text.get(id(endpoint))
    if found is None:
        if len(_endpoint_text) >= _ENDPOINTS_KEPT:  # bounded: start again (registrations churn)
            _endpoint_text.clear()
        text = json.dumps(endpoint.to_dict(), separators=(",", ":"))
        found = _endpoint_text[id(endpoint)] = (endpoint, repr(endpoint), text)
    return found


def _routes_repr(routes: tuple[Route, ...]) -> str:
    """repr(routes), to the character."""
    if not _FAST_ROUTES or type(routes) is not tuple:
        return repr(routes)
    parts: list[str] = []
    paths: dict[int, str] = {}  # id(path) -> repr; the tuple lives as long as `routes`
    for r in routes:
        if type(r) is not Route:
            parts.append(repr(r))
            continue
        path = paths.get(id(r.path))
        if path is None:
            path = paths[id(r.path)] = repr(r.path)
        parts.append(
            f"Route(endpoint={_endpoint(r.endpoint)[1]}, egress_sr={r.egress_sr!r}, "
            f"cost={r.cost!r}, latency_ms={r.latency_ms!r}, path={path}, "
            f"egress_address={r.egress_address!r})"
        )
    if len(parts) == 1:
        return f"({parts[0]},)"
    return f"({', '.join(parts)})"


def _routes_json(routes: Iterable[Route]) -> str:
    """json.dumps([r.to_dict() for r in routes], separators=(",", ":")), to the character."""
    parts: list[str] = []
    paths: dict[int, str] = {}  # id(path) -> JSON; the tuple lives as long as `routes`
    for r in routes:
        cost, latency, egress, address = r.cost, r.latency_ms, r.egress_sr, r.egress_address
        if not (
            _FAST_ROUTES
            and type(r) is Route
            and type(cost) is float
            and type(latency) is float
            and math.isfinite(cost)
            and math.isfinite(latency)
            and type(egress) is str
            and (address is None or type(address) is str)
        ):
            parts.append(json.dumps(r.to_dict(), separators=(",", ":")))
            continue
        path = paths.get(id(r.path))
        if path is None:
            if all(type(node) is str for node in r.path):
                path = f"[{','.join(map(_ENCODE, r.path))}]"
            else:
                path = json.dumps(list(r.path), separators=(",", ":"))
            paths[id(r.path)] = path
        # float.__repr__ is json's own text for a finite float.
        parts.append(
            f'{{"endpoint":{_endpoint(r.endpoint)[2]},"egress_sr":{_ENCODE(egress)},'
            f'"cost":{cost!r},"latency_ms":{latency!r},"path":{path},"egress_address":'
            f"{'null' if address is None else _ENCODE(address)}}}"
        )
    return f"[{','.join(parts)}]"


def _table_json(
    table: ForwardingTable, previous: PublishedTable | None = None
) -> tuple[bytes, dict[str, tuple[int, int]] | None]:
    """json.dumps(table.to_dict(), separators=(",", ":")) to the byte, and where each FQDN's
    routes are in it; entries that `previous` has too (the same tuple) are copied from it."""

    def generic() -> tuple[bytes, None]:
        return json.dumps(table.to_dict(), separators=(",", ":")).encode(), None

    if type(table.sr) is not str or type(table.version) is not int:
        return generic()
    old = previous.table.routes if previous is not None else {}
    old_body, old_spans = (
        (previous._body, previous._spans) if previous is not None else (None, None)
    )
    parts = [f'{{"sr":{_ENCODE(table.sr)},"version":{table.version},"routes":{{'.encode()]
    at, spans = len(parts[0]), {}
    for i, (fqdn, routes) in enumerate(table.routes.items()):
        if type(fqdn) is not str:  # json.dumps turns other keys into strings its own way
            return generic()
        head = f"{',' if i else ''}{_ENCODE(fqdn)}:".encode()
        span = old_spans.get(fqdn) if old_spans is not None and old.get(fqdn) is routes else None
        if span is not None and old_body is not None:
            text = old_body[span[0] : span[1]]
        else:
            text = _routes_json(routes).encode()  # ASCII: json's escapes, numbers, null
        parts += (head, text)
        at += len(head)
        spans[fqdn] = (at, at + len(text))
        at += len(text)
    parts.append(b"}}")
    return b"".join(parts), spans
