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
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tlsecho
from eventually import eventually
from flame.common.ports import free_port

from .procs import sfe_processes
from .test_agent_e2e import TwoHosts

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


class AgentPlatform(TwoHosts):
    """Two hosts as in test_agent_e2e, with an SR on the control host and tlsecho as image."""

    def __init__(self, tmp: Path) -> None:
        image = tlsecho.write_sf(tmp / "tlsecho")
        super().__init__(tmp, topology=TOPOLOGY, image=image)
        self.sr_port = free_port()

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
        json={"template": tlsecho.template("edge-b"), "name": "tlsecho.yaml"},
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
