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
# Response fields the router does not pass on as they are: hop-by-hop ones, the length (the
# router writes its own framing) and Via (merged with ours).
_RESPONSE_CONSUMED: Final = HOP_BY_HOP | {b"content-length", b"via", NOT_FORWARDED}
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


class ResponseHead:
    """A response head received from an endpoint.

    A plain class, not a dataclass, for the same reason as `RequestHead` (request.py). The
    upstream parser hands each header to `add` as it arrives, which sorts it once: framing
    fields noted, hop-by-hop ones set aside, end-to-end ones rendered as the line the client
    gets. `block` then only joins; no second pass over the headers per response.
    """

    __slots__ = (
        "_block",
        "_extra_listed",
        "_length_digits",
        "_lines",
        "_shareable",
        "_vias",
        "chunked",
        "content_length",
        "headers",
        "length_value",
        "lnames",
        "not_forwarded",
        "reason",
        "status",
        "transfer_coding",
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
        self.headers: list[tuple[bytes, bytes]] = []
        self.lnames: list[bytes] = []  # lower-case name of each header
        self.length_value: bytes | None = None  # the first Content-Length value, as received
        self.transfer_coding: bytes | None = None  # the first Transfer-Encoding value
        # X-Flame-Not-Forwarded (lower case): an SR's own answer that reached no endpoint.
        self.not_forwarded: bytes | None = None
        self.via = True  # add our Via (not when a sibling worker of this SR already did)
        self._lines: list[bytes] = []  # end-to-end header lines, rendered for the client
        self._vias: list[bytes] | None = None
        self._length_digits: bytes | None = None  # length_value, when plain digits
        self._extra_listed = False  # Connection names more fields than keep-alive/close
        self._block: bytes | None = None
        self._shareable: bool | None = None
        if headers:
            for name, value in headers:
                self.add(name, value)

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {len(self.headers)} headers)"

    def add(self, name: bytes, value: bytes) -> None:
        """One header as received, in order (called per header by the upstream parser)."""
        lname = lower_name(name)
        self.headers.append((name, value))
        self.lnames.append(lname)
        if lname in _RESPONSE_CONSUMED:
            if lname == b"content-length":
                if self.length_value is None:
                    self.length_value = value
            elif lname == b"transfer-encoding":
                if self.transfer_coding is None:
                    self.transfer_coding = value
            elif lname == b"via":
                if self._vias is None:
                    self._vias = [value]
                else:
                    self._vias.append(value)
            elif lname == NOT_FORWARDED:
                self.not_forwarded = value.strip().lower()
            elif (
                lname == b"connection"
                and value.lower() not in _PLAIN_OPTIONS
                and connection_tokens((value,)) - _PLAIN_OPTIONS
            ):
                self._extra_listed = True
        elif not lname.startswith(b"proxy-"):
            self._lines.append(name + b": " + value + b"\r\n")

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
            ok = True
            for lname, (_, value) in zip(self.lnames, self.headers, strict=True):
                if lname in {b"set-cookie", b"set-cookie2"}:
                    ok = False
                    break
                if lname == b"cache-control":
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
                # Rare: the endpoint marked more fields as hop-by-hop; filter again by them.
                listed = connection_tokens(
                    value
                    for lname, (_, value) in zip(self.lnames, self.headers, strict=True)
                    if lname == b"connection"
                )
                lines = [
                    name + b": " + value + b"\r\n"
                    for lname, (name, value) in zip(self.lnames, self.headers, strict=True)
                    if lname not in _RESPONSE_CONSUMED and not is_hop_by_hop(lname, listed)
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
            self._block = status_line + b"".join(lines) + via_line
        return self._block


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
    if framing == Framing.LENGTH:
        framing_line = head.length_line()
    elif framing == Framing.CHUNKED:
        framing_line = b"Transfer-Encoding: chunked\r\n"
    elif head.content_length is not None and head.status != 204 and head.status >= 200:
        # HEAD and 304 answers carry the length the body would have (RFC 9110 §8.6).
        framing_line = head.length_line()
    else:
        framing_line = b""
    if not keep_alive:
        end = b"Connection: close\r\n\r\n"
    elif not http11:
        end = b"Connection: keep-alive\r\n\r\n"
    else:
        end = b"\r\n"
    return head.block(sr) + framing_line + end


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
