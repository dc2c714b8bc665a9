"""The origin SF over real HTTP: types, validators, ranges, HEAD, 304, errors, keep-alive, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from eventually import eventually_async
from flame.common.ports import free_port
from flame.media.origin import Origin

from .conftest import Stream
from .helpers import Proc, ServerThread, raw_exchange, running, split_responses

SEG = "/hls/360p/seg_001.ts"


def test_playlists_and_segments_have_their_types_and_cache_lifetimes(
    origin: ServerThread, stream: Stream, http: httpx.Client
) -> None:
    r = http.get(origin.url + "/hls/master.m3u8")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "public, max-age=2"
    assert r.content == (stream.path / "master.m3u8").read_bytes()
    r = http.get(origin.url + SEG)
    assert r.status_code == 200
    assert r.headers["content-type"] == "video/mp2t"
    assert "max-age=31536000" in r.headers["cache-control"]
    assert r.headers["accept-ranges"] == "bytes"
    assert r.content == (stream.path / "360p" / "seg_001.ts").read_bytes()
    assert r.headers["etag"].startswith('"')
    assert r.headers["last-modified"].endswith("GMT")


def test_head_sends_the_length_but_no_body(origin: ServerThread, stream: Stream) -> None:
    size = (stream.path / "360p" / "seg_001.ts").stat().st_size
    # raw bytes: a client library would hide a body sent by mistake
    data = raw_exchange(
        origin.port, f"HEAD {SEG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {size}".encode() in head
    assert rest == b""


def test_byte_ranges(origin: ServerThread, stream: Stream, http: httpx.Client) -> None:
    body = (stream.path / "360p" / "seg_001.ts").read_bytes()
    size = len(body)
    cases = {
        "bytes=0-187": (206, body[:188], f"bytes 0-187/{size}"),
        "bytes=-188": (206, body[-188:], f"bytes {size - 188}-{size - 1}/{size}"),
        f"bytes={size - 10}-": (206, body[-10:], f"bytes {size - 10}-{size - 1}/{size}"),
        f"bytes=100-{size + 500}": (206, body[100:], f"bytes 100-{size - 1}/{size}"),
        f"bytes={size}-": (416, None, f"bytes */{size}"),
        "bytes=9-3": (200, body, None),  # invalid: ignored
        "bytes=0-1,5-6": (200, body, None),  # several: the whole segment
    }
    for header, (status, content, crange) in cases.items():
        r = http.get(origin.url + SEG, headers={"Range": header})
        assert r.status_code == status, header
        if content is not None:
            assert r.content == content, header
        else:
            assert r.json()["error"] == "range_not_satisfiable"
        assert r.headers.get("content-range") == crange, header


def test_conditional_requests(origin: ServerThread, http: httpx.Client) -> None:
    first = http.get(origin.url + SEG)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    r = http.get(origin.url + SEG, headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    r = http.get(origin.url + SEG, headers={"If-None-Match": f'"other", W/{etag}'})
    assert r.status_code == 304
    r = http.get(origin.url + SEG, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200
    assert r.content == first.content
    r = http.get(origin.url + SEG, headers={"If-Modified-Since": modified})
    assert r.status_code == 304
    r = http.get(origin.url + SEG, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status_code == 200
    # If-Range: the range only while the ETag still matches
    r = http.get(origin.url + SEG, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206
    assert r.content == first.content[:10]
    r = http.get(origin.url + SEG, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert r.status_code == 200
    assert r.content == first.content


def test_a_changed_file_gets_a_new_etag(
    origin: ServerThread, files_dir: Path, http: httpx.Client
) -> None:
    first = http.get(origin.url + "/files/hello.txt")
    assert first.content == b"hello, flame\n"
    (files_dir / "hello.txt").write_bytes(b"changed\n")
    second = http.get(origin.url + "/files/hello.txt")
    assert second.content == b"changed\n"
    assert second.headers["etag"] != first.headers["etag"]


@pytest.mark.parametrize(
    "target",
    [
        "/hls/../../../../etc/passwd",
        "/hls/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/files/..%2f..%2f..%2fetc%2fpasswd",
        "/files/%5c..%5cx",
        "/files/a%00b",
    ],
)
def test_path_traversal_is_refused(origin: ServerThread, target: str) -> None:
    data = raw_exchange(
        origin.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    [(status, headers, body)] = split_responses(data)
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "path_refused"
    assert b"root:" not in data


def test_a_symlink_out_of_the_directory_is_refused(
    origin: ServerThread, files_dir: Path, tmp_path: Path, http: httpx.Client
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    os.symlink(secret, files_dir / "link.txt")
    r = http.get(origin.url + "/files/link.txt")
    assert r.status_code == 403
    assert "do not serve" not in r.text


def test_unknown_paths_and_methods_are_json_errors(
    origin: ServerThread, http: httpx.Client
) -> None:
    for path in ("/nothing", "/hls/nope.ts", "/files/"):
        r = http.get(origin.url + path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"
        assert "max-age" in r.headers["cache-control"]  # caches may keep a 404 briefly
    r = http.post(origin.url + SEG, content=b"x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"] == "method_not_allowed"


def test_empty_file_and_its_ranges(origin: ServerThread, http: httpx.Client) -> None:
    r = http.get(origin.url + "/files/empty.bin", headers={"Range": "bytes=0-10"})
    assert r.status_code == 200
    assert r.content == b""


def test_health_and_metrics(origin: ServerThread, http: httpx.Client) -> None:
    assert http.get(origin.url + "/health").json()["status"] == "ok"
    before = http.get(origin.url + "/metrics").json()
    body = http.get(origin.url + SEG).content
    after = http.get(origin.url + "/metrics").json()
    assert after["requests"] == before["requests"] + 2  # the segment and this /metrics
    assert after["bytes"] - before["bytes"] >= len(body)
    assert after["statuses"]["2xx"] >= 3


def test_keep_alive_and_pipelining_answer_in_order(origin: ServerThread) -> None:
    reqs = b"".join(
        f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for p in ("/files/hello.txt", "/nothing", "/health", "/files/blob.bin")
    )
    data = raw_exchange(
        origin.port, reqs + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    got = split_responses(data)
    assert [s for s, _, _ in got] == [200, 404, 200, 200, 200]
    assert got[0][2] == b"hello, flame\n"
    assert len(got[3][2]) == 10240
    assert got[4][1]["connection"] == "close"


def test_http10_closes_after_the_answer(origin: ServerThread) -> None:
    data = raw_exchange(origin.port, b"GET /health HTTP/1.0\r\n\r\n")
    [(status, headers, _)] = split_responses(data)
    assert status == 200
    assert headers["connection"] == "close"


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_json_and_a_close(origin: ServerThread, garbage: bytes) -> None:
    data = raw_exchange(origin.port, garbage)
    [(status, headers, body)] = split_responses(data)
    assert status == 400
    assert json.loads(body)["error"] in {"bad_request", "bad_target"}
    assert headers["connection"] == "close"


def test_too_many_headers_is_431(origin: ServerThread) -> None:
    head = "".join(f"X-H{i}: v\r\n" for i in range(150))
    data = raw_exchange(origin.port, f"GET /health HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    [(status, _, body)] = split_responses(data)
    assert status == 431
    assert json.loads(body)["error"] == "too_many_headers"


def test_delay_applies_to_media_not_to_health(stream: Stream, http: httpx.Client) -> None:
    # Ordering, not a wall-clock bound: /health asked after a segment is answered before it
    # (the segment waits 1 s; a health check that waited too would come second).
    finished: list[str] = []

    async def get(client: httpx.AsyncClient, url: str, name: str) -> int:
        status = (await client.get(url)).status_code
        finished.append(name)
        return status

    async def both(base: str) -> list[int]:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            segment = asyncio.ensure_future(get(client, base + SEG, "segment"))
            # the origin holds the segment's request before /health is asked
            await eventually_async(lambda: slow.call(lambda: slow.app.requests) == 1, every=0.01)
            return [await get(client, base + "/health", "health"), await segment]

    with running(lambda: Origin({"/hls": stream.path}, delay_ms=1000)) as slow:
        started = time.monotonic()
        assert asyncio.run(both(slow.url)) == [200, 200]
        assert time.monotonic() - started >= 1.0  # the delay is applied to media
        assert finished == ["health", "segment"]


def test_the_command_reads_flame_port_and_stops_on_sigterm(stream: Stream, tmp_path: Path) -> None:
    port = free_port()
    proc = Proc(
        "flame.media.origin",
        ["--media-dir", str(stream.root), "--delay-ms", "20"],
        {"FLAME_PORT": str(port), "FLAME_SFE": "origin-metro"},
        tmp_path / "origin.log",
    )
    try:
        proc.wait_healthy(f"http://127.0.0.1:{port}")
        r = httpx.get(f"http://127.0.0.1:{port}/hls/master.m3u8", trust_env=False)
        assert r.status_code == 200
        assert r.text.startswith("#EXTM3U")
        assert r.headers["x-flame-sfe"] == "origin-metro"
    finally:
        code = proc.stop()
    assert code == 0, (tmp_path / "origin.log").read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)


def test_the_command_refuses_a_bad_port(tmp_path: Path) -> None:
    proc = Proc("flame.media.origin", ["--no-hls"], {"FLAME_PORT": "eighty"}, tmp_path / "o.log")
    assert proc.popen.wait(30) == 1
    proc.stop()
    text = (tmp_path / "o.log").read_text()
    assert "FLAME_PORT='eighty' is not a port number" in text
    assert "Traceback" not in text


def test_a_request_with_connection_close_is_the_last_one(origin: ServerThread) -> None:
    data = raw_exchange(
        origin.port,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /files/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    [(status, headers, _)] = split_responses(data)
    assert status == 200
    assert headers["connection"] == "close"


def test_an_endless_head_is_cut_off_with_431(origin: ServerThread) -> None:
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    data = raw_exchange(origin.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + filler * 100)
    [(status, headers, body)] = split_responses(data)  # answered without the head's end
    assert status == 431
    assert json.loads(body)["error"] == "head_too_large"
    assert headers["connection"] == "close"
