"""The netns load generator (issue 13: requests/s through a failing link): every request a user
would wait for is counted, from when it was due; errors, statuses and time-outs are failures;
keep-alive connections are reused. Against a real HTTP server on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable

from flame.common.ports import free_port
from flame.sandbox.netns_load import STARTED, run

Handler = Callable[[bytes], Awaitable[bytes | None]]


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str, list[int]]:
    """A keep-alive HTTP/1.1 server answering each request with `handler(path)` (None: hang
    up). Returns the server, its URL and a list counting requests per connection."""
    per_connection: list[int] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                per_connection[index] += 1
                answer = await handler(head.split(b" ")[1])
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(client, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}", per_connection


def _response(status: int, body: bytes = b"ok") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head + body


def test_every_request_is_counted_and_failures_are_placed_in_time() -> None:
    async def handler(path: bytes) -> bytes | None:
        if path == b"/missing":
            return _response(404, b"no")
        if path == b"/slow":
            await asyncio.sleep(8)  # beyond the client's time-out
        if path == b"/cut":
            return None
        return _response(200, b"x" * 3000)

    async def scenario() -> tuple[dict[str, object], list[int]]:
        server, url, per_connection = await _serve(handler)
        async with server:
            paths = ["/ok", "/ok", "/missing", "/ok", "/cut", "/ok", "/ok", "/slow"]
            result = await run(url, "f.example", paths, rps=80, duration_s=0.5, timeout_s=3.0)
        return result.as_dict(), per_connection

    report, per_connection = asyncio.run(scenario())
    assert report["requests"] == 40  # 80/s for 0.5 s: all of them, nothing skipped
    assert report["skipped"] == 0
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert errors == {"HTTP 404": 5, "ConnectionResetError": 5, "timeout": 5}, errors
    assert report["failed"] == 15
    failures = report["failures"]
    assert isinstance(failures, list)
    assert len(failures) == 15
    assert [f["due_s"] for f in failures] == sorted(f["due_s"] for f in failures)
    assert {round(f["due_s"] / 0.0125) % 8 for f in failures} == {2, 4, 7}  # by schedule slot
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    assert latency["max"] >= 3000  # a time-out is waited for, and counted from when it was due
    # Keep-alive: connections serve several requests (a cut or timed-out one is not reused).
    assert sum(per_connection) == 40
    assert max(per_connection) > 1


def test_a_refused_connection_is_a_failure_not_a_crash() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    report = asyncio.run(run(url, "f.example", ["/"], rps=50, duration_s=0.2)).as_dict()
    assert report["requests"] == 10
    assert report["failed"] == 10
    assert report["errors"] == {"ConnectionRefusedError": 10}


def test_the_command_prints_one_json_report() -> None:
    async def handler(path: bytes) -> bytes | None:
        return _response(200)

    async def scenario() -> tuple[str, str]:
        server, url, _ = await _serve(handler)
        async with server:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "flame.sandbox.netns_load", "--url", url,
                "--fqdn", "f.example", "--path", "/a", "--rps", "100", "--duration", "0.3",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 60)
        return out.decode(), err.decode()

    out, err = asyncio.run(scenario())
    assert STARTED in err
    report = json.loads(out)
    assert report["requests"] == 30
    assert report["failed"] == 0
    assert report["statuses"] == {"200": 30}
