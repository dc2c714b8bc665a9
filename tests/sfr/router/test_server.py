"""The SR as a server (SFR-1): worker processes sharing one port, graceful stop on SIGTERM.

`serve` runs in a subprocess with 2 workers (SO_REUSEPORT) and a table file; requests over
many connections reach both workers; a request in flight when SIGTERM arrives still completes,
then the server exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import pytest

from flame.sfr.router import RouterConfig
from flame.sfr.router.server import reuse_port_supported
from flame.sfr.router.subscriber import save_table_file

from .helpers import SR, Client, UpRequest, Upstream, table

pytestmark = pytest.mark.asyncio

RUNNER = """
import json, sys
from flame.sfr.router import RouterConfig, serve
config = RouterConfig.from_dict(json.loads(sys.argv[1]))
serve(config, on_ready=lambda host, port: print("READY", port, flush=True))
print("STOPPED", flush=True)
"""


async def slow_when_asked(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
    if req.target.startswith("/slow"):
        await asyncio.sleep(0.6)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return True


@pytest.mark.skipif(not reuse_port_supported(), reason="SO_REUSEPORT is not available")
async def test_two_workers_share_the_port_and_stop_gracefully(upstreams, tmp_path: Path) -> None:
    up = await upstreams("a", slow_when_asked)
    table_file = tmp_path / "table.json"
    save_table_file(table_file, table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    config = RouterConfig(sr_id=SR, port=0, workers=2, table_file=str(table_file))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, json.dumps(config.to_dict()), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        port = int(line.split()[1])
        pids = set()
        for _ in range(40):
            c = await Client.connect(port)
            assert (await c.get("/")).body == b"ok"
            pids.add((await c.get("/.flame/status", host="_flame")).json()["pid"])
            await c.close()
        assert len(pids) == 2  # both workers took connections
        # Identical concurrent GETs on connections spread over both workers: one fetch.
        clients = [await Client.connect(port) for _ in range(20)]
        answers = await asyncio.gather(*(c.get("/slow-shared") for c in clients))
        assert all(a.body == b"ok" for a in answers)
        assert [r.target for r in up.requests].count("/slow-shared") == 1
        for c in clients:
            await c.close()
        # A request in flight when SIGTERM arrives is answered before the worker exits.
        slow = await Client.connect(port)
        pending = asyncio.create_task(slow.get("/slow"))
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        resp = await asyncio.wait_for(pending, 10)
        assert (resp.status, resp.body) == (200, b"ok")
        assert resp.header("connection") == "close"
        await slow.close()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert (await proc.stdout.read()).startswith(b"STOPPED")
        with pytest.raises(ConnectionRefusedError):
            await Client.connect(port)  # nobody listens any more
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()


JSON_RUNNER = """
import json, sys
from flame.common.logging import setup_logging
from flame.sfr.router import RouterConfig, serve
setup_logging("INFO", "json")
config = RouterConfig.from_dict(json.loads(sys.argv[1]))
serve(config, on_ready=lambda host, port: print("READY", port, flush=True))
"""


@pytest.mark.skipif(not reuse_port_supported(), reason="SO_REUSEPORT is not available")
async def test_workers_log_as_their_parent_was_set_up(upstreams, tmp_path: Path) -> None:
    """Issue 18 item 5: `FLAME_LOG_FORMAT=json` (or the level, or redaction) reaches the SR's
    spawned worker processes, which used to call logging.basicConfig and log plain text."""
    up = await upstreams("a", slow_when_asked)
    table_file = tmp_path / "table.json"
    save_table_file(table_file, table(1, {"vod.example": [(up.endpoint(), 1.0)]}))
    config = RouterConfig(sr_id=SR, port=0, workers=2, table_file=str(table_file))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        JSON_RUNNER,
        json.dumps(config.to_dict()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)  # both pipes to EOF
        err = stderr.decode()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
    records = [json.loads(x) for x in err.splitlines() if x.strip()]  # every line is JSON
    stopping = [r for r in records if "stopping" in r["msg"] and "worker" in r["msg"]]
    assert {r["msg"].split("worker ")[1].split(":")[0] for r in stopping} == {"0", "1"}
    assert all(r["logger"].startswith("flame.sfr.router") for r in stopping)
