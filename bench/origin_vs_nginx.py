"""Benchmark: the VoD origin and edge cache SFs (`flame.media`) against Debian's nginx.

All three serve the same HLS test stream (generated first, timed) on 127.0.0.1:

- nginx, 1 worker, `sendfile on`, serving the stream directory;
- our origin (`python -m flame.media.origin`, one process);
- our cache (`python -m flame.media.cache`, one process) in front of our origin, warmed so that
  every request is a hit;
- the road not taken: Starlette's StaticFiles under uvicorn (uvloop + httptools, no access
  log), the obvious framework way to write the origin.

wrk (keep-alive, `-t1 -cN -dS`) fetches a small object (the master playlist) and a segment
(~200 KB) from each, A B C A B C, best of the rounds. Then, sequentially on one connection, the
latency the demo depends on: an origin with `--delay-ms` against a cache hit in front of it.

    .venv/bin/python bench/origin_vs_nginx.py            # 2 rounds of 5 s, 32 connections
    .venv/bin/python bench/origin_vs_nginx.py --quick    # 1 round of 2 s

The last line is one JSON object with the figures. Needs nginx and wrk (apt-get install
nginx-light wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from flame.common.ports import free_port  # noqa: E402
from flame.media.hls import StreamSpec, ensure_stream  # noqa: E402

NGINX_CONF = """{user}worker_processes 1;
daemon off;
error_log {dir}/nginx_error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/tmp_body;
  proxy_temp_path {dir}/tmp_proxy;
  fastcgi_temp_path {dir}/tmp_fastcgi;
  uwsgi_temp_path {dir}/tmp_uwsgi;
  scgi_temp_path {dir}/tmp_scgi;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
  server {{
    listen 127.0.0.1:{port};
    location /hls/ {{ alias {stream}/; }}
  }}
}}
"""


STARLETTE = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/hls", StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def wrk(wrk_exe: str, url: str, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [wrk_exe, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50_ms = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50_ms, "non_2xx": float(errors.group(1)) if errors else 0.0}


def sequential_ms(url: str, n: int) -> float:
    with httpx.Client(trust_env=False, timeout=10) as client:
        client.get(url)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            client.get(url).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, default=40.0)
    args = ap.parse_args()
    rounds, seconds = (1, 2.0) if args.quick else (2, 5.0)
    nginx, wrk_exe = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
    if not (Path(nginx).exists() and wrk_exe):
        print("needs nginx and wrk: apt-get install nginx-light wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="origin-vs-nginx-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> None:
        procs.append(
            subprocess.Popen(
                argv, stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT
            )
        )

    try:
        t = time.monotonic()
        stream = ensure_stream(tmp / "media", StreamSpec())
        generated_s = time.monotonic() - t
        ports = {
            name: free_port() for name in ("nginx", "origin", "cache", "starlette", "slow", "edge")
        }
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, dir=tmp, port=ports["nginx"], stream=stream))
        py = [sys.executable, "-m"]
        media = ["--media-dir", str(tmp / "media")]
        start([nginx, "-c", str(conf), "-p", str(tmp)], "nginx")
        start([*py, "flame.media.origin", *media, "--port", str(ports["origin"])], "origin")
        start([*py, "flame.media.origin", *media, "--port", str(ports["slow"]),
               "--delay-ms", str(args.delay_ms)], "slow")  # fmt: skip
        origin_url = f"http://127.0.0.1:{ports['origin']}"
        slow_url = f"http://127.0.0.1:{ports['slow']}"
        start(
            [*py, "flame.media.cache", "--origin", origin_url, "--port", str(ports["cache"])],
            "cache",
        )
        start(
            [*py, "flame.media.cache", "--origin", slow_url, "--port", str(ports["edge"])], "edge"
        )
        start([sys.executable, "-c", STARLETTE, str(stream), str(ports["starlette"])], "starlette")
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/hls/master.m3u8")  # also warms the caches
        seg = "/hls/360p/seg_001.ts"
        for port in (ports["cache"], ports["edge"]):
            httpx.get(f"http://127.0.0.1:{port}{seg}", trust_env=False).raise_for_status()
        seg_bytes = len(
            httpx.get(f"http://127.0.0.1:{ports['origin']}{seg}", trust_env=False).content
        )

        results: dict[str, dict[str, dict[str, float]]] = {}
        for _ in range(rounds):
            for side in ("nginx", "origin", "cache", "starlette"):
                for obj, path in (("playlist", "/hls/master.m3u8"), ("segment", seg)):
                    r = wrk(
                        wrk_exe, f"http://127.0.0.1:{ports[side]}{path}", args.connections, seconds
                    )
                    best = results.setdefault(side, {}).get(obj)
                    if best is None or r["rps"] > best["rps"]:
                        results[side][obj] = r
        latency = {
            "origin_delay_ms": args.delay_ms,
            "origin_p50_ms": sequential_ms(f"{slow_url}{seg}", 30),
            "cache_hit_p50_ms": sequential_ms(f"http://127.0.0.1:{ports['edge']}{seg}", 30),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# HLS stream generated in {generated_s:.2f} s; segment {seg_bytes} bytes")
    print(f"# wrk -t1 -c{args.connections} -d{seconds:g}s, best of {rounds}; 1 process each")
    print(f"{'side':10} {'playlist req/s':>15} {'p50 ms':>8} {'segment req/s':>15} {'p50 ms':>8}")
    for side, objs in results.items():
        pl, sg = objs["playlist"], objs["segment"]
        print(
            f"{side:10} {pl['rps']:15.0f} {pl['p50_ms']:8.2f} {sg['rps']:15.0f} {sg['p50_ms']:8.2f}"
        )
    print(
        f"# sequential GET of the segment, median of 30: origin with --delay-ms "
        f"{args.delay_ms:g}: {latency['origin_p50_ms']:.2f} ms; cache hit in front of it: "
        f"{latency['cache_hit_p50_ms']:.2f} ms"
    )
    print(json.dumps({"generated_s": round(generated_s, 3), "wrk": results, "latency": latency}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
