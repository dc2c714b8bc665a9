"""Crash safety (SFEMC-5): `kill -9` the orchestrator + SFEMC process at random points while it
deploys and undeploys real process SFEs, restart it, and check it converges with no orphan
process and no duplicate or stale endpoint registration at the (real) PCE."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from flame.sfemc.store import open_store
from flame.sfr.client import PceClient

from .served import ServedPlatform, served_platform, sfe_processes

TEMPLATE = (Path(__file__).parent / "data" / "echo-service.yaml").read_text()
RUNNING = {"echo-1.web.edge-a", "echo-1.web.edge-b", "echo-1.api.edge-a"}
CONNECTED = {"echo-1.web.edge-a", "echo-1.web.edge-b"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedPlatform]:
    sp = served_platform(tmp_path)
    try:
        yield sp
    finally:
        left = sp.close()
        assert left == [], f"SFE processes left running after the test: {left}"


def wait_for(check: Callable[[], tuple[bool, object]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout:g}s; last seen: {last}")


@pytest.mark.slow
def test_kill_9_at_random_points_converges(served: ServedPlatform) -> None:
    rng = random.Random(int(os.environ.get("FLAME_CRASH_SEED", "20261130")))
    served.start_pce()
    with PceClient(served.pce_url, served.operator) as pce:
        pce.delegate("echo.example", "acme")
    served.start_orchestrator()
    api = httpx.Client(
        base_url=served.api_url, headers={"Authorization": f"Bearer {served.acme}"}, timeout=30
    )
    pce = PceClient(served.pce_url, served.operator)
    kills: list[tuple[str, list[tuple[str, str, str]]]] = []

    def registrations() -> dict[str, tuple[str, int]]:
        return {
            r.endpoint.sfe: (r.endpoint.host, r.endpoint.port)
            for r in pce.registrations()
            if r.endpoint.sfc == "echo"
        }

    def deployed() -> tuple[bool, object]:
        try:
            status = api.get("/v1/services/echo").json()
        except httpx.HTTPError as exc:
            return False, exc
        states = {e["sfe"]: e["state"] for e in status.get("endpoints", [])}
        want = {
            "echo-1.web.edge-a": "connected",
            "echo-1.web.edge-b": "connected",
            "echo-1.api.edge-a": "booted",
        }
        procs = sorted(sfe_processes(served.tmp).values())
        return states == want and procs == sorted(RUNNING) and set(registrations()) == CONNECTED, (
            states,
            procs,
        )

    def gone() -> tuple[bool, object]:
        try:
            code = api.get("/v1/services/echo").status_code
        except httpx.HTTPError as exc:
            return False, exc
        procs = sfe_processes(served.tmp)
        return code == 404 and not procs and not registrations(), (code, procs)

    def crash(label: str, max_delay: float) -> None:
        time.sleep(rng.uniform(0.0, max_delay))
        served.kill_orchestrator()
        # What the dead process left in its store: where in the lifecycle the kill landed.
        store = open_store(served.state_dir / "sfemc.sqlite3")
        try:
            kills.append(
                (label, sorted((e.sfe, e.state.value, e.desired) for e in store.endpoints()))
            )
        finally:
            store.close()
        served.start_orchestrator()

    try:
        for trial in range(5):
            r = api.post("/v1/services", json={"template": TEMPLATE, "name": "echo.yaml"})
            assert r.status_code in (200, 202), r.text
            # A deploy of the three SFEs takes 0.2-0.6 s here: kill early inside that window,
            # then again while the restarted process resumes.
            crash(f"deploy {trial}", 0.15)
            crash(f"deploy {trial} again", 0.15)
            wait_for(deployed, 60, f"deployed state after crashes in deploy {trial}")
            # each registration answers as its own endpoint: no stale port, no duplicate
            regs = registrations()
            assert len(set(regs.values())) == len(regs)
            for sfe, (host, port) in regs.items():
                assert httpx.get(f"http://{host}:{port}/x", timeout=5).json()["sfe"] == sfe
            assert api.delete("/v1/services/echo").status_code == 202
            crash(f"undeploy {trial}", 0.4)
            wait_for(gone, 60, f"nothing left after crash in undeploy {trial}")
    finally:
        api.close()
        pce.close()
    deploy_kills = [k for k in kills if k[0].startswith("deploy")]
    assert len(deploy_kills) >= 10
    # The kills did land mid-deploy: endpoints short of their desired state, several times.
    mid = [label for label, eps in deploy_kills if any(state != want for _, state, want in eps)]
    assert len(mid) >= 3, deploy_kills
