"""The CLMC (`flame serve clmc`) vs InfluxDB 1.6 (Debian's influxd) in one run: ingest
throughput, then a dashboard query over what was ingested.

Both get the same generated line-protocol batches (5000 points each, CLMC information-model
measurements with 6 tags and 5 fields, distinct timestamps) from 2 client threads with
keep-alive HTTP, into a fresh database per round, rounds alternating A B A B. Both fsync every
acknowledged write (InfluxDB: wal-fsync-delay 0s; CLMC: WAL group commit) and both run as one
server process on loopback. A round counts points acknowledged with 204 per wall-clock second, the clock stopping when a
count query sees all of them (so our asynchronous apply is inside the figure); both sides are
warmed up with a few batches first.

Query: over the last round's points (1M by default, one every millisecond across ~17 min), the
dashboard query `SELECT mean(response_time), percentile(response_time, 95) ... GROUP BY
time(10s), sfe` (100 windows x 64 endpoints), alternating A B, median of 5 per side.

    .venv/bin/python bench/clmc_vs_influxdb.py [--quick] [--batches N] [--rounds R]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from flame.clmc.influxd import InfluxDB, free_port

BATCH = 5000
THREADS = 2


def make_batches(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    t0 = 1_700_000_000_000_000_000
    out = []
    for b in range(n):
        lines = []
        for j in range(BATCH):
            i = b * BATCH + j
            lines.append(
                f"service_request,sfc=media,sfci=media-1,sf=transcoder,sfe=sfe{i % 64},"
                f"server=srv{i % 16},location=edge{i % 4} "
                f"response_time={rnd.uniform(1, 300):.3f},request_size={rnd.randrange(100, 5000)}i,"
                f"response_size={rnd.randrange(1000, 10**6)}i,requests={rnd.randrange(1, 50)}i,"
                f"cpu={rnd.random():.4f} {t0 + i * 1_000_000}"
            )
        out.append("\n".join(lines).encode())
    return out


def run_load(url: str, db: str, batches: list[bytes]) -> tuple[float, int, int]:
    """Points/s acknowledged, acknowledged points, failed requests."""
    work = list(batches)
    lock = threading.Lock()
    ok = [0]
    failed = [0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                with lock:
                    if not work:
                        return
                    body = work.pop()
                r = c.post("/write", params={"db": db}, content=body)
                with lock:
                    if r.status_code == 204:
                        ok[0] += BATCH
                    else:
                        failed[0] += 1

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Count what is queryable: the clock stops when every acknowledged point can be read back.
    r = httpx.get(
        url + "/query",
        params={"db": db, "q": "SELECT count(response_time) FROM service_request"},
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    series = r.json()["results"][0].get("series", [])
    counted = series[0]["values"][0][1] if series else 0
    if counted != ok[0]:
        raise RuntimeError(f"{url}: {ok[0]} points acknowledged but {counted} queryable")
    return ok[0] / elapsed, ok[0], failed[0]


class Clmc:
    """`flame serve clmc` in its own process, in a temporary directory."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="flame-clmc-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FLAME_STATE_DIR": str(self.tmp / "state"),
            "FLAME_LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from flame.cli.main import main; main()",
                "serve",
                "clmc",
                "--data",
                str(self.tmp / "clmc"),
                "--port",
                str(self.port),
                "--no-auth",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("flame serve clmc did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def time_dashboard_query(peer_url: str, ours_url: str, db: str, batches_n: int) -> dict[str, float]:
    """Median seconds of the dashboard query on each side (same data, A B alternating)."""
    t0 = 1_700_000_000_000_000_000
    t1 = t0 + batches_n * BATCH * 1_000_000
    q = (
        'SELECT mean("response_time"), percentile("response_time", 95) FROM "service_request" '
        f'WHERE time >= {t0} AND time < {t1} GROUP BY time(10s), "sfe"'
    )
    samples: dict[str, list[float]] = {"peer": [], "ours": []}
    shapes = {}
    for _ in range(5):
        for name, url in (("peer", peer_url), ("ours", ours_url)):
            start = time.perf_counter()
            response = httpx.get(
                url + "/query", params={"db": db, "q": q, "epoch": "ns"}, timeout=300
            )
            samples[name].append(time.perf_counter() - start)
            response.raise_for_status()
            series = response.json()["results"][0].get("series", [])
            shapes[name] = (len(series), sum(len(s["values"]) for s in series))
    if shapes["peer"] != shapes["ours"]:
        raise RuntimeError(f"the two answers differ in shape: {shapes}")
    print(f"dashboard query: {shapes['ours'][0]} series, {shapes['ours'][1]} rows on both sides")
    return {k: round(statistics.median(v), 4) for k, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    ap.add_argument("--batches", type=int, help="batches of 5000 points per round and side")
    ap.add_argument("--rounds", type=int, help="alternating rounds (A B) per side")
    args = ap.parse_args()
    batches_n = args.batches or (16 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    if shutil.which("influxd") is None:
        print("influxd not found: apt-get install -y influxdb", file=sys.stderr)
        return 2
    print(f"generating {batches_n} batches of {BATCH} points ...", flush=True)
    batches = make_batches(batches_n)
    print(
        f"config: {THREADS} client threads, keep-alive, {BATCH} points/request, fresh db per round; "
        "both fsync before acknowledging; loopback",
        flush=True,
    )
    ours_rates: list[float] = []
    peer_rates: list[float] = []
    failures = {"ours": 0, "peer": 0}
    with InfluxDB() as influx:
        clmc = Clmc()
        try:
            for url in (influx.url, clmc.url):  # warm both up (first-use paths, caches)
                httpx.post(url + "/query", params={"q": "CREATE DATABASE warmup"}, timeout=30)
                run_load(url, "warmup", batches[:4])
            for r in range(rounds):
                db = f"bench{r}"
                for name, url, rates in (
                    ("influxdb", influx.url, peer_rates),
                    ("clmc", clmc.url, ours_rates),
                ):
                    httpx.post(url + "/query", params={"q": f"CREATE DATABASE {db}"}, timeout=30)
                    rate, points, failed = run_load(url, db, batches)
                    failures["ours" if name == "clmc" else "peer"] += failed
                    rates.append(rate)
                    print(
                        f"round {r + 1}: {name:9s} {rate:12,.0f} points/s ({points} points, {failed} failed)",
                        flush=True,
                    )
            query_times = time_dashboard_query(
                influx.url, clmc.url, f"bench{rounds - 1}", batches_n
            )
        finally:
            clmc.stop()
    ours = statistics.median(ours_rates)
    peer = statistics.median(peer_rates)
    print(
        f"median: clmc {ours:,.0f} points/s, influxdb {peer:,.0f} points/s, ratio {ours / peer:.2f}"
    )
    print(
        f"dashboard query: clmc {query_times['ours']:.3f} s, influxdb {query_times['peer']:.3f} s, "
        f"ratio {query_times['ours'] / query_times['peer']:.2f} (target <= 0.5)"
    )
    print(
        json.dumps(
            {
                "bench": "clmc_vs_influxdb",
                "ours_points_per_s": round(ours),
                "peer_points_per_s": round(peer),
                "ratio": round(ours / peer, 3),
                "rounds": rounds,
                "batches": batches_n,
                "batch_points": BATCH,
                "client_threads": THREADS,
                "ours_query_s": query_times["ours"],
                "peer_query_s": query_times["peer"],
                "query_ratio": round(query_times["ours"] / query_times["peer"], 3),
                "ours_failed_requests": failures["ours"],
                "peer_failed_requests": failures["peer"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
