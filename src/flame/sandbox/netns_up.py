"""The plan of `flame up --netns`: which process runs in which namespace, on which address.

The network itself (namespaces, veths, netem) is `flame.sandbox.netns`; this module places the
platform on it:

* control namespace (10.199.0.1, the management network): PCE, CLMC, orchestrator, dashboard and
  the route programmer (`flame.sandbox.netns_routes`), over HTTPS (certificates from the platform
  CA: a token never crosses a network in clear);
* each SR namespace: the SR on its data address (10.200.0.N:8080; HTTPS on 8443) and its link
  liveness prober (`flame.sfr.liveness`); each switch namespace: its prober;
* each cluster host namespace: the cluster's VIM agent (`flame serve vim`) on the cluster's
  address, so its SFEs listen on and are registered with that address; the orchestrator drives it
  over the management network;
* UE namespaces: empty (a user runs `ip netns exec <ns> flame ue run ...`).

The host reaches the control plane and the SRs' health through forwarders on 127.0.0.1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flame.common.atomicfile import atomic_write_private
from flame.sandbox.netns import CONTROL_IP, NetnsPlan, plan_network
from flame.sandbox.netns_forward import Forwarders
from flame.sandbox.supervisor import Component
from flame.topology.loader import load_topology

__all__ = ["NetnsLayout", "plan_components"]

PYTHON = [sys.executable, "-m", "flame"]
PORT_BASE = 20000


@dataclass
class NetnsLayout:
    net: NetnsPlan
    topology_path: Path  # the derived topology (addresses of the namespaces)
    stages: tuple[tuple[Component, ...], ...]
    urls: dict[str, str]  # pce, clmc, orchestrator, dashboard: as the host reaches them
    inside: dict[str, str]  # the same, as the namespaces reach them
    sr_urls: dict[str, str]
    sr_tls_urls: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def derived_topology(source: Path, net: NetnsPlan, out: Path) -> Path:
    """`source` with the namespaces' addresses for SRs and clusters."""
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    for section in ("service_routers", "clusters"):
        for name, spec in (doc.get(section) or {}).items():
            if name in net.nodes and isinstance(spec, dict):
                spec["address"] = net.nodes[name].address
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def issue_certificate(state_dir: Path, net: NetnsPlan, out: Path) -> tuple[Path, Path, str]:
    """One server certificate for the control address, the agents' and 127.0.0.1 (forwarders)."""
    from flame.common.pki import PlatformCA  # noqa: PLC0415 - cryptography

    ca = PlatformCA.open(state_dir / "ca")
    ips = [CONTROL_IP, "127.0.0.1", *(n.address for n in net.nodes.values())]
    issued = ca.issue(["localhost"], ip_addresses=ips, days=30)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "server.crt", out / "server.key"
    cert.write_text(issued.chain_pem, encoding="ascii")
    atomic_write_private(key, issued.key_pem.encode())
    return cert, key, str(ca.cert_path)


def plan_components(
    topology_source: Path,
    run_dir: Path,
    state_dir: Path,
    env: dict[str, str],
    router_token: str,
    forwarders: Forwarders,
    *,
    host_ports: dict[str, int],
    allow_unconfined_sfes: bool = False,
    emulate_latency: bool = False,
    hop_tls: str = "off",
) -> NetnsLayout:
    net = plan_network(load_topology(topology_source), run_dir)
    topology_path = derived_topology(topology_source, net, run_dir / "netns-topology.yaml")
    cert, key, ca_file = issue_certificate(state_dir, net, run_dir / "tls")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    env = {**env, "FLAME_CA_FILE": ca_file}
    ctl = net.control_ns
    inside = {
        name: f"https://{CONTROL_IP}:{port}"
        for name, port in (
            ("pce", 7070),
            ("clmc", 8086),
            ("orchestrator", 7080),
            ("dashboard", 7000),
        )
    }
    urls: dict[str, str] = {}

    def served(
        name: str, ns: str, host: str, port: int, health: str, argv: list[str], **kw: Any
    ) -> Component:
        scheme = "http" if kw.get("health_host") else "https"
        local = forwarders.add(ns, host, port, host_ports.get(name, 0))
        url = f"{scheme}://127.0.0.1:{local}"
        if name in inside:
            urls[name] = url
        return Component(
            name=name,
            argv=["ip", "netns", "exec", ns, *argv, "--host", host, "--port", str(port)],
            url=url if name in inside else f"{scheme}://{host}:{port}",
            health_url=url + health,
            health_ca_file=None if scheme == "http" else ca_file,
            env=kw.pop("env", env),
            **kw,
        )

    def process(
        name: str, ns: str, argv: list[str], ready: str, run_env: dict[str, str] = env
    ) -> Component:
        return Component(
            name=name, argv=["ip", "netns", "exec", ns, *argv], ready_line=ready, env=run_env
        )

    pce, clmc, orch = inside["pce"], inside["clmc"], inside["orchestrator"]
    control = (
        served(
            "pce", ctl, CONTROL_IP, 7070, "/health",
            [*PYTHON, "serve", "pce", "--topology", str(topology_path),
             "--db", str(run_dir / "pce.sqlite3"), "--name", "pce-1", *tls,
             "--hop-tls", hop_tls],
        ),
        served(
            "clmc", ctl, CONTROL_IP, 8086, "/ping",
            [*PYTHON, "serve", "clmc", "--data", str(run_dir / "clmc"),
             "--sfemc", orch + "/v1/sfemc/events", "--pce", pce, *tls],
        ),
    )  # fmt: skip
    sr_urls = {
        n.id: f"http://{n.address}:8080" for n in net.nodes.values() if n.kind == "service_router"
    }
    sr_tls_urls = {
        sr: url.replace("http://", "https://").replace(":8080", ":8443")
        for sr, url in sr_urls.items()
    }
    network: list[Component] = []
    router_env = {**env, "FLAME_TOKEN": router_token}
    # Hop-by-hop TLS (docs/tls.md): identities unless off; with `all`, one hop port on every SR.
    hop = {"off": (), "endpoints": ("--hop-tls",)}.get(hop_tls, ("--hop-tls-port", "8444"))
    for node in net.nodes.values():
        if node.kind == "service_router":
            network.append(
                served(
                    node.id, node.ns, node.address, 8080, "/.flame/health",
                    [*PYTHON, "serve", "sr", "--id", node.id, "--workers", "1", "--pce", pce,
                     "--tls-port", "8443", "--clmc", clmc, "--metrics-interval", "1",
                     "--table-file", str(run_dir / f"sr-{node.id}.table.json"), "--egress-hop",
                     *(("--emulate-latency",) if emulate_latency else ()), *hop],
                    health_host="_flame", env=router_env,
                )
            )  # fmt: skip
        if node.kind in ("service_router", "switch"):
            links = [k for k in net.links if node.id in (k.a, k.b) and not k.access]
            args = [
                f"{k.b if k.a == node.id else k.a}="
                + (f"{k.a_ip},{k.b_ip}" if k.a == node.id else f"{k.b_ip},{k.a_ip}")
                for k in links
            ]
            if args:
                network.append(
                    process(
                        f"liveness-{node.id}", node.ns,
                        [sys.executable, "-m", "flame.sfr.liveness", "--node", node.id, "--pce",
                         pce, *(a for arg in args for a in ("--link", arg))],
                        "liveness: probing", router_env,
                    )
                )  # fmt: skip
        if node.kind == "cluster":
            sr = node.sr or ""
            network.append(
                served(
                    f"vim-{node.id}", node.ns, node.address, 7090, "/health",
                    [*PYTHON, "serve", "vim", "--cluster", node.id, "--topology",
                     str(topology_path), "--images", orch, "--root", str(run_dir / f"vim-{node.id}"),
                     "--port-base", str(PORT_BASE), *(("--sr", f"{sr}={sr_urls[sr]}") if sr in sr_urls else ()),
                     *(("--allow-unconfined-sfes",) if allow_unconfined_sfes else ()), *tls],
                )
            )  # fmt: skip
    network.append(
        process(
            "netns-routes", ctl,
            [sys.executable, "-m", "flame.sandbox.netns_routes", "--plan",
             str(run_dir / "netns.json"), "--pce", pce],
            "netns routes: programmed",
        )
    )  # fmt: skip
    agents = [
        a
        for n in net.nodes.values()
        if n.kind == "cluster"
        for a in ("--vim", f"{n.id}=https://{n.address}:7090")
    ]
    platform = (
        served(
            "orchestrator", ctl, CONTROL_IP, 7080, "/health",
            [*PYTHON, "serve", "orchestrator", "--topology", str(topology_path),
             "--db", str(run_dir / "sfemc.sqlite3"), "--pce", pce, "--clmc", clmc,
             "--port-base", str(PORT_BASE),
             *(a for sr, url in sr_urls.items() for a in ("--sr", f"{sr}={url}")), *agents, *tls],
            ready_timeout_s=60.0,
        ),
        served(
            "dashboard", ctl, CONTROL_IP, 7000, "/",
            [*PYTHON, "serve", "dashboard", "--pce", pce, "--clmc", clmc,
             "--orchestrator", orch, *tls],
        ),
    )  # fmt: skip
    (run_dir / "netns.json").write_text(net.to_json(), encoding="utf-8")
    extra = {
        "netns": {
            "control_ns": ctl,
            "namespaces": {n.id: n.ns for n in net.nodes.values()},
            "addresses": {n.id: n.address for n in net.nodes.values()},
            "inside": inside,
            "ca_file": ca_file,
            "link_delay": "sr-emulated" if emulate_latency else "netem",
        }
    }
    # The orchestrator starts with the agents it drives (it retries an agent not up yet): one
    # stage fewer to wait for.
    return NetnsLayout(
        net, topology_path, (control, (*network, *platform)), urls, inside, sr_urls,
        sr_tls_urls, extra,
    )  # fmt: skip
