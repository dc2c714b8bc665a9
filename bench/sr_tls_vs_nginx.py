"""Benchmark: TLS termination at the FLAME service router (SR) against Debian's nginx.

Both terminate TLS for the same plain-HTTP upstream (an nginx serving a 1 KiB file), with the
same certificate (ECDSA P-256 from a throw-away platform CA), the same number of workers,
keep-alive towards the upstream, TLS 1.2-1.3 with the same ECDHE + AEAD suites, and session
resumption on (nginx: `ssl_session_cache shared` + tickets; the SR: OpenSSL's cache + tickets
with keys shared by its workers). `wrk` drives each in turn:

* requests/s over TLS: keep-alive connections, so handshakes are rare (wrk -c connections);
* full handshakes/s: ApacheBench (`ab`, as many processes as wrk threads, the same number of
  connections in all), every request on a new TCP connection with a new TLS session: ab
  resumes nothing (wrk would: it keeps its session across reconnects, so `Connection: close`
  under wrk measures mostly resumed handshakes). The SR's own count of full and resumed
  handshakes during these runs (`/.flame/status` -> tls.connections) is printed to prove it.

Rounds alternate the two proxies (A B, then B A, ...) so that neither always runs in the
other's wake, and print the machine's load average; the figures are the medians over the
rounds, the ratios the medians of each round's ratio, so one noisy sample does not decide.
Each run also reports the proxy's CPU time per request and per handshake (all its processes,
from /proc), which depends less than rates on what else shares the machine.

    .venv/bin/python bench/sr_tls_vs_nginx.py            # 5 rounds of 8 s per figure
    .venv/bin/python bench/sr_tls_vs_nginx.py --quick    # 5 rounds of 2 s, for CI (< 60 s)

Installs nginx and wrk with apt-get when missing. Everything runs on 127.0.0.1 (the URL host
is `localhost`, which is the certificate's name and the SNI wrk sends) in a temporary
directory and is stopped at the end, also on failure. The last line printed is one JSON
object with the figures; the exit status is 0 when the run completed, whether or not the
targets (>= 0.7x nginx for both rates) were met.
"""

from __future__ import annotations

import argparse
import json
import os
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


def ensure_ab() -> str:
    """ApacheBench (Debian's apache2-utils): the full-handshake client. It makes a new TLS
    session for every connection (no resumption) and sends SNI; wrk resumes its sessions."""
    if found := shutil.which("ab"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "apache2-utils"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    if found := shutil.which("ab"):
        return found
    raise RuntimeError("cannot install apache2-utils (ab) with apt-get (run as root on Debian)")


def run_ab(ab: str, url: str, *, processes: int, connections: int, seconds: float) -> WrkResult:
    """Full handshakes: `processes` ab processes (ab is single-threaded; wrk runs -t threads)
    at `connections` in all, each request on a new connection (HTTP/1.0, no keep-alive)."""
    per = max(1, connections // processes)
    cmd = [ab, "-q", "-c", str(per), "-t", f"{seconds:g}", "-n", "10000000", url]
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    rps = 0.0
    count = errors = 0
    p50: list[float] = []
    p99: list[float] = []
    for proc in runs:
        out, _ = proc.communicate(timeout=seconds + 60)
        rate = re.search(r"Requests per second:\s+([\d.]+)", out)
        if rate is None:
            raise RuntimeError(f"ab printed no rate for {url}: {out[-500:]!r}")
        rps += float(rate[1])
        if m := re.search(r"Complete requests:\s+(\d+)", out):
            count += int(m[1])
        if m := re.search(r"Failed requests:\s+(\d+)", out):
            errors += int(m[1])
        if m := re.search(r"Non-2xx responses:\s+(\d+)", out):
            errors += int(m[1])
        if m := re.search(r"\n\s+50%\s+(\d+)", out):
            p50.append(float(m[1]))
        if m := re.search(r"\n\s+99%\s+(\d+)", out):
            p99.append(float(m[1]))
    return WrkResult(
        rps,
        statistics.median(p50) if p50 else float("nan"),
        max(p99) if p99 else float("nan"),
        count,
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
    plain_port: int,
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
        "port": plain_port,  # its status endpoint (tls.connections) answers there
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
    duration = args.duration or (2.0 if args.quick else 8.0)
    rounds = args.rounds or 5
    warmup = 1.0 if args.quick else 2.0

    nginx, wrk = ensure_tools()
    ab = ensure_ab()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="sr-tls-vs-nginx-"))
    try:
        with terminate_on_signals():
            return run(
                args, procs, tmp, (nginx, wrk, ab), duration=duration, rounds=rounds, warmup=warmup
            )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    args: argparse.Namespace,
    procs: Processes,
    tmp: Path,
    tools: tuple[str, str, str],
    *,
    duration: float,
    rounds: int,
    warmup: float,
) -> int:
    nginx, wrk, ab = tools
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
    sr_plain = free_port()
    sr_proc = start_sr(
        procs,
        tmp,
        tls_port=sr_port,
        plain_port=sr_plain,
        upstream_port=up_port,
        workers=workers,
        cert=cert,
        key=key,
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
        f"{rounds} rounds alternating A B, B A; 'handshakes': {args.threads} ab processes, "
        f"{args.connections} connections, each request a new connection and TLS session",
        flush=True,
    )

    def wrk_run(name: str, port: int, seconds: float, close: bool) -> WrkResult:
        url = f"https://{HOST}:{port}/{SMALL_FILE}"
        if close:  # every request a new connection and a full handshake
            return run_ab(
                ab, url, processes=args.threads, connections=args.connections, seconds=seconds
            )
        return run_wrk(
            wrk,
            url,
            threads=args.threads,
            connections=args.connections,
            seconds=seconds,
            extra=[],
        )

    for name, port in sides.items():
        wrk_run(name, port, warmup, False)
        wrk_run(name, port, warmup, True)
    hs_counts = {"handshakes": 0, "resumed": 0, "workers": 0}
    results: dict[str, dict[str, list[WrkResult]]] = {
        kind: {name: [] for name in sides} for kind in KINDS
    }
    ratios: dict[str, list[float]] = {kind: [] for kind in KINDS}
    loads: list[float] = []
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        loads.append(load_average())
        for kind in KINDS:
            for name in order:
                counted = kind == "handshakes" and name == "sr"
                counts = sr_tls_counts(sr_plain) if counted else None
                cpu_before = tree_cpu_seconds(pids[name])
                res = wrk_run(name, sides[name], duration, kind == "handshakes")
                if res.requests:
                    res.cpu_us = (tree_cpu_seconds(pids[name]) - cpu_before) / res.requests * 1e6
                if counts is not None:
                    now = sr_tls_counts(sr_plain)
                    for counter in ("handshakes", "resumed"):
                        hs_counts[counter] += now[counter] - counts[counter]
                    hs_counts["workers"] = max(hs_counts["workers"], now["workers"])
                results[kind][name].append(res)
                print(
                    f"round {r + 1} load {loads[-1]:5.2f} {kind:10s} {name:5s} {res.rps:9.0f}/s  "
                    f"p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms  "
                    f"CPU {res.cpu_us:6.1f} us each  errors {res.errors}",
                    flush=True,
                )
            ours, peer = results[kind]["sr"][-1].rps, results[kind]["nginx"][-1].rps
            ratios[kind].append(round(ours / peer, 3) if peer else 0.0)
    print(
        f"# SR handshakes during the 'handshakes' runs (workers answering: "
        f"{hs_counts['workers']}): {hs_counts['handshakes']}, of which resumed "
        f"{hs_counts['resumed']} (ab resumes no session)",
        flush=True,
    )

    def med(kind: str, name: str, attr: str) -> float:
        return round(float(statistics.median(getattr(x, attr) for x in results[kind][name])), 3)

    figures: dict[str, Any] = {
        "bench": "sr_tls_vs_nginx",
        "quick": args.quick,
        "workers": workers,
        "wrk": f"-t{args.threads} -c{args.connections} -d{duration:g}s",
        "rounds": rounds,
        "load_average": loads,
        "tls_checks": checks,
        "ours_rps": med("requests", "sr", "rps"),
        "peer_rps": med("requests", "nginx", "rps"),
        "rps_ratio": round(statistics.median(ratios["requests"]), 3),
        "rps_ratios": ratios["requests"],
        "ours_p99_ms": med("requests", "sr", "p99_ms"),
        "peer_p99_ms": med("requests", "nginx", "p99_ms"),
        "ours_cpu_us_per_request": med("requests", "sr", "cpu_us"),
        "peer_cpu_us_per_request": med("requests", "nginx", "cpu_us"),
        "ours_handshakes_per_s": med("handshakes", "sr", "rps"),
        "peer_handshakes_per_s": med("handshakes", "nginx", "rps"),
        "handshake_ratio": round(statistics.median(ratios["handshakes"]), 3),
        "handshake_ratios": ratios["handshakes"],
        "ours_cpu_us_per_handshake": med("handshakes", "sr", "cpu_us"),
        "peer_cpu_us_per_handshake": med("handshakes", "nginx", "cpu_us"),
        "ours_handshakes_counted": hs_counts["handshakes"],
        "ours_handshakes_resumed": hs_counts["resumed"],
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


KINDS = ("requests", "handshakes")


def load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def sr_tls_counts(port: int, attempts: int = 12) -> dict[str, int]:
    """The SR's TLS connection counts summed over the workers that answered (each worker
    answers for itself; new connections spread over them)."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(attempts):
        out = subprocess.run(
            ["curl", "-s", "-H", "Host: _flame", f"http://127.0.0.1:{port}/.flame/status"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        try:
            doc = json.loads(out.stdout)
            seen[int(doc["worker"])] = dict(doc["tls"]["connections"])
        except (ValueError, KeyError, TypeError):
            continue
    return {
        "workers": len(seen),
        "handshakes": sum(c.get("handshakes", 0) for c in seen.values()),
        "resumed": sum(c.get("resumed", 0) for c in seen.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
