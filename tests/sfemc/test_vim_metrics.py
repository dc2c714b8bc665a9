"""Per-SFE and host resource metrics from the process VIM (CLMC-8), with real sandboxed SFE
processes and a real CLMC: Telegraf's measurement and field names, the tags alert rules and
tenant scoping need, CPU of the whole process tree, restarts, and a CLMC that is away."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim.metrics import HostSampler, SfeSampler, _cgroup_cpu, net_dev, tree
from flame.sfemc.vim.metrics_reporter import MetricsReporter, for_process_vim
from flame.sfemc.vim.process import ProcessVim

from .vim import conftest as vim_fixtures
from .vim.conftest import PidWatch, port_base, spec

# The VIM tests' fixtures (a repository, a process VIM whose SFEs must all be gone at the end)
pid_watch = vim_fixtures.pid_watch
repo = vim_fixtures.repo
vim = vim_fixtures.vim

BURNER = Path(__file__).resolve().parents[2] / "examples" / "sf" / "cpu-burner"


@pytest.fixture
def burner_digest(repo: ImageRepository) -> str:
    return repo.put(build_image(BURNER)[0]).digest


Field = int | float | str | bool  # an InfluxDB line-protocol field value


def _value(text: str) -> Field:
    if text.endswith("i"):
        return int(text[:-1])
    if text.startswith('"'):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return float(text)


def _points(lines: list[str]) -> list[tuple[str, dict[str, str], dict[str, Field]]]:
    """Our own points (no escaped characters in them here) as (measurement, tags, fields)."""
    out = []
    for line in lines:
        assert "\\" not in line, line
        head, fields, stamp = line.split(" ")
        assert int(stamp) > 0
        name, *tags = head.split(",")
        out.append(
            (
                name,
                dict(t.split("=", 1) for t in tags),
                {k: _value(v) for k, v in (f.split("=", 1) for f in fields.split(","))},
            )
        )
    return out


async def _post(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(url, timeout=5)


@pytest.mark.asyncio
async def test_clmc8_an_sfe_burning_cpu_shows_in_cpu_usage_user_with_its_tags(
    vim: ProcessVim, burner_digest: str, pid_watch: PidWatch
) -> None:
    """The burner's busy child process counts (the process tree), as `cpu.usage_user` of the
    one core its image asks for, tagged so that `resource_type: {sf, cluster}` and tenant
    scoping match; `procstat` has Telegraf's fields."""
    status = await vim.place(spec(burner_digest, sfe="i1.burner.c1", cpus=1.0))
    status = await vim.boot("i1.burner.c1")
    sampler = SfeSampler(vim.sfes_dir, host="h1")
    first = _points(sampler.sample())
    assert [m for m, _, _ in first] == ["procstat", "procstat_lookup"]  # no rate yet
    url = f"http://{status.host}:{status.ports['http']}"
    assert (await _post(url + "/burn?seconds=5")).status_code == 202
    await asyncio.sleep(1.5)
    points = _points(sampler.sample())
    cpu = next((t, f) for m, t, f in points if m == "cpu")
    tags, fields = cpu
    assert tags == {
        "cpu": "sfe",
        "sfc": "svc",
        "sfci": "i1",
        "sf": "burner",
        "sfe": "i1.burner.c1",
        "cluster": "c1",
        "tenant": "acme",
        "fqdn": "echo.example",
        "host": "h1",
    }
    # Well above idle, at most all it may use. The bound is low because the machine is shared:
    # with autogroup scheduling the SFE's session gets one group's share of the cores (16 %
    # of a core measured under a load of 13); alone, the burn is ~100 %.
    busy = float(fields["usage_user"])
    assert 5.0 < busy <= 100.0, fields
    assert float(fields["usage_idle"]) == pytest.approx(
        max(0.0, 100.0 - busy - float(fields["usage_system"]))
    )
    procstat = next(f for m, _, f in points if m == "procstat")
    assert set(procstat) >= {
        "cpu_time_user",
        "cpu_time_system",
        "cpu_usage",
        "memory_rss",
        "num_threads",
        "pid",
        "restarts",
    }
    assert procstat["pid"] == status.pid
    assert int(procstat["memory_rss"]) > 5_000_000
    lookup = next(f for m, _, f in points if m == "procstat_lookup")
    assert lookup["running"] == 1
    assert int(lookup["pid_count"]) >= 3  # bwrap, the SF, its burner
    # Sharing the host's network namespace: no per-SFE `net` point, never the host's counters.
    assert not [m for m, _, _ in points if m == "net"]

    assert (await _post(url + "/stop")).status_code == 200
    await asyncio.sleep(1.0)
    sampler.sample()  # the interval that held the end of the burn
    await asyncio.sleep(1.0)
    idle = next(f for m, _, f in _points(sampler.sample()) if m == "cpu")
    assert float(idle["usage_user"]) < 3.0, idle


@pytest.mark.asyncio
async def test_clmc8_restarts_and_a_dead_sfe_are_reported(
    vim: ProcessVim, burner_digest: str, pid_watch: PidWatch
) -> None:
    await vim.place(spec(burner_digest, sfe="i1.burner.c1"))
    status = await vim.boot("i1.burner.c1")
    sampler = SfeSampler(vim.sfes_dir)
    assert status.pid is not None
    os.killpg(status.pid, signal.SIGKILL)
    # Between the crash and the supervisor's restart, or after it: restarts counts it.
    deadline = time.monotonic() + 10
    restarts = 0
    while time.monotonic() < deadline and restarts < 1:
        await asyncio.sleep(0.05)
        points = _points(sampler.sample())
        lookup = next(f for m, _, f in points if m == "procstat_lookup")
        restarts = int(lookup["restarts"])
    assert restarts == 1
    await vim.stop("i1.burner.c1")
    assert _points(sampler.sample()) == []  # not wanted running: nothing to report


def test_host_metrics_have_telegrafs_names_per_cluster(tmp_path: Path) -> None:
    sampler = HostSampler(["c2", "c1"], tmp_path, host="h1")
    first = _points(sampler.sample())
    assert "cpu" not in {m for m, _, _ in first}  # usage is a rate: needs two samples
    time.sleep(0.2)
    points = _points(sampler.sample())
    by = {(m, t["cluster"]) for m, t, _ in points}
    for cluster in ("c1", "c2"):
        assert {("cpu", cluster), ("mem", cluster), ("disk", cluster), ("system", cluster)} <= by
    cpu = next(f for m, t, f in points if m == "cpu")
    assert set(cpu) >= {"usage_user", "usage_system", "usage_idle", "usage_iowait"}
    total = sum(float(v) for v in cpu.values())
    assert abs(total - 100.0) < 0.5
    mem = next(f for m, _, f in points if m == "mem")
    assert 0 < int(mem["used"]) < int(mem["total"])
    disk = next((t, f) for m, t, f in points if m == "disk")
    assert disk[0]["path"] == str(tmp_path)
    assert int(disk[1]["total"]) > 0
    system = next(f for m, _, f in points if m == "system")
    assert set(system) == {"load1", "load5", "load15", "n_cpus", "uptime"}
    net = [t["interface"] for m, t, _ in points if m == "net"]
    assert "lo" in net
    assert all(set(t) <= {"cpu", "host", "cluster", "path", "interface"} for _, t, _ in points)


def test_cgroup_cpu_stat_and_net_dev_are_read_as_the_kernel_writes_them(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text(
        "usage_usec 3500000\nuser_usec 2500000\nsystem_usec 1000000\nnr_periods 0\n"
    )
    assert _cgroup_cpu(tmp_path) == (2.5, 1.0)
    assert _cgroup_cpu(tmp_path / "missing") is None
    (tmp_path / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n"
        "garbage line\n"
    )
    assert net_dev(tmp_path / "dev") == {
        "eth0": {
            "bytes_recv": 1000,
            "packets_recv": 10,
            "err_in": 1,
            "drop_in": 2,
            "bytes_sent": 2000,
            "packets_sent": 20,
            "err_out": 3,
            "drop_out": 4,
        }
    }


def test_the_process_tree_follows_descendants_only() -> None:
    from flame.sfemc.vim.metrics import ProcEntry

    def entry(pid: int, ppid: int) -> ProcEntry:
        return ProcEntry(pid, ppid, 0, 0.0, 0.0, 0, 1)

    table = {
        p.pid: p for p in (entry(1, 0), entry(10, 1), entry(11, 10), entry(12, 11), entry(20, 1))
    }
    assert sorted(e.pid for e in tree(10, table)) == [10, 11, 12]
    assert tree(99, table) == []


class _Clmc:
    """A real CLMC (no tokens) on a loopback port, which may be started late (away, then back)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        import uvicorn

        from flame.clmc.service import ClmcService

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = ClmcService(directory, fsync=False)
        self.server = uvicorn.Server(
            uvicorn.Config(self.service.app, host="127.0.0.1", port=self.port, log_config=None)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Clmc:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the CLMC did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def query(self, q: str) -> list[list[Any]]:  # Any: decoded JSON rows
        response = httpx.get(
            self.url + "/query",
            params={"db": "flame", "q": q, "read_your_writes": "true"},
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        series = response.json()["results"][0].get("series", [])
        return [row for one in series for row in one["values"]]


@pytest.fixture
def clmc(tmp_path: Path) -> Iterator[_Clmc]:
    with _Clmc(tmp_path / "clmc") as server:
        yield server


def test_points_kept_while_the_clmc_is_away_are_sent_when_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    host = HostSampler(["c1"], tmp_path, host="h1")
    reporter = MetricsReporter(f"http://127.0.0.1:{port}", None, None, host, interval_s=0.1)
    try:
        assert reporter.tick() is False  # nothing listens yet
        time.sleep(0.1)
        assert reporter.tick() is False
        kept = reporter.backlog
        assert kept > 0
        with _Clmc(tmp_path / "clmc", port) as clmc:
            assert reporter.tick() is True
            assert reporter.backlog == 0
            assert reporter.sent >= kept
            loads = clmc.query('SELECT "load1" FROM "system" WHERE "host" = \'h1\'')
            assert len(loads) == 3  # every sample, the two made while it was away included
    finally:
        reporter.close()


@pytest.mark.asyncio
async def test_the_reporter_of_a_process_vim_sends_sfe_and_host_points(
    vim: ProcessVim, burner_digest: str, pid_watch: PidWatch, clmc: _Clmc
) -> None:
    await vim.place(spec(burner_digest, sfe="i1.burner.c1"))
    await vim.boot("i1.burner.c1")
    reporter = for_process_vim(vim, clmc.url, None, interval_s=0.2)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (reporter.sent == 0 or reporter.samples < 3):
            await asyncio.sleep(0.05)
    finally:
        reporter.close()
    measurements = {row[0] for row in clmc.query("SHOW MEASUREMENTS")}
    assert {"cpu", "procstat", "procstat_lookup", "mem", "disk", "system", "net"} <= measurements
    # What the example's trigger asks for: cpu.usage_user of one SF on one cluster.
    rows = clmc.query(
        'SELECT "usage_user" FROM "cpu" WHERE "sf" = \'burner\' AND "cluster" = \'c1\''
    )
    assert rows
    assert all(0.0 <= float(r[1]) <= 100.0 for r in rows)
    clusters = clmc.query('SHOW TAG VALUES FROM "mem" WITH KEY = "cluster"')
    assert {r[1] for r in clusters} == {"c1", "c2"}  # the VIM's clusters, one host copy each


AGENT_TOPOLOGY = """\
flame_topology: 1
name: agent-metrics
service_routers:
  sr-a: {address: 127.0.0.1}
clusters:
  edge-b: {sr: sr-a, capacity: {cpus: 2, memory: 2 GB, disk: 10 GB}}
"""


def test_a_vim_agent_reports_its_host_to_the_clmc(tmp_path: Path, clmc: _Clmc) -> None:
    """`flame serve vim --clmc URL`: the cluster host's metrics, tagged with its cluster."""
    topology = tmp_path / "topology.yaml"
    topology.write_text(AGENT_TOPOLOGY)
    (tmp_path / "config.toml").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(tmp_path / "config.toml"),
        "FLAME_STATE_DIR": str(tmp_path / "agent"),
        "HOME": str(tmp_path / "home"),
    }
    argv = [sys.executable, "-m", "flame", "serve", "vim", "--cluster", "edge-b"]
    argv += ["--topology", str(topology), "--port", str(free_port())]
    argv += ["--port-base", str(port_base()), "--clmc", clmc.url, "--metrics-interval", "0.2"]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        rows: list[list[object]] = []
        while time.monotonic() < deadline and not rows:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
            rows = clmc.query('SELECT "usage_idle" FROM "cpu" WHERE "cluster" = \'edge-b\'')
        assert rows, (tmp_path / "agent.log").read_text()
        tags = clmc.query('SHOW TAG VALUES FROM "system" WITH KEY = "cluster"')
        assert [r[1] for r in tags] == ["edge-b"]
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()


def test_cpu_usage_is_a_share_of_the_cores_the_sfe_may_use(tmp_path: Path) -> None:
    """`cpu.usage_user` is relative to the SFE's `cpus` (the spec's, else its image's, capped
    at the host's cores), else to every core of the host."""
    sampler = SfeSampler(tmp_path, cores=4)
    image = {"resources": {"cpus": 0.5}}
    assert sampler._allowed_cores({"spec": {"cpus": 2.0}, "manifest": image}) == 2.0
    assert sampler._allowed_cores({"spec": {"cpus": None}, "manifest": image}) == 0.5
    assert sampler._allowed_cores({"spec": {"cpus": 16}, "manifest": {}}) == 4.0
    assert sampler._allowed_cores({"spec": {}, "manifest": {"resources": {}}}) == 4.0


def test_an_sfe_in_its_own_network_namespace_gets_net_points(tmp_path: Path) -> None:
    """Per-SFE `net` counters come from the SFE's own network namespace (never `lo`); an SFE
    sharing the sampler's namespace gets none (the first test)."""
    from flame.sfemc.vim._proc import start_time

    script = "ip link add v0 type veth peer name v1 && ip link set v0 up && exec sleep 30"
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", script])
    try:
        sfe = tmp_path / "sfes" / "i1.web.c1"
        sfe.mkdir(parents=True)
        doc = {
            "spec": {"sfe": "i1.web.c1", "sf": "web", "cluster": "c1", "tenant": "acme"},
            "desired": "running",
            "restarts": 0,
        }
        (sfe / "state.json").write_text(json.dumps(doc))
        (sfe / "pid.json").write_text(json.dumps({"pid": proc.pid, "start": start_time(proc.pid)}))
        sampler = SfeSampler(tmp_path / "sfes", host="h1")
        deadline = time.monotonic() + 10
        nets: list[tuple[str, dict[str, str], dict[str, Field]]] = []
        while time.monotonic() < deadline and len(nets) < 2:
            if proc.poll() is not None:
                pytest.skip("cannot make a network namespace with a veth pair here")
            nets = [p for p in _points(sampler.sample()) if p[0] == "net"]
            time.sleep(0.05)
        assert sorted(t["interface"] for _, t, _ in nets) == ["v0", "v1"]
        for _, tags, fields in nets:
            assert tags["sfe"] == "i1.web.c1"
            assert tags["tenant"] == "acme"
            assert set(fields) == {
                "bytes_sent",
                "bytes_recv",
                "packets_sent",
                "packets_recv",
                "err_in",
                "err_out",
                "drop_in",
                "drop_out",
            }
    finally:
        proc.kill()
        proc.wait()
