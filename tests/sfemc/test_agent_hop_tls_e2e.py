"""Hop-by-hop TLS on the VIM-agent path (SFR-19, issue 15 item 3; docs/tls.md), end to end with
real processes: `flame serve pce --hop-tls endpoints`, `flame serve sr --hop-tls`, `flame serve
orchestrator --vim edge-b=AGENT` and the cluster agent `flame serve vim --pce PCE` on the
cluster's own address (127.0.2.2). An SF image whose manifest says `tls: true` is placed and
booted by the agent, which fetches its endpoint certificate from the PCE with its own token; the
endpoint is registered with `tls`, the SR reaches it over mutual TLS, and a client without the
SR's platform certificate (or speaking plain HTTP) is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventually import eventually
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfemc.images import ImageRepository, build_image

from .procs import Procs, sfe_processes

pytestmark = pytest.mark.slow

EDGE_B = "127.0.2.2"
FQDN = "web.tls.example"
SFE = "tlsecho-1.web.edge-b"
TOPOLOGY = f"""\
flame_topology: 1
name: agent-tls
locations:
  bristol: {{latitude: 51.45, longitude: -2.59}}
service_routers:
  sr-a: {{location: bristol, address: 127.0.0.1}}
clusters:
  edge-b:
    sr: sr-a
    location: bristol
    address: {EDGE_B}
    capacity: {{cpus: 4, memory: 4 GB, disk: 10 GB}}
"""
MANIFEST = """\
name: tlsecho
version: "1.0"
entrypoint: [python3, server.py]
tls: true
ports: [{name: http, port: 8080}]
health: {path: /health, port: http, interval: 1 s}
"""
SERVER = """\
import os, sys
from flame.media.serving import serve_app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"ok" if scope["path"] == "/health" else (
        f"tlsecho {os.environ['FLAME_SFE']} tls={'FLAME_TLS_CERT' in os.environ}".encode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sys.exit(serve_app(app, os.environ["FLAME_HOST"], int(os.environ["FLAME_PORT"])))
"""
TEMPLATE = f"""\
tosca_definitions_version: tosca_simple_yaml_1_3
metadata:
  template_name: tlsecho
  servicefunctionchain: tlsecho
  sfc_instance: tlsecho-1
topology_template:
  node_templates:
    web:
      type: eu.ict-flame.nodes.ServiceFunction
      properties:
        image: tlsecho:1.0
        fqdn: {FQDN}
        ports:
          - {{name: http, port: 8080}}
        health_check: {{path: /health, port: http, interval: 1 s}}
      capabilities:
        host:
          properties: {{num_cpus: 1, mem_size: 128 MB, disk_size: 100 MB}}
  policies:
    - initial:
        type: eu.ict-flame.policies.InitialPolicy
        targets: [web]
        properties:
          clusters:
            edge-b: {{web: connected}}
"""


class AgentPlatform:
    """A control host (PCE, SR, orchestrator) and a cluster host (the agent), each with its
    own state directory; the agent's token store is a copy of the control host's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.control, self.edge = tmp / "control", tmp / "edge"
        tokens = TokenStore(self.control / "tokens.json")
        self.operator = tokens.issue("ops", Role.OPERATOR)
        self.acme = tokens.issue("acme", Role.TENANT, "acme")
        self.router = tokens.issue("sr-a", Role.ROUTER)
        self.edge.mkdir(parents=True)
        shutil.copy2(self.control / "tokens.json", self.edge / "tokens.json")
        src = tmp / "tlsecho"
        src.mkdir()
        (src / "flame-sf.yaml").write_text(MANIFEST)
        (src / "server.py").write_text(SERVER)
        ImageRepository(self.control / "images").put(build_image(src)[0], tags=["1.0"])
        self.topology = tmp / "topology.yaml"
        self.topology.write_text(TOPOLOGY)
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
        self.sr_port = free_port()
        self.agent_url = f"http://{EDGE_B}:{free_port(EDGE_B)}"
        self.port_base = 31000 + (os.getpid() % 40) * 500

    def start(self) -> None:
        pce_port = self.pce_url.rsplit(":", 1)[1]
        self.procs.start(
            "pce",
            ["serve", "pce", "--topology", str(self.topology), "--port", pce_port,
             "--hop-tls", "endpoints"],
            self.pce_url + "/health",
        )  # fmt: skip
        self._operator("PUT", f"/v1/delegations/{FQDN}", {"tenant": "acme"})
        self.procs.start(
            "sr",
            ["serve", "sr", "--id", "sr-a", "--pce", self.pce_url, "--hop-tls",
             "--port", str(self.sr_port), "--workers", "1"],
            None,
            env={**self.control_env, "FLAME_TOKEN": self.router},
        )  # fmt: skip
        self.procs.start(
            "orchestrator",
            ["serve", "orchestrator", "--topology", str(self.topology),
             "--port", self.api_url.rsplit(":", 1)[1], "--pce", self.pce_url,
             "--vim", f"edge-b={self.agent_url}", "--no-clmc",
             "--drain", "0", "--resync", "1", "--port-base", str(self.port_base)],
            self.api_url + "/health",
        )  # fmt: skip
        self.procs.start(
            "agent",
            ["serve", "vim", "--cluster", "edge-b", "--topology", str(self.topology),
             "--port", self.agent_url.rsplit(":", 1)[1], "--images", self.api_url,
             "--port-base", str(self.port_base), "--pce", self.pce_url],
            self.agent_url + "/health",
            env=self.edge_env,
        )  # fmt: skip

    def _operator(self, method: str, path: str, body: object = None) -> httpx.Response:
        r = httpx.request(
            method,
            self.pce_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.operator}"},
            trust_env=False,
            timeout=10,
        )
        r.raise_for_status()
        return r

    def registration(self) -> dict[str, object] | None:
        regs = self._operator("GET", "/v1/registrations").json()["registrations"]
        return next((e for e in regs if e["sfe"] == SFE), None)

    def through_sr(self) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.sr_port}/", headers={"Host": FQDN}, timeout=10, trust_env=False
        )

    def sfe_dir(self) -> Path:
        (found,) = self.edge.glob(f"**/sfes/{SFE}")
        return found

    def logs(self) -> str:
        return "".join(
            f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in (self.tmp / "logs").glob("*.log")
        )


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[AgentPlatform]:
    ap = AgentPlatform(tmp_path)
    try:
        yield ap
        undeployed = httpx.delete(
            f"{ap.api_url}/v1/services/tlsecho",
            headers={"Authorization": f"Bearer {ap.acme}"},
            timeout=30,
            trust_env=False,
        )
        assert undeployed.status_code in (200, 202, 204), undeployed.text
        eventually(lambda: sfe_processes(ap.edge), until=lambda p: not p, timeout=60,
                   what="the SFE stopped by the undeploy")  # fmt: skip
    finally:
        ap.procs.close()
        for pid in sfe_processes(tmp_path):  # SFEs outlive their agent: never leave one
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), 9)


def test_sfr19_agent_hands_an_opted_in_sfe_its_certificate_and_the_sr_uses_mtls(
    platform: AgentPlatform,
) -> None:
    platform.start()
    deployed = httpx.post(
        f"{platform.api_url}/v1/services",
        json={"template": TEMPLATE, "name": "tlsecho.yaml"},
        headers={"Authorization": f"Bearer {platform.acme}"},
        timeout=30,
        trust_env=False,
    )
    assert deployed.status_code == 202, deployed.text
    # Registered by the SFEMC with the agent's word that the SFE serves TLS.
    registered = eventually(
        platform.registration,
        until=lambda r: r is not None,
        timeout=90,
        what=lambda: f"the TLS SFE registered{platform.logs()}",
    )
    assert registered is not None
    assert registered["host"] == EDGE_B
    assert registered.get("tls") is True
    port = int(str(registered["port"]))
    # The certificate was written by the agent on the cluster host, key 0600, never in state.
    sfe_dir = platform.sfe_dir()
    state = json.loads((sfe_dir / "state.json").read_text())
    assert state["tls"]["on"] is True
    assert "PRIVATE KEY" not in json.dumps(state)
    tls_dir = sfe_dir / "home" / ".flame-tls"
    assert (tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" in (tls_dir / "key.pem").read_text()
    # Through the SR: over mutual TLS with the SR's platform identity.
    answer = eventually(
        platform.through_sr,
        until=lambda r: r.status_code == 200,
        timeout=60,
        what=lambda: f"the SR to reach the TLS SFE on the agent{platform.logs()}",
    )
    assert answer.text == f"tlsecho {SFE} tls=True"
    status = httpx.get(
        f"http://127.0.0.1:{platform.sr_port}/.flame/status",
        headers={"Host": "_flame", "Authorization": f"Bearer {platform.router}"},
        timeout=10,
        trust_env=False,
    ).json()
    assert f"tls:{EDGE_B}:{port}" in status["upstream_pools"]
    # A plain client is refused: no client certificate, or no TLS at all.
    ctx = ssl.create_default_context(cadata=(tls_dir / "ca.pem").read_text())
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{EDGE_B}:{port}/", verify=ctx, timeout=10, trust_env=False)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{EDGE_B}:{port}/", timeout=10, trust_env=False)
    curl = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--cacert", str(tls_dir / "ca.pem"),
         f"https://{EDGE_B}:{port}/"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert curl.returncode != 0
    assert "tlsecho" not in curl.stdout
    assert "PRIVATE KEY" not in platform.logs()
