"""End to end with real processes (ORCH-6, SFEMC-5): the echo SF on two clusters through the
orchestrator's HTTP API and the process VIM; change the template and see only the diff
applied; undeploy and see nothing left running."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from flame.sfemc.images import ImageRepository, build_image
from flame.sfemc.registrar import InProcessRegistrar
from flame.sfemc.runtime import port_ranges
from flame.sfemc.vim.process import ProcessVim
from flame.topology.loader import load_topology
from ranges import sfe_port_base

from .harness import ROOT, Platform, running_platform

pytestmark = pytest.mark.asyncio

DATA = Path(__file__).parent / "data"
TOPOLOGY = DATA / "two-clusters.yaml"
TEMPLATE = (DATA / "echo-service.yaml").read_text()
ECHO = ROOT / "examples" / "sf" / "echo"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


@pytest_asyncio.fixture
async def echo_platform(tmp_path: Path) -> AsyncIterator[tuple[Platform, ProcessVim]]:
    repo = ImageRepository(tmp_path / "images")
    repo.put(build_image(ECHO)[0], tags=["1.0"])
    base = sfe_port_base()  # two clusters' ranges, apart from free_port's (tests/ranges.py)
    vim = ProcessVim(
        tmp_path / "vim", port_ranges(load_topology(TOPOLOGY), base), repo, grace_s=2.0
    )
    registrar = InProcessRegistrar({"echo.example": "acme"})
    try:
        async with running_platform(
            tmp_path, {"edge-a": vim, "edge-b": vim}, registrar, topology=TOPOLOGY, drain_s=0.1
        ) as p:
            yield p, vim
    finally:
        for status in await vim.list():  # never leave an SFE process behind
            await vim.remove(status.sfe)
        await vim.close()


async def pids(vim: ProcessVim) -> dict[str, int]:
    return {s.sfe: s.pid for s in await vim.list() if s.pid is not None}


async def test_deploy_change_undeploy_with_real_processes(
    echo_platform: tuple[Platform, ProcessVim],
) -> None:
    p, vim = echo_platform
    registrar = p.sfemc.registrar
    assert isinstance(registrar, InProcessRegistrar)
    async with p.client(p.acme) as c:
        t0 = time.perf_counter()
        r = await c.post("/v1/services", json={"template": TEMPLATE, "name": "echo.yaml"})
        assert r.status_code == 202, r.text
        await p.settle(30)
        deploy_s = time.perf_counter() - t0
        status = (await c.get("/v1/services/echo")).json()
        assert {e["sfe"]: e["state"] for e in status["endpoints"]} == {
            "echo-1.web.edge-a": "connected",
            "echo-1.web.edge-b": "connected",
            "echo-1.api.edge-a": "booted",
        }, status
        print(f"\ndeploy of 3 process SFEs to their states: {deploy_s:.2f}s")

        # the connected endpoints really serve, each as itself
        async with httpx.AsyncClient() as web:
            for sfe in ("echo-1.web.edge-a", "echo-1.web.edge-b"):
                ep = registrar.endpoints[sfe]
                answer = (await web.get(f"http://{ep.host}:{ep.port}/hello")).json()
                assert answer["sfe"] == sfe
        before = await pids(vim)
        assert set(before) == {"echo-1.web.edge-a", "echo-1.web.edge-b", "echo-1.api.edge-a"}

        # change only web's environment on... everywhere, and api's nothing: only web replaced
        changed = TEMPLATE.replace("ROLE: web", "ROLE: web2")
        plan = (await c.post("/v1/services/echo/plan", json={"template": changed})).json()
        assert [e["sfe"] for e in plan["change"]] == ["echo-1.web.edge-a", "echo-1.web.edge-b"]
        assert plan["unchanged"] == ["echo-1.api.edge-a"]
        assert plan["add"] == plan["remove"] == []
        r = await c.post("/v1/services", json={"template": changed})
        assert r.json()["changed"] == ["echo-1.web.edge-a", "echo-1.web.edge-b"]
        await p.settle(30)
        after = await pids(vim)
        assert after["echo-1.api.edge-a"] == before["echo-1.api.edge-a"]  # untouched
        assert after["echo-1.web.edge-a"] != before["echo-1.web.edge-a"]
        assert not alive(before["echo-1.web.edge-a"])
        assert not alive(before["echo-1.web.edge-b"])
        assert sorted(registrar.endpoints) == ["echo-1.web.edge-a", "echo-1.web.edge-b"]

        # a policy fires: the booted api surrogate is connected, fast
        async with p.client(p.operator) as o:
            t1 = time.perf_counter()
            event = {
                "id": "e1",
                "alert": "slow_web",
                "sfc": "echo",
                "level": "critical",
                "time": time.time(),
            }
            assert (await o.post("/v1/sfemc/events", json=event)).json()["decision"] == "applied"
            await p.settle(10)
            latency = time.perf_counter() - t1
        assert "echo-1.api.edge-a" in registrar.endpoints
        assert latency < 1.0, latency
        print(f"alert event -> booted surrogate connected: {latency * 1000:.1f} ms")

        # undeploy: nothing left running, nothing registered
        running = list((await pids(vim)).values())
        assert (await c.delete("/v1/services/echo")).status_code == 202
        await p.settle(30)
        assert (await c.get("/v1/services/echo")).status_code == 404
    assert await vim.list() == []
    assert registrar.endpoints == {}
    assert [pid for pid in running if alive(pid)] == []
