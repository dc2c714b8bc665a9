"""Benchmark: hop-by-hop TLS (SR -> endpoint over mutual TLS) against nginx doing the same.

One upstream nginx serves a 1 KiB file twice: over plain HTTP, and over HTTPS requiring a
client certificate of the platform CA. Two proxies with the same number of workers and
keep-alive pools towards it, each with the same two names: `plain.example` (forwarded over
plain HTTP) and `tls.example` (forwarded over mutual TLS, the proxy presenting a platform
identity and verifying the upstream's certificate against the platform CA only):

* the SR with `hop_tls` and a fixed identity (`hop_tls_files`, issued by the PCE's own code:
  `SrIdentities`), the TLS endpoint registered with `tls: true`;
* nginx with `proxy_ssl_certificate`, `proxy_ssl_verify on`, `proxy_ssl_trusted_certificate`
  and `proxy_ssl_session_reuse on`.

`wrk` drives plain HTTP into each proxy in turn (A B A B ...), for each name. Reported per side:
requests/s and CPU per request (all the proxy's processes, from /proc) for both names, and what
mutual TLS towards the endpoint adds per request (kept-alive connections: the handshakes are
amortised, so this is mostly the encryption and the extra copies).

    .venv/bin/python bench/sr_tls_hop_vs_nginx.py            # 2 rounds of 10 s
    .venv/bin/python bench/sr_tls_hop_vs_nginx.py --quick    # smoke run for CI (< 60 s)

Installs nginx and wrk with apt-get when missing. Everything runs on 127.0.0.1 in a temporary
directory and is stopped at the end, also on failure. The last line printed is one JSON object
with the figures; the exit status is 0 when the run completed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sr_tls_vs_nginx import run_wrk
from sr_vs_nginx import (
    REPO,
    SR_RUNNER,
    Processes,
    WrkResult,
    ensure_tools,
    free_port,
    nginx_conf,
    nginx_version,
    start_nginx,
    terminate_on_signals,
    tree_cpu_seconds,
)

SMALL_FILE = "index.html"
NAMES = {"plain": "plain.example", "tls": "tls.example"}


def make_pki(tmp: Path) -> dict[str, Path]:
    """The platform CA, an SR identity (the PCE's code) and the upstream's certificate."""
    sys.path.insert(0, str(REPO / "src"))
    from flame.common.pki import PlatformCA
    from flame.sfr.hop_identity import HopTls, SrIdentities

    ca = PlatformCA.open(tmp / "ca")
    identity = SrIdentities(ca, HopTls.ENDPOINTS).current("sr-bench", "127.0.0.1")
    assert identity is not None
    upstream = ca.issue(["localhost"], ip_addresses=["127.0.0.1"], days=2)
    files = {
        "ca": ca.cert_path,
        "sr_cert": tmp / "sr.crt",
        "sr_key": tmp / "sr.key",
        "up_cert": tmp / "up.crt",
        "up_key": tmp / "up.key",
    }
    files["sr_cert"].write_text(identity.chain_pem)
    files["sr_key"].write_text(identity.key_pem)
    files["up_cert"].write_text(upstream.chain_pem)
    files["up_key"].write_text(upstream.key_pem)
    for name in ("sr_key", "up_key"):
        files[name].chmod(0o600)
    return files


def start_sr(
    procs: Processes,
    tmp: Path,
    pki: dict[str, Path],
    *,
    port: int,
    up: int,
    up_tls: int,
    workers: int,
) -> subprocess.Popen[bytes]:
    from flame.sfr.models import Endpoint, ForwardingTable, Route
    from flame.sfr.router.subscriber import save_table_file

    routes = {}
    for kind, fqdn in NAMES.items():
        tls = kind == "tls"
        ep = Endpoint(
            sfe=f"origin-{kind}",
            fqdn=fqdn,
            cluster="bench",
            host="127.0.0.1",
            port=up_tls if tls else up,
            tls=tls,
        )
        routes[fqdn] = (Route(ep, "sr-bench", 1.0, 1.0, ("sr-bench",)),)
    table_file = tmp / "sr.table.json"
    save_table_file(table_file, ForwardingTable(sr="sr-bench", version=1, routes=routes))
    config = {
        "sr_id": "sr-bench",
        "host": "127.0.0.1",
        "port": port,
        "workers": workers,
        "table_file": str(table_file),
        "coalescing": False,  # like for like: every request forwarded, as nginx does
        "hop_tls": True,
        "hop_tls_files": [str(pki["sr_cert"]), str(pki["sr_key"]), str(pki["ca"])],
    }
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    proc = procs.start(
        "sr-hop",
        [sys.executable, "-c", SR_RUNNER, json.dumps(config)],
        log=tmp / "sr.log",
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY"):
        raise RuntimeError(f"the SR did not start: {line!r}; see {tmp / 'sr.log'}")
    return proc


def nginx_proxy(
    tmp: Path, pki: dict[str, Path], workers: int, port: int, up: int, up_tls: int
) -> Path:
    from flame.common.tls import MODERN_CIPHERS

    common = """
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Via "1.1 nginx";
      add_header Via "1.1 nginx";"""
    return nginx_conf(
        tmp,
        "proxy",
        workers,
        f"""
  upstream origin_plain {{ server 127.0.0.1:{up}; keepalive 256; }}
  upstream origin_tls {{ server 127.0.0.1:{up_tls}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    server_name {NAMES["plain"]};
    location / {{ proxy_pass http://origin_plain; {common} }}
  }}
  server {{
    listen 127.0.0.1:{port};
    server_name {NAMES["tls"]};
    location / {{
      proxy_pass https://origin_tls;
      proxy_ssl_certificate {pki["sr_cert"]};
      proxy_ssl_certificate_key {pki["sr_key"]};
      proxy_ssl_trusted_certificate {pki["ca"]};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_ciphers {MODERN_CIPHERS};
      {common}
    }}
  }}""",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run for CI (< 60 s)")
    parser.add_argument("--workers", type=int, default=2, help="workers of each proxy (default 2)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    duration = args.duration or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 2)
    nginx, wrk = ensure_tools()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="sr-tls-hop-"))
    try:
        with terminate_on_signals():
            return run(args, procs, tmp, nginx, wrk, duration=duration, rounds=rounds)
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
) -> int:
    workers = args.workers
    log = tmp / "nginx.log"
    html = tmp / "html"
    html.mkdir()
    (html / SMALL_FILE).write_bytes(b"x" * 1024)
    pki = make_pki(tmp)
    up, up_tls, px_port, sr_port = free_port(), free_port(), free_port(), free_port()
    upstream = nginx_conf(
        tmp,
        "upstream",
        1,
        f"""
  server {{ listen 127.0.0.1:{up} backlog=4096; root {html}; }}
  server {{
    listen 127.0.0.1:{up_tls} ssl backlog=4096;
    root {html};
    ssl_certificate {pki["up_cert"]};
    ssl_certificate_key {pki["up_key"]};
    ssl_client_certificate {pki["ca"]};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:UP:10m;
  }}""",
    )
    start_nginx(procs, nginx, upstream, up, log)
    nginx_proc = start_nginx(
        procs, nginx, nginx_proxy(tmp, pki, workers, px_port, up, up_tls), px_port, log
    )
    sr_proc = start_sr(procs, tmp, pki, port=sr_port, up=up, up_tls=up_tls, workers=workers)
    sides = {"nginx": px_port, "sr": sr_port}
    pids = {"nginx": nginx_proc.pid, "sr": sr_proc.pid}
    # The upstream refuses a client without the platform certificate (so mutual TLS is real).
    bare = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            str(pki["ca"]),
            f"https://localhost:{up_tls}/{SMALL_FILE}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    checks = {"upstream_without_client_cert": bare.stdout or "refused"}
    print(
        f"# nginx {nginx_version(nginx)} and the SR: {workers} workers each, keep-alive 256 to a "
        f"1 KiB nginx upstream, plain and mutual TLS (ECDSA P-256, TLS 1.3); "
        f"wrk -t{args.threads} -c{args.connections} -d{duration:g}s, {rounds} round(s); "
        f"checks {checks}",
        flush=True,
    )

    def wrk_run(port: int, kind: str, seconds: float) -> WrkResult:
        return run_wrk(
            wrk,
            f"http://127.0.0.1:{port}/{SMALL_FILE}",
            threads=args.threads,
            connections=args.connections,
            seconds=seconds,
            extra=["-H", f"Host: {NAMES[kind]}"],
        )

    for port in sides.values():
        for kind in NAMES:
            wrk_run(port, kind, 1.0)  # warm-up: pools filled, handshakes done
    results: dict[str, dict[str, list[WrkResult]]] = {k: {n: [] for n in sides} for k in NAMES}
    for r in range(rounds):
        for kind in NAMES:
            for name, port in sides.items():
                before = tree_cpu_seconds(pids[name])
                res = wrk_run(port, kind, duration)
                if res.requests:
                    res.cpu_us = (tree_cpu_seconds(pids[name]) - before) / res.requests * 1e6
                results[kind][name].append(res)
                print(
                    f"round {r + 1} {kind:5s} {name:5s} {res.rps:9.0f}/s  p99 {res.p99_ms:7.2f} ms"
                    f"  CPU {res.cpu_us:6.1f} us each  errors {res.errors}",
                    flush=True,
                )

    def med(kind: str, name: str, attr: str) -> float:
        return round(statistics.median(getattr(x, attr) for x in results[kind][name]), 3)

    figures: dict[str, Any] = {"bench": "sr_tls_hop_vs_nginx", "quick": args.quick}
    figures["workers"] = workers
    figures["checks"] = checks
    for kind in NAMES:
        for name in sides:
            figures[f"{name}_{kind}_rps"] = med(kind, name, "rps")
            figures[f"{name}_{kind}_cpu_us"] = med(kind, name, "cpu_us")
        figures[f"{kind}_rps_ratio"] = round(
            figures[f"sr_{kind}_rps"] / figures[f"nginx_{kind}_rps"], 3
        )
    for name in sides:
        figures[f"{name}_tls_adds_cpu_us"] = round(
            figures[f"{name}_tls_cpu_us"] - figures[f"{name}_plain_cpu_us"], 1
        )
    figures["errors"] = {
        kind: {name: sum(x.errors for x in rs) for name, rs in by.items()}
        for kind, by in results.items()
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
