"""Issue 14: a hop failure is not an endpoint failure, end to end with real SR processes.

Two SRs run as processes (`serve`, one worker each) on loopback: the ingress SR A with the
egress hop on, and the egress SR B, behind which the only endpoint lives. A load of GETs
(about 500 requests/s over keep-alive connections) goes to A; B is killed with SIGKILL in the
middle, then started again on its port. The endpoint never stops, so no GET may fail: A must
send the requests in flight and the next ones straight to the endpoint within 100 ms, without
ejecting it, and go through B again once B is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flame.sfr.models import ForwardingTable, Route
from flame.sfr.router import RouterConfig
from flame.sfr.router.subscriber import save_table_file

from .helpers import Client

pytestmark = pytest.mark.asyncio

FQDN = "vod.example"
A, B = "sr-a", "sr-b"
LOOPBACK = "127.0.0.1"
RATE = 500.0  # requests per second, over all connections
CONNECTIONS = 16

RUNNER = """
import json, logging, sys
from flame.sfr.router import RouterConfig, serve
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
serve(RouterConfig.from_dict(json.loads(sys.argv[1])), on_ready=lambda h, p: print("READY", p, flush=True))
"""


async def start_sr(config: RouterConfig, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER,
            json.dumps(config.to_dict()),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"READY "), (line, log.read_text())
    return proc, int(line.split()[1])


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()


def table_file(path: Path, sr: str, route: Route) -> str:
    save_table_file(path, ForwardingTable(sr=sr, version=1, routes={FQDN: (route,)}))
    return str(path)


@dataclass
class Load:
    """What the clients saw: (time sent, time answered, status or error, SRs in Via)."""

    results: list[tuple[float, float, str, int]] = field(default_factory=list)

    def failed(self) -> list[tuple[float, float, str, int]]:
        return [r for r in self.results if r[2] != "200"]


async def drive(port: int, load: Load, stop_at: asyncio.Event) -> None:
    """GETs at RATE per second over CONNECTIONS keep-alive connections (each waits for its
    answer before taking the next slot, so a stall shows as latency, not as lost requests)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    slot = 0

    async def connection(n: int) -> None:
        nonlocal slot
        c = await Client.connect(port)
        try:
            while not stop_at.is_set():
                due = start + slot / RATE
                slot += 1
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                sent = loop.time()
                try:
                    resp = await c.get(f"/seg/{n}/{slot}", host=FQDN)
                except (OSError, EOFError, TimeoutError) as exc:
                    load.results.append((sent, loop.time(), type(exc).__name__, 0))
                    await c.close()
                    c = await Client.connect(port)
                    continue
                via = resp.header("via") or ""
                load.results.append((sent, loop.time(), str(resp.status), via.count(",")))
        finally:
            await c.close()

    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))


@pytest.mark.slow
async def test_egress_sr_killed_under_load_fails_no_idempotent_request(
    upstreams, tmp_path: Path
) -> None:
    endpoint = (await upstreams("e1")).endpoint()
    log = tmp_path / "srs.log"
    b_config = RouterConfig(
        sr_id=B,
        port=0,
        workers=1,
        table_file=table_file(
            tmp_path / "b.json",
            B,
            Route(endpoint, egress_sr=B, cost=0.0, latency_ms=0.0, path=(B,)),
        ),
    )
    b, b_port = await start_sr(b_config, log)
    a_config = RouterConfig(
        sr_id=A,
        port=0,
        workers=1,
        egress_hop=True,
        egress_port=b_port,
        table_file=table_file(
            tmp_path / "a.json",
            A,
            Route(
                endpoint,
                egress_sr=B,
                cost=1.0,
                latency_ms=0.0,
                path=(A, B),
                egress_address=LOOPBACK,
            ),
        ),
    )
    a, a_port = await start_sr(a_config, log)
    procs = [a, b]
    load = Load()
    stop_at = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        driving = asyncio.create_task(drive(a_port, load, stop_at))
        await asyncio.sleep(1.5)
        killed_at = loop.time()
        b.send_signal(signal.SIGKILL)
        await b.wait()
        await asyncio.sleep(0.7)  # as long as `flame up` takes to restart an SR
        b2, _ = await start_sr(RouterConfig.from_dict({**b_config.to_dict(), "port": b_port}), log)
        procs.append(b2)
        restarted_at = loop.time()
        await asyncio.sleep(2.0)  # past the hop's back-off: through B again
        stop_at.set()
        await asyncio.wait_for(driving, 15)
        c = await Client.connect(a_port)
        try:
            status = (await c.get("/.flame/status", host="_flame")).json()
        finally:
            await c.close()
    finally:
        stop_at.set()
        for proc in procs:
            await stop(proc)
    results = load.results
    assert len(results) > 0.7 * RATE * 4, len(results)  # the load was there
    assert load.failed() == [], (load.failed()[:10], log.read_text()[-3000:])
    # Before the kill every request crossed both SRs.
    before = [r for r in results if r[1] < killed_at]
    assert before
    assert all(r[3] == 1 for r in before)
    # Straight to the endpoint within 100 ms of the kill: nothing sent later waited longer.
    after_kill = [r for r in results if killed_at <= r[0] < restarted_at]
    assert after_kill
    assert any(r[3] == 0 for r in after_kill)
    first_direct = min(r[1] for r in results if r[3] == 0)
    assert first_direct - killed_at < 0.1, first_direct - killed_at
    # No request waited for a time-out: the shortest one (upstream connect) is 3 s. A loaded
    # CI machine has taken 0.53 s to retry one request cut by the kill.
    assert max(r[1] - r[0] for r in after_kill) < 1.5
    # Through B again once it is back (and its back-off passed).
    assert any(r[3] == 1 for r in results if r[0] > restarted_at + 1.2)
    # The endpoint was never blamed; the hop was.
    assert status["ejected"] == {}
    assert status["ejections"] == 0
    assert status["egress_hops"]["failures"] >= 1
