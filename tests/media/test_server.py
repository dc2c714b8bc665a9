"""The HTTP server core: handler failures, graceful stop, back-pressure on big answers."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from eventually import eventually
from flame.media.messages import Request, Response

from .helpers import ScriptedOrigin, running


def test_a_failing_handler_is_a_500_json_not_a_traceback(http: httpx.Client) -> None:
    async def respond(req: Request) -> Response:
        if req.path == "/boom":
            raise RuntimeError("secret internals")
        return Response(200, [], b"fine")

    with running(lambda: ScriptedOrigin(respond)) as server:
        r = http.get(server.url + "/boom")
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "the server failed: RuntimeError"}
        assert "secret internals" not in r.text
        assert http.get(server.url + "/ok").content == b"fine"  # same keep-alive connection


def test_stop_lets_the_answer_in_progress_finish() -> None:
    async def respond(req: Request) -> Response:
        await asyncio.sleep(0.5)
        return Response(200, [], b"late but whole")

    server = running(lambda: ScriptedOrigin(respond))
    results: list[httpx.Response] = []
    with server as s:
        t = threading.Thread(
            target=lambda: results.append(httpx.get(s.url + "/slow", trust_env=False, timeout=30))
        )
        t.start()
        eventually(lambda: s.call(lambda: len(s.app.requests)), every=0.01,
                   what="the server to have the request")  # fmt: skip
    # leaving the block stopped the server while the request was in progress
    t.join(30)
    assert results[0].status_code == 200
    assert results[0].content == b"late but whole"
    assert results[0].headers["connection"] == "close"


def test_a_big_answer_arrives_whole_to_a_slow_reader() -> None:
    body = bytes(range(256)) * 40_000  # ~10 MB: far past the transport's high-water mark

    async def respond(req: Request) -> Response:
        return Response(200, [("Content-Type", "application/octet-stream")], body)

    with (
        running(lambda: ScriptedOrigin(respond)) as server,
        httpx.Client(trust_env=False, timeout=10) as client,
    ):
        with client.stream("GET", server.url + "/big") as r:
            got = bytearray()
            for chunk in r.iter_bytes(65536):
                got += chunk
                time.sleep(0.0005)  # a slow reader: the server must wait, not buffer or fail
        assert bytes(got) == body
        assert client.get(server.url + "/again").status_code == 200
