"""Issue 13, "done means": a tenant pushes an image with a dependency the host lacks and deploys
it on a remote cluster agent.

Real processes as in test_agent_e2e: a PCE, an orchestrator on the "control host", a cluster
agent (`flame serve vim --cluster edge-b`) on 127.0.2.2 with its own state directory. Tenant
acme runs `flame push` (the real CLI, its own token) on an SF whose server imports
`flamedeps_probe`, shipped only as a wheel inside the image; the template places it on edge-b
only. The agent pulls the image, builds the image's venv offline, and the SF answers over HTTP
at the cluster host's address with a value that only the wheel holds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from flame.common.auth import Role, TokenStore

from .procs import FLAME, sfe_leaders, sfe_processes, wait_for
from .test_agent_e2e import EDGE_B, TwoHosts, hosts  # noqa: F401 - `hosts` is the fixture
from .test_image_deps import PROBE, SECRET, make_sf

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_3
metadata:
  template_name: deps-e2e
  servicefunctionchain: deps
  sfc_instance: deps-1
topology_template:
  node_templates:
    dep:
      type: eu.ict-flame.nodes.ServiceFunction
      properties:
        image: depsf:1.0
        fqdn: dep.echo.example
        ports:
          - {name: http, port: 8080}
        health_check: {path: /, port: http, interval: 1 s}
      capabilities:
        host:
          properties: {num_cpus: 1, mem_size: 128 MB, disk_size: 100 MB}
  policies:
    - initial:
        type: eu.ict-flame.policies.InitialPolicy
        targets: [dep]
        properties:
          clusters:
            edge-b: {dep: connected}
"""
SFE = "deps-1.dep.edge-b"


@pytest.mark.slow
def test_a_tenant_pushes_an_sf_with_its_own_dependency_and_runs_it_on_a_remote_agent(
    hosts: TwoHosts,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
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
    src = make_sf(tmp_path / "tenant-machine")
    # The tenant's machine: its own config, its own token, the orchestrator's URL.
    env = {
        **hosts.control_env,
        "FLAME_TOKEN": hosts.acme,
        "FLAME_API_URL": hosts.api_url,
        "FLAME_STATE_DIR": str(tmp_path / "tenant-state"),
    }
    pushed = subprocess.run(
        [*FLAME, "--json", "push", str(src)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr
    answer = json.loads(pushed.stdout)
    assert answer["owners"] == ["acme"]
    assert answer["tags"] == ["1.0"]
    digest = answer["digest"]
    # Another tenant's token cannot use it: its plan is refused with the reason.
    globex = TokenStore(hosts.control / "tokens.json").issue("globex", Role.TENANT, "globex")
    plan = hosts.api(globex).post(
        "/v1/services/deps/plan", json={"template": TEMPLATE, "name": "t.yaml"}
    )
    assert any(e["code"] == "unknown_image" for e in plan.json()["errors"]), plan.text

    acme = hosts.api(hosts.acme)
    r = acme.post("/v1/services", json={"template": TEMPLATE, "name": "deps.yaml"})
    assert r.status_code == 202, r.text

    def connected() -> tuple[bool, object]:
        body = acme.get("/v1/services/deps", params={"history": "false"}).json()
        states = {e["sfe"]: (e["state"], e.get("reason")) for e in body.get("endpoints", [])}
        return states.get(SFE, ("", None))[0] == "connected", states

    wait_for(connected, 90, "the pushed SF connected on the agent's cluster")
    assert set(sfe_leaders(hosts.edge)) == {SFE}  # it runs on the edge host only
    venvs = list(hosts.edge.glob(f"**/venvs/{digest.removeprefix('sha256:')}/.flame-complete"))
    assert venvs, "the image's venv was not built on the agent's host"
    assert not list(hosts.control.glob("**/venvs/*"))
    regs = httpx.get(
        hosts.pce_url + "/v1/registrations",
        headers={"Authorization": f"Bearer {hosts.operator}"},
        trust_env=False,
    ).json()["registrations"]
    host, port = next((e["host"], e["port"]) for e in regs if e["sfe"] == SFE)
    assert host == EDGE_B
    body = httpx.get(f"http://{host}:{port}/", trust_env=False).text
    assert body.split(" ")[0] == SECRET  # from the wheel: the host has no `flamedeps_probe`
    lacks = subprocess.run(
        [FLAME[0], "-c", f"import {PROBE}"], check=False, capture_output=True, timeout=60
    )
    assert lacks.returncode != 0  # the hosts' interpreter has no such package

    r = acme.delete("/v1/services/deps")
    assert r.status_code == 202, r.text
    wait_for(lambda: (acme.get("/v1/services/deps").status_code == 404, None), 30, "undeployed")
    assert sfe_processes(hosts.tmp) == {}
