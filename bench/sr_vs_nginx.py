"""Benchmark: the FLAME service router (SR) against Debian's nginx as reverse proxies.

Scenario 1, throughput: one fast upstream (an nginx serving a 1 KiB file, shared by both
sides), our SR and an nginx reverse proxy with the same number of workers and keep-alive
towards the upstream, both adding the same forwarding headers; `wrk` drives each in turn
(A B A B ...). Our SR runs twice per round: like for like (coalescing off, every request is
forwarded, as nginx does) and in its default configuration (FLIPS coincidental multicast on:
identical GETs in flight at the same time share one upstream fetch). Besides requests/s and
latency, each run reports the proxy's CPU time per request (all its processes, from /proc),
which depends less than requests/s on what else shares the machine's cores.

Scenario 2, coincidental multicast: N clients (500) ask at once for the same uncached 1 MB
object from a slow upstream (an asyncio server sending the body over ~1 s and counting
requests). Our SR streams one fetch to every waiter as it arrives; nginx uses
`proxy_cache` + `proxy_cache_lock` (the others wait for the first response to be cached).
Reported: upstream fetches and time to first byte (p50/p99) per side. The SR's workers share
which of them is fetching what, so clients of every worker join the one fetch.

    .venv/bin/python bench/sr_vs_nginx.py            # 2 rounds of 10 s, 500 clients
    .venv/bin/python bench/sr_vs_nginx.py --quick    # smoke run for CI (< 60 s)

Installs nginx and wrk with apt-get when missing. Everything runs on 127.0.0.1 in a temporary
directory and is stopped at the end, also on failure. The last line printed is one JSON object
with the figures; the exit status is 0 when the run completed, whether or not targets were met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.ports import free_port

REPO = Path(__file__).resolve().parents[1]
HOST = "bench.example"
SMALL_FILE = "index.html"
OBJECT_SIZE = 1024 * 1024
SLOW_SECONDS = 1.0

SR_RUNNER = """
import json, logging, sys
from flame.sfr.router import RouterConfig, serve
logging.basicConfig(level=logging.WARNING)
serve(RouterConfig.from_dict(json.loads(sys.argv[1])), on_ready=lambda h, p: print("READY", p, flush=True))
"""


# -- processes we start, and always stop ------------------------------------------------------------


class Processes:
    """Every process the benchmark starts, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, args: list[str], *, log: Path, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args, stdout=kwargs.pop("stdout", out), stderr=out, start_new_session=True, **kwargs
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the proxy's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        todo.extend(children.get(current, ()))
    return total


# -- tools --------------------------------------------------------------------------------------------


def ensure_tools() -> tuple[str, str]:
    nginx, wrk = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
    if Path(nginx).exists() and wrk:
        return nginx, wrk
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for packages in (["nginx-light", "wrk"], ["nginx", "wrk"]):
        install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
                continue
        nginx, wrk = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
        if Path(nginx).exists() and wrk:
            return nginx, wrk
    raise RuntimeError("cannot install nginx and wrk with apt-get (run as root on Debian)")


def nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().split("/")[-1]


NGINX_COMMON = """
daemon off;
error_log {dir}/{name}_error.log warn;
pid {dir}/{name}.pid;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/{name}_tmp/body;
  proxy_temp_path {dir}/{name}_tmp/proxy;
  fastcgi_temp_path {dir}/{name}_tmp/fastcgi;
  uwsgi_temp_path {dir}/{name}_tmp/uwsgi;
  scgi_temp_path {dir}/{name}_tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{body}
}}
"""


def nginx_conf(path: Path, name: str, workers: int, body: str) -> Path:
    (path / f"{name}_tmp").mkdir(exist_ok=True)
    conf = path / f"{name}.conf"
    # Run as root, nginx's workers would switch to an unprivileged user that cannot read the
    # private temporary directory; keep them as the invoking user.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        user
        + f"worker_processes {workers};\n"
        + NGINX_COMMON.format(dir=path, name=name, body=body)
    )
    return conf


def start_nginx(
    procs: Processes, nginx: str, conf: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    proc = procs.start(conf.stem, [nginx, "-c", str(conf), "-p", str(conf.parent)], log=log)
    wait_port(port)
    return proc


def start_sr(
    procs: Processes,
    tmp: Path,
    *,
    port: int,
    upstream_port: int,
    workers: int,
    coalescing: bool,
    name: str,
) -> subprocess.Popen[bytes]:
    sys.path.insert(0, str(REPO / "src"))
    from flame.sfr.models import Endpoint, ForwardingTable, Route
    from flame.sfr.router.subscriber import save_table_file

    ep = Endpoint(sfe="origin", fqdn=HOST, cluster="bench", host="127.0.0.1", port=upstream_port)
    table = ForwardingTable(
        sr="sr-bench", version=1, routes={HOST: (Route(ep, "sr-bench", 1.0, 1.0, ("sr-bench",)),)}
    )
    table_file = tmp / f"{name}.table.json"
    save_table_file(table_file, table)
    config = {
        "sr_id": "sr-bench",
        "host": "127.0.0.1",
        "port": port,
        "workers": workers,
        "table_file": str(table_file),
        "coalescing": coalescing,
    }
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = procs.start(
        name,
        [sys.executable, "-c", SR_RUNNER, json.dumps(config)],
        log=tmp / f"{name}.log",
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY"):
        raise RuntimeError(f"the SR did not start: {line!r}; see {tmp / (name + '.log')}")
    return proc


# -- scenario 1: wrk ------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float = float("nan")  # the proxy's CPU time per request (all its processes)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(
    wrk: str,
    port: int,
    *,
    threads: int,
    connections: int,
    seconds: float,
    path: str = "/" + SMALL_FILE,
) -> WrkResult:
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m[1])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return WrkResult(rps, p50, p99, requests, errors)


# -- scenario 2: a slow upstream and N simultaneous clients ---------------------------------------------


SLOW_UPSTREAM = """
import asyncio, sys, json, collections
import uvloop
SIZE, SECONDS = int(sys.argv[2]), float(sys.argv[3])
counts = collections.Counter()
BLOCK = bytes(range(256)) * 256

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            target = head.split(b" ", 2)[1].decode()
            if target == "/count":
                body = json.dumps(counts).encode()
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
                await writer.drain()
                continue
            counts[target] += 1
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\nCache-Control: max-age=60\\r\\nContent-Length: %d\\r\\n\\r\\n" % SIZE)
            await writer.drain()
            pieces = SIZE // len(BLOCK)
            for _ in range(pieces):
                writer.write(BLOCK)
                await writer.drain()
                await asyncio.sleep(SECONDS / pieces)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=2048)
    async with server:
        await server.serve_forever()

uvloop.run(main())
"""


@dataclass
class MulticastResult:
    fetches: int
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    total_p50_ms: float
    complete: int
    identical: bool
    errors: list[str] = field(default_factory=list)


async def _multicast_clients(
    port: int, path: str, clients: int
) -> tuple[list[float], list[float], list[bytes | None], list[str]]:
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    conns = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port, limit=1 << 21) for _ in range(clients))
    )
    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    ttfb: list[float] = []
    total: list[float] = []
    digests: list[bytes | None] = []
    errors: list[str] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        start = loop.time()
        writer.write(request)
        try:
            first = await reader.read(1)
            ttfb.append((loop.time() - start) * 1000)
            data = first + await reader.read(-1)
            total.append((loop.time() - start) * 1000)
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or len(body) != OBJECT_SIZE:
                errors.append(f"{head[:40]!r} {len(body)} bytes")
                digests.append(None)
            else:
                digests.append(hashlib.sha256(body).digest())
        except (ConnectionError, OSError) as exc:
            errors.append(repr(exc))
            digests.append(None)
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(r, w)) for r, w in conns]
    await asyncio.sleep(0.2)  # every connection is established and waiting
    go.set()
    await asyncio.gather(*tasks)
    return ttfb, total, digests, errors


def upstream_counts(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            body += s.recv(65536)
    return json.loads(body)


def run_multicast(proxy_port: int, upstream_port: int, path: str, clients: int) -> MulticastResult:
    ttfb, total, digests, errors = asyncio.run(_multicast_clients(proxy_port, path, clients))
    good = [d for d in digests if d is not None]
    return MulticastResult(
        fetches=upstream_counts(upstream_port).get(path, 0),
        ttfb_p50_ms=percentile(ttfb, 50),
        ttfb_p99_ms=percentile(ttfb, 99),
        total_p50_ms=percentile(total, 50),
        complete=len(good),
        identical=len(set(good)) == 1 and len(good) == clients,
        errors=errors[:5],
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- the run ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run for CI (< 60 s)")
    parser.add_argument("--workers", type=int, default=2, help="workers of each proxy (default 2)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--clients", type=int, default=None, help="scenario 2 clients (default 500)"
    )
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 2)
    clients = args.clients or (200 if args.quick else 500)
    warmup = 1.0 if args.quick else 2.0

    nginx, wrk = ensure_tools()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="sr-vs-nginx-"))
    try:
        with terminate_on_signals():
            return run(
                args,
                procs,
                tmp,
                nginx,
                wrk,
                duration=duration,
                rounds=rounds,
                clients=clients,
                warmup=warmup,
            )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    args: argparse.Namespace,
    procs: Processes,
    tmp: Path,
    nginx: str,
    wrk: str,
    *,
    duration: float,
    rounds: int,
    clients: int,
    warmup: float,
) -> int:
    workers = args.workers
    log = tmp / "nginx.log"
    html = tmp / "html"
    html.mkdir()
    (html / SMALL_FILE).write_bytes(b"x" * 1024)
    up_port, px_port, sr_port, src_port = free_port(), free_port(), free_port(), free_port()
    slow_port, px2_port = free_port(), free_port()

    # The shared upstreams.
    upstream = nginx_conf(
        tmp, "upstream", 1, f"  server {{ listen 127.0.0.1:{up_port} backlog=4096; root {html}; }}"
    )
    start_nginx(procs, nginx, upstream, up_port, log)
    procs.start(
        "slow-upstream",
        [sys.executable, "-c", SLOW_UPSTREAM, str(slow_port), str(OBJECT_SIZE), str(SLOW_SECONDS)],
        log=tmp / "slow.log",
    )
    wait_port(slow_port)

    # nginx as reverse proxy: keep-alive upstream, the same forwarding headers as the SR adds.
    proxy_headers = """
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Via "1.1 nginx";
      add_header Via "1.1 nginx";"""
    proxy = nginx_conf(
        tmp,
        "proxy",
        workers,
        f"""
  upstream origin {{ server 127.0.0.1:{up_port}; keepalive 256; }}
  upstream slow {{ server 127.0.0.1:{slow_port}; keepalive 256; }}
  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=objects:10m max_size=1g inactive=10m use_temp_path=off;
  server {{
    listen 127.0.0.1:{px_port} backlog=4096 reuseport;
    location / {{ proxy_pass http://origin; {proxy_headers} }}
  }}
  server {{
    listen 127.0.0.1:{px2_port} backlog=4096 reuseport;
    location / {{
      proxy_pass http://slow; {proxy_headers}
      proxy_cache objects;
      proxy_cache_key $host$request_uri;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
      proxy_cache_lock_age 30s;
      proxy_cache_valid 200 10m;
    }}
  }}""",
    )
    nginx_proc = start_nginx(procs, nginx, proxy, px_port, log)
    wait_port(px2_port)
    sr_proc = start_sr(
        procs,
        tmp,
        port=sr_port,
        upstream_port=up_port,
        workers=workers,
        coalescing=False,
        name="sr-plain",
    )
    src_proc = start_sr(
        procs,
        tmp,
        port=src_port,
        upstream_port=up_port,
        workers=workers,
        coalescing=True,
        name="sr-default",
    )
    sr_slow_port = free_port()
    start_sr(
        procs,
        tmp,
        port=sr_slow_port,
        upstream_port=slow_port,
        workers=workers,
        coalescing=True,
        name="sr-multicast",
    )

    sides = {"nginx": px_port, "sr": sr_port, "sr_coalescing": src_port}
    pids = {"nginx": nginx_proc.pid, "sr": sr_proc.pid, "sr_coalescing": src_proc.pid}
    print(
        f"# nginx {nginx_version(nginx)}: {workers} workers, keepalive 256 to the upstream, same forwarding headers",
        flush=True,
    )
    print(
        f"# SR: {workers} workers (uvloop + httptools), keep-alive pools; run plain (coalescing off) and default (on)",
        flush=True,
    )
    print(
        f"# wrk -t{args.threads} -c{args.connections} -d{duration:g}s, {rounds} rounds A B A B, 1 KiB file from an nginx upstream",
        flush=True,
    )
    for port in sides.values():
        run_wrk(wrk, port, threads=args.threads, connections=args.connections, seconds=warmup)
    results: dict[str, list[WrkResult]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, port in sides.items():
            cpu_before = tree_cpu_seconds(pids[name])
            res = run_wrk(
                wrk, port, threads=args.threads, connections=args.connections, seconds=duration
            )
            if res.requests:
                res.cpu_us = (tree_cpu_seconds(pids[name]) - cpu_before) / res.requests * 1e6
            results[name].append(res)
            print(
                f"round {r + 1} {name:14s} {res.rps:10.0f} req/s  p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms  "
                f"CPU {res.cpu_us:5.1f} us/request  errors {res.errors}",
                flush=True,
            )

    def med(name: str, attr: str) -> float:
        return round(statistics.median(getattr(x, attr) for x in results[name]), 3)

    # Scenario 2.
    print(
        f"# multicast: {clients} clients, one uncached {OBJECT_SIZE // 1024} KiB object sent over {SLOW_SECONDS:g}s",
        flush=True,
    )
    multicast: dict[str, list[MulticastResult]] = {"nginx": [], "sr": []}
    for r in range(rounds):
        for name, port in (("nginx", px2_port), ("sr", sr_slow_port)):
            path = f"/object-{name}-{r}.bin"
            res = run_multicast(port, slow_port, path, clients)
            multicast[name].append(res)
            print(
                f"round {r + 1} {name:6s} upstream fetches {res.fetches}  TTFB p50 {res.ttfb_p50_ms:8.1f} ms  "
                f"p99 {res.ttfb_p99_ms:8.1f} ms  complete {res.complete}/{clients}  identical {res.identical}"
                + (f"  errors {res.errors}" if res.errors else ""),
                flush=True,
            )

    def mmed(name: str, attr: str) -> float:
        return round(statistics.median(getattr(x, attr) for x in multicast[name]), 1)

    figures: dict[str, Any] = {
        "bench": "sr_vs_nginx",
        "quick": args.quick,
        "workers": workers,
        "wrk": f"-t{args.threads} -c{args.connections} -d{duration:g}s",
        "rounds": rounds,
        "ours_rps": med("sr", "rps"),
        "ours_p50_ms": med("sr", "p50_ms"),
        "ours_p99_ms": med("sr", "p99_ms"),
        "peer_rps": med("nginx", "rps"),
        "peer_p50_ms": med("nginx", "p50_ms"),
        "peer_p99_ms": med("nginx", "p99_ms"),
        "ratio": round(med("sr", "rps") / med("nginx", "rps"), 3),
        # CPU per request of each proxy's processes: less sensitive to what else the machine
        # runs than requests/s (wrk and the upstream share its cores).
        "ours_cpu_us_per_request": med("sr", "cpu_us"),
        "peer_cpu_us_per_request": med("nginx", "cpu_us"),
        "cpu_ratio": round(med("sr", "cpu_us") / med("nginx", "cpu_us"), 2),
        "ours_coalescing_rps": med("sr_coalescing", "rps"),
        "ours_coalescing_p50_ms": med("sr_coalescing", "p50_ms"),
        "ours_coalescing_p99_ms": med("sr_coalescing", "p99_ms"),
        "ratio_coalescing": round(med("sr_coalescing", "rps") / med("nginx", "rps"), 3),
        "errors": {name: sum(x.errors for x in rs) for name, rs in results.items()},
        "multicast_clients": clients,
        "ours_upstream_fetches": max(x.fetches for x in multicast["sr"]),
        "peer_upstream_fetches": max(x.fetches for x in multicast["nginx"]),
        "ours_ttfb_p50_ms": mmed("sr", "ttfb_p50_ms"),
        "ours_ttfb_p99_ms": mmed("sr", "ttfb_p99_ms"),
        "peer_ttfb_p50_ms": mmed("nginx", "ttfb_p50_ms"),
        "peer_ttfb_p99_ms": mmed("nginx", "ttfb_p99_ms"),
        "ttfb_ratio": round(
            mmed("sr", "ttfb_p50_ms") / max(mmed("nginx", "ttfb_p50_ms"), 0.001), 3
        ),
        "ours_complete": min(x.complete for x in multicast["sr"]),
        "peer_complete": min(x.complete for x in multicast["nginx"]),
        "ours_identical": all(x.identical for x in multicast["sr"]),
        "target_rps_ratio": 0.7,
        "target_ttfb_ratio": 0.5,
    }
    figures["targets_met"] = {
        "rps_ratio": figures["ratio"] >= 0.7,
        "one_fetch": figures["ours_upstream_fetches"] == 1,
        "ttfb": figures["ttfb_ratio"] <= 0.5,
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
