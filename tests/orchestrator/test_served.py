"""Against real `flame serve pce` and `flame serve orchestrator` processes: the HTTP registrar
(SFEMC-7 delegated names at the PCE) and the CLI (deploy --plan, deploy, status, logs, undeploy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flame.common.ports import free_port
from flame.sfemc.registrar import HttpRegistrar, RegistrationRefused
from flame.sfr.client import PceClient
from flame.sfr.models import Endpoint

from .served import FLAME, TOPOLOGY, ServedPlatform, served_platform, sfe_processes

DATA = Path(__file__).parent / "data"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedPlatform]:
    sp = served_platform(tmp_path)
    try:
        sp.start_pce()
        with PceClient(sp.pce_url, sp.operator) as pce:
            pce.delegate("echo.example", "acme")
            pce.delegate("globex.example", "globex")
        yield sp
    finally:
        assert sp.close() == []


@pytest.mark.asyncio
async def test_http_registrar_enforces_delegations(served: ServedPlatform) -> None:
    registrar = HttpRegistrar(served.pce_url, served.operator)
    try:
        ok = Endpoint(
            "e1.web.edge-a", "web.echo.example", "edge-a", "127.0.0.1", 9000, "echo", "acme"
        )
        await registrar.register(ok)
        await registrar.register(ok)  # idempotent
        assert [e.sfe for e in await registrar.registered()] == ["e1.web.edge-a"]
        assert await registrar.owner("deep.web.echo.example") == "acme"
        theirs = Endpoint(
            "e2.web.edge-a", "www.globex.example", "edge-a", "127.0.0.1", 9001, "echo", "acme"
        )
        with pytest.raises(
            RegistrationRefused,
            match=r"may not register 'www\.globex\.example': it is delegated to another tenant",
        ):
            await registrar.register(theirs)
        nobody = Endpoint(
            "e3.web.edge-a", "x.unowned.example", "edge-a", "127.0.0.1", 9002, "echo", "acme"
        )
        with pytest.raises(RegistrationRefused, match="not delegated to any tenant"):
            await registrar.register(nobody)
        await registrar.withdraw("e1.web.edge-a")
        await registrar.withdraw("e1.web.edge-a")  # idempotent
        assert await registrar.registered() == []
    finally:
        await registrar.close()


@pytest.mark.asyncio
async def test_a_plan_sees_a_delegation_made_just_before_it(served: ServedPlatform) -> None:
    """SFEMC-7: `flame delegate` then `flame deploy` at once: the plan's ownership check asks
    the PCE, not the registrar's short-lived cache (it refused such a deploy once in CI)."""
    registrar = HttpRegistrar(served.pce_url, served.operator, delegation_ttl_s=3600)
    try:
        assert await registrar.owner("store.media.example") is None  # cached for an hour
        with PceClient(served.pce_url, served.operator) as pce:
            pce.delegate("media.example", "acme")
        assert await registrar.owner("store.media.example") == "acme"
    finally:
        await registrar.close()


def flame(
    served: ServedPlatform, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**served.env, "FLAME_API_URL": served.api_url, "FLAME_TOKEN": token or served.acme}
    return subprocess.run(
        [*FLAME, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_cli_deploy_status_logs_undeploy(served: ServedPlatform) -> None:
    served.start_orchestrator()
    template = str(DATA / "echo-service.yaml")

    bad = DATA.parent / "bad.yaml"
    bad.write_text(
        (DATA / "echo-service.yaml")
        .read_text()
        .replace("image: echo:1.0\n        fqdn: web", "image: 7\n        fqdn: web")
    )
    try:
        r = flame(served, "deploy", str(bad))
    finally:
        bad.unlink()
    assert r.returncode == 1
    assert f"{bad}:15:" in r.stderr  # the path as given, not only its basename
    assert "error(s)" in r.stderr

    r = flame(served, "deploy", template, "--plan")
    assert r.returncode == 0, r.stderr
    assert "+ echo-1.web.edge-a -> connected" in r.stdout
    assert "+ echo-1.api.edge-a -> booted" in r.stdout

    r = flame(served, "deploy", template)
    assert r.returncode == 0, r.stderr
    assert "echo: 3/3 endpoints at their desired state" in r.stderr  # the progress display

    # A plan with blockers exits 1 (it exited 0 while listing them): the operator plans the
    # chain for another tenant, whose name 'echo' is taken.
    r = flame(served, "deploy", template, "--plan", "--tenant", "other", token=served.operator)
    assert r.returncode == 1
    assert "is taken" in r.stderr
    assert "1 blocker" in r.stderr

    r = flame(served, "--json", "status", "echo")
    assert r.returncode == 0
    status = json.loads(r.stdout)
    assert {e["sfe"]: e["state"] for e in status["endpoints"]} == {
        "echo-1.web.edge-a": "connected",
        "echo-1.web.edge-b": "connected",
        "echo-1.api.edge-a": "booted",
    }
    assert sorted(sfe_processes(served.tmp).values()) == sorted(
        e["sfe"] for e in status["endpoints"]
    )

    r = flame(served, "status")
    assert r.returncode == 0
    assert r.stdout.startswith("echo: 3/3")

    # Issue 14 item 7: a crash the VIM restarted the SFE after shows in the API and the CLI.
    assert {e["restarts"] for e in status["endpoints"]} == {0}
    victim = next(
        pid for pid, sfe in sfe_processes(served.tmp).items() if sfe == "echo-1.api.edge-a"
    )
    os.killpg(os.getpgid(victim), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        r = flame(served, "--json", "status", "echo")
        api = next(e for e in json.loads(r.stdout)["endpoints"] if e["sfe"] == "echo-1.api.edge-a")
        if api["restarts"]:
            break
        assert time.monotonic() < deadline, api
        time.sleep(0.2)
    assert api["restarts"] == 1
    assert "exited with status -9" in api["last_crash"]
    r = flame(served, "status", "echo")
    assert "1 restart(s) after crashes" in r.stdout
    assert "restarted 1x" in r.stdout

    r = flame(served, "logs", "echo-1.web.edge-a")
    assert r.returncode == 0

    r = flame(served, "status", "echo", token=served.operator.replace(served.operator[-4:], "AAAA"))
    assert r.returncode == 1
    assert "unknown or revoked token" in r.stderr

    r = flame(served, "undeploy", "echo")
    assert r.returncode == 0, r.stderr
    assert "echo: removed" in r.stderr
    assert sfe_processes(served.tmp) == {}
    r = flame(served, "status", "echo")
    assert r.returncode == 1
    assert "no service function chain 'echo' of tenant 'acme'" in r.stderr


def test_serve_orchestrator_without_a_clmc_says_so(tmp_path: Path) -> None:
    """Issue 18 item 5: without --clmc the orchestrator kept alert rules in a test double, so
    a service's policies silently never fired."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(tmp_path / "config.toml"),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
    }
    (tmp_path / "config.toml").touch()
    r = subprocess.run(
        [*FLAME, "serve", "orchestrator", "--topology", str(TOPOLOGY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert "--clmc URL" in r.stderr
    assert "--no-clmc" in r.stderr


def test_serve_orchestrator_with_no_clmc_and_no_pce_says_what_it_runs(tmp_path: Path) -> None:
    """Issue 18 items 1 and 5: `flame serve orchestrator` parses its options into the
    factory's settings; run with --no-clmc and no PCE, it says on start that alert rules are
    not evaluated and that endpoints are registered in its own process only."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(tmp_path / "config.toml"),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
    }
    (tmp_path / "config.toml").touch()
    port = free_port()
    log = tmp_path / "orchestrator.log"
    with log.open("wb") as out:
        args = ["serve", "orchestrator", "--topology", str(TOPOLOGY), "--no-clmc"]
        proc = subprocess.Popen(
            [*FLAME, *args, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60  # generous: a loaded 2-core machine starts slowly
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "warning: --no-clmc: alert rules are not evaluated" in text
    assert "endpoints are registered in this process only" in text
    assert "warning: no API tokens in" in text
    assert (
        f"orchestrator + SFEMC on http://127.0.0.1:{port} (topology 'two-clusters', "
        "store sqlite, registrar in-process)"
    ) in text
    assert proc.returncode in (0, -signal.SIGTERM)  # stopped by the signal, not failed


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
