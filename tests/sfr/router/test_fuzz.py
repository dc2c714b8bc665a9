"""Fuzzing the router's request parsing over real sockets (SFR-1).

Whatever request line and headers a client sends, the router answers with a well-formed
HTTP/1.1 response (a 4xx, or what routing gives: a proxied answer, 502, 503, 508), never a 500
or a traceback, and it serves the next valid request. The router runs in a thread with its own
uvloop loop for the whole module; each example is a new connection.

Deterministic by default (as tests/tosca/test_fuzz.py); HYPOTHESIS_PROFILE selects a deeper run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from flame.sfr.router import Router, RouterConfig, StaticTableSource, Timeouts

from .helpers import SR, Upstream, close_loop, table

ALLOWED = {200, 400, 404, 405, 413, 431, 502, 503, 508}
STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE")


def fuzz_settings(max_examples: int) -> settings:
    common: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    if _PROFILE not in (None, "dev", "ci"):  # the suite's own profiles keep these counts
        try:
            return settings(settings.get_profile(_PROFILE), **common)
        except InvalidArgument:
            return settings(derandomize=False, **common)
    return settings(max_examples=max_examples, derandomize=True, database=None, **common)


@pytest.fixture(scope="module")
def live_port() -> Iterator[int]:
    state: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        loop = uvloop.new_event_loop()
        state["loop"] = loop
        state["stop"] = asyncio.Event()  # here, so that the teardown always finds it

        async def main() -> None:
            up = await Upstream("fuzz").start()
            router: Router | None = None
            try:
                router = Router(
                    RouterConfig(
                        sr_id=SR, port=0, timeouts=Timeouts(header=1.0, upstream_response=2.0)
                    ),
                    source=StaticTableSource(
                        table(1, {"vod.example": [(up.endpoint(), 1.0)], "empty.example": []})
                    ),
                )
                await router.start()
                state["port"] = router.port
                ready.set()
                await state["stop"].wait()
            finally:
                if router is not None:
                    await router.shutdown(grace=0.5)
                await up.close()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # handed to the test thread
            state["error"] = exc
        finally:
            try:
                close_loop(loop)  # nothing of this loop is left for a later test's GC
            except AssertionError as exc:
                state.setdefault("error", exc)
            ready.set()

    thread = threading.Thread(target=run, name="fuzz-router", daemon=True)
    thread.start()
    assert ready.wait(60), "the router did not start"  # generous: a loaded 2-core machine
    assert "port" in state, f"the router did not start: {state.get('error')!r}"
    try:
        yield state["port"]
    finally:
        loop: asyncio.AbstractEventLoop = state["loop"]
        with contextlib.suppress(RuntimeError):  # the loop ended already (an error, below)
            loop.call_soon_threadsafe(state["stop"].set)
        thread.join(60)
        assert not thread.is_alive(), "the router's loop did not stop"
        assert "error" not in state, state["error"]


def exchange(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def check(port: int, data: bytes) -> None:
    answer = exchange(port, data)
    while answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        answer = answer[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    if answer:  # a client that sent nothing at all gets nothing back
        match = STATUS.match(answer)
        assert match is not None, answer[:300]
        status = int(match.group(1))
        assert status in ALLOWED, answer[:300]
        assert b"Traceback" not in answer
    # The router is alive and routing.
    ok = exchange(port, b"GET /alive HTTP/1.1\r\nHost: vod.example\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:300]


def mostly(
    valid: st.SearchStrategy[bytes], invalid: st.SearchStrategy[bytes], one_in: int = 5
) -> st.SearchStrategy[bytes]:
    """Invalid once in `one_in` draws: requests must get past the first check to reach the others."""
    return st.integers(1, one_in).flatmap(lambda i: invalid if i == 1 else valid)


token_chars = st.sampled_from(
    list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~")
)
any_byte = st.integers(0, 255)
methods = mostly(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]),
    st.one_of(
        st.sampled_from([b"CONNECT", b"get", b""]), st.lists(any_byte, max_size=12).map(bytes)
    ),
)
targets = mostly(
    st.one_of(
        st.sampled_from(
            [b"/", b"*", b"/a?b=c", b"http://vod.example/x", b"https://VOD.example:8443", b"//x"]
        ),
        st.lists(st.sampled_from(list(b"/abc?=&%#:@[].")), max_size=30).map(
            lambda b: b"/" + bytes(b)
        ),
    ),
    st.one_of(st.sampled_from([b"", b"/%00", b"/a b"]), st.lists(any_byte, max_size=40).map(bytes)),
)
versions = mostly(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.one_of(
        st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b""]),
        st.lists(any_byte, max_size=10).map(bytes),
    ),
)
hosts = mostly(
    st.sampled_from(
        [b"vod.example", b"VOD.example:80", b"vod.example.", b"unknown.example", b"empty.example"]
    ),
    st.sampled_from([b"", b"bad host", b"[::1]", b"vod.example:99999", b"a..b", b"\xff"]),
)
header_names = mostly(
    st.one_of(
        st.sampled_from(
            [
                b"Connection",
                b"Keep-Alive",
                b"Upgrade",
                b"Expect",
                b"Via",
                b"X-Forwarded-For",
                b"Accept",
                b"Cookie",
                b"TE",
                b"Trailer",
                b"Proxy-Connection",
                b"Range",
            ]
        ),
        st.lists(token_chars, min_size=1, max_size=20).map(bytes),
    ),
    st.lists(any_byte, min_size=0, max_size=20).map(bytes),
    one_in=15,
)
header_values = mostly(
    st.one_of(
        st.sampled_from(
            [
                b"close",
                b"keep-alive",
                b"upgrade",
                b"websocket",
                b"100-continue",
                b"1.1 sr-test",
                b"1.1 other",
                b"",
            ]
        ),
        st.lists(st.sampled_from(list(b"abc ,;=/-1.")), max_size=40).map(bytes),
    ),
    st.lists(any_byte, max_size=60).map(bytes),
    one_in=15,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + b"\r\n"
    headers = []
    if draw(st.integers(0, 9)):
        headers.append(b"Host: " + draw(hosts) + b"\r\n")
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        headers.append(name + b": " + value + b"\r\n")
    if not draw(st.integers(0, 9)):
        headers.insert(
            draw(st.integers(0, len(headers))),
            draw(st.lists(any_byte, max_size=30).map(bytes)) + b"\r\n",
        )
    body = b""
    framing = draw(
        st.sampled_from(["none", "none", "length", "chunked", "bad-length", "bad-chunked"])
    )
    if framing == "length":
        body = draw(st.binary(max_size=50))
        headers.append(b"Content-Length: %d\r\n" % len(body))
    elif framing == "chunked":
        data = draw(st.binary(min_size=1, max_size=50))
        headers.append(b"Transfer-Encoding: chunked\r\n")
        body = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    elif framing == "bad-length":
        headers.append(
            b"Content-Length: "
            + draw(st.sampled_from([b"-1", b"1e3", b"99", b"0x10", b"1, 2"]))
            + b"\r\n"
        )
    elif framing == "bad-chunked":
        headers.append(
            b"Transfer-Encoding: "
            + draw(st.sampled_from([b"chunked", b"gzip", b"chunked, gzip"]))
            + b"\r\n"
        )
        body = draw(st.binary(max_size=20))
    return line + b"".join(headers) + b"\r\n" + body


@fuzz_settings(250)
@given(requests())
def test_fuzzed_requests_get_an_answer_and_the_router_lives(live_port: int, request: bytes) -> None:
    check(live_port, request)


@fuzz_settings(100)
@given(st.binary(max_size=300))
def test_random_bytes_get_an_answer_and_the_router_lives(live_port: int, data: bytes) -> None:
    check(live_port, data)


def test_the_fuzz_router_answers_a_valid_request(live_port: int) -> None:
    answer = exchange(live_port, b"GET / HTTP/1.1\r\nHost: vod.example\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
