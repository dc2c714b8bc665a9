"""The CLMC (`flame serve clmc`) vs InfluxDB 1.6 (Debian's influxd) in one run: ingest
throughput on one measurement and on a Telegraf-shaped mix, a dashboard query, and query
latency under a write storm.

Ingest. Both get the same generated line-protocol bodies from the same client threads with
keep-alive HTTP, into a fresh database per round, rounds alternating A B A B. Both fsync every
acknowledged write (InfluxDB: wal-fsync-delay 0s; CLMC: WAL group commit) and run as one server
process on loopback. A round counts points acknowledged with 204 per wall-clock second, the
clock stopping when a count query sees all of them (so our asynchronous apply is inside the
figure; we ask with `read_your_writes=true`, which InfluxDB ignores); both are warmed up first,
and the HTTP clients are made before the clock starts (their set-up is no server's time).
After its round a server settles (`settle`: under 5 % of a CPU for 1.6 s) before the other
side starts: what it defers past its last acknowledgement (the CLMC's idle checkpoint,
InfluxDB's cache snapshots and compactions) runs alone, not inside the other's round, and
its CPU counts in that server's CPU per point ("... after the round").
Bodies go out oldest first (the two clients take the next one as they finish), in time order as
agents send them. The median of the rounds is printed; `--quick` runs five short single rounds
(100,000 points each) and one of each mix. Each round line shows the load average then: on a
shared 2-core machine the figures move with it (the Go server uses both cores, the CLMC is
mostly one Python process's GIL).

- single: 5,000-point bodies of one measurement (`service_request`: 6 tags, 5 fields);
- mix: Telegraf-shaped bodies, one collection interval of `--hosts` agents each (cpu per core
  and total, mem, swap, system, kernel, processes, disk per mount, diskio per device, net per
  interface, netstat, plus per-host application measurements: nginx, procstat per process,
  docker_container_{cpu,mem,net} per container, ...), `--mix-measurements` measurements per
  body (about 40 by default, 200 with `--wide-mix`), every point its own series, one string
  field here and there as Telegraf sends them.

Dashboard query: over the last single round's points, `SELECT mean(response_time),
percentile(response_time, 95) ... GROUP BY time(10s), sfe`, A B alternating, median of 5.

Write storm: for `--storm-seconds` each side takes the mix from the client threads at full
speed while one more client asks a dashboard query on the newest data (`mean(usage_user)` per
host over the last minute, GROUP BY time(10s)) every 0.2 s; p50/p99/max of those queries.

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
from collections.abc import Callable
from pathlib import Path

import httpx

from flame.clmc.influxd import InfluxDB
from flame.common.ports import free_port

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


# -- the Telegraf-shaped mix ----------------------------------------------------------------------

# (measurement, tag sets per host, fields: name -> kind f(loat) / i(nt) / s(tring))
_F = "f"
_I = "i"


def _fields(names: str, kind: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


_TELEGRAF: list[tuple[str, list[dict[str, str]], dict[str, str]]] = [
    (
        "cpu",
        [{"cpu": f"cpu{c}"} for c in range(4)] + [{"cpu": "cpu-total"}],
        _fields(
            "usage_user usage_system usage_idle usage_iowait usage_irq usage_softirq usage_steal "
            "usage_guest usage_guest_nice usage_nice",
            _F,
        ),
    ),
    (
        "mem",
        [{}],
        _fields("total available used free cached buffered active inactive", _I)
        | _fields("used_percent available_percent", _F),
    ),
    ("swap", [{}], _fields("total used free in out", _I) | _fields("used_percent", _F)),
    (
        "system",
        [{}],
        _fields("load1 load5 load15", _F) | _fields("n_cpus n_users uptime", _I),
    ),
    ("kernel", [{}], _fields("boot_time context_switches interrupts processes_forked", _I)),
    (
        "processes",
        [{}],
        _fields("blocked running sleeping stopped total zombies dead paging total_threads", _I),
    ),
    (
        "disk",
        [
            {"path": p, "device": d, "fstype": "ext4", "mode": "rw"}
            for p, d in (("/", "sda1"), ("/var", "sda2"), ("/data", "sdb1"))
        ],
        _fields("total free used inodes_total inodes_free inodes_used", _I)
        | _fields("used_percent", _F),
    ),
    (
        "diskio",
        [{"name": d} for d in ("sda", "sdb")],
        _fields(
            "reads writes read_bytes write_bytes read_time write_time io_time "
            "weighted_io_time iops_in_progress",
            _I,
        ),
    ),
    (
        "net",
        [{"interface": i} for i in ("eth0", "eth1")],
        _fields(
            "bytes_sent bytes_recv packets_sent packets_recv err_in err_out drop_in drop_out", _I
        ),
    ),
    (
        "netstat",
        [{}],
        _fields(
            "tcp_established tcp_syn_sent tcp_syn_recv tcp_fin_wait1 tcp_fin_wait2 tcp_time_wait "
            "tcp_close tcp_close_wait tcp_last_ack tcp_listen tcp_closing tcp_none udp_socket",
            _I,
        ),
    ),
    (
        "nginx",
        [{"port": "80", "server": "localhost"}],
        _fields("accepts active handled reading requests waiting writing", _I),
    ),
    (
        "procstat",
        [
            {"process_name": p, "pid_finder": "pgrep"}
            for p in ("nginx", "flame", "sshd", "telegraf", "dockerd", "containerd")
        ],
        _fields("cpu_usage memory_rss memory_vms num_threads read_bytes write_bytes", _F)
        | {"cmdline": "s"},
    ),
    (
        "docker_container_cpu",
        [{"container_name": f"c{c}", "cpu": "cpu-total", "engine_host": "d"} for c in range(8)],
        _fields("usage_percent usage_total usage_system throttling_periods", _F),
    ),
    (
        "docker_container_mem",
        [{"container_name": f"c{c}", "engine_host": "d"} for c in range(8)],
        _fields("usage usage_percent limit max_usage rss cache", _F),
    ),
    (
        "docker_container_net",
        [{"container_name": f"c{c}", "network": "eth0", "engine_host": "d"} for c in range(8)],
        _fields("rx_bytes tx_bytes rx_packets tx_packets rx_errors tx_errors", _I),
    ),
    (
        "docker_container_status",
        [{"container_name": f"c{c}", "engine_host": "d"} for c in range(8)],
        _fields("exitcode pid restart_count", _I) | {"container_id": "s"},
    ),
]


def _app_measurements(n: int) -> list[tuple[str, list[dict[str, str]], dict[str, str]]]:
    """Application measurements to reach `n` in all (custom inputs, exporters, ...)."""
    rnd = random.Random(3)
    out = []
    for i in range(n):
        series = [{"instance": f"i{k}", "job": f"app{i % 7}"} for k in range(rnd.randint(1, 6))]
        out.append(
            (f"app_{i}", series, _fields(" ".join(f"m{j}" for j in range(rnd.randint(3, 15))), _F))
        )
    return out


def mix_spec(measurements: int) -> list[tuple[str, list[dict[str, str]], dict[str, str]]]:
    base = _TELEGRAF[:measurements]
    return base + _app_measurements(max(0, measurements - len(base)))


def make_mix(
    bodies: int, hosts: int, measurements: int, t0: int | None = None, seed: int = 5
) -> list[bytes]:
    """`bodies` collection intervals (10 s apart) of `hosts` agents, one body each."""
    rnd = random.Random(seed)
    spec = mix_spec(measurements)
    t0 = 1_700_000_000_000_000_000 if t0 is None else t0
    out = []
    for b in range(bodies):
        ts = t0 + b * 10_000_000_000
        lines = []
        for h in range(hosts):
            host = f"host{h:03d}"
            for name, series, fields in spec:
                for tags in series:
                    key = ",".join(
                        [name, f"host={host}"] + [f"{k}={v}" for k, v in sorted(tags.items())]
                    )
                    values = ",".join(
                        f"{f}={rnd.uniform(0, 100):.2f}"
                        if kind == _F
                        else f"{f}={rnd.randrange(10**9)}i"
                        if kind == _I
                        else f'{f}="{name}-{h}"'
                        for f, kind in fields.items()
                    )
                    lines.append(f"{key} {values} {ts + h}")
        out.append("\n".join(lines).encode())
    return out


# -- running ------------------------------------------------------------------------------------


def run_load(
    url: str, db: str, bodies: list[bytes], count_q: str, counted_of: Callable[[bytes], int]
) -> tuple[float, int, int, list[float]]:
    """Points/s acknowledged (the clock stopping when they are all queryable: `count_q` must
    count `counted_of(body)` points of each acknowledged body), acknowledged points, failed
    requests, write latencies."""
    work = list(reversed(bodies))  # popped oldest first: in time order, as agents send
    lock = threading.Lock()
    ok = [0]
    expect = [0]
    failed = [0]
    latencies: list[float] = []

    def client(c: httpx.Client) -> None:
        while True:
            with lock:
                if not work:
                    return
                body = work.pop()
            t0 = time.perf_counter()
            r = c.post("/write", params={"db": db}, content=body)
            took = time.perf_counter() - t0
            with lock:
                latencies.append(took)
                if r.status_code == 204:
                    ok[0] += body.count(b"\n") + 1
                    expect[0] += counted_of(body)
                else:
                    failed[0] += 1

    # The clients exist before the clock starts: creating an httpx.Client builds a TLS context
    # (certifi's CA bundle), 45-130 ms of the client's own CPU per client here, which is no
    # server's time (it was inside the clock until this round: ~0.15 s per round on both
    # sides, a third of a 100,000-point round of the CLMC). Connections still open inside it.
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(THREADS + 1)]
    threads = [threading.Thread(target=client, args=(c,)) for c in clients[:THREADS]]
    try:
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counted = 0
        for _ in range(600):  # until every acknowledged point can be read back
            r = clients[-1].get(
                "/query", params={"db": db, "q": count_q, "read_your_writes": "true"}
            )
            series = r.json()["results"][0].get("series", [])
            counted = series[0]["values"][0][1] if series else 0
            if counted >= expect[0]:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
    finally:
        for c in clients:
            c.close()
    if counted < expect[0]:  # (more: a write that failed, e.g. timed out, was stored anyway)
        raise RuntimeError(f"{url}: {expect[0]} points acknowledged but {counted} queryable")
    return ok[0] / elapsed, ok[0], failed[0], latencies


SINGLE_COUNT = "SELECT count(response_time) FROM service_request"
MIX_COUNT = "SELECT count(usage_user) FROM cpu"


def _all_lines(body: bytes) -> int:
    return body.count(b"\n") + 1


def _cpu_lines(body: bytes) -> int:
    return body.count(b"\ncpu,") + body.startswith(b"cpu,")


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

    def await_parse_process(self, warmup: list[bytes]) -> None:
        """Warm-up, continued: write until the CLMC's parse processes (started at its first
        big body; one per CPU) the writers use have parsed a body each, so no round pays for
        their start (seconds at most)."""
        deadline = time.monotonic() + 60
        for attempt in range(1000):
            health = httpx.get(self.url + "/health", timeout=30).json()
            parser = health.get("ingest", {}).get("parse_process")
            if not parser:  # none (FLAME_CLMC_PARSE_PROCESS=0)
                return
            # one per CPU: as many up as the writers can keep busy (a third one is only used
            # when two are busy, which two writers never make)
            each = parser.get("processes", [parser])
            if sum(p["bodies"] > 0 for p in each) >= min(len(each), THREADS):
                return
            if time.monotonic() > deadline:
                break
            db = f"warmup_parse{attempt}"  # fresh: the same points again would be merged
            httpx.post(self.url + "/query", params={"q": f"CREATE DATABASE {db}"}, timeout=30)
            run_load(self.url, db, warmup, SINGLE_COUNT, _all_lines)
        print("warning: the CLMC's parse process did not come up", flush=True)

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


def write_storm(
    url: str, db: str, seconds: float, hosts: int, measurements: int
) -> dict[str, float]:
    """Write the mix at full speed for `seconds` while querying the newest data every 0.2 s."""
    stop = threading.Event()
    acked = [0]
    failed = [0]
    lock = threading.Lock()
    now = time.time_ns()
    bodies = make_mix(int(seconds * 2) + 40, hosts, measurements, t0=now - 60_000_000_000)
    work = list(reversed(bodies))

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                with lock:
                    if not work:
                        return
                    body = work.pop()
                r = c.post("/write", params={"db": db}, content=body)
                with lock:
                    if r.status_code == 204:
                        acked[0] += body.count(b"\n") + 1
                    else:
                        failed[0] += 1
                        if r.status_code in (429, 503):  # back-pressure: as a client would
                            time.sleep(float(r.headers.get("Retry-After", "1")))

    q = (
        'SELECT mean("usage_user") FROM "cpu" WHERE time > now() - 5m AND "cpu" = \'cpu-total\' '
        'GROUP BY time(10s), "host"'
    )
    latencies: list[float] = []
    errors = [0]

    def querier() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = c.get("/query", params={"db": db, "q": q})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or "error" in r.json()["results"][0]:
                    errors[0] += 1
                time.sleep(0.2)

    threads = [threading.Thread(target=writer) for _ in range(THREADS)]
    threads.append(threading.Thread(target=querier))
    start = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {
        "acked_points_per_s": round(acked[0] / elapsed),
        "refused_writes": failed[0],
        "queries": len(lat),
        "query_errors": errors[0],
        "query_p50_s": round(pct(0.5), 4),
        "query_p99_s": round(pct(0.99), 4),
        "query_max_s": round(lat[-1], 4) if lat else float("nan"),
    }


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time of process `pid` and of its children (the CLMC's parse
    process), every thread of them, from /proc."""
    own = children = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
        if int(entry.name) == pid:
            own += used
        elif int(fields[1]) == pid:  # its parent is `pid`
            children += used
    return own, children


Side = tuple[str, str, int]  # name, url, server pid


def settle(pid: int, quiet_s: float = 1.6, limit_s: float = 20.0) -> float:
    """Wait until server `pid` (children included) has used under 5 % of a CPU for `quiet_s`
    (longer than the CLMC waits, 1 s, before its idle checkpoint):
    the work it defers past a round (the CLMC's idle checkpoint, InfluxDB's cache snapshots
    and compactions) is done before the other side's round starts and counted in this side's
    CPU per point. Returns the seconds waited (at most `limit_s`)."""
    start = time.perf_counter()
    last = sum(cpu_seconds(pid))
    quiet_since = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        time.sleep(0.2)
        now = sum(cpu_seconds(pid))
        if now - last > 0.05 * 0.2:
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since >= quiet_s:
            break
        last = now
    return time.perf_counter() - start


def _alternate(
    rounds: int,
    sides: list[Side],
    run: Callable[[str, str], tuple[float, int, int, list[float]]],
    label: str,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Rounds A B alternating; points/s per side, and (into `cpu`) the server's CPU
    microseconds per acknowledged point, the work it did after the round included (`settle`):
    a figure the machine's load moves much less."""
    rates: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    for r in range(rounds):
        for name, url, pid in sides:
            db = f"{label}{r}"
            httpx.post(url + "/query", params={"q": f"CREATE DATABASE {db}"}, timeout=30)
            own0, child0 = cpu_seconds(pid)
            rate, points, failed, lat = run(url, db)
            own_run = sum(cpu_seconds(pid))
            settle(pid)  # what it deferred runs now, alone, and counts as its CPU
            own1, child1 = cpu_seconds(pid)
            us = (own1 + child1 - own0 - child0) * 1e6 / max(points, 1)
            later_us = (own1 + child1 - own_run) * 1e6 / max(points, 1)
            child_us = (child1 - child0) * 1e6 / max(points, 1)
            rates[name].append(rate)
            if cpu is not None:
                cpu.setdefault(name, []).append(us)
            p50 = statistics.median(lat) if lat else float("nan")
            print(
                f"{label} round {r + 1}: {name:9s} {rate:12,.0f} points/s ({points} points, "
                f"{failed} failed, write p50 {p50 * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms; "
                f"server CPU {us:.2f} us/point, {child_us:.2f} of it in child processes, "
                f"{later_us:.2f} after the round; "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, a minute or two")
    ap.add_argument("--batches", type=int, help="single: batches of 5000 points per round")
    ap.add_argument("--rounds", type=int, help="alternating rounds (A B) per side")
    ap.add_argument("--hosts", type=int, default=128, help="mix: agents per body (~20k points)")
    ap.add_argument("--mix-measurements", type=int, default=40, help="mix: measurements per body")
    ap.add_argument("--mix-bodies", type=int, help="mix: bodies per round")
    ap.add_argument("--wide-mix", action="store_true", help="also the 200-measurement mix")
    ap.add_argument("--storm-seconds", type=float, help="write storm duration per side")
    args = ap.parse_args()
    # --quick: five short single rounds (a median, not one sample of a loaded machine), one
    # mix round, a short storm; about a minute and a half in all
    batches_n = args.batches or (20 if args.quick else 200)
    rounds = args.rounds or (5 if args.quick else 3)  # quick: short rounds, so more of them
    mix_rounds = args.rounds or (1 if args.quick else 3)
    mix_bodies = args.mix_bodies or (6 if args.quick else 30)
    storm_s = args.storm_seconds if args.storm_seconds is not None else (8 if args.quick else 60)
    if shutil.which("influxd") is None:
        print("influxd not found: apt-get install -y influxdb", file=sys.stderr)
        return 2
    print(f"generating {batches_n} batches of {BATCH} points and the mix ...", flush=True)
    batches = make_batches(batches_n)
    mixes = {args.mix_measurements: make_mix(mix_bodies, args.hosts, args.mix_measurements)}
    if args.wide_mix:  # the case: 200 measurements in a ~20,000-point body
        mixes[200] = make_mix(max(3, mix_bodies // 3), max(1, args.hosts * 27 // 128), 200)
    for m, bodies in mixes.items():
        points = sum(b.count(b"\n") + 1 for b in bodies) // len(bodies)
        print(f"mix of {m} measurements: {len(bodies)} bodies of {points} points", flush=True)
    print(
        f"config: {THREADS} client threads, keep-alive, fresh db per round; both fsync before "
        "acknowledging; loopback",
        flush=True,
    )
    figures: dict[str, object] = {
        "bench": "clmc_vs_influxdb",
        "rounds": rounds,
        "load_avg_start": round(os.getloadavg()[0], 2),
    }
    with InfluxDB() as influx:
        clmc = Clmc()
        sides: list[Side] = [
            ("influxdb", influx.url, influx._proc.pid),  # type: ignore[union-attr]
            ("clmc", clmc.url, clmc.proc.pid),
        ]
        single_cpu: dict[str, list[float]] = {}
        try:
            for url in (influx.url, clmc.url):  # warm both up (first-use paths, caches)
                httpx.post(url + "/query", params={"q": "CREATE DATABASE warmup"}, timeout=30)
                run_load(url, "warmup", batches[:4], SINGLE_COUNT, _all_lines)
                run_load(url, "warmup", next(iter(mixes.values()))[:2], MIX_COUNT, _cpu_lines)
            clmc.await_parse_process(batches[:4])
            single = _alternate(
                rounds,
                sides,
                lambda url, db: run_load(url, db, batches, SINGLE_COUNT, _all_lines),
                "single",
                single_cpu,
            )
            mix_rates = {}
            for m, bodies in mixes.items():
                mix_rates[m] = _alternate(
                    mix_rounds,
                    sides,
                    lambda url, db, bodies=bodies: run_load(url, db, bodies, MIX_COUNT, _cpu_lines),
                    f"mix{m}_",
                )
            query_times = time_dashboard_query(
                influx.url, clmc.url, f"single{rounds - 1}", batches_n
            )
            storms = {}
            for name, url, _ in sides:
                httpx.post(url + "/query", params={"q": "CREATE DATABASE storm"}, timeout=30)
                storms[name] = write_storm(url, "storm", storm_s, args.hosts, args.mix_measurements)
                print(f"write storm ({storm_s:.0f} s): {name:9s} {storms[name]}", flush=True)
        finally:
            clmc.stop()

    def ratio(rates: dict[str, list[float]]) -> tuple[float, float, float, list[float]]:
        """Medians, their ratio, and each round's ratio (the two sides of a round ran back to
        back: under a load that changes, those pairs are the steadier comparison)."""
        ours, peer = statistics.median(rates["clmc"]), statistics.median(rates["influxdb"])
        pairs = [o / p for o, p in zip(rates["clmc"], rates["influxdb"], strict=True)]
        return ours, peer, ours / peer, pairs

    def show(pairs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in pairs)

    ours, peer, r, pairs = ratio(single)
    print(
        f"single measurement: clmc {ours:,.0f} points/s, influxdb {peer:,.0f}, ratio {r:.2f} "
        f"(per round {show(pairs)}; target >= 1.5)"
    )
    cpu_ours, cpu_peer = (statistics.median(single_cpu[k]) for k in ("clmc", "influxdb"))
    print(
        f"single measurement, server CPU per point: clmc {cpu_ours:.2f} us, influxdb "
        f"{cpu_peer:.2f} us (median of the rounds)"
    )
    figures |= {
        "ours_cpu_us_per_point": round(cpu_ours, 3),
        "peer_cpu_us_per_point": round(cpu_peer, 3),
        "ours_points_per_s": round(ours),
        "peer_points_per_s": round(peer),
        "ratio": round(r, 3),
        "round_ratios": [round(x, 3) for x in pairs],
    }
    for m, rates in mix_rates.items():
        ours, peer, r, pairs = ratio(rates)
        print(
            f"mix of {m} measurements: clmc {ours:,.0f} points/s, influxdb {peer:,.0f}, "
            f"ratio {r:.2f} (per round {show(pairs)}; target >= 1.0)"
        )
        figures |= {
            f"mix{m}_ours_points_per_s": round(ours),
            f"mix{m}_peer_points_per_s": round(peer),
            f"mix{m}_ratio": round(r, 3),
            f"mix{m}_round_ratios": [round(x, 3) for x in pairs],
        }
    print(
        f"dashboard query: clmc {query_times['ours']:.3f} s, influxdb {query_times['peer']:.3f} s, "
        f"ratio {query_times['ours'] / query_times['peer']:.2f}"
    )
    figures |= {
        "ours_query_s": query_times["ours"],
        "peer_query_s": query_times["peer"],
        "query_ratio": round(query_times["ours"] / query_times["peer"], 3),
        "storm_seconds": storm_s,
        "ours_storm": storms["clmc"],
        "peer_storm": storms["influxdb"],
        "batches": batches_n,
        "batch_points": BATCH,
        "client_threads": THREADS,
        "load_avg_end": round(os.getloadavg()[0], 2),
    }
    print(
        f"query under a write storm: clmc p99 {storms['clmc']['query_p99_s']:.3f} s (target < 1), "
        f"influxdb p99 {storms['influxdb']['query_p99_s']:.3f} s"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
