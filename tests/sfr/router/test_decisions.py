"""Routing decisions without sockets (SFR-1, SFR-14): Host -> FQDN, request and response
heads, endpoint choice, outlier ejection, table replacement, coalescing keys, line protocol."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from flame.common.errors import ConfigError
from flame.common.lineproto import escape_tag, point
from flame.sfr.models import Route
from flame.sfr.router.balancer import FqdnRoutes
from flame.sfr.router.body import RequestBody
from flame.sfr.router.coalesce import JoinWindow, coalesce_key, may_join
from flame.sfr.router.config import Limits, RouterConfig, Timeouts
from flame.sfr.router.errors import (
    BadRequest,
    LoopDetected,
    MethodNotAllowed,
    NoEndpoint,
    UnknownFqdn,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from flame.sfr.router.flow import FlowControl
from flame.sfr.router.forward import may_retry
from flame.sfr.router.headers import connection_tokens, fqdn_from_host
from flame.sfr.router.metrics import RouterMetrics
from flame.sfr.router.outlier import OutlierDetector
from flame.sfr.router.request import analyze_request, render_upstream_head
from flame.sfr.router.response import (
    Framing,
    ResponseHead,
    choose_framing,
    error_response,
    render_client_head,
)
from flame.sfr.router.table import RoutingState

from .helpers import SR, endpoint, table


def analyze(
    headers: list[tuple[bytes, bytes]],
    *,
    method: bytes = b"GET",
    url: bytes = b"/a?b=1",
    version: str = "1.1",
):
    return analyze_request(method, url, version, headers, keep_alive=True, sr_id=SR)


# -- Host -> FQDN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "fqdn"),
    [
        (b"vod.example", "vod.example"),
        (b"VoD.Example.COM.:8080", "vod.example.com"),
        (b"vod.example:", "vod.example"),
        (b" a-b_c.example ", "a-b_c.example"),
        (b"[::1]:80", "[::1]"),
        (b"127.0.0.1:8080", "127.0.0.1"),
        (b"", None),
        (b"bad host", None),
        (b"x:99999", None),
        (b"x:8o", None),
        (b"..", None),
        (b"a..b", None),
        (b"[zz]", None),
        (b"caf\xc3\xa9.example", None),
    ],
)
def test_fqdn_from_host(host: bytes, fqdn: str | None) -> None:
    assert fqdn_from_host(host) == fqdn


def test_connection_tokens() -> None:
    assert connection_tokens([b"Keep-Alive, X-Secret", b" close "]) == {
        b"keep-alive",
        b"x-secret",
        b"close",
    }


# -- request heads (SFR-1) -------------------------------------------------------------------------


def test_request_hop_by_hop_removed_and_forwarding_headers_added() -> None:
    req = analyze(
        [
            (b"Host", b"VOD.example:81"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"TE", b"trailers"),
            (b"Upgrade", b"h2c"),
            (b"Trailer", b"X-T"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-For", b"10.0.0.2"),
            (b"Via", b"1.1 edge-proxy"),
            (b"Accept", b"text/html"),
            (b"X-Custom", b"kept"),
        ]
    )
    assert req.fqdn == "vod.example"
    head = render_upstream_head(req, b"192.0.2.7", SR.encode())
    text = head.decode()
    assert text.startswith("GET /a?b=1 HTTP/1.1\r\nHost: VOD.example:81\r\n")
    lowered = text.lower()
    for gone in (
        "connection:",
        "x-hop:",
        "keep-alive:",
        "proxy-authorization:",
        "te:",
        "upgrade:",
        "trailer:",
    ):
        assert f"\r\n{gone}" not in lowered, gone
    assert "\r\nAccept: text/html\r\n" in text
    assert "\r\nX-Custom: kept\r\n" in text
    assert "\r\nVia: 1.1 edge-proxy, 1.1 sr-test\r\n" in text
    assert "\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n" in text
    assert "\r\nX-Forwarded-Host: VOD.example:81\r\n" in text
    assert "\r\nX-Forwarded-Proto: http\r\n" in text
    assert text.endswith("\r\n\r\n")


def test_request_framing_is_rewritten() -> None:
    chunked = analyze([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], method=b"POST")
    assert chunked.chunked
    assert chunked.has_body
    assert b"\r\nTransfer-Encoding: chunked\r\n\r\n" in render_upstream_head(
        chunked, b"1.2.3.4", b"sr"
    )
    sized = analyze([(b"Host", b"h"), (b"Content-Length", b"12")], method=b"PUT")
    assert sized.content_length == 12
    assert b"\r\nContent-Length: 12\r\n\r\n" in render_upstream_head(sized, b"1.2.3.4", b"sr")
    http10 = analyze([(b"Host", b"h")], version="1.0")
    assert b"Via: 1.0 sr\r\n" in render_upstream_head(http10, b"1.2.3.4", b"sr")


def test_absolute_form_target_overrides_host() -> None:
    req = analyze([(b"Host", b"other")], url=b"http://Vod.Example:8080/p?q#frag")
    assert (req.fqdn, req.target, req.host) == ("vod.example", b"/p?q", b"Vod.Example:8080")
    assert analyze([], url=b"http://vod.example").target == b"/"


@pytest.mark.parametrize(
    ("headers", "kwargs", "error"),
    [
        ([], {}, BadRequest),  # no Host
        ([(b"Host", b"a"), (b"Host", b"b")], {}, BadRequest),
        ([(b"Host", b"bad host")], {}, BadRequest),
        ([(b"Host", b"a"), (b"Content-Length", b"1"), (b"Content-Length", b"2")], {}, BadRequest),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")], {}, BadRequest),
        ([(b"Host", b"a"), (b"Via", b"1.1 SR-TEST")], {}, LoopDetected),
        ([(b"Host", b"a")], {"method": b"CONNECT", "url": b"a:443"}, MethodNotAllowed),
        ([(b"Host", b"a")], {"url": b"*"}, BadRequest),
        ([(b"Host", b"a")], {"url": b"ftp://x/"}, BadRequest),
        ([(b"Host", b"a")], {"url": b"http://user@x/"}, BadRequest),
        ([(b"Host", b"a")], {"version": "2.0"}, BadRequest),
    ],
)
def test_bad_requests_are_rejected_with_the_right_answer(headers, kwargs, error) -> None:
    with pytest.raises(error):
        analyze(headers, **kwargs)


def test_options_asterisk_is_allowed() -> None:
    assert analyze([(b"Host", b"a")], method=b"OPTIONS", url=b"*").target == b"*"


def test_expect_continue_and_credentials_are_noted() -> None:
    req = analyze(
        [(b"Host", b"a"), (b"Expect", b"100-Continue"), (b"Cookie", b"x=1")], method=b"POST"
    )
    assert req.expect_continue
    assert req.credentials
    assert b"Expect" not in render_upstream_head(req, b"ip", b"sr")


# -- response heads ------------------------------------------------------------------------------------


def head(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, **kw) -> ResponseHead:
    return ResponseHead(status, b"", headers or [], **kw)


def test_response_hop_by_hop_removed_and_via_appended() -> None:
    h = head(
        headers=[
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"keep-alive, X-Private-Hop"),
            (b"X-Private-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Via", b"1.0 cache"),
            (b"Content-Length", b"5"),
        ],
        content_length=5,
    )
    text = render_client_head(h, b"sr-test", Framing.LENGTH, keep_alive=True, http11=True).decode()
    assert text.startswith("HTTP/1.1 200 OK\r\n")
    assert "Content-Type: text/plain\r\n" in text
    for gone in (
        "Connection",
        "X-Private-Hop",
        "Keep-Alive",
        "Transfer-Encoding",
        "Proxy-Authenticate",
    ):
        assert f"\r\n{gone}:" not in text, gone
    assert "\r\nVia: 1.0 cache, 1.1 sr-test\r\n" in text
    assert text.count("Content-Length: 5\r\n") == 1


@pytest.mark.parametrize(
    ("status", "cl", "chunked", "head_request", "http11", "framing"),
    [
        (200, 10, False, False, True, Framing.LENGTH),
        (200, None, True, False, True, Framing.CHUNKED),
        (200, None, False, False, True, Framing.CHUNKED),  # close-delimited upstream
        (200, None, True, False, False, Framing.CLOSE),  # HTTP/1.0 client
        (200, 10, False, True, True, Framing.NONE),  # HEAD
        (204, None, False, False, True, Framing.NONE),
        (304, 10, False, False, True, Framing.NONE),
    ],
)
def test_framing(status, cl, chunked, head_request, http11, framing) -> None:
    h = head(status, content_length=cl, chunked=chunked)
    assert choose_framing(h, head_request=head_request, http11=http11) is framing


def test_head_and_304_keep_the_length_and_connection_headers() -> None:
    h = head(304, [(b"Content-Length", b"10")], content_length=10)
    text = render_client_head(h, b"sr", Framing.NONE, keep_alive=False, http11=True)
    assert b"Content-Length: 10\r\n" in text
    assert text.endswith(b"Connection: close\r\n\r\n")
    h10 = render_client_head(head(204), b"sr", Framing.NONE, keep_alive=True, http11=False)
    assert b"Content-Length" not in h10
    assert h10.endswith(b"Connection: keep-alive\r\n\r\n")


@pytest.mark.parametrize(
    ("headers", "shareable"),
    [
        ([(b"Cache-Control", b"public, max-age=60")], True),
        ([(b"Cache-Control", b"Private")], False),
        ([(b"cache-control", b"max-age=0, no-store")], False),
        ([(b"Set-Cookie", b"id=1")], False),
        ([], True),
    ],
)
def test_shareable_responses(headers, shareable) -> None:
    assert head(headers=headers).shareable() is shareable


def test_error_response_body_and_retry_after() -> None:
    data = error_response(
        NoEndpoint("all gone", fqdn="vod.example", retry_after=3), keep_alive=True
    )
    head_part, _, body = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 3" in head_part
    assert b'"error":"no_endpoint"' in body
    assert b'"fqdn":"vod.example"' in body


@pytest.mark.parametrize(
    ("error", "status", "retry_after", "not_forwarded"),
    [
        (UnknownFqdn("no such FQDN", fqdn="x.example"), 404, None, b"route"),
        (NoEndpoint("none", fqdn="x.example", retry_after=2), 503, b"2", b"route"),
        (UpstreamConnectError("refused", sfe="e", endpoint="h:1"), 503, b"1", b"unreachable"),
        (UpstreamBusy("busy", sfe="e", endpoint="h:1"), 503, b"1", None),
        (UpstreamReset("cut", sfe="e", endpoint="h:1"), 502, None, None),
        (UpstreamProtocolError("garbage", sfe="e", endpoint="h:1"), 502, None, None),
        (UpstreamTimeout("slow", sfe="e", endpoint="h:1"), 504, None, None),
    ],
)
def test_router_answers_statuses(error, status, retry_after, not_forwarded) -> None:
    """Issue 14: 404 for an unknown FQDN, 503 + Retry-After when no endpoint can take the
    request (none, all ejected, none reachable), 502 only for a bad upstream answer."""
    head_part, _, _ = error_response(error, keep_alive=True).partition(b"\r\n\r\n")
    parsed = ResponseHead(0, b"")
    fields: dict[bytes, bytes] = {}
    for line in head_part.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        parsed.add(name, value)
        fields[name] = value
    assert head_part.startswith(b"HTTP/1.1 %d " % status)
    assert fields.get(b"Retry-After") == retry_after
    assert parsed.not_forwarded == not_forwarded


# -- endpoint choice (SFR-1, SFR-4) ---------------------------------------------------------------------


def routes(*eps: tuple[str, float, float]) -> FqdnRoutes:
    """(sfe, cost, weight) ..."""
    t = table(
        1,
        {"f": [(endpoint(s, 1000 + i, fqdn="f", weight=w), c) for i, (s, c, w) in enumerate(eps)]},
    )
    return FqdnRoutes("f", t.routes["f"])


def picks(r: FqdnRoutes, n: int, skip=lambda sfe: False) -> list[str]:
    return [e.sfe for e in (r.choose(skip) for _ in range(n)) if e is not None]


def test_best_cost_tier_only_while_it_is_usable() -> None:
    r = routes(("near1", 2.0, 1), ("near2", 2.0 + 1e-12, 1), ("far", 9.0, 1))
    assert set(picks(r, 10)) == {"near1", "near2"}
    assert r.best() == {"near1", "near2"}
    assert set(picks(r, 5, skip=lambda s: s.startswith("near"))) == {"far"}
    assert r.choose(lambda s: True) is None


def test_smooth_weighted_round_robin() -> None:
    r = routes(("a", 1.0, 5), ("b", 1.0, 1), ("c", 1.0, 1))
    seq = picks(r, 7)
    assert seq == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's sequence: no burst of five
    assert collections.Counter(picks(r, 700)) == {"a": 500, "b": 100, "c": 100}


def test_weights_skip_ejected_and_zero_weights() -> None:
    r = routes(("a", 1.0, 3), ("b", 1.0, 1), ("z", 1.0, 0))
    counts = collections.Counter(picks(r, 400))
    assert counts == {"a": 300, "b": 100}
    assert set(picks(r, 10, skip=lambda s: s == "a")) == {"b"}
    assert set(picks(r, 3, skip=lambda s: s in ("a", "b"))) == {"z"}


def test_duplicate_endpoints_keep_their_first_route() -> None:
    r = routes(("a", 1.0, 1), ("a", 0.5, 1), ("b", 3.0, 1))
    assert [(t.cost, [e.sfe for e in t.endpoints]) for t in r.tiers] == [(1.0, ["a"]), (3.0, ["b"])]


def test_tiers_follow_the_pce_order_never_the_cost_alone() -> None:
    """Issue 14 (SFR-6): under a policy the PCE ranks a preferred, farther cluster first; the SR
    keeps that order: consecutive equal costs share a tier, a later cheaper route never jumps
    ahead, and it serves only when the ones before it cannot."""
    r = routes(("london", 13.0, 1), ("bath", 6.0, 1), ("bath-2", 6.0, 1), ("bristol", 0.0, 1))
    assert [[e.sfe for e in t.endpoints] for t in r.tiers] == [
        ["london"],
        ["bath", "bath-2"],
        ["bristol"],
    ]
    assert set(picks(r, 10)) == {"london"}
    assert r.best() == {"london"}
    assert set(picks(r, 10, skip=lambda s: s == "london")) == {"bath", "bath-2"}
    assert picks(r, 2, skip=lambda s: s != "bristol") == ["bristol"] * 2
    # Equal costs apart in the order are separate tiers.
    r = routes(("a", 1.0, 1), ("b", 2.0, 1), ("c", 1.0, 1))
    assert [[e.sfe for e in t.endpoints] for t in r.tiers] == [["a"], ["b"], ["c"]]


def test_local_endpoints_and_egress_hops() -> None:
    """SFR-10: which endpoints an X-Flame-Endpoint may name here, and where the others' hop goes."""
    here, there = endpoint("here", 1001, fqdn="f"), endpoint("there", 1002, fqdn="f")
    unaddressed, odd = endpoint("far", 1003, fqdn="f"), endpoint("bad\u00e9", 1004, fqdn="f")
    r = FqdnRoutes(
        "f",
        [
            Route(
                here, egress_sr=SR, cost=0.0, latency_ms=0.0, path=(SR,), egress_address="10.0.0.1"
            ),
            Route(
                there,
                egress_sr="sr-2",
                cost=1.0,
                latency_ms=1.0,
                path=(SR, "sr-2"),
                egress_address="10.0.0.2",
            ),
            Route(unaddressed, egress_sr="sr-3", cost=2.0, latency_ms=2.0, path=(SR, "sr-3")),
            Route(
                odd,
                egress_sr="sr-2",
                cost=3.0,
                latency_ms=3.0,
                path=(SR, "sr-2"),
                egress_address="10.0.0.2",
            ),
        ],
        sr_id=SR,
    )
    assert r.local == {"here": here}
    assert r.hop(here, 8080) is None
    assert r.hop(unaddressed, 8080) is None  # no address: direct
    assert r.hop(odd, 8080) is None  # an id that cannot go into a header: direct
    hop = r.hop(there, 8080)
    assert hop is not None
    assert (hop.egress_sr, hop.target.host, hop.target.port) == ("sr-2", "10.0.0.2", 8080)
    assert hop.header == b"X-Flame-Endpoint: there\r\n"
    assert r.hop(there, 8080) is hop  # built once per table
    other = r.hop(there, 9090)
    assert other is not None
    assert other.target.port == 9090


def test_x_flame_endpoint_is_read_and_never_forwarded() -> None:
    req = analyze(
        [
            (b"Host", b"vod.example"),
            (b"X-Flame-Endpoint", b" e1 "),
            (b"x-flame-endpoint", b"e2"),
            (b"Accept", b"*/*"),
        ]
    )
    assert req.flame_endpoint == "e1"
    head = render_upstream_head(req, b"10.0.0.9", b"sr-test")
    assert b"flame-endpoint" not in head.lower()
    assert b"Accept: */*\r\n" in head
    assert analyze([(b"Host", b"vod.example")]).flame_endpoint is None


# -- outlier detection ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ejection_backoff_doubles_to_the_maximum_and_resets_on_success() -> None:
    clock = Clock()
    d = OutlierDetector(base=1.0, maximum=30.0, clock=clock)
    assert not d.is_ejected("a")
    lengths: list[float] = []
    for _ in range(7):
        length = d.failure("a")
        assert length is not None
        lengths.append(length)
        assert d.is_ejected("a")
        clock.now += lengths[-1] - 0.001
        assert d.is_ejected("a")
        clock.now += 0.002
        assert not d.is_ejected("a")
    assert lengths == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    d.success("a")
    assert d.failure("a") == 1.0
    assert d.ejections == 8


def test_failures_while_ejected_do_not_escalate() -> None:
    clock = Clock()
    d = OutlierDetector(clock=clock)
    assert d.failure("a") == 1.0
    assert d.failure("a") is None  # another request in flight when it died
    clock.now += 1.5
    assert d.failure("a") == 2.0
    assert d.retry_after(["a", "b"], default=5) == 2
    assert d.retry_after(["b"], default=5) == 5
    assert set(d.ejected()) == {"a"}
    d.forget(["b"])
    assert not d.is_ejected("a")


# -- table replacement (SFR-11, SFR-14) ----------------------------------------------------------------------


def test_set_table_only_newer_versions_of_our_sr() -> None:
    state = RoutingState(SR)
    a, b = endpoint("a", 1001), endpoint("b", 1002)
    first = state.set_table(table(2, {"vod.example": [(a, 1.0)]}))
    assert first is not None
    assert first.old_version is None
    assert first.switched == ()
    assert state.set_table(table(2, {"vod.example": [(b, 1.0)]})) is None
    assert state.set_table(table(1, {"vod.example": [(b, 1.0)]})) is None
    assert state.set_table(table(9, {}, sr="other-sr")) is None
    assert state.version == 2
    change = state.set_table(
        table(3, {"vod.example": [(b, 1.0), (a, 2.0)], "new.example": [(a, 1.0)]})
    )
    assert change is not None
    assert change.switched == ("vod.example",)
    assert change.removed == frozenset()
    change = state.set_table(table(4, {"new.example": [(a, 1.0)]}))
    assert change is not None
    assert change.removed == {("127.0.0.1", 1002)}
    assert state.lookup("vod.example") is None
    forced = state.set_table(table(1, {"vod.example": [(b, 1.0)]}), force=True)
    assert forced is not None
    assert state.version == 1


# -- retries and coalescing -------------------------------------------------------------------------------------


def test_may_retry_idempotent_replayable_once() -> None:
    get = analyze([(b"Host", b"a")])
    post = analyze([(b"Host", b"a"), (b"Content-Length", b"3")], method=b"POST")
    put = analyze([(b"Host", b"a"), (b"Content-Length", b"3")], method=b"PUT")
    assert may_retry(get, None, 1)
    assert not may_retry(get, None, 2)
    assert not may_retry(post, None, 1)

    class Transport:  # what FlowControl asks of the client's transport
        paused = False

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    transport = Transport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    body = RequestBody(flow, retain_limit=4, high_water=100)
    body.feed(b"abc")
    assert not transport.paused  # buffered below the high-water mark
    assert may_retry(put, body, 1)

    class Sink:
        def send_body(self, data: bytes) -> None:
            pass

        def end_body(self) -> None:
            pass

    body.attach(Sink())
    body.feed(b"de")  # 5 bytes sent: more than it keeps
    assert not body.replayable
    assert not may_retry(put, body, 1)


def test_coalesce_keys() -> None:
    base = [(b"Host", b"vod.example"), (b"Accept", b"*/*")]
    a = coalesce_key(analyze(base))
    assert a is not None
    assert a == coalesce_key(analyze([*base, (b"User-Agent", b"x")]))
    assert a != coalesce_key(analyze([*base, (b"Range", b"bytes=0-1")]))
    assert a != coalesce_key(analyze(base, url=b"/other"))
    assert a != coalesce_key(analyze([(b"Host", b"vod.example"), (b"Accept", b"text/html")]))
    # Credentials: shared only with the same values (see test_coalesce_vary_rules.py).
    cookie = coalesce_key(analyze([*base, (b"Cookie", b"s=1")]))
    assert cookie not in (None, a)
    assert cookie != coalesce_key(analyze([*base, (b"Cookie", b"s=2")]))
    assert coalesce_key(analyze([*base, (b"Authorization", b"Bearer x")])) not in (None, a, cookie)
    assert coalesce_key(analyze(base, method=b"HEAD")) is None
    assert coalesce_key(analyze([*base, (b"Content-Length", b"1")])) is None


def test_join_window() -> None:
    w = JoinWindow(max_age=10.0, max_bytes=100)
    ok: dict[str, Any] = {
        "age": 1.0,
        "received": 10,
        "closed": False,
        "fetch_version": 3,
        "table_version": 3,
    }
    assert may_join(w, **ok)
    assert not may_join(w, **{**ok, "age": 10.5})
    assert not may_join(w, **{**ok, "received": 101})
    assert not may_join(w, **{**ok, "closed": True})
    assert not may_join(w, **{**ok, "table_version": 4})  # a switch is not undone by joining


# -- monitoring (CLMC-8) ---------------------------------------------------------------------------------------


def test_line_protocol_escaping() -> None:
    assert escape_tag("a b,c=d\\e\nf") == "a\\ b\\,c\\=d\\e\\ f"  # a backslash is literal
    assert point("m", {"t": "v", "empty": ""}, {"n": 3, "x": 0.5}, 7) == "m,t=v n=3i,x=0.5 7"
    fields: dict[str, bool | str] = {"ok": True, "s": 'say "hi"\nbye'}
    assert point("m s,x", {}, fields, 1) == 'm\\ s\\,x ok=true,s="say \\"hi\\" bye" 1'


def test_metrics_collect_intervals_and_totals() -> None:
    m = RouterMetrics(SR, worker=1)
    ep = endpoint("a", 1001, cluster="edge 1")
    m.fetch("vod.example", ep)
    m.request_done(
        "vod.example",
        ep,
        status=200,
        complete=True,
        rt_ms=4.0,
        bytes_in=10,
        bytes_out=100,
        coalesced=False,
    )
    m.request_done(
        "vod.example",
        ep,
        status=502,
        complete=True,
        rt_ms=2.0,
        bytes_in=0,
        bytes_out=50,
        coalesced=True,
    )
    m.switch(["vod.example"])
    lines = m.collect(123)
    assert lines[0] == (
        "sr_requests,sr=sr-test,fqdn=vod.example,sfe=a,cluster=edge\\ 1,worker=1 "
        "requests=2i,errors=1i,rt_count=2i,bytes_in=10i,bytes_out=150i,coalesced=1i,fetches=1i,"
        "ejections=0i,rt_sum_ms=6.0,rt_max_ms=4.0,response_time=3.0 123"
    )
    assert lines[1].startswith(
        "sr_fqdn,sr=sr-test,fqdn=vod.example,worker=1 requests=2i,errors=1i,"
    )
    assert "switches=1i" in lines[1]
    assert m.collect(124) == []  # a new interval starts empty
    snap = m.snapshot()
    assert snap["fqdns"]["vod.example"]["requests"] == 2
    assert snap["endpoints"]["vod.example/a"]["bytes_out"] == 150


# -- configuration -----------------------------------------------------------------------------------------------


def test_config_round_trip_and_errors() -> None:
    config = RouterConfig(
        sr_id="sr-1",
        workers=2,
        pce_urls=("http://pce:1",),
        token="t0k",
        limits=Limits(max_head_bytes=100),
    )
    assert RouterConfig.from_dict(config.to_dict()) == config
    assert "t0k" not in repr(config)
    with pytest.raises(ConfigError):
        RouterConfig(sr_id="has space")
    with pytest.raises(ConfigError):
        RouterConfig(sr_id="s", port=70000)
    with pytest.raises(ConfigError):
        RouterConfig(sr_id="s", pce_urls=("pce:1",))
    with pytest.raises(ConfigError):
        RouterConfig.from_dict({"sr_id": "s", "colour": "blue"})
    with pytest.raises(ConfigError):
        Timeouts(header=0)
    with pytest.raises(ConfigError):
        Limits(max_body_bytes=-1)
    with pytest.raises(ConfigError):
        RouterConfig.from_dict({"sr_id": "s", "limits": {"max_heads": 1}})


def test_egress_settings_reach_the_workers_and_are_checked() -> None:
    """SFR-1: workers get the config as a dict; an egress port outside 1..65535 is refused."""
    config = RouterConfig(sr_id=SR, egress_hop=True, egress_port=9090)
    again = RouterConfig.from_dict(config.to_dict())
    assert (again.egress_hop, again.egress_port) == (True, 9090)
    assert (RouterConfig(sr_id=SR).egress_hop, RouterConfig(sr_id=SR).egress_port) == (False, None)
    for bad in (0, 70000, True, "9090"):
        with pytest.raises(ConfigError, match="egress_port"):
            RouterConfig(sr_id=SR, egress_port=bad)  # type: ignore[arg-type]


# -- multicast across workers ---------------------------------------------------------------------------------------


def test_inflight_claims_between_workers(monkeypatch) -> None:
    from flame.sfr.router import inflight

    now = [1_000_000]
    monkeypatch.setattr(inflight, "_now_ms", lambda: now[0])
    table_ = inflight.InflightTable(slots=8)
    h = inflight.key_hash(("vod.example", b"/big", None, None, None))
    assert h == inflight.key_hash(("vod.example", b"/big", None, None, None))  # stable
    assert table_.owner_or_claim(h, 0, ttl=10) is None  # worker 0 claims
    assert table_.owner_or_claim(h, 1, ttl=10) == 0  # worker 1 is sent to worker 0
    assert table_.owner_or_claim(h, 0, ttl=10) is None  # the owner itself keeps it
    other = h + 8  # the same slot, another key: no relay, no claim
    assert table_.owner_or_claim(other, 1, ttl=10) is None
    assert table_.owner_or_claim(h, 1, ttl=10) == 0
    table_.release(h, 1)  # not worker 1's to release
    assert table_.owner_or_claim(h, 1, ttl=10) == 0
    table_.release(h, 0)
    assert table_.owner_or_claim(h, 1, ttl=10) is None  # free again: worker 1 claims
    now[0] += 10_001  # claims expire (a worker that died holding one)
    assert table_.owner_or_claim(h, 0, ttl=10) is None
    table_.mark_small(h, 0)  # a small answer: siblings fetch it themselves
    assert table_.owner_or_claim(h, 1, ttl=10) is None
    table_.release(h, 0)
    assert table_.owner_or_claim(h, 1, ttl=10) is None  # still remembered as small
    now[0] += 1_001
    assert table_.owner_or_claim(h, 1, ttl=10) is None  # forgotten: worker 1 claims
    assert table_.owner_or_claim(h, 0, ttl=10) == 1
