"""Benchmark: WebSocket through the FLAME SR against nginx as WebSocket reverse proxies.

One WebSocket echo endpoint (the `websockets` library, in its own process) behind both our SR
and Debian's nginx (`proxy_http_version 1.1` + `Upgrade`/`Connection` headers, the documented
WebSocket set-up), 2 workers each. A client process (also `websockets`) runs, per proxy in
turn (A B A B):

* ping-pong: C connections, each sending a 64-byte message and waiting for its echo, for D
  seconds: round trips/s, latency p50/p99, and the proxy's CPU time per round trip (all its
  processes, from /proc; steadier than rates on a shared machine);
* bulk: one connection streaming 64 KiB messages, echoed back: MB/s each way, and CPU per MB.

Both proxies relay frames without looking into them, so the endpoint and the client cost the
same on both sides; the ratios compare the proxies.

    .venv/bin/python bench/sr_websocket_vs_nginx.py           # 2 rounds of 8 s
    .venv/bin/python bench/sr_websocket_vs_nginx.py --quick   # 1 round of 3 s (CI, < 60 s)

The last line printed is one JSON object with the figures; exit status 0 when the run
completed, whether or not the targets (>= 0.7x nginx's rate) were met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sr_vs_nginx import (
    HOST,
    REPO,
    Processes,
    ensure_tools,
    free_port,
    nginx_conf,
    nginx_version,
    start_nginx,
    start_sr,
    terminate_on_signals,
    tree_cpu_seconds,
    wait_port,
)

ECHO = """
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None, compression=None):
        await asyncio.Future()
asyncio.run(main())
"""

CLIENT = """
import asyncio, json, sys, time
from websockets.asyncio.client import connect
port, mode, conns, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
URI = "ws://%s/echo" % sys.argv[5]
async def pingpong(lat, stop):
    async with connect(URI, host="127.0.0.1", port=port, compression=None) as ws:
        msg = b"x" * 64
        while time.monotonic() < stop:
            t = time.perf_counter()
            await ws.send(msg)
            await ws.recv()
            lat.append(time.perf_counter() - t)
async def bulk(stop, moved):
    async with connect(URI, host="127.0.0.1", port=port, compression=None, max_size=None) as ws:
        msg = b"y" * 65536
        async def reader():
            while True:
                moved[0] += len(await ws.recv())
        task = asyncio.create_task(reader())
        while time.monotonic() < stop:
            await ws.send(msg)
            while moved[0] + 8 * 65536 < moved[1] + 65536:  # at most 8 in flight
                await asyncio.sleep(0)
            moved[1] += 65536
        task.cancel()
async def main():
    print("GO", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    stop = start + seconds
    if mode == "pingpong":
        lat = []
        await asyncio.gather(*(pingpong(lat, stop) for _ in range(conns)))
        lat.sort()
        out = {"count": len(lat), "seconds": time.monotonic() - start,
               "p50_ms": 1000 * lat[len(lat) // 2] if lat else 0,
               "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else 0}
    else:
        moved = [0, 0]
        await bulk(stop, moved)
        out = {"count": moved[0], "seconds": time.monotonic() - start}
    print(json.dumps(out), flush=True)
asyncio.run(main())
"""

NGINX_WS = """
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 300s;
      proxy_buffering off;
    }}
  }}
"""


def run_client(
    port: int, mode: str, conns: int, seconds: float, proxy_pid: int, tmp: Path
) -> dict[str, Any]:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), mode, str(conns), str(seconds), HOST],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp / "client.log").open("ab"),
        env=env,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"GO":
        raise RuntimeError(f"the client did not start; see {tmp / 'client.log'}")
    cpu0 = tree_cpu_seconds(proxy_pid)
    proc.stdin.write(b"\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    cpu = tree_cpu_seconds(proxy_pid) - cpu0
    proc.wait(timeout=30)
    if not line:
        raise RuntimeError(f"the client failed; see {tmp / 'client.log'}")
    result: dict[str, Any] = json.loads(line)
    result["cpu_s"] = cpu
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s (CI smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    nginx, _ = ensure_tools()
    procs = Processes()
    with terminate_on_signals(), tempfile.TemporaryDirectory(prefix="sr-ws-bench-") as name:
        tmp = Path(name)
        try:
            return run(procs, tmp, nginx, rounds, seconds, args.connections, args.quick)
        finally:
            procs.stop_all()


def run(
    procs: Processes,
    tmp: Path,
    nginx: str,
    rounds: int,
    seconds: float,
    conns: int,
    quick: bool,
) -> int:
    upstream = free_port()
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    procs.start("echo", [sys.executable, "-c", ECHO, str(upstream)], log=tmp / "echo.log", env=env)
    wait_port(upstream)
    nginx_port, sr_port = free_port(), free_port()
    conf = nginx_conf(tmp, "nginx_ws", 2, NGINX_WS.format(port=nginx_port, upstream=upstream))
    sides = {
        "nginx": (start_nginx(procs, nginx, conf, nginx_port, tmp / "nginx.log"), nginx_port),
        "sr": (
            start_sr(
                procs,
                tmp,
                port=sr_port,
                upstream_port=upstream,
                workers=2,
                coalescing=False,
                name="sr",
            ),
            sr_port,
        ),
    }
    print(f"# nginx {nginx_version(nginx)} and the SR, 2 workers each, WebSocket echo upstream")
    print(f"# ping-pong: {conns} connections x 64 B; bulk: 1 connection x 64 KiB; {seconds:g}s")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"pingpong": [], "bulk": []} for s in sides
    }
    for round_no in range(1, rounds + 1):
        for side, (proc, port) in sides.items():
            for mode in ("pingpong", "bulk"):
                r = run_client(
                    port, mode, conns if mode == "pingpong" else 1, seconds, proc.pid, tmp
                )
                results[side][mode].append(r)
                if mode == "pingpong":
                    print(
                        f"round {round_no} {side:6} ping-pong {r['count'] / r['seconds']:9.0f} "
                        f"rt/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                        f"CPU {1e6 * r['cpu_s'] / max(r['count'], 1):6.1f} us/rt",
                        flush=True,
                    )
                else:
                    mb = r["count"] / 1e6
                    print(
                        f"round {round_no} {side:6} bulk      {mb / r['seconds']:9.1f} MB/s "
                        f"echoed  CPU {1e3 * r['cpu_s'] / max(mb, 1e-9):6.2f} ms/MB",
                        flush=True,
                    )
    summary = _summary(results, quick, conns, seconds, rounds)
    print(json.dumps(summary))
    return 0


def _summary(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    quick: bool,
    conns: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    def rate(side: str, mode: str) -> float:
        return statistics.median(r["count"] / r["seconds"] for r in results[side][mode])

    def cpu(side: str, mode: str, unit: float) -> float:
        return statistics.median(
            r["cpu_s"] / max(r["count"] / unit, 1e-9) for r in results[side][mode]
        )

    ratio_rt = rate("sr", "pingpong") / max(rate("nginx", "pingpong"), 1e-9)
    ratio_bulk = rate("sr", "bulk") / max(rate("nginx", "bulk"), 1e-9)
    return {
        "bench": "sr_websocket_vs_nginx",
        "quick": quick,
        "connections": conns,
        "seconds": seconds,
        "rounds": rounds,
        "ours_rt_per_s": round(rate("sr", "pingpong")),
        "peer_rt_per_s": round(rate("nginx", "pingpong")),
        "ratio_rt": round(ratio_rt, 3),
        "ours_cpu_us_per_rt": round(1e6 * cpu("sr", "pingpong", 1), 1),
        "peer_cpu_us_per_rt": round(1e6 * cpu("nginx", "pingpong", 1), 1),
        "ours_bulk_mb_s": round(rate("sr", "bulk") / 1e6, 1),
        "peer_bulk_mb_s": round(rate("nginx", "bulk") / 1e6, 1),
        "ratio_bulk": round(ratio_bulk, 3),
        "ours_cpu_ms_per_mb": round(1e3 * cpu("sr", "bulk", 1e6), 2),
        "peer_cpu_ms_per_mb": round(1e3 * cpu("nginx", "bulk", 1e6), 2),
        "target_ratio": 0.7,
        "targets_met": {"rt": ratio_rt >= 0.7, "bulk": ratio_bulk >= 0.7},
    }


if __name__ == "__main__":
    sys.exit(main())
