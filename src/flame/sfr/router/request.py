"""A client's request head: what the router reads from it, and the head it sends upstream.

`analyze_request` turns what httptools parsed into a `RequestHead` in one pass over the
headers, or raises the `RequestRejected` the client gets back; `render_upstream_head` writes
the request line and headers for the endpoint: hop-by-hop fields removed (and those named in
`Connection`), `Via` and `X-Forwarded-For` appended, `X-Forwarded-Host` / `-Proto` set when
absent, and the body framing the router re-sends (SFR-1). `X-Flame-Endpoint` (the endpoint an
ingress SR chose, for this SR as the egress SR: forward.py) is read and never sent on. No I/O.
"""

from __future__ import annotations

from typing import Final

from flame.sfr.router.errors import BadRequest, LoopDetected, MethodNotAllowed
from flame.sfr.router.headers import (
    connection_tokens,
    fqdn_from_host,
    is_hop_by_hop,
    join_values,
    lower_name,
)

__all__ = ["IDEMPOTENT", "RequestHead", "analyze_request", "render_upstream_head", "via_entry"]

# RFC 9110 §9.2.2: a retry of these cannot do harm the first attempt did not already do.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})

# Fields the router reads, re-writes or consumes; everything else end-to-end is forwarded as is.
_SPECIAL: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"authorization",
        b"cookie",
        b"proxy-authorization",
        b"accept",
        b"accept-encoding",
        b"range",
        b"x-flame-relay-client",
        b"x-flame-endpoint",
    }
)
_PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive"})
# Of the special fields, those forwarded unchanged (the router only looks at them).
_LOOKED_AT: Final = frozenset(
    {b"authorization", b"cookie", b"proxy-authorization", b"accept", b"accept-encoding", b"range"}
)
_CREDENTIALS: Final = frozenset({b"authorization", b"cookie", b"proxy-authorization"})


class RequestHead:
    """One parsed, checked client request head.

    A plain class with an explicit constructor, not a dataclass: compiled by mypyc it is
    built in C, where a dataclass's generated `__init__` would run interpreted per request.
    """

    __slots__ = (
        "accept",
        "accept_encoding",
        "chunked",
        "content_length",
        "credentials",
        "expect_continue",
        "flame_endpoint",
        "forwarded_for",
        "forwarded_host",
        "forwarded_proto",
        "fqdn",
        "host",
        "keep_alive",
        "lines",
        "method",
        "range",
        "relay_client",
        "target",
        "version",
        "via",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        version: bytes,
        host: bytes,
        fqdn: str,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        lines: list[bytes],
        via: bytes,
        forwarded_for: bytes,
        forwarded_host: bytes | None,
        forwarded_proto: bytes | None,
        credentials: bool,
        accept: bytes | None = None,
        accept_encoding: bytes | None = None,
        range: bytes | None = None,
        relay_client: bytes | None = None,
        flame_endpoint: str | None = None,
    ) -> None:
        self.method = method
        self.target = target  # origin-form (absolute-form targets are turned into it), or b"*"
        self.version = version  # b"1.1" or b"1.0"
        self.host = host  # the Host value sent upstream
        self.fqdn = fqdn  # what the forwarding table is keyed by
        self.keep_alive = keep_alive  # the client wants the connection kept open
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.lines = lines  # end-to-end header lines, rendered, in their order
        self.via = via  # the Via the request arrived with (b"" if none)
        self.forwarded_for = forwarded_for  # the X-Forwarded-For it arrived with (b"" if none)
        self.forwarded_host = forwarded_host
        self.forwarded_proto = forwarded_proto
        # Authorization, Cookie or Proxy-Authorization: shared only with the same values
        self.credentials = credentials
        self.accept = accept
        self.accept_encoding = accept_encoding
        self.range = range
        self.relay_client = relay_client  # set by a sibling worker; trusted on its socket only
        # X-Flame-Endpoint: the endpoint an ingress SR chose; honoured only for an endpoint
        # local to this SR (forward.py), whoever sent it
        self.flame_endpoint = flame_endpoint

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r} {self.fqdn}{self.target.decode('latin-1')!r})"

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    @property
    def http11(self) -> bool:
        return self.version == b"1.1"


def via_entry(sr_id: str) -> bytes:
    """The received-by part of our `Via` entries (RFC 9110 §7.6.3)."""
    return sr_id.encode("ascii", "replace")


def analyze_request(
    method: bytes,
    url: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    *,
    keep_alive: bool,
    sr_id: str,
) -> RequestHead:
    """Check a parsed request head and extract what routing and forwarding need.

    The checks run in a fixed order, so a request with several faults always gets the same
    answer: version and method, the target, Host, the body framing, then the Via loop.
    """
    _check_method(method, version)
    fields = _scan_headers(headers)
    target, host = _target_and_host(method, url, fields)
    fqdn = fqdn_from_host(host)
    if fqdn is None:
        raise BadRequest(f"Host {host[:100].decode('latin-1')!r} is not a host name")
    content_length, chunked = _framing(fields)
    via = fields.via
    if via is not None:
        _check_loop(via, sr_id)
    lines, credentials = _end_to_end(headers, fields)
    xff = fields.xff
    return RequestHead(
        method=method,
        target=target,
        version=version.encode("ascii"),
        host=host,
        fqdn=fqdn,
        keep_alive=keep_alive,
        content_length=content_length,
        chunked=chunked,
        expect_continue=fields.expect_continue,
        lines=lines,
        via=join_values(via) if via is not None else b"",
        forwarded_for=join_values(xff) if xff is not None else b"",
        forwarded_host=fields.xfh or None,
        forwarded_proto=fields.xfp or None,
        credentials=credentials,
        accept=fields.accept,
        accept_encoding=fields.accept_encoding,
        range=fields.range,
        relay_client=fields.relay_client,
        flame_endpoint=fields.flame_endpoint,
    )


class _Fields:
    """What one pass over a request's headers collected: the end-to-end lines, and the
    fields the router reads or consumes. Lists for fields most requests do not have are made
    on first sight (None until then)."""

    __slots__ = (
        "accept",
        "accept_encoding",
        "codings",
        "connection",
        "credentials",
        "expect_continue",
        "flame_endpoint",
        "host",
        "hosts",
        "lengths",
        "lines",
        "range",
        "relay_client",
        "via",
        "xff",
        "xfh",
        "xfp",
    )

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.host: bytes | None = None
        self.hosts = 0
        self.lengths: list[bytes] | None = None
        self.codings: list[bytes] | None = None
        self.connection: list[bytes] | None = None
        self.via: list[bytes] | None = None
        self.xff: list[bytes] | None = None
        self.xfh: bytes | None = None
        self.xfp: bytes | None = None
        self.expect_continue = False
        self.credentials = False
        self.accept: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.range: bytes | None = None
        self.relay_client: bytes | None = None
        self.flame_endpoint: str | None = None


def _check_method(method: bytes, version: str) -> None:
    if version not in ("1.1", "1.0"):
        raise BadRequest(f"HTTP/{version} is not supported; send HTTP/1.1 or HTTP/1.0")
    if method == b"CONNECT":
        raise MethodNotAllowed(
            "CONNECT is not supported: the SR routes requests by Host, it is not a tunnel"
        )


def _scan_headers(headers: list[tuple[bytes, bytes]]) -> _Fields:
    """One pass: end-to-end fields rendered as lines in order, the special ones noted."""
    fields = _Fields()
    lines = fields.lines
    for name, value in headers:
        lname = lower_name(name)
        if lname not in _SPECIAL:
            lines.append(b"%b: %b\r\n" % (name, value))
        elif lname in _LOOKED_AT:
            lines.append(b"%b: %b\r\n" % (name, value))
            _looked_at(fields, lname, value)
        else:
            _consumed(fields, lname, value)
    return fields


def _looked_at(fields: _Fields, lname: bytes, value: bytes) -> None:
    """A field forwarded unchanged that the router also reads (credentials, content
    negotiation, ranges: the coalescing key)."""
    if lname in _CREDENTIALS:
        fields.credentials = True
    elif lname == b"accept":
        fields.accept = _joined(fields.accept, value)
    elif lname == b"accept-encoding":
        fields.accept_encoding = _joined(fields.accept_encoding, value)
    else:
        fields.range = _joined(fields.range, value)


def _consumed(fields: _Fields, lname: bytes, value: bytes) -> None:
    """A field the router consumes or re-writes: noted, never forwarded as it came."""
    if lname == b"host":
        fields.hosts += 1
        if fields.host is None:
            fields.host = value
    elif lname == b"content-length":
        fields.lengths = _append(fields.lengths, value)
    elif lname == b"transfer-encoding":
        fields.codings = _append(fields.codings, value)
    elif lname == b"connection":
        fields.connection = _append(fields.connection, value)
    elif lname == b"via":
        fields.via = _append(fields.via, value)
    elif lname == b"x-forwarded-for":
        fields.xff = _append(fields.xff, value)
    elif lname == b"x-forwarded-host":
        fields.xfh = fields.xfh or value.strip()
    elif lname == b"x-forwarded-proto":
        fields.xfp = fields.xfp or value.strip()
    elif lname == b"x-flame-relay-client":
        fields.relay_client = value.strip()
    elif lname == b"x-flame-endpoint":
        if fields.flame_endpoint is None:
            fields.flame_endpoint = value.strip().decode("latin-1")
    elif lname == b"expect":
        # Only 100-continue is defined; the router answers it itself (see cycle.py).
        fields.expect_continue = fields.expect_continue or value.strip().lower() == b"100-continue"
    # keep-alive, te, trailer, upgrade: hop-by-hop, consumed here.


def _target_and_host(method: bytes, url: bytes, fields: _Fields) -> tuple[bytes, bytes]:
    """The origin-form target and the Host value sent upstream."""
    target, url_host = _origin_form(method, url)
    if url_host is not None:
        # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
        return target, url_host
    host = fields.host
    if host is None:
        raise BadRequest("the request has no Host header; the SR routes by Host (the service FQDN)")
    if fields.hosts != 1:
        raise BadRequest(f"the request has {fields.hosts} Host headers; send exactly one")
    return target, host.strip()


def _framing(fields: _Fields) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of the request body; ambiguous framing is refused, since
    two readings of one message are how requests are smuggled past a proxy."""
    lengths, codings = fields.lengths, fields.codings
    content_length = _content_length(lengths) if lengths is not None else None
    chunked = _chunked(codings) if codings is not None else False
    if chunked and content_length is not None:
        raise BadRequest("the request has both Content-Length and Transfer-Encoding; send one")
    return content_length, chunked


def _end_to_end(headers: list[tuple[bytes, bytes]], fields: _Fields) -> tuple[list[bytes], bool]:
    """The lines to forward and whether they carry credentials, without the fields the
    client listed in `Connection` (hop-by-hop: for us only, RFC 9110 §7.6.1)."""
    connection = fields.connection
    if connection is None or (
        # The usual `Connection: keep-alive` (or close) alone: nothing more is hop-by-hop.
        len(connection) == 1 and connection[0].strip().lower() in _PLAIN_CONNECTION
    ):
        return fields.lines, fields.credentials
    listed = connection_tokens(connection)
    if not listed - _PLAIN_CONNECTION:
        return fields.lines, fields.credentials
    # Rare: walk the headers again beside the lines rendered from them (one line for each
    # field not consumed, in order) and keep those not now known to be hop-by-hop.
    rendered = fields.lines
    lines: list[bytes] = []
    credentials = False
    at = 0
    for name, _ in headers:
        lname = lower_name(name)
        if lname in _SPECIAL and lname not in _LOOKED_AT:
            continue
        line = rendered[at]
        at += 1
        if not is_hop_by_hop(lname, listed):
            lines.append(line)
            credentials = credentials or lname in _CREDENTIALS
    return lines, credentials


def _joined(current: bytes | None, value: bytes) -> bytes:
    """A list-valued field seen on several lines, as one value."""
    return value if current is None else current + b", " + value


def render_upstream_head(req: RequestHead, client_ip: bytes, sr: bytes) -> bytes:
    """The request line and headers sent to the endpoint (always HTTP/1.1, keep-alive)."""
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ", req.host, b"\r\n"]
    parts.extend(req.lines)
    # Parts, not concatenations: the one join below is the only copy.
    parts.append(b"Via: ")
    if req.via:
        parts.append(req.via)
        parts.append(b", ")
    parts.append(b"1.0 " if req.version == b"1.0" else b"1.1 ")
    parts.append(sr)
    parts.append(b"\r\nX-Forwarded-For: ")
    if req.forwarded_for:
        parts.append(req.forwarded_for)
        parts.append(b", ")
    parts.append(client_ip)
    parts.append(b"\r\nX-Forwarded-Host: ")
    parts.append(req.forwarded_host or req.host)
    parts.append(b"\r\nX-Forwarded-Proto: ")
    parts.append(req.forwarded_proto or b"http")
    if req.chunked:
        parts.append(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif req.content_length is not None:
        parts.append(b"\r\nContent-Length: %d\r\n\r\n" % req.content_length)
    else:
        parts.append(b"\r\n\r\n")
    return b"".join(parts)


def _origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority of an absolute-form target or None)."""
    if url.startswith(b"/"):
        return url, None
    if url == b"*":
        if method != b"OPTIONS":
            raise BadRequest("the asterisk target '*' is only valid with OPTIONS")
        return url, None
    lower = url[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = url[len(scheme) :]
            cut = len(rest)
            for sep in (b"/", b"?", b"#"):
                at = rest.find(sep)
                if at != -1:
                    cut = min(cut, at)
            authority, path = rest[:cut], rest[cut:]
            if not authority or b"@" in authority:
                raise BadRequest("the absolute-form target has no host, or has user information")
            path = path.split(b"#", 1)[0]
            if not path.startswith(b"/"):
                path = b"/" + path
            return path, authority
    raise BadRequest(
        f"request target {url[:100].decode('latin-1')!r} must start with '/' "
        "(or be an absolute http:// URL)"
    )


def _append(values: list[bytes] | None, value: bytes) -> list[bytes]:
    if values is None:
        return [value]
    values.append(value)
    return values


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    distinct = {v.strip() for v in values}
    if len(distinct) != 1:
        raise BadRequest("the request has conflicting Content-Length headers")
    (value,) = distinct
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(f"Content-Length {value[:30].decode('latin-1')!r} is not a byte count")
    return int(value)


def _chunked(values: list[bytes]) -> bool:
    if not values:
        return False
    codings = [c.strip().lower() for c in b",".join(values).split(b",") if c.strip()]
    if codings != [b"chunked"]:
        # Re-framing would silently drop any other transfer coding; refuse instead.
        raise BadRequest(
            "only 'Transfer-Encoding: chunked' is supported, got "
            f"{b', '.join(codings)[:100].decode('latin-1')!r}"
        )
    return True


def _check_loop(via: list[bytes], sr_id: str) -> None:
    me = sr_id.lower().encode("ascii", "replace")
    for entry in b",".join(via).split(b","):
        parts = entry.split()
        if len(parts) >= 2 and parts[1].lower() == me:
            raise LoopDetected(
                f"the request already passed SR {sr_id!r} (Via: {join_values(via)[:200].decode('latin-1')}); "
                "the forwarding tables have a loop"
            )
