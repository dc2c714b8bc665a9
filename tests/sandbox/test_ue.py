"""The UE load generator against real HTTP servers on loopback: open-loop rate, latency
percentiles, errors counted, bad options refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flame.sandbox.ue import LoadSpec, Second, percentile, run_load


@contextlib.asynccontextmanager
async def server(
    status: int = 200, delay: float = 0.0, body: bytes = b"ok", ctype: str = "text/plain"
) -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                host = next(
                    v for k, _, v in (x.partition(": ") for x in lines) if k.lower() == "host"
                )
                seen.append(f"{host} {lines[0].split()[1]}")
                if delay:
                    await asyncio.sleep(delay)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], seen
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.asyncio
async def test_rate_paths_host_and_percentiles() -> None:
    async with server(delay=0.01) as (port, seen):
        spec = LoadSpec(f"http://127.0.0.1:{port}", "vod.example", 100, 1.0, ("/a", "/b"))
        seconds: list[tuple[int, Second]] = []
        report = await run_load(spec, on_second=lambda t, s: seconds.append((t, s)))
    assert report.requests == 100
    assert report.failed == 0
    assert report.statuses == {200: 100}
    # Open loop: the schedule sets the pace (the last request is due at 0.99 s). The upper bound
    # only catches a generator that falls far behind: ~1.05 s measured, 10x headroom for load.
    assert 0.99 <= report.elapsed_s < 10.0
    assert seen.count("vod.example /a") == 50
    assert seen.count("vod.example /b") == 50
    summary = report.as_dict()
    assert summary["latency_ms"]["p50"] >= 10.0
    assert (
        summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    )
    assert sum(s.requests for _, s in seconds) == 100


@pytest.mark.asyncio
async def test_server_errors_and_refused_connections_count_as_failures() -> None:
    async with server(status=503) as (port, _):
        report = await run_load(LoadSpec(f"http://127.0.0.1:{port}", "x", 20, 0.5))
    assert report.failed == 10
    assert report.errors == {"HTTP 503": 10}
    async with server() as (port, _):
        pass  # closed: nothing listens on this port any more
    report = await run_load(LoadSpec(f"http://127.0.0.1:{port}", "x", 20, 0.5))
    assert report.failed == 10
    assert "ConnectError" in report.errors


@pytest.mark.asyncio
async def test_client_errors_count_as_failures_with_the_routers_reason() -> None:
    """Issue 14 item 9: a 404 counted as success, and an unknown FQDN showed only as '502'."""
    async with server(status=404) as (port, _):
        report = await run_load(LoadSpec(f"http://127.0.0.1:{port}", "x", 20, 0.5))
    assert report.errors == {"HTTP 404": 10}
    unknown = b'{"error": "unknown_fqdn", "message": "no route", "fqdn": "x"}'
    async with server(status=502, body=unknown, ctype="application/json") as (port, _):
        report = await run_load(LoadSpec(f"http://127.0.0.1:{port}", "x", 20, 0.5))
    assert report.errors == {"HTTP 502 unknown_fqdn": 10}


@pytest.mark.asyncio
async def test_in_flight_bound_skips_instead_of_queueing() -> None:
    async with server(delay=1.0) as (port, _):
        spec = LoadSpec(f"http://127.0.0.1:{port}", "x", 50, 0.5, max_in_flight=5)
        report = await run_load(spec)
    assert report.requests == 5
    assert report.skipped == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rps": 0}, "--rps"),
        ({"rps": float("nan")}, "--rps"),
        ({"duration_s": -1}, "--duration"),
        ({"paths": ("segment.ts",)}, "--path"),
    ],
)
def test_bad_options_say_which(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "base_url": "http://127.0.0.1:1",
        "fqdn": "x",
        "rps": 1.0,
        "duration_s": 1.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        LoadSpec(**args)  # type: ignore[arg-type]


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1), st.floats(0.1, 100))
def test_percentile_is_an_element_and_monotonic(values: list[float], pct: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, pct)
    assert p is not None
    assert any(abs(p - round(v, 3)) < 1e-9 for v in ordered)
    assert percentile(ordered, 100) == round(ordered[-1], 3)
    higher = percentile(ordered, min(100.0, pct + 10))
    assert higher is not None
    assert higher >= p
