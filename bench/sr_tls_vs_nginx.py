"""Benchmark: TLS termination at the FLAME service router (SR) against Debian's nginx.

Both terminate TLS for the same plain-HTTP upstream (an nginx serving a 1 KiB file), with the
same certificate (ECDSA P-256 from a throw-away platform CA), the same number of workers,
keep-alive towards the upstream, TLS 1.2-1.3 with the same ECDHE + AEAD suites, and session
resumption on (nginx: `ssl_session_cache shared` + tickets; the SR: OpenSSL's cache + tickets
with keys shared by its workers). `wrk` drives each in turn (A B A B ...):

* requests/s over TLS: keep-alive connections, so handshakes are rare (wrk -c connections);
* full handshakes/s: the same with `Connection: close`, so every request is a new TCP
  connection and a full TLS handshake (wrk does not resume sessions): handshakes/s is the
  request rate.

Each run also reports the proxy's CPU time per request (all its processes, from /proc), which
depends less than rates on what else shares the machine's two cores (wrk and the upstream do).

    .venv/bin/python bench/sr_tls_vs_nginx.py            # 2 rounds of 10 s
    .venv/bin/python bench/sr_tls_vs_nginx.py --quick    # smoke run for CI (< 60 s)

Installs nginx and wrk with apt-get when missing. Everything runs on 127.0.0.1 (the URL host
is `localhost`, which is the certificate's name and the SNI wrk sends) in a temporary
directory and is stopped at the end, also on failure. The last line printed is one JSON
object with the figures; the exit status is 0 when the run completed, whether or not the
targets (>= 0.7x nginx for both rates) were met.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sr_vs_nginx import (
    REPO,
    SR_RUNNER,
    Processes,
    WrkResult,
    _ms,
    ensure_tools,
    free_port,
    nginx_conf,
    nginx_version,
    start_nginx,
    terminate_on_signals,
    tree_cpu_seconds,
)

HOST = "localhost"  # resolves to 127.0.0.1 only here; wrk sends it as SNI
SMALL_FILE = "index.html"


def run_wrk(
    wrk: str,
    url: str,
    *,
    threads: int,
    connections: int,
    seconds: float,
    extra: list[str],
) -> WrkResult:
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate for {url}: {out[-500:]!r}")
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    count = re.search(r"(\d+) requests in", out)
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m[1])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        # A server closing after a Connection: close answer is no error; count the others.
        errors += int(m[1]) + int(m[3]) + int(m[4])
    return WrkResult(
        float(match[1]),
        _ms(p50[1]) if p50 else float("nan"),
        _ms(p99[1]) if p99 else float("nan"),
        int(count[1]) if count else 0,
        errors,
    )


def make_cert(tmp: Path) -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(REPO / "src"))
    from flame.common.pki import PlatformCA

    ca = PlatformCA.open(tmp / "ca")
    issued = ca.issue([HOST], days=2)
    cert, key = tmp / "server.crt", tmp / "server.key"
    cert.write_text(issued.chain_pem)
    key.write_text(issued.key_pem)
    key.chmod(0o600)
    return ca.cert_path, cert, key


def start_sr(
    procs: Processes,
    tmp: Path,
    *,
    tls_port: int,
    upstream_port: int,
    workers: int,
    cert: Path,
    key: Path,
) -> subprocess.Popen[bytes]:
    from flame.sfr.models import Endpoint, ForwardingTable, Route
    from flame.sfr.router.subscriber import save_table_file

    ep = Endpoint(sfe="origin", fqdn=HOST, cluster="bench", host="127.0.0.1", port=upstream_port)
    table = ForwardingTable(
        sr="sr-bench", version=1, routes={HOST: (Route(ep, "sr-bench", 1.0, 1.0, ("sr-bench",)),)}
    )
    table_file = tmp / "sr.table.json"
    save_table_file(table_file, table)
    config = {
        "sr_id": "sr-bench",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls_port": tls_port,
        "tls_certs": [[str(cert), str(key)]],
        "workers": workers,
        "table_file": str(table_file),
        "coalescing": False,  # like for like: every request forwarded, as nginx does
    }
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    proc = procs.start(
        "sr-tls",
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


def check_tls(port: int, ca: Path) -> dict[str, Any]:
    """One request with curl: the certificate verifies and the answer is the upstream's."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{ssl_verify_result}",
            "--cacert",
            str(ca),
            f"https://{HOST}:{port}/{SMALL_FILE}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    code, _, verify = out.stdout.partition(" ")
    return {"status": code, "verify": verify, "error": out.stderr.strip()[:200]}


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
    warmup = 1.0 if args.quick else 2.0

    nginx, wrk = ensure_tools()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="sr-tls-vs-nginx-"))
    try:
        with terminate_on_signals():
            return run(
                args, procs, tmp, nginx, wrk, duration=duration, rounds=rounds, warmup=warmup
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
    warmup: float,
) -> int:
    workers = args.workers
    log = tmp / "nginx.log"
    html = tmp / "html"
    html.mkdir()
    (html / SMALL_FILE).write_bytes(b"x" * 1024)
    ca, cert, key = make_cert(tmp)
    up_port, px_port, sr_port = free_port(), free_port(), free_port()

    upstream = nginx_conf(
        tmp, "upstream", 1, f"  server {{ listen 127.0.0.1:{up_port} backlog=4096; root {html}; }}"
    )
    start_nginx(procs, nginx, upstream, up_port, log)

    from flame.common.tls import MODERN_CIPHERS

    proxy = nginx_conf(
        tmp,
        "proxy",
        workers,
        f"""
  upstream origin {{ server 127.0.0.1:{up_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{px_port} ssl backlog=4096 reuseport;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {MODERN_CIPHERS};
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Via "1.1 nginx";
      add_header Via "1.1 nginx";
    }}
  }}""",
    )
    nginx_proc = start_nginx(procs, nginx, proxy, px_port, log)
    sr_proc = start_sr(
        procs, tmp, tls_port=sr_port, upstream_port=up_port, workers=workers, cert=cert, key=key
    )
    sides = {"nginx": px_port, "sr": sr_port}
    pids = {"nginx": nginx_proc.pid, "sr": sr_proc.pid}
    checks = {name: check_tls(port, ca) for name, port in sides.items()}
    print(f"# TLS checks (curl --cacert): {checks}", flush=True)
    print(
        f"# nginx {nginx_version(nginx)} and the SR: {workers} workers each, TLS 1.2-1.3, "
        "ECDSA P-256, session cache + tickets, keep-alive 256 to a 1 KiB nginx upstream",
        flush=True,
    )
    print(
        f"# wrk -t{args.threads} -c{args.connections} -d{duration:g}s https://{HOST}:PORT/, "
        f"{rounds} round(s) A B A B; 'handshakes' adds Connection: close",
        flush=True,
    )

    def wrk_run(name: str, port: int, seconds: float, close: bool) -> WrkResult:
        extra = ["-H", "Connection: close"] if close else []
        return run_wrk(
            wrk,
            f"https://{HOST}:{port}/{SMALL_FILE}",
            threads=args.threads,
            connections=args.connections,
            seconds=seconds,
            extra=extra,
        )

    for name, port in sides.items():
        wrk_run(name, port, warmup, False)
        wrk_run(name, port, warmup, True)
    results: dict[str, dict[str, list[WrkResult]]] = {
        kind: {name: [] for name in sides} for kind in ("requests", "handshakes")
    }
    for r in range(rounds):
        for kind in ("requests", "handshakes"):
            for name, port in sides.items():
                cpu_before = tree_cpu_seconds(pids[name])
                res = wrk_run(name, port, duration, kind == "handshakes")
                if res.requests:
                    res.cpu_us = (tree_cpu_seconds(pids[name]) - cpu_before) / res.requests * 1e6
                results[kind][name].append(res)
                print(
                    f"round {r + 1} {kind:10s} {name:5s} {res.rps:9.0f}/s  p50 {res.p50_ms:7.2f} ms  "
                    f"p99 {res.p99_ms:7.2f} ms  CPU {res.cpu_us:6.1f} us each  errors {res.errors}",
                    flush=True,
                )

    def med(kind: str, name: str, attr: str) -> float:
        return round(statistics.median(getattr(x, attr) for x in results[kind][name]), 3)

    figures: dict[str, Any] = {
        "bench": "sr_tls_vs_nginx",
        "quick": args.quick,
        "workers": workers,
        "wrk": f"-t{args.threads} -c{args.connections} -d{duration:g}s",
        "rounds": rounds,
        "tls_checks": checks,
        "ours_rps": med("requests", "sr", "rps"),
        "peer_rps": med("requests", "nginx", "rps"),
        "rps_ratio": round(med("requests", "sr", "rps") / med("requests", "nginx", "rps"), 3),
        "ours_p99_ms": med("requests", "sr", "p99_ms"),
        "peer_p99_ms": med("requests", "nginx", "p99_ms"),
        "ours_cpu_us_per_request": med("requests", "sr", "cpu_us"),
        "peer_cpu_us_per_request": med("requests", "nginx", "cpu_us"),
        "ours_handshakes_per_s": med("handshakes", "sr", "rps"),
        "peer_handshakes_per_s": med("handshakes", "nginx", "rps"),
        "handshake_ratio": round(
            med("handshakes", "sr", "rps") / med("handshakes", "nginx", "rps"), 3
        ),
        "ours_cpu_us_per_handshake": med("handshakes", "sr", "cpu_us"),
        "peer_cpu_us_per_handshake": med("handshakes", "nginx", "cpu_us"),
        "errors": {
            kind: {name: sum(x.errors for x in rs) for name, rs in by.items()}
            for kind, by in results.items()
        },
        "target_ratio": 0.7,
    }
    figures["targets_met"] = {
        "rps_ratio": figures["rps_ratio"] >= 0.7,
        "handshake_ratio": figures["handshake_ratio"] >= 0.7,
        "verified": all(c["status"] == "200" and c["verify"] == "0" for c in checks.values()),
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
