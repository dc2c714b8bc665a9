"""Issue 13 item 2a, end to end with real processes: a PCE, an orchestrator + SFEMC on the
"control host", and a cluster agent (`flame serve vim --cluster edge-b`) for the other cluster,
its SFEs listening on the cluster's own address (127.0.2.2 here) and registered with it.

Each "host" has its own state directory; the agent's token store is a copy of the control
host's, as docs/deploy.md says to do. The agent pulls the echo image from the orchestrator's
repository over HTTP.

Then the agent is killed with SIGKILL (its SFE killed too while it is away), restarted, frozen
(SIGSTOP: a partition as the SFEMC sees it: connections hang) while the service is undeployed,
and thawed. Through all of it the SFEMC keeps each endpoint's state (never `failed`, never a
second SFE, never a withdrawn registration of a running SFE), and converges once the agent
answers: exactly one process per running endpoint, none after the undeploy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image
from ranges import sfe_port_base

from .procs import Procs, sfe_leaders, sfe_processes, wait_for

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "tests" / "orchestrator" / "data" / "echo-service.yaml").read_text()
EDGE_B = "127.0.2.2"
TOPOLOGY = f"""\
flame_topology: 1
name: two-hosts
locations:
  bristol: {{latitude: 51.45, longitude: -2.59}}
  bath: {{latitude: 51.38, longitude: -2.36}}
service_routers:
  sr-a: {{location: bristol, address: 127.0.0.1}}
  sr-b: {{location: bath, address: {EDGE_B}}}
clusters:
  edge-a: {{sr: sr-a, location: bristol, capacity: {{cpus: 4, memory: 4 GB, disk: 10 GB}}}}
  edge-b:
    sr: sr-b
    location: bath
    address: {EDGE_B}
    capacity: {{cpus: 4, memory: 4 GB, disk: 10 GB}}
links:
  - {{between: [sr-a, sr-b], latency: 3 ms}}
"""
WEB_B = "echo-1.web.edge-b"


class TwoHosts:
    """A control host (PCE, orchestrator) and a cluster host (the agent), each with its own
    state directory; the agent's token store is a copy of the control host's. `image` is the
    SF source put in the control host's repository as version 1.0; SFE ports come from this
    process's own range (ranges.py)."""

    def __init__(
        self,
        tmp: Path,
        *,
        topology: str = TOPOLOGY,
        image: Path = ROOT / "examples" / "sf" / "echo",
    ) -> None:
        self.tmp = tmp
        self.control = tmp / "control"
        self.edge = tmp / "edge"
        tokens = TokenStore(self.control / "tokens.json")
        self.operator = tokens.issue("ops", Role.OPERATOR)
        self.acme = tokens.issue("acme", Role.TENANT, "acme")
        self.router = tokens.issue("sr-a", Role.ROUTER)
        self.edge.mkdir(parents=True)
        shutil.copy2(self.control / "tokens.json", self.edge / "tokens.json")  # "copied"
        repo = ImageRepository(self.control / "images")
        self.digest = repo.put(build_image(image)[0], tags=["1.0"])
        self.topology = tmp / "topology.yaml"
        self.topology.write_text(topology)
        (tmp / "config.toml").write_text("# the FLAME_* variables configure the servers\n")
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
            "FLAME_CONFIG": str(tmp / "config.toml"),
            "FLAME_TOKEN": self.operator,
            "FLAME_LOG_LEVEL": "INFO",
        }
        self.control_env = {**base, "FLAME_STATE_DIR": str(self.control)}
        self.edge_env = {**base, "FLAME_STATE_DIR": str(self.edge)}
        self.procs = Procs(tmp / "logs", self.control_env)
        self.pce_url = f"http://127.0.0.1:{free_port()}"
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.agent_port = free_port(EDGE_B)
        self.agent_url = f"http://{EDGE_B}:{self.agent_port}"
        self.port_base = sfe_port_base()
        self.clients: list[httpx.Client] = []

    def start_pce(self) -> None:
        port = self.pce_url.rsplit(":", 1)[1]
        args = ["serve", "pce", "--topology", str(self.topology), "--port", port]
        self.procs.start("pce", args, self.pce_url + "/health")

    def start_agent(self) -> None:
        args = [
            *("serve", "vim", "--cluster", "edge-b", "--topology", str(self.topology)),
            *("--port", str(self.agent_port), "--images", self.api_url),
            *("--port-base", str(self.port_base)),
        ]
        self.procs.start("agent", args, self.agent_url + "/health", env=self.edge_env)

    def start_orchestrator(self) -> None:
        args = [
            *("serve", "orchestrator", "--topology", str(self.topology)),
            *("--port", self.api_url.rsplit(":", 1)[1], "--pce", self.pce_url),
            *("--vim", f"edge-b={self.agent_url}", "--no-clmc"),
            *("--drain", "0", "--resync", "1", "--port-base", str(self.port_base)),
        ]
        self.procs.start("orchestrator", args, self.api_url + "/health")

    def api(self, token: str) -> httpx.Client:
        client = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.procs.close()

    def registrations(self) -> dict[str, tuple[str, int]]:
        r = httpx.get(
            self.pce_url + "/v1/registrations",
            headers={"Authorization": f"Bearer {self.operator}"},
            trust_env=False,
        )
        r.raise_for_status()
        return {
            e["sfe"]: (e["host"], e["port"])
            for e in r.json()["registrations"]
            if e.get("sfc") == "echo"
        }


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[TwoHosts]:
    h = TwoHosts(tmp_path)
    try:
        yield h
    finally:
        h.close()
        left = sfe_processes(tmp_path)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), 9)
        assert not left, f"SFE processes left running: {left}"


def states(api: httpx.Client) -> dict[str, tuple[str, str | None]]:
    status = api.get("/v1/services/echo", params={"history": "false"}).json()
    return {e["sfe"]: (e["state"], e.get("reason")) for e in status.get("endpoints", [])}


WANT = {
    "echo-1.web.edge-a": "connected",
    "echo-1.web.edge-b": "connected",
    "echo-1.api.edge-a": "booted",
}


@pytest.mark.slow
def test_an_agent_killed_restarted_and_partitioned_never_duplicates_an_endpoint(
    hosts: TwoHosts,
) -> None:
    hosts.start_pce()
    httpx.put(
        hosts.pce_url + "/v1/delegations/echo.example",
        json={"tenant": "acme"},
        headers={"Authorization": f"Bearer {hosts.operator}"},
        trust_env=False,
    ).raise_for_status()
    hosts.start_orchestrator()
    hosts.start_agent()
    acme = hosts.api(hosts.acme)
    started = time.monotonic()
    r = acme.post("/v1/services", json={"template": TEMPLATE, "name": "echo.yaml"})
    assert r.status_code == 202, r.text

    def deployed() -> tuple[bool, object]:
        now = states(acme)
        return {k: s for k, (s, _) in now.items()} == WANT and all(
            reason is None for _, reason in now.values()
        ), now

    wait_for(deployed, 60, "echo deployed on both hosts")
    deploy_s = time.monotonic() - started
    # Where each SFE runs: web.edge-b on the agent's host only, the others on the control host.
    assert sorted(sfe_processes(hosts.edge).values()) == [WEB_B] * len(sfe_processes(hosts.edge))
    assert set(sfe_leaders(hosts.edge)) == {WEB_B}
    assert set(sfe_leaders(hosts.control)) == {"echo-1.web.edge-a", "echo-1.api.edge-a"}
    # The image came over HTTP into the agent's cache, verified.
    cached = ImageRepository(hosts.edge / "vim-agent" / "images").list()
    assert [i.digest for i in cached] == [hosts.digest.digest]
    # Registered with the cluster host's address, and it answers there.
    regs = hosts.registrations()
    assert regs[WEB_B][0] == EDGE_B
    assert regs["echo-1.web.edge-a"][0] == "127.0.0.1"
    answer = httpx.get(f"http://{EDGE_B}:{regs[WEB_B][1]}/", trust_env=False)
    assert answer.status_code == 200
    assert answer.json()["sfe"] == WEB_B

    # 1. kill -9 the agent, and its SFE while it is away.
    before = sfe_leaders(hosts.edge)[WEB_B]
    hosts.procs.kill9("agent")
    time.sleep(2.5)  # two resyncs of the SFEMC with the agent gone
    now = states(acme)
    assert now[WEB_B][0] == "connected", now  # not failed: nothing is known
    assert "did not answer" in str(now[WEB_B][1]), now
    assert WEB_B in hosts.registrations()  # the SFE still serves: its registration stays
    logs = acme.get(f"/v1/endpoints/{WEB_B}/logs")
    assert logs.status_code == 503, logs.text  # the agent is away: say so, retry later
    assert logs.json()["error"] == "vim_unavailable"
    assert sfe_leaders(hosts.edge) == {WEB_B: before}  # it outlives its agent
    os.killpg(before, 9)
    wait_for(lambda: (WEB_B not in sfe_leaders(hosts.edge), None), 10, "the SFE gone")

    # ... restarted: it adopts and restarts what should run; the SFEMC re-reads, no duplicate.
    restarted_at = time.monotonic()
    hosts.start_agent()
    wait_for(deployed, 30, "converged after the agent restart")
    wait_for(
        lambda: (WEB_B in sfe_leaders(hosts.edge), sfe_leaders(hosts.edge)),
        30,
        "the SFE restarted by the new agent",
    )
    recovery_s = time.monotonic() - restarted_at
    leaders = sfe_leaders(hosts.edge)
    assert set(leaders) == {WEB_B}
    assert leaders[WEB_B] != before
    status = acme.get("/v1/services/echo").json()
    web_b = next(e for e in status["endpoints"] if e["sfe"] == WEB_B)
    assert web_b["restarts"] >= 1, web_b  # the truth in flame status: it was restarted
    assert hosts.registrations()[WEB_B] == regs[WEB_B]  # same address and port
    transitions = [h["to"] for h in web_b.get("history", []) if "to" in h]
    assert "failed" not in transitions, web_b

    def answers() -> tuple[bool, object]:  # the new process may not be listening yet
        try:
            r = httpx.get(f"http://{EDGE_B}:{regs[WEB_B][1]}/", trust_env=False, timeout=5)
        except httpx.TransportError as exc:
            return False, exc
        return r.status_code == 200, r.status_code

    wait_for(answers, 30, "the restarted SFE answering at its registered address")

    # 2. A partition (the agent frozen: requests hang) while the service is undeployed.
    hosts.procs.freeze("agent")
    r = acme.delete("/v1/services/echo")
    assert r.status_code == 202, r.text
    time.sleep(3.0)
    assert set(sfe_leaders(hosts.control)) == set()  # the control host's SFEs went
    assert set(sfe_leaders(hosts.edge)) == {WEB_B}  # the cut-off one cannot be stopped yet
    assert WEB_B not in hosts.registrations()  # but it no longer gets traffic
    now = states(acme)
    assert set(now) == {WEB_B}, now
    assert now[WEB_B][0] in ("stopping", "disconnecting", "booted"), now
    hosts.procs.thaw("agent")
    gone_s = wait_for(
        lambda: (acme.get("/v1/services/echo").status_code == 404, states(acme)),
        30,
        "the service removed after the partition healed",
    )
    assert sfe_leaders(hosts.edge) == {}
    assert sfe_processes(hosts.tmp) == {}
    assert hosts.registrations() == {}
    print(
        f"deploy over two hosts {deploy_s:.2f}s; agent restart to converged {recovery_s:.2f}s; "
        f"partition healed to removed {gone_s:.2f}s"
    )
