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
# Of the special fields, those forwarded unchanged (the router only looks at them).
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive"})
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


def analyze_request(  # noqa: C901 (issue 18: split it)
    method: bytes,
    url: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    *,
    keep_alive: bool,
    sr_id: str,
) -> RequestHead:
    """Check a parsed request head and extract what routing and forwarding need."""
    if version not in ("1.1", "1.0"):
        raise BadRequest(f"HTTP/{version} is not supported; send HTTP/1.1 or HTTP/1.0")
    if method == b"CONNECT":
        raise MethodNotAllowed(
            "CONNECT is not supported: the SR routes requests by Host, it is not a tunnel"
        )

    lines: list[bytes] = []
    names: list[bytes] = []  # lower-case name of each line, for removing fields named in Connection
    # Fields most requests do not have are collected in lists made on first sight.
    host: bytes | None = None
    hosts = 0
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    connection: list[bytes] | None = None
    via: list[bytes] | None = None
    xff: list[bytes] | None = None
    xfh: bytes | None = None
    xfp: bytes | None = None
    expect_continue = False
    credentials = False
    accept: bytes | None = None
    accept_encoding: bytes | None = None
    range_: bytes | None = None
    relay_client: bytes | None = None
    flame_endpoint: str | None = None
    for name, value in headers:
        lname = lower_name(name)
        if lname not in _SPECIAL:
            lines.append(name + b": " + value + b"\r\n")
            names.append(lname)
            continue
        if lname in _LOOKED_AT:
            lines.append(name + b": " + value + b"\r\n")
            names.append(lname)
            if lname in _CREDENTIALS:
                credentials = True
            elif lname == b"accept":
                accept = value if accept is None else accept + b", " + value
            elif lname == b"accept-encoding":
                accept_encoding = (
                    value if accept_encoding is None else accept_encoding + b", " + value
                )
            else:
                range_ = value if range_ is None else range_ + b", " + value
        elif lname == b"host":
            hosts += 1
            if host is None:
                host = value
        elif lname == b"content-length":
            lengths = _append(lengths, value)
        elif lname == b"transfer-encoding":
            codings = _append(codings, value)
        elif lname == b"connection":
            connection = _append(connection, value)
        elif lname == b"via":
            via = _append(via, value)
        elif lname == b"x-forwarded-for":
            xff = _append(xff, value)
        elif lname == b"x-forwarded-host":
            xfh = xfh or value.strip()
        elif lname == b"x-forwarded-proto":
            xfp = xfp or value.strip()
        elif lname == b"x-flame-relay-client":
            relay_client = value.strip()
        elif lname == b"x-flame-endpoint":
            if flame_endpoint is None:
                flame_endpoint = value.strip().decode("latin-1")
        elif lname == b"expect":
            # Only 100-continue is defined; the router answers it itself (see cycle.py).
            expect_continue = expect_continue or value.strip().lower() == b"100-continue"
        # keep-alive, te, trailer, upgrade: hop-by-hop, consumed here.

    target, url_host = _origin_form(method, url)
    if url_host is not None:
        # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
        host = url_host
    elif host is not None and hosts == 1:
        host = host.strip()
    elif host is None:
        raise BadRequest("the request has no Host header; the SR routes by Host (the service FQDN)")
    else:
        raise BadRequest(f"the request has {hosts} Host headers; send exactly one")
    fqdn = fqdn_from_host(host)
    if fqdn is None:
        raise BadRequest(f"Host {host[:100].decode('latin-1')!r} is not a host name")

    content_length = _content_length(lengths) if lengths is not None else None
    chunked = _chunked(codings) if codings is not None else False
    if chunked and content_length is not None:
        raise BadRequest("the request has both Content-Length and Transfer-Encoding; send one")

    if via is not None:
        _check_loop(via, sr_id)

    listed = connection_tokens(connection) if connection is not None else _NO_TOKENS
    if listed and listed - _PLAIN_CONNECTION:
        # Fields the client marked as hop-by-hop are for us only (RFC 9110 §7.6.1).
        lines = [
            line
            for line, lname in zip(lines, names, strict=True)
            if not is_hop_by_hop(lname, listed)
        ]
        credentials = any(n in _CREDENTIALS and not is_hop_by_hop(n, listed) for n in names)

    return RequestHead(
        method=method,
        target=target,
        version=version.encode("ascii"),
        host=host,
        fqdn=fqdn,
        keep_alive=keep_alive,
        content_length=content_length,
        chunked=chunked,
        expect_continue=expect_continue,
        lines=lines,
        via=join_values(via) if via is not None else b"",
        forwarded_for=join_values(xff) if xff is not None else b"",
        forwarded_host=xfh or None,
        forwarded_proto=xfp or None,
        credentials=credentials,
        accept=accept,
        accept_encoding=accept_encoding,
        range=range_,
        relay_client=relay_client,
        flame_endpoint=flame_endpoint,
    )


def render_upstream_head(req: RequestHead, client_ip: bytes, sr: bytes) -> bytes:
    """The request line and headers sent to the endpoint (always HTTP/1.1, keep-alive)."""
    via = b"1.0 " + sr if req.version == b"1.0" else b"1.1 " + sr
    if req.via:
        via = req.via + b", " + via
    xff = req.forwarded_for + b", " + client_ip if req.forwarded_for else client_ip
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ", req.host, b"\r\n"]
    parts.extend(req.lines)
    parts.append(b"Via: ")
    parts.append(via)
    parts.append(b"\r\nX-Forwarded-For: ")
    parts.append(xff)
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
