"""`flame up`: the plan of FLAME-in-a-box (which processes, on which addresses) and its run.

Control plane on 127.0.0.1 (PCE and registry first, since SRs take their tables from it); one
SR process per service router of the topology, each on the loopback address the topology gives
it (127.0.x.y), so that each looks like its own host and link latencies are emulated on its
forwarding path. With `--netns` (root), `flame.sandbox.netns_up` places the same platform on
network namespaces instead (docs/netns.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flame.common.auth import Role, TokenStore
from flame.common.backoff import Backoff
from flame.common.errors import UserError
from flame.common.ports import free_port, free_port_on_all
from flame.sandbox.netns import available as netns_available
from flame.sandbox.netns import tag_for as netns_tag
from flame.sandbox.netns import teardown as netns_teardown
from flame.sandbox.supervisor import Component, Running, Supervisor, supervised
from flame.topology.loader import load_topology
from flame.topology.model import NodeKind, Topology

if TYPE_CHECKING:
    from flame.sandbox.netns_forward import Forwarders

__all__ = ["NAMED_TOPOLOGIES", "Plan", "UpOptions", "plan", "resolve_topology", "run"]

log = logging.getLogger(__name__)

NAMED_TOPOLOGIES = ("sandbucket", "sandpit")
OPERATOR_TOKEN = "flame-up-operator"
ROUTER_TOKEN = "flame-up-router"
DEMO_TENANT = "demo"
DEMO_TOKEN = "flame-up-demo"


@dataclass(frozen=True, slots=True)
class UpOptions:
    run_dir: Path  # state of this instance: databases, logs, up.json
    topology: str = "sandbucket"  # a named topology or a file
    pce_port: int = 7070
    clmc_port: int = 8086
    orchestrator_port: int = 7080
    dashboard_port: int = 7000
    demo: bool = True
    sr_port: int = 8080
    free_ports: bool = False  # pick free ports instead (tests, a second machine user)
    emulate_latency: bool = True
    # FLIPS' egress hop: an SR reaches an endpoint behind another SR through that SR. Needs
    # one address per SR, all SRs on one port (the topology's addresses, `sr_port`).
    egress_hop: bool = True
    # Run SFEs unconfined where they cannot be sandboxed (no bubblewrap) instead of refusing.
    allow_unconfined_sfes: bool = False
    # Each SR, switch, cluster host and UE in its own network namespace (root; docs/netns.md).
    netns: bool = False
    # Hop-by-hop TLS (docs/tls.md): the PCE's switch (off | endpoints | all); SRs take
    # platform identities unless off, and SFEs whose image opts in get endpoint certificates.
    hop_tls: str = "off"


@dataclass(frozen=True, slots=True)
class Plan:
    topology_path: Path
    topology: Topology
    stages: tuple[tuple[Component, ...], ...]
    pce_url: str
    dashboard_url: str
    sr_urls: dict[str, str]
    clmc_url: str
    orchestrator_url: str
    sr_tls_urls: dict[str, str] = field(default_factory=dict)  # HTTPS on every SR (issue 15)


def resolve_topology(name_or_path: str) -> Path:
    if name_or_path in NAMED_TOPOLOGIES:
        ref = resources.files("flame.sandbox") / "data" / f"{name_or_path}.yaml"
        with resources.as_file(ref) as path:
            return Path(path)
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(
            f"no topology {name_or_path!r}: name one of {', '.join(NAMED_TOPOLOGIES)} or give "
            "a topology file"
        )
    return path


def plan(options: UpOptions, env: dict[str, str], router_token: str) -> Plan:
    topology_path = resolve_topology(options.topology)
    topology = load_topology(topology_path)
    python = [sys.executable, "-m", "flame"]

    def port(default: int, host: str = "127.0.0.1") -> int:
        return free_port(host) if options.free_ports else default

    pce_url = f"http://127.0.0.1:{port(options.pce_port)}"
    clmc_url = f"http://127.0.0.1:{port(options.clmc_port)}"
    orchestrator_url = f"http://127.0.0.1:{port(options.orchestrator_port)}"
    dashboard_url = f"http://127.0.0.1:{port(options.dashboard_port)}"
    sfemc_events = orchestrator_url + "/v1/sfemc/events"

    def component(name: str, url: str, health: str, *args: str, **kw: Any) -> Component:
        host, _, listen = url.removeprefix("http://").partition(":")
        return Component(
            name=name,
            argv=[*python, "serve", *args, "--host", host, "--port", listen],
            url=url,
            health_url=url + health,
            env=kw.pop("env", env),
            **kw,
        )

    control = [
        component(
            "pce",
            pce_url,
            "/health",
            *("pce", "--topology", str(topology_path)),
            *("--db", str(options.run_dir / "pce.sqlite3"), "--name", "pce-1"),
            *("--hop-tls", options.hop_tls),
        ),
        component(
            "clmc",
            clmc_url,
            "/ping",
            *("clmc", "--data", str(options.run_dir / "clmc"), "--sfemc", sfemc_events),
            # the FQDN delegations, so the demo tenant can query its own rows of `flame`
            *("--pce", pce_url),
        ),
    ]
    routers: list[Component] = []
    sr_urls: dict[str, str] = {}
    sr_nodes = sorted(
        (n for n in topology.nodes.values() if n.kind is NodeKind.SERVICE_ROUTER),
        key=lambda n: n.id,
    )
    sr_hosts = [node.address or "127.0.0.1" for node in sr_nodes]
    # The egress hop reaches another SR at its address on this SR's own port: only with one
    # address per SR. Free ports then means one port free on all of them.
    egress_hop = options.egress_hop and len(set(sr_hosts)) == len(sr_hosts) > 1
    shared_port = (
        free_port_on_all(sr_hosts) if egress_hop and options.free_ports else options.sr_port
    )
    # Every SR also serves HTTPS (issue 15): certificates from the PCE, the platform CA's.
    tls_default = options.sr_port + 363  # 8080 -> 8443
    shared_tls_port = (
        free_port_on_all(sr_hosts) if egress_hop and options.free_ports else tls_default
    )
    # With `--hop-tls all` egress hops run over mutual TLS to one hop port on every SR.
    hop_all = options.hop_tls == "all" and egress_hop
    hop_port = (
        free_port_on_all(sr_hosts) if hop_all and options.free_ports else options.sr_port + 364
    )
    sr_tls_urls: dict[str, str] = {}
    for node, host in zip(sr_nodes, sr_hosts, strict=True):
        url = f"http://{host}:{shared_port if egress_hop else port(options.sr_port, host)}"
        sr_urls[node.id] = url
        tls_port = shared_tls_port if egress_hop else port(tls_default, host)
        sr_tls_urls[node.id] = f"https://{host}:{tls_port}"
        args = [
            *("sr", "--id", node.id, "--workers", "1", "--pce", pce_url),
            *("--tls-port", str(tls_port)),
            *("--clmc", clmc_url, "--metrics-interval", "1"),
            *("--table-file", str(options.run_dir / f"sr-{node.id}.table.json")),
        ]
        if options.emulate_latency:
            args.append("--emulate-latency")
        if egress_hop:
            args.append("--egress-hop")
        if options.hop_tls != "off":
            args.append("--hop-tls")
        if hop_all:
            args.extend(("--hop-tls-port", str(hop_port)))
        routers.append(
            component(
                node.id,
                url,
                "/.flame/health",
                *args,
                health_host="_flame",
                env={**env, "FLAME_TOKEN": router_token},  # least privilege: tables and metrics
            )
        )
    # The CLMC never sends alert webhooks to the platform's own endpoints (its outbound policy).
    clmc = control[1]
    own = (pce_url, orchestrator_url, dashboard_url, *sr_urls.values(), *sr_tls_urls.values())
    control[1] = replace(clmc, argv=[*clmc.argv, *(a for u in own for a in ("--platform-url", u))])
    orchestrator = component(
        "orchestrator",
        orchestrator_url,
        "/health",
        *("orchestrator", "--topology", str(topology_path)),
        *("--db", str(options.run_dir / "sfemc.sqlite3")),
        *("--pce", pce_url, "--clmc", clmc_url),
        # SFE ports: with --free-ports, a random block, so instances side by side (tests) do
        # not hand out the same ports (the VIM also skips ports it finds taken); below the
        # ephemeral range, where outgoing connections cannot take them first.
        *(
            "--port-base",
            str(random.randrange(21000, 32000, 1000) if options.free_ports else 20000),
        ),
        *(arg for sr, url in sr_urls.items() for arg in ("--sr", f"{sr}={url}")),
        *(("--allow-unconfined-sfes",) if options.allow_unconfined_sfes else ()),
        ready_timeout_s=60.0,
    )
    dashboard = component(
        "dashboard",
        dashboard_url,
        "/",
        *("dashboard", "--pce", pce_url, "--clmc", clmc_url, "--orchestrator", orchestrator_url),
    )
    return Plan(
        topology_path,
        topology,
        (tuple(control), (*routers, orchestrator, dashboard)),
        pce_url,
        dashboard_url,
        sr_urls,
        clmc_url,
        orchestrator_url,
        sr_tls_urls,
    )


def _plan_netns(
    options: UpOptions,
    state_dir: Path,
    env: dict[str, str],
    router_token: str,
    network: list[Forwarders],
) -> tuple[Plan, dict[str, Any]]:
    """Build the namespaces (after removing a crashed run's) and place the platform on them."""
    from flame.sandbox.netns import build, netem_available  # noqa: PLC0415
    from flame.sandbox.netns_forward import Forwarders  # noqa: PLC0415
    from flame.sandbox.netns_up import plan_components  # noqa: PLC0415

    stale = netns_teardown(netns_tag(options.run_dir))
    if stale:
        log.warning("removed %d network namespace(s) left by a previous run", len(stale))
    netem = netem_available(netns_tag(options.run_dir))
    if not netem:
        log.warning(
            "this kernel has no netem: links get their bandwidth (htb) but their delay is "
            "emulated by the SRs (--emulate-latency), and their loss is not modelled"
        )
    forwarders = Forwarders()
    network.append(forwarders)
    source = resolve_topology(options.topology)
    host_ports = (
        {}
        if options.free_ports
        else {
            "pce": options.pce_port,
            "clmc": options.clmc_port,
            "orchestrator": options.orchestrator_port,
            "dashboard": options.dashboard_port,
        }
    )
    layout = plan_components(
        source,
        options.run_dir,
        state_dir,
        env,
        router_token,
        forwarders,
        host_ports=host_ports,
        allow_unconfined_sfes=options.allow_unconfined_sfes,
        hop_tls=options.hop_tls,
        emulate_latency=options.emulate_latency and not netem,
    )
    started = time.monotonic()
    build(layout.net, netem=netem)
    log.info(
        "network: %d namespaces, %d links in %.2fs",
        len(layout.net.namespaces),
        len(layout.net.links),
        time.monotonic() - started,
    )
    the_plan = Plan(
        layout.topology_path,
        load_topology(layout.topology_path),
        layout.stages,
        layout.urls["pce"],
        layout.urls["dashboard"],
        layout.sr_urls,
        layout.urls["clmc"],
        layout.urls["orchestrator"],
        layout.sr_tls_urls,
    )
    return the_plan, layout.extra


def issue_tokens(state_dir: Path) -> dict[str, str]:
    """Fresh operator and demo-tenant tokens (stored hashed; the old ones stop working)."""
    tokens = TokenStore(state_dir / "tokens.json")
    known = {t.name for t in tokens.list()}
    issued: dict[str, str] = {}
    for name, role, tenant in (
        (OPERATOR_TOKEN, Role.OPERATOR, None),
        (ROUTER_TOKEN, Role.ROUTER, None),
        (DEMO_TOKEN, Role.TENANT, DEMO_TENANT),
    ):
        if name in known:
            tokens.revoke(name)
        issued[name] = tokens.issue(name, role, tenant)
    return issued


def write_secret(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def run(
    options: UpOptions,
    state_dir: Path,
    *,
    announce: Callable[[Plan, dict[str, str]], None],
    stop_after_ready: bool = False,
) -> None:
    """Start everything, announce it, then supervise until SIGTERM/SIGINT."""
    stop = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    if options.netns and (problem := netns_available()) is not None:
        raise UserError(problem)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    network: list[Forwarders] = []  # flame up --netns: the forwarders, while they run

    def stopped() -> None:
        halt_sfes(state_dir)
        if options.netns:
            for forwarders in network:
                forwarders.close()
            netns_teardown(netns_tag(options.run_dir))

    try:
        with supervised(options.run_dir, on_stopped=stopped) as supervisor:
            tokens = issue_tokens(state_dir)
            router_token = tokens.pop(ROUTER_TOKEN)
            write_secret(options.run_dir / "tokens.json", tokens)
            env = {
                "FLAME_STATE_DIR": str(state_dir),
                "FLAME_TOKEN": tokens[OPERATOR_TOKEN],
                "PYTHONUNBUFFERED": "1",
            }
            if options.netns:
                the_plan, netns_extra = _plan_netns(options, state_dir, env, router_token, network)
            else:
                the_plan, netns_extra = plan(options, env, router_token), {}
            supervisor.extra = {
                "topology": str(the_plan.topology_path),
                "pce_url": the_plan.pce_url,
                "dashboard_url": the_plan.dashboard_url,
                "clmc_url": the_plan.clmc_url,
                "orchestrator_url": the_plan.orchestrator_url,
                "sr_urls": the_plan.sr_urls,
                "sr_tls_urls": the_plan.sr_tls_urls,
                # The platform CA the PCE made: what browsers and curl trust for the SRs' https.
                "ca_file": str(state_dir / "ca" / "ca.crt"),
                **netns_extra,
            }
            # Stages start together and are waited for together; a stage needs the one before
            # (SRs take their tables from the PCE), so start-up takes the slowest of each stage.
            for stage in the_plan.stages:
                if stop:
                    return
                started = [supervisor.start(component) for component in stage]
                for running in started:
                    supervisor.wait_ready(running, lambda: stop)
            if stop:
                return
            if options.demo:
                supervisor.extra["demo"] = _deploy_demo(
                    the_plan, state_dir, tokens, netns=options.netns
                )
            supervisor.write_state(ready=True)
            announce(the_plan, tokens)
            if stop_after_ready:
                return
            _watch(supervisor, lambda: stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def halt_sfes(state_dir: Path) -> list[str]:
    """Stop the SFE processes the process VIM runs (they outlive the orchestrator on purpose,
    so that a restarted one adopts them); what is desired stays, so `flame up` resumes it."""
    from flame.sfemc.images import ImageRepository  # noqa: PLC0415 - only on the way down
    from flame.sfemc.vim.process import ProcessVim  # noqa: PLC0415

    run_dir = state_dir / "up"
    if (run_dir / "netns.json").exists() and netns_available() is None:
        # flame up --netns whose supervisor died: its namespaces (and SFEs in them) go too.
        netns_teardown(netns_tag(run_dir))
    root = state_dir / "vim"
    if not (root / "sfes").is_dir():
        return []
    # Reading the VIM's records "adopts" the running SFEs, which it logs; on the way down that
    # would only confuse.
    logging.getLogger("flame.sfemc.vim.process").setLevel(logging.WARNING)
    vim = ProcessVim(root, {}, ImageRepository(state_dir / "images"), grace_s=3.0)

    async def halt() -> list[str]:
        try:
            return await vim.halt_all()
        finally:
            await vim.close()

    halted = asyncio.run(halt())
    if halted:
        log.info("stopped %d service function endpoint(s): %s", len(halted), ", ".join(halted))
    return halted


def _deploy_demo(
    the_plan: Plan, state_dir: Path, tokens: dict[str, str], *, netns: bool = False
) -> dict[str, Any]:
    """Package, delegate, submit and wait for the demo VoD service (issue 6, item 3)."""
    import ssl  # noqa: PLC0415

    from flame.sandbox.demo import DEMO_FQDN, deploy_demo, package_demo_images  # noqa: PLC0415

    package_demo_images(state_dir / "images")
    ca_file = state_dir / "ca" / "ca.crt"
    status = deploy_demo(
        the_plan.orchestrator_url,
        the_plan.pce_url,
        tokens[OPERATOR_TOKEN],
        tokens[DEMO_TOKEN],
        DEMO_TENANT,
        verify=ssl.create_default_context(cafile=str(ca_file)) if netns else True,
    )
    return {
        "fqdn": DEMO_FQDN,
        "sfc": status.get("sfc"),
        "endpoints": {e["sfe"]: e["state"] for e in status.get("endpoints", [])},
    }


FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STABLE_RUN_S = 60.0  # a component up this long starts again from the first delay


def _watch(supervisor: Supervisor, stopping: Callable[[], bool]) -> None:
    """Restart a component that exits on its own, with back-off; return when asked to stop."""
    backoffs: dict[str, Backoff] = {}
    while not stopping():
        for running in supervisor.exited():
            name = running.component.name
            backoff = backoffs.setdefault(name, Backoff(FIRST_RESTART_DELAY_S, MAX_RESTART_DELAY_S))
            if time.monotonic() - running.started_at >= STABLE_RUN_S:
                backoff.reset()  # it had recovered: this is a new failure, not a loop
            delay = backoff.failure()
            log.warning(
                "%s exited with status %s; restarting in %gs (log: %s)",
                name,
                running.process.returncode,
                delay,
                running.log_path,
            )
            supervisor.running.remove(running)
            _sleep_unless(delay, stopping)
            if stopping():
                return
            restarted: Running = supervisor.start(running.component)
            with contextlib.suppress(Exception):
                supervisor.wait_ready(restarted, stopping)
        time.sleep(0.2)


def _sleep_unless(seconds: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopping():
        time.sleep(0.05)
