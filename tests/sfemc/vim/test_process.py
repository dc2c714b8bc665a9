"""The process VIM with real processes and real HTTP (ORCH-6, SFEMC-5): place, boot, health,
logs, crash restart, stop, remove, ports, limits, and re-adoption after the controller is killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.vim._proc import (
    CgroupLimiter,
    Limits,
    ProcId,
    find_cgroup2,
    read_pid_file,
    start_time,
)
from flame.sfemc.vim.base import PortSpec, VimError, VimState
from flame.sfemc.vim.process import ProcessVim

from .conftest import PidWatch, make_sf, port_base, spec

pytestmark = pytest.mark.asyncio
CONTROLLER = Path(__file__).with_name("_controller.py")


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.get(url, timeout=5)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_place_boot_serve_logs_stop_remove(vim: ProcessVim, echo_digest: str) -> None:
    placed = await vim.place(spec(echo_digest))
    assert placed.state is VimState.PLACED
    port = placed.ports["http"]
    assert port in vim.ports.ranges["c1"]
    assert (vim.sfes_dir / "i1.echo.c1" / "app" / "server.py").exists()
    assert await vim.place(spec(echo_digest)) == placed  # idempotent

    t0 = time.perf_counter()
    booted = await vim.boot("i1.echo.c1")
    boot_s = time.perf_counter() - t0
    assert booted.state is VimState.RUNNING
    assert booted.host == "127.0.0.1"
    assert booted.pid is not None
    assert boot_s < 5, boot_s
    body = (await get(f"http://127.0.0.1:{port}/hello")).json()
    assert body["sfe"] == "i1.echo.c1"
    assert body["fqdn"] == "echo.example"
    assert (await vim.boot("i1.echo.c1")).pid == booted.pid  # idempotent: no second process
    assert any("listening on 127.0.0.1" in line for line in await vim.logs("i1.echo.c1"))
    assert any("GET /hello" in line for line in await vim.logs("i1.echo.c1", tail=5))

    stopped = await vim.stop("i1.echo.c1")
    assert stopped.state is VimState.STOPPED
    assert not ProcId(booted.pid, start_time(booted.pid) or -1).alive() or (
        start_time(booted.pid) is None
    )
    with pytest.raises(httpx.ConnectError):
        await get(f"http://127.0.0.1:{port}/")
    assert any("stopped" in line for line in await vim.logs("i1.echo.c1"))  # SIGTERM, clean exit
    assert (await vim.stop("i1.echo.c1")).state is VimState.STOPPED  # idempotent

    rebooted = await vim.boot("i1.echo.c1")  # a stopped SFE boots again on the same port
    assert rebooted.state is VimState.RUNNING
    assert rebooted.ports == placed.ports

    await vim.remove("i1.echo.c1")
    assert (await vim.status("i1.echo.c1")).state is VimState.ABSENT
    assert not (vim.sfes_dir / "i1.echo.c1").exists()
    assert vim.ports.held().get("c1", {}) == {}
    await vim.remove("i1.echo.c1")  # idempotent


async def test_ports_are_distinct_persisted_and_exhaust_clearly(
    vim: ProcessVim, repo: ImageRepository, echo_digest: str, tmp_path: Path
) -> None:
    a = await vim.place(spec(echo_digest, "i1.a.c1"))
    b = await vim.place(spec(echo_digest, "i1.b.c1"))
    c = await vim.place(spec(echo_digest, "i1.c.c2", cluster="c2"))
    assert a.ports["http"] != b.ports["http"]
    assert c.ports["http"] in vim.ports.ranges["c2"]
    # A second driver on the same root (a restarted controller) knows what is taken.
    again = ProcessVim(vim.root, {"c1": vim.ports.ranges["c1"]}, repo)
    d = await again.place(spec(echo_digest, "i1.d.c1"))
    assert d.ports["http"] not in {a.ports["http"], b.ports["http"]}
    await again.remove("i1.d.c1")
    await again.close()

    base = free_port()  # a one-port range: it must be free now, whoever shares the machine
    tiny = ProcessVim(tmp_path / "tiny", {"c1": range(base, base + 1)}, repo)
    await tiny.place(spec(echo_digest, "i1.x.c1"))
    with pytest.raises(
        VimError,
        match=r"no free host ports: 1 wanted, 0 free in \d+-\d+ \(1 held by FLAME endpoints",
    ):
        await tiny.place(spec(echo_digest, "i1.y.c1"))
    await tiny.remove("i1.x.c1")
    assert (await tiny.place(spec(echo_digest, "i1.y.c1"))).ports["http"] == base
    await tiny.remove("i1.y.c1")
    await tiny.close()

    with pytest.raises(VimError, match="cluster 'nowhere' has no port range") as info:
        await vim.place(spec(echo_digest, "i1.z.nowhere", cluster="nowhere"))
    assert info.value.permanent


async def test_concurrent_placements_never_share_a_port(vim: ProcessVim, echo_digest: str) -> None:
    # Ports are taken before an SFE's state exists; a placement running at the same time must
    # not reclaim them as a dead SFE's (the orchestrator's end-to-end test once saw this).
    names = [f"i1.p{i}.c1" for i in range(8)]
    placed = await asyncio.gather(*(vim.place(spec(echo_digest, n)) for n in names))
    ports = [p.ports["http"] for p in placed]
    assert len(set(ports)) == len(ports)
    for name in names:
        await vim.remove(name)


async def test_integrity_is_checked_on_every_placement(
    vim: ProcessVim, repo: ImageRepository, echo_digest: str
) -> None:
    await vim.place(spec(echo_digest, "i1.a.c1"))
    blob = repo.blob_path(echo_digest)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(VimError, match="corrupted") as info:
        await vim.place(spec(echo_digest, "i1.b.c1"))
    assert info.value.permanent
    assert (await vim.status("i1.b.c1")).state is VimState.ABSENT
    with pytest.raises(VimError, match="no image named 'nope'"):
        await vim.place(spec("nope", "i1.c.c1"))


async def test_limits_are_applied_and_reported(vim: ProcessVim, echo_digest: str) -> None:
    status = await vim.place(spec(echo_digest, memory_bytes=300_000_000, cpus=0.5))
    status = await vim.boot(status.sfe)
    assert status.pid is not None
    assert status.limits is not None
    if find_cgroup2() is not None:
        assert status.limits.startswith("cgroup2")
        cgroup = Path(f"/proc/{status.pid}/cgroup").read_text()
        assert f"/flame/{vim.cgroups.base.name}/{status.sfe}" in cgroup  # type: ignore[union-attr]
    else:  # this host: cgroup v2 without controllers, so the kernel's rlimits carry it
        assert status.limits.startswith("rlimit RLIMIT_DATA=300000000")
        assert "cpu not enforced" in status.limits
        limits = Path(f"/proc/{status.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max data size"))
        assert line.split()[3:5] == ["300000000", "300000000"]


async def test_rlimit_is_enforced_by_the_kernel(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    hog = make_sf(
        repo,
        tmp_path,
        "hog",
        "try:\n    b = bytearray(400_000_000)\n    print('allocated')\n"
        "except MemoryError:\n    print('MemoryError')\nraise SystemExit(4)\n",
        ports="[8080]",  # so that boot waits for a health check that never comes
    )
    vim.cgroups = None  # the rlimit path, whatever the host offers
    await vim.place(spec(hog, "i1.hog.c1", memory_bytes=200_000_000))
    with pytest.raises(VimError, match="exited with status 4") as info:
        await vim.boot("i1.hog.c1")
    assert "MemoryError" in info.value.logs


async def test_crash_restarts_with_backoff(vim: ProcessVim, echo_digest: str) -> None:
    await vim.place(spec(echo_digest))
    first = await vim.boot("i1.echo.c1")
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)

    async def restarted() -> bool:
        s = await vim.status("i1.echo.c1")
        return s.state is VimState.RUNNING and s.restarts == 1 and s.pid != first.pid

    await wait_for(restarted, what="the first restart")
    second = await vim.status("i1.echo.c1")
    assert second.reason is not None
    assert "exited with status -9" in second.reason
    assert (await get(f"http://127.0.0.1:{second.ports['http']}/health")).status_code == 200
    assert second.pid is not None
    os.kill(second.pid, signal.SIGKILL)

    async def twice() -> bool:
        s = await vim.status("i1.echo.c1")
        return s.state is VimState.RUNNING and s.restarts == 2

    await wait_for(twice, what="the second restart")
    reason = (await vim.status("i1.echo.c1")).reason or ""
    assert "restart 2 in 0.1s" in reason  # back-off doubled (0.05 s, then 0.1 s)


async def test_boot_failures_say_why_with_the_last_output(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    dies = make_sf(
        repo,
        tmp_path,
        "dies",
        "print('config missing: FOO')\nraise SystemExit(3)\n",
        ports="[8080]",
    )
    await vim.place(spec(dies, "i1.dies.c1"))
    with pytest.raises(VimError, match="exited with status 3") as info:
        await vim.boot("i1.dies.c1")
    assert "config missing: FOO" in info.value.reason
    status = await vim.status("i1.dies.c1")
    assert status.state is VimState.FAILED
    assert "exited with status 3" in (status.reason or "")

    mute = make_sf(
        repo,
        tmp_path,
        "mute",
        "import time\nprint('warming up', flush=True)\ntime.sleep(60)\n",
        ports="[8080]",
        health="/health",
    )
    vim.boot_timeout_s = 1.0
    await vim.place(spec(mute, "i1.mute.c1"))
    with pytest.raises(VimError, match=r"not healthy after 1s \(GET /health on port \d+") as info:
        await vim.boot("i1.mute.c1")
    assert info.value.logs == ("warming up",)
    assert (await vim.status("i1.mute.c1")).pid is None  # the unhealthy process was stopped

    make_sf(repo, tmp_path, "ghost", "")
    src = tmp_path / "src" / "ghost" / "flame-sf.yaml"
    src.write_text("name: ghost\nentrypoint: [no-such-binary-flame]\n")
    ghost = repo.put(build_image(src.parent)[0]).digest
    await vim.place(spec(ghost, "i1.ghost.c1"))
    with pytest.raises(
        VimError, match="cannot start the entrypoint 'no-such-binary-flame'"
    ) as info:
        await vim.boot("i1.ghost.c1")
    assert info.value.permanent


async def test_stop_kills_the_whole_group_and_escalates(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path
) -> None:
    stubborn = make_sf(
        repo,
        tmp_path,
        "stubborn",
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal,time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n",
    )
    vim.grace_s = 0.3
    await vim.place(spec(stubborn, "i1.stubborn.c1"))
    status = await vim.boot("i1.stubborn.c1")  # no ports, no health: alive is enough
    assert status.state is VimState.RUNNING

    async def child_pid() -> bool:
        return any(line.startswith("child ") for line in await vim.logs("i1.stubborn.c1"))

    await wait_for(child_pid, what="the grandchild")
    line = next(x for x in await vim.logs("i1.stubborn.c1") if x.startswith("child "))
    grandchild = _host_pid(int(line.split()[1]), status.pid or 0)
    t0 = time.monotonic()
    await vim.stop("i1.stubborn.c1")
    assert time.monotonic() - t0 >= 0.3  # waited the grace period, then SIGKILL
    assert start_time(status.pid or 0) is None or not ProcId(status.pid or 0, -2).alive()
    await wait_for(lambda: _gone(grandchild), timeout=3, what="the grandchild to die")


def _host_pid(pid: int, pgid: int) -> int:
    """The host pid of the member of group `pgid` that sees itself as `pid` (a sandboxed SFE has
    its own PID namespace, so the pids it prints are not the host's)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        nspid = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()
        if int(nspid[-1]) == pid and int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
            return int(nspid[1])
    raise AssertionError(f"no process {pid} in group {pgid}")


async def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


async def test_controller_killed_then_processes_are_adopted(
    tmp_path: Path, repo: ImageRepository, echo_digest: str, pid_watch: PidWatch
) -> None:
    root = tmp_path / "vim"
    base = port_base() + 50
    controller = subprocess.Popen(
        [
            sys.executable,
            str(CONTROLLER),
            str(root),
            str(repo.root),
            str(base),
            echo_digest,
            "i1.a.c1",
            "i1.b.c1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        lines = [controller.stdout.readline() for _ in range(3)]
        assert lines[2].strip() == "ready", lines
        before = {d["sfe"]: d for d in map(json.loads, lines[:2])}
        pid_watch.scan()
    finally:
        controller.kill()  # SIGKILL: no clean-up code of the controller runs
        controller.wait()
        if controller.stdout is not None:
            controller.stdout.close()
    assert all(ProcId(d["pid"], start_time(d["pid"]) or -1).alive() for d in before.values())

    vim = ProcessVim(root, {"c1": range(base, base + 40)}, repo, backoff_s=(0.05, 0.5))
    try:
        listed = {s.sfe: s for s in await vim.list()}
        assert set(listed) == {"i1.a.c1", "i1.b.c1"}
        for sfe, old in before.items():
            assert listed[sfe].state is VimState.RUNNING, listed[sfe]
            assert listed[sfe].pid == old["pid"]  # adopted, not restarted
            assert listed[sfe].ports == old["ports"]
        assert (await vim.boot("i1.a.c1")).pid == before["i1.a.c1"]["pid"]  # no duplicate
        body = (await get(f"http://127.0.0.1:{before['i1.b.c1']['ports']['http']}/")).json()
        assert body["sfe"] == "i1.b.c1"

        # An adopted process that dies is restarted by the new controller.
        os.kill(before["i1.b.c1"]["pid"], signal.SIGKILL)

        async def restarted() -> bool:
            s = await vim.status("i1.b.c1")
            return s.state is VimState.RUNNING and s.pid != before["i1.b.c1"]["pid"]

        await wait_for(restarted, what="the adopted SFE to be restarted")
        assert (await vim.status("i1.b.c1")).restarts == 1
        pid_watch.scan()
    finally:
        for sfe in ("i1.a.c1", "i1.b.c1"):
            await vim.remove(sfe)
        await vim.close()
    assert not pid_watch.leftovers()


async def test_a_recycled_pid_is_never_adopted_or_signalled(
    tmp_path: Path, repo: ImageRepository, echo_digest: str
) -> None:
    root = tmp_path / "vim"
    base = port_base() + 60
    vim = ProcessVim(root, {"c1": range(base, base + 10)}, repo)
    await vim.place(spec(echo_digest))
    await vim.close()
    # A controller crash left a pid file whose pid now names an unrelated process (a sleeper).
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        real_start = start_time(bystander.pid)
        assert real_start is not None
        doc = {"pid": bystander.pid, "start": real_start - 1}
        (root / "sfes" / "i1.echo.c1" / "pid.json").write_text(json.dumps(doc))
        state = json.loads((root / "sfes" / "i1.echo.c1" / "state.json").read_text())
        state["desired"] = "stopped"
        (root / "sfes" / "i1.echo.c1" / "state.json").write_text(json.dumps(state))

        fresh = ProcessVim(root, {"c1": range(base, base + 10)}, repo)
        status = await fresh.status("i1.echo.c1")
        assert status.state is VimState.STOPPED
        assert status.pid is None
        await fresh.remove("i1.echo.c1")
        await fresh.close()
        assert bystander.poll() is None, "an unrelated process was killed"
        assert read_pid_file(root / "sfes" / "i1.echo.c1") is None
    finally:
        bystander.kill()
        bystander.wait()


async def test_environment_names_ports_and_leaks_no_secrets(
    vim: ProcessVim, repo: ImageRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAME_TOKEN", "flm_secret_of_the_controller")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    envdump = make_sf(
        repo,
        tmp_path,
        "envdump",
        "import json, os, socket, time\n"
        "print(json.dumps(dict(os.environ)), flush=True)\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(os.environ['FLAME_PORT'])))\n"
        "s.listen()\n"
        "time.sleep(60)\n",
        ports="[{name: http, port: 8080}, {name: admin-api, port: 9000}]",
        environment="{FROM_MANIFEST: m, OVERRIDDEN: manifest}",
    )
    status = await vim.boot(
        (await vim.place(spec(envdump, "i1.envdump.c1", environment={"OVERRIDDEN": "spec"}))).sfe
    )
    assert status.state is VimState.RUNNING  # no health check: the port accepting will do
    env = json.loads((await vim.logs("i1.envdump.c1"))[0])
    assert "FLAME_TOKEN" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["FLAME_PORT"] == str(status.ports["http"])
    assert env["FLAME_PORT_HTTP"] == str(status.ports["http"])
    assert env["FLAME_PORT_ADMIN_API"] == str(status.ports["admin-api"])
    assert env["FLAME_SFE"] == "i1.envdump.c1"
    assert env["FLAME_TENANT"] == "acme"
    assert env["FLAME_CLUSTER"] == "c1"
    assert env["FLAME_IMAGE"] == envdump
    assert (env["FROM_MANIFEST"], env["OVERRIDDEN"]) == ("m", "spec")
    assert "FLAME_SR_URL" not in env  # this VIM was given no SR for c1

    # Given its cluster's SR, an SFE learns where to send requests for other SFs' FQDNs.
    vim.sr_urls["c1"] = "http://127.0.1.1:8080"
    await vim.stop("i1.envdump.c1")
    await vim.boot("i1.envdump.c1")
    env = json.loads((await vim.logs("i1.envdump.c1"))[-1])
    assert env["FLAME_SR_URL"] == "http://127.0.1.1:8080"


async def test_replacing_with_another_image(
    vim: ProcessVim, repo: ImageRepository, echo_digest: str, tmp_path: Path
) -> None:
    first = await vim.place(spec(echo_digest))
    await vim.boot(first.sfe)
    other = make_sf(repo, tmp_path, "other", "print('v2')\n")
    with pytest.raises(VimError, match="stop it before re-placing"):
        await vim.place(spec(other))
    await vim.stop(first.sfe)
    replaced = await vim.place(spec(other, ports=(PortSpec("http", 8080),)))
    assert replaced.state is VimState.PLACED
    assert replaced.ports == first.ports  # the same SFE keeps its host port
    assert (vim.sfes_dir / first.sfe / "app" / "server.py").read_text() == "print('v2')\n"
    assert not list(vim.sfes_dir.glob(".*.placing"))


async def test_halt_all_stops_processes_and_the_next_controller_restarts_them(
    vim: ProcessVim, repo: ImageRepository, echo_digest: str
) -> None:
    await vim.place(spec(echo_digest, "i1.h.c1"))
    first = await vim.boot("i1.h.c1")
    assert first.pid is not None
    assert await vim.halt_all() == ["i1.h.c1"]
    assert await _gone(first.pid)
    assert await vim.halt_all() == []  # nothing left running
    await vim.close()
    # FLAME-in-a-box restarted: a new controller on the same root boots what was running.
    again = ProcessVim(vim.root, {"c1": vim.ports.ranges["c1"]}, repo, backoff_s=(0.05, 0.5))
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        status = await again.status("i1.h.c1")
        if status.state is VimState.RUNNING and status.pid not in (None, first.pid):
            break
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.1)
    await again.remove("i1.h.c1")
    await again.close()


async def test_two_vims_on_one_host_never_share_an_sfes_cgroup(tmp_path: Path) -> None:
    """SFEMC-4 limits: the same SFE name placed by two VIMs (two agents, two test runs) on one
    host gets two cgroups, each with its own limits. (A directory laid out as a cgroup v2 root
    stands in for /sys/fs/cgroup: this host's cgroup v2 has no controllers to delegate.)"""
    root = tmp_path / "cgroup"
    root.mkdir()
    a = CgroupLimiter(root, tmp_path / "vim-a")
    b = CgroupLimiter(root, tmp_path / "vim-b")
    procs_a, said_a = a.prepare(
        "i1.echo.c1", Limits(memory_bytes=100_000_000, cpus=0.5, disk_bytes=None)
    )
    procs_b, said_b = b.prepare(
        "i1.echo.c1", Limits(memory_bytes=200_000_000, cpus=None, disk_bytes=None)
    )
    assert procs_a != procs_b
    assert (procs_a.parent / "memory.max").read_text() == "100000000"
    assert (procs_b.parent / "memory.max").read_text() == "200000000"  # not overwritten
    assert not (procs_b.parent / "cpu.max").exists()
    assert said_a == "cgroup2 memory.max=100000000 cpu.max=50000 100000"
    assert said_b == "cgroup2 memory.max=200000000"
    # every level between the root and the SFE's group hands the controllers down
    for level in (root / "flame", a.base, b.base):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert CgroupLimiter(root, tmp_path / "vim-a").base == a.base  # stable across restarts
