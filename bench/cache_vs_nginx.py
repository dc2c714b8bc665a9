"""Benchmark: the edge cache SF (`flame.media.cache`) against nginx `proxy_cache`, cache hits.

Both sides sit in front of the same origin (our `flame.media.origin`, one process) serving the
HLS test stream, are warmed until every segment is a hit, and then `wrk` (keep-alive, one
thread, N connections, a Lua script cycling over the same 8 segments, ~50-200 KB each) drives
each in turn, A B C A B C, best of the rounds. Like for like: one process / one nginx worker,
nginx's cache on disk (the page cache holds it: the same RAM our cache uses), run twice, with
`sendfile on` and `off` (on this loaded 2-core machine `off` is often faster), and the ratio is
taken against the faster nginx. The origin's request count is checked before and after to
prove every measured request was a hit on both sides. Printed: hits/s, p50 and the server's CPU time per hit (all
its processes, from /proc: less sensitive than hits/s to what else shares the cores) per side,
and the ratio of hits/s cache/nginx (goal >= 0.8).

    .venv/bin/python bench/cache_vs_nginx.py            # 3 rounds of 5 s, 32 connections
    .venv/bin/python bench/cache_vs_nginx.py --quick    # 1 round of 2 s (CI smoke run)

Installs nginx and wrk with apt-get when missing. Everything runs on 127.0.0.1 in a
temporary directory and is stopped at the end, also on failure. The last line printed is one
JSON object with the figures; the exit status is 0 when the run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
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
  sendfile {sendfile};
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/tmp_body;
  proxy_temp_path {dir}/tmp_proxy;
  fastcgi_temp_path {dir}/tmp_fastcgi;
  uwsgi_temp_path {dir}/tmp_uwsgi;
  scgi_temp_path {dir}/tmp_scgi;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=edge:10m max_size=1g inactive=1h;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""

LUA = """
local paths = {{{paths}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
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


def wrk(wrk_exe: str, url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [wrk_exe, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
         url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50_ms = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    mb = re.search(r"Transfer/sec:\s+([\d.]+)(KB|MB|GB)", out)
    mbs = float(mb.group(1)) * {"KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[mb.group(2)] if mb else 0.0
    return {"rps": rps, "p50_ms": p50_ms, "MB_s": mbs,
            "non_2xx": float(errors.group(1)) if errors else 0.0}  # fmt: skip


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children (nginx's worker), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def ensure_tools() -> tuple[str, str] | None:
    """nginx and wrk, installed from Debian's packages when missing (as bench/sr_vs_nginx.py)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ([], ["nginx", "wrk"]):
        if attempt:
            install = ["apt-get", "install", "-y", "--no-install-recommends", *attempt]
            if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
                subprocess.run(install, env=env, capture_output=True, check=False)
        nginx, wrk_exe = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
        if Path(nginx).exists() and wrk_exe:
            return nginx, wrk_exe
    return None


def origin_requests(url: str) -> int:
    return int(httpx.get(url + "/metrics", trust_env=False).json()["requests"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    rounds, seconds = (1, 2.0) if args.quick else (3, 5.0)
    tools = ensure_tools()
    if tools is None:
        print("needs nginx and wrk: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    nginx, wrk_exe = tools
    tmp = Path(tempfile.mkdtemp(prefix="cache-vs-nginx-"))
    procs: list[subprocess.Popen[bytes]] = []

    pids: dict[str, int] = {}

    def start(argv: list[str], name: str) -> None:
        procs.append(
            subprocess.Popen(
                argv, stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT
            )
        )
        pids[name] = procs[-1].pid

    try:
        stream = ensure_stream(tmp / "media", StreamSpec())
        segs = sorted(f"/hls/{p.parent.name}/{p.name}" for p in stream.glob("*/seg_*.ts"))
        nginxes = {"nginx": "on", "nginx-nosendfile": "off"}
        ports = {name: free_port() for name in ("origin", "cache", *nginxes)}
        origin_url = f"http://127.0.0.1:{ports['origin']}"
        user = "user root;\n" if os.geteuid() == 0 else ""
        script = tmp / "segments.lua"
        script.write_text(LUA.format(paths=", ".join(f'"{p}"' for p in segs)))
        py = [sys.executable, "-m"]
        start([*py, "flame.media.origin", "--media-dir", str(tmp / "media"), "--port",
               str(ports["origin"])], "origin")  # fmt: skip
        start([*py, "flame.media.cache", "--origin", origin_url, "--port", str(ports["cache"]),
               "--cache-bytes", "256MB", "--log-level", "warning"], "cache")  # fmt: skip
        for name, sendfile in nginxes.items():
            home = tmp / name
            home.mkdir()
            conf = home / "nginx.conf"
            conf.write_text(NGINX_CONF.format(user=user, dir=home, port=ports[name],
                                              origin=ports["origin"], sendfile=sendfile))  # fmt: skip
            start([nginx, "-c", str(conf), "-p", str(home)], name)
        sides = {side: f"http://127.0.0.1:{ports[side]}" for side in ("cache", *nginxes)}
        wait_http(origin_url + "/health")
        for url in sides.values():
            wait_http(url + "/hls/master.m3u8")
            for _ in range(3):  # nginx caches after its first fetch: warm twice, check the third
                labels = [httpx.get(url + p, trust_env=False).headers.get("x-cache") for p in segs]
        assert set(labels) == {"HIT"}, labels
        seg_bytes = [len(httpx.get(sides["cache"] + p, trust_env=False).content) for p in segs]
        before = origin_requests(origin_url)
        results: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for side, url in sides.items():
                cpu = tree_cpu_s(pids[side])
                r = wrk(wrk_exe, url, script, args.connections, seconds)
                r["cpu_us"] = (tree_cpu_s(pids[side]) - cpu) / (r["rps"] * seconds) * 1e6
                best = results.get(side)
                if best is None or r["rps"] > best["rps"]:
                    results[side] = r
        origin_fetches = origin_requests(origin_url) - before - 1  # less our own /metrics
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

    peer = max(nginxes, key=lambda name: results[name]["rps"])
    ratio = results["cache"]["rps"] / results[peer]["rps"]
    print(f"# {len(segs)} segments, {min(seg_bytes)}-{max(seg_bytes)} bytes; wrk -t1 "
          f"-c{args.connections} -d{seconds:g}s, best of {rounds}; 1 process / 1 worker each")  # fmt: skip
    print(f"{'side':17} {'hits/s':>9} {'MB/s':>7} {'p50 ms':>7} {'CPU us/hit':>10} {'non-2xx':>7}")
    for side, r in results.items():
        print(f"{side:17} {r['rps']:9.0f} {r['MB_s']:7.1f} {r['p50_ms']:7.2f} "
              f"{r['cpu_us']:10.1f} {r['non_2xx']:7.0f}")  # fmt: skip
    print(
        f"# ratio cache/{peer} (the faster nginx) hits/s: {ratio:.2f}x (goal >= 0.8x); origin "
        f"requests during the runs: {origin_fetches} (every measured request was a hit)"
    )
    doc = {"results": results, "ratio": round(ratio, 3), "peer": peer, "goal": 0.8,
           "origin_requests_during_runs": origin_fetches, "segment_bytes": seg_bytes}  # fmt: skip
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
