"""Response heads: an endpoint's as parsed, the client's as written, and the router's own.

The part of a forwarded head that is the same for every client (status line, end-to-end
headers, `Via`) is rendered once per upstream response (`ResponseHead.block`), so a response
multicast to many clients (multicast.py) costs one small write of framing headers per client.
No I/O.
"""

from __future__ import annotations

import http
import json
from typing import Final

from flame.sfr.router.errors import (
    NoEndpoint,
    RouteError,
    RouterError,
    UpstreamBusy,
    UpstreamConnectError,
)
from flame.sfr.router.headers import (
    HOP_BY_HOP,
    connection_tokens,
    is_hop_by_hop,
    join_values,
    lower_name,
)

__all__ = [
    "CONTINUE_100",
    "NETWORK",
    "NOT_FORWARDED",
    "NO_ROUTE",
    "UNREACHABLE",
    "Framing",
    "ResponseHead",
    "choose_framing",
    "client_head_parts",
    "error_response",
    "local_response",
    "render_client_head",
]

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# On the router's own answers that no endpoint saw: the request reached no endpoint, so an
# ingress SR that sent it over the egress hop may send even a POST elsewhere (forward.py).
# `unreachable`: this SR could not connect to the endpoint (the endpoint's failure); `route`:
# this SR has no route for it (unknown FQDN, no endpoint: the egress hop's failure, since the
# ingress SR's table has one); `network`: the network had no path to the endpoint (no
# route: nobody's failure, nothing is ejected). Never passed on from an endpoint's response.
NOT_FORWARDED: Final = b"x-flame-not-forwarded"
NOT_FORWARDED_LINE: Final = b"X-Flame-Not-Forwarded"
UNREACHABLE: Final = b"unreachable"
NETWORK: Final = b"network"
NO_ROUTE: Final = b"route"
_PLAIN_OPTIONS: Final = frozenset({b"keep-alive", b"close"})
SERVER: Final = b"flame-sr"
_OK_LINE: Final = b"HTTP/1.1 200 OK\r\n"


class Framing:
    """How the body of a response is delimited towards one client.

    Plain int constants rather than an enum: compiled, they are C integers, not lookups.
    """

    NONE: Final = 0  # no body: HEAD, 1xx, 204, 304
    LENGTH: Final = 1  # Content-Length from the endpoint, bytes passed through
    CHUNKED: Final = 2  # re-chunked: the endpoint's length is unknown, the client speaks HTTP/1.1
    CLOSE: Final = 3  # unknown length to an HTTP/1.0 client: the end is the connection's close


# Response fields `add` sorts, by lower-case name: one dict lookup per header; 0 (absent) for
# the end-to-end fields passed on as they are. Not passed on as they are: hop-by-hop ones, the
# length (the router writes its own framing) and Via (merged with ours).
_LENGTH: Final = 1
_CODING: Final = 2
_VIA: Final = 3
_NOT_FORWARDED: Final = 4
_CONNECTION: Final = 5
_HOP: Final = 6  # the other hop-by-hop fields: dropped
_COOKIE: Final = 7  # forwarded, and makes the response personal
_CACHE_CONTROL: Final = 8  # forwarded, and may make it personal
_VARY: Final = 9  # forwarded, and read by coalescing
_FIELD_KIND: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    b"content-length": _LENGTH,
    b"transfer-encoding": _CODING,
    b"via": _VIA,
    NOT_FORWARDED: _NOT_FORWARDED,
    b"connection": _CONNECTION,
    b"set-cookie": _COOKIE,
    b"set-cookie2": _COOKIE,
    b"cache-control": _CACHE_CONTROL,
    b"vary": _VARY,
}


# Each header name as received -> its kind (`_PROXY`: a Proxy-* field, dropped), from a small
# cache: the same few names arrive on every response, and one lookup replaces lower-casing
# and a second lookup per header.
_PROXY: Final = 10
_KIND_BY_NAME: Final[dict[bytes, int]] = {}
_KIND_CACHE_SIZE: Final = 1024


def _kind_of(name: bytes) -> int:
    lname = name.lower()
    kind = _FIELD_KIND.get(lname, 0)
    if kind == 0 and lname.startswith(b"proxy-"):
        kind = _PROXY
    if len(_KIND_BY_NAME) >= _KIND_CACHE_SIZE:
        _KIND_BY_NAME.clear()  # random names must not grow memory
    _KIND_BY_NAME[name] = kind
    return kind


class ResponseHead:
    """A response head received from an endpoint.

    A plain class, not a dataclass, for the same reason as `RequestHead` (request.py). The
    upstream parser hands each header to `add` as it arrives, which sorts it once: framing
    fields noted, hop-by-hop ones set aside, end-to-end ones rendered as the line the client
    gets, and the few fields read later (Vary, Set-Cookie, Cache-Control) noted. `block` then
    only joins; no second pass over the headers, and no list of them kept, per response.
    """

    __slots__ = (
        "_block",
        "_cache_controls",
        "_connections",
        "_extra_listed",
        "_length_digits",
        "_lines",
        "_personal",
        "_shareable",
        "_vias",
        "chunked",
        "content_length",
        "length_value",
        "not_forwarded",
        "reason",
        "status",
        "transfer_coding",
        "varies",
        "version",
        "via",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        version: bytes = b"1.1",
        content_length: int | None = None,
        chunked: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.content_length = content_length
        self.chunked = chunked
        self.length_value: bytes | None = None  # the first Content-Length value, as received
        self.transfer_coding: bytes | None = None  # the first Transfer-Encoding value
        # X-Flame-Not-Forwarded (lower case): an SR's own answer that reached no endpoint.
        self.not_forwarded: bytes | None = None
        self.via = True  # add our Via (not when a sibling worker of this SR already did)
        self.varies: list[bytes] | None = None  # the Vary values, in order (coalesce.py)
        self._lines: list[bytes] = []  # end-to-end header lines, rendered for the client
        self._vias: list[bytes] | None = None
        self._connections: list[bytes] | None = None  # the Connection values
        self._cache_controls: list[bytes] | None = None
        self._personal = False  # Set-Cookie seen
        self._length_digits: bytes | None = None  # length_value, when plain digits
        self._extra_listed = False  # Connection names more fields than keep-alive/close
        self._block: bytes | None = None
        self._shareable: bool | None = None
        if headers:
            for name, value in headers:
                self.add(name, value)

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {len(self._lines)} end-to-end headers)"

    def add(self, name: bytes, value: bytes) -> None:
        """One header as received, in order (called per header by the upstream parser)."""
        kind = _KIND_BY_NAME.get(name)
        if kind is None:
            kind = _kind_of(name)
        if kind == 0:
            self._lines.append(b"%b: %b\r\n" % (name, value))
        elif kind == _PROXY:
            return  # Proxy-Connection, Proxy-Authenticate...: addressed to a proxy, not passed on
        elif kind >= _COOKIE:
            self._lines.append(b"%b: %b\r\n" % (name, value))
            if kind == _COOKIE:
                self._personal = True
            elif kind == _CACHE_CONTROL:
                self._cache_controls = _appended(self._cache_controls, value)
            else:
                self.varies = _appended(self.varies, value)
        else:
            self._consumed(kind, value)

    def _consumed(self, kind: int, value: bytes) -> None:
        """A field the router does not pass on as it is (framing, hop-by-hop, Via)."""
        if kind == _LENGTH:
            if self.length_value is None:
                self.length_value = value
        elif kind == _CODING:
            if self.transfer_coding is None:
                self.transfer_coding = value
        elif kind == _VIA:
            self._vias = _appended(self._vias, value)
        elif kind == _NOT_FORWARDED:
            self.not_forwarded = value.strip().lower()
        elif kind == _CONNECTION:
            self._connections = _appended(self._connections, value)
            if value.lower() not in _PLAIN_OPTIONS and connection_tokens((value,)) - _PLAIN_OPTIONS:
                self._extra_listed = True

    def scan(self) -> None:
        """Set the framing from the headers (the parser has checked their syntax)."""
        value = self.length_value
        if value is not None:
            self.content_length = int(value)
            if value.isdigit() and len(value) <= 18 and (len(value) == 1 or value[0] != 48):
                self._length_digits = value  # plain digits (b"0"[0] == 48): sent on as they are
        if self.transfer_coding is not None:
            self.chunked = self.transfer_coding.strip().lower().endswith(b"chunked")

    def length_line(self) -> bytes:
        """`Content-Length: N` for the client: the endpoint's own digits when they are plain
        (no formatting per response), else the number re-rendered."""
        if self._length_digits is not None:
            return b"Content-Length: " + self._length_digits + b"\r\n"
        return b"Content-Length: %d\r\n" % (self.content_length or 0)

    def length_parts(self, parts: list[bytes]) -> None:
        """`length_line`, appended to `parts` without concatenating."""
        if self._length_digits is not None:
            parts.append(b"Content-Length: ")
            parts.append(self._length_digits)
            parts.append(b"\r\n")
        else:
            parts.append(b"Content-Length: %d\r\n" % (self.content_length or 0))

    @property
    def has_body(self) -> bool:
        """Whether a body follows on the wire (for any request but HEAD)."""
        return self.status >= 200 and self.status not in (204, 304)

    def shareable(self) -> bool:
        """Whether one copy may go to every client that asked the same (FLIPS multicast).

        A response meant for one user (`Cache-Control: private` or `no-store`) or one that
        sets a cookie is delivered only to the client whose request fetched it.
        """
        if self._shareable is None:
            ok = not self._personal
            for value in self._cache_controls or ():
                directives = {d.split(b"=", 1)[0].strip() for d in value.lower().split(b",")}
                if b"private" in directives or b"no-store" in directives:
                    ok = False
                    break
            self._shareable = ok
        return self._shareable

    def block(self, sr: bytes) -> bytes:
        """Status line + end-to-end headers + `Via`, without framing or Connection headers."""
        if self._block is None:
            if self.status == 200 and self.reason == b"OK":
                status_line = _OK_LINE
            else:
                reason = self.reason or _phrase(self.status)
                status_line = b"HTTP/1.1 %d " % self.status + reason + b"\r\n"
            lines = self._lines
            if self._extra_listed:
                # Rare: the endpoint marked more fields as hop-by-hop; filter again by them
                # (a rendered line's name ends at its first colon: names have none).
                listed = connection_tokens(self._connections or ())
                lines = [
                    line
                    for line in lines
                    if not is_hop_by_hop(lower_name(line[: line.index(b":")]), listed)
                ]
            ours = (b"1.0 " if self.version == b"1.0" else b"1.1 ") + sr
            vias = self._vias
            if vias:
                if self.via:
                    vias = [*vias, ours]
                via_line = b"Via: " + join_values(vias) + b"\r\n"
            elif self.via:
                via_line = b"Via: " + ours + b"\r\n"
            else:
                via_line = b""
            parts = [status_line]
            parts.extend(lines)
            parts.append(via_line)
            self._block = b"".join(parts)
        return self._block


def _appended(values: list[bytes] | None, value: bytes) -> list[bytes]:
    if values is None:
        return [value]
    values.append(value)
    return values


def choose_framing(head: ResponseHead, *, head_request: bool, http11: bool) -> int:
    """How to delimit this response's body towards a client (RFC 9112 §6.3)."""
    if head_request or not head.has_body:
        return Framing.NONE
    if head.content_length is not None and not head.chunked:
        return Framing.LENGTH
    return Framing.CHUNKED if http11 else Framing.CLOSE


def render_client_head(
    head: ResponseHead, sr: bytes, framing: int, *, keep_alive: bool, http11: bool
) -> bytes:
    """The complete head for one client: shared block + framing + connection management."""
    return b"".join(client_head_parts(head, sr, framing, keep_alive=keep_alive, http11=http11))


def client_head_parts(
    head: ResponseHead, sr: bytes, framing: int, *, keep_alive: bool, http11: bool
) -> list[bytes]:
    """`render_client_head` in parts, for the writer to join once with the body bytes that
    follow (one copy per response instead of one per concatenation)."""
    parts = [head.block(sr)]
    if framing == Framing.LENGTH:
        head.length_parts(parts)
    elif framing == Framing.CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None and head.status != 204 and head.status >= 200:
        # HEAD and 304 answers carry the length the body would have (RFC 9110 §8.6).
        head.length_parts(parts)
    if not keep_alive:
        parts.append(b"Connection: close\r\n\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return parts


def local_response(
    status: int,
    body: dict[str, object],
    *,
    keep_alive: bool,
    http11: bool = True,
    head_request: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A complete JSON response made by the router itself (errors, status endpoint)."""
    payload = json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n"
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status)),
        b"Server: " + SERVER + b"\r\n",
        b"Content-Type: application/json\r\n",
        b"Cache-Control: no-store\r\n",
        b"Content-Length: %d\r\n" % len(payload),
    ]
    parts.extend(name + b": " + value + b"\r\n" for name, value in extra)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_request:
        parts.append(payload)
    return b"".join(parts)


def text_response(payload: bytes, *, keep_alive: bool, http11: bool = True) -> bytes:
    """200 with `payload` as text (an ACME http-01 key authorization)."""
    end = (
        b""
        if keep_alive and http11
        else (b"Connection: close\r\n" if not keep_alive else b"Connection: keep-alive\r\n")
    )
    return (
        b"HTTP/1.1 200 OK\r\nServer: " + SERVER + b"\r\nContent-Type: text/plain\r\n"
        b"Cache-Control: no-store\r\nContent-Length: %d\r\n"
        % len(payload)
        + end
        + b"\r\n"
        + payload
    )


def redirect_response(
    location: bytes, *, keep_alive: bool, http11: bool = True, head_request: bool = False
) -> bytes:
    """308 to `location` (the https URL of a plain-HTTP request for an FQDN that asks for it):
    308 keeps the method and body, unlike 301."""
    return local_response(
        308,
        {
            "error": "https_required",
            "message": "this FQDN is served over https",
            "location": location.decode("latin-1"),
        },
        keep_alive=keep_alive,
        http11=http11,
        head_request=head_request,
        extra=((b"Location", location),),
    )


def error_response(
    error: RouterError, *, keep_alive: bool, http11: bool = True, head_request: bool = False
) -> bytes:
    """The router's answer for a failed request: status and JSON body from the error."""
    extra: tuple[tuple[bytes, bytes], ...] = ()
    if isinstance(error, NoEndpoint):
        extra = ((b"Retry-After", b"%d" % error.retry_after), (NOT_FORWARDED_LINE, NO_ROUTE))
    elif isinstance(error, RouteError):
        extra = ((NOT_FORWARDED_LINE, NO_ROUTE),)
    elif isinstance(error, UpstreamConnectError):
        why = NETWORK if error.network_refused else UNREACHABLE
        extra = ((b"Retry-After", b"%d" % error.retry_after), (NOT_FORWARDED_LINE, why))
    elif isinstance(error, UpstreamBusy):
        extra = ((b"Retry-After", b"%d" % error.retry_after),)
    return local_response(
        error.http_status,
        error.as_dict(),
        keep_alive=keep_alive,
        http11=http11,
        head_request=head_request,
        extra=extra,
    )


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"
