"""FLAME-in-a-box commands (seed section 5.1).

flame up [--topology sandbucket|sandpit|FILE] [-d]   run the whole platform on this machine
flame down                                          stop a background instance
flame ue run --sr SR --fqdn F --rps N --duration S  user-equipment load through an SR
flame ue sr-url SR                                  an SR's URL, for curl or a browser
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from flame.cli._state import CliState
from flame.common.config import Config, default_config_path, save_config_values
from flame.common.errors import UserError
from flame.common.logging import setup_logging

__all__ = ["COMMANDS"]


def _run_dir(config: Config) -> Path:
    return config.state_dir / "up"


# -- up / down ------------------------------------------------------------------------------------


@click.command("up")
@click.option(
    "--topology",
    default="sandbucket",
    show_default=True,
    help="A named topology (sandbucket, sandpit) or a topology file.",
)
@click.option("-d", "--detach", is_flag=True, help="Run in the background; 'flame down' stops it.")
@click.option("--pce-port", default=7070, show_default=True, type=click.IntRange(1, 65535))
@click.option("--clmc-port", default=8086, show_default=True, type=click.IntRange(1, 65535))
@click.option("--orchestrator-port", default=7080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dashboard-port", default=7000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--sr-port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port every SR listens on, each on its own loopback address.",
)
@click.option(
    "--free-ports",
    is_flag=True,
    envvar="FLAME_FREE_PORTS",
    help="Pick free ports instead of the defaults (tests, a second instance on one machine).",
)
@click.option("--no-latency", is_flag=True, help="Do not emulate the topology's link latencies.")
@click.option(
    "--no-egress-hop",
    is_flag=True,
    help="SRs forward straight to endpoints behind other SRs (default: through that SR).",
)
@click.option("--no-demo", is_flag=True, help="Do not deploy the demo media service.")
@click.option(
    "--allow-unconfined-sfes",
    is_flag=True,
    envvar="FLAME_ALLOW_UNCONFINED_SFES",
    help="Where SFEs cannot be sandboxed (no bubblewrap), run them unconfined instead of "
    "refusing them.",
)
@click.option(
    "--netns",
    is_flag=True,
    help="Root only: each SR, switch, cluster host and UE in its own network namespace, links "
    "as veth pairs with the topology's delay (docs/netns.md).",
)
@click.option(
    "--hop-tls",
    type=click.Choice(["off", "endpoints", "all"]),
    default="off",
    show_default=True,
    help="Hop-by-hop TLS inside the platform (docs/tls.md): 'endpoints' gives SRs platform "
    "identities and SFEs whose image says 'tls: true' endpoint certificates (SR to SFE over "
    "mutual TLS); 'all' also runs egress hops between SRs over mutual TLS.",
)
@click.option("--_child", "child", is_flag=True, hidden=True)
@click.pass_obj
def up_cmd(
    state: CliState,
    topology: str,
    detach: bool,
    pce_port: int,
    clmc_port: int,
    orchestrator_port: int,
    dashboard_port: int,
    sr_port: int,
    free_ports: bool,
    no_latency: bool,
    no_egress_hop: bool,
    no_demo: bool,
    allow_unconfined_sfes: bool,
    netns: bool,
    hop_tls: str,
    child: bool,
) -> None:
    """Run FLAME-in-a-box: PCE, service routers (and the rest of the platform) as processes.

    Stays in the foreground with the logs of the platform; Ctrl-C stops everything. State lives
    in the state directory (default ~/.local/share/flame), so a restart resumes.
    """
    from flame.sandbox.supervisor import AlreadyRunning, instance_running, read_instance  # noqa: PLC0415
    from flame.sandbox.up import UpOptions, run  # noqa: PLC0415 - lazy

    config = state.config()
    run_dir = _run_dir(config)
    if instance_running(run_dir):
        instance = read_instance(run_dir) or {}
        raise AlreadyRunning(
            f"FLAME-in-a-box is already running from {run_dir} (pid {instance.get('pid', '?')}); "
            "use it, or stop it first with 'flame down'"
        )
    options = UpOptions(
        run_dir=run_dir,
        topology=topology,
        pce_port=pce_port,
        clmc_port=clmc_port,
        orchestrator_port=orchestrator_port,
        dashboard_port=dashboard_port,
        demo=not no_demo,
        sr_port=sr_port,
        free_ports=free_ports,
        emulate_latency=not no_latency,
        egress_hop=not no_egress_hop,
        allow_unconfined_sfes=allow_unconfined_sfes,
        netns=netns,
        hop_tls=hop_tls,
    )
    if detach:
        _detach(state, run_dir, options)
        return
    setup_logging(config.log_level, config.log_format)
    config_path = state.config_path or (
        Path(os.environ["FLAME_CONFIG"])
        if os.environ.get("FLAME_CONFIG")
        else default_config_path()
    )
    started = time.monotonic()

    def announce(the_plan: Any, tokens: dict[str, str]) -> None:
        values = {
            "api_url": the_plan.orchestrator_url,
            "pce_url": the_plan.pce_url,
            "clmc_url": the_plan.clmc_url,
            "token": tokens["flame-up-operator"],
        }
        if the_plan.pce_url.startswith("https://"):  # --netns: trust the platform CA
            values["ca_file"] = str(config.state_dir / "ca" / "ca.crt")
        save_config_values(config_path, values)
        if child:  # the detached parent prints the summary; tokens stay out of logs
            click.echo("FLAME-in-a-box ready", err=True)
            return
        _print_summary(state, run_dir, tokens, time.monotonic() - started, str(config_path))
        click.echo("Ctrl-C stops everything.", err=True)

    run(options, config.state_dir, announce=announce)


def _detach(state: CliState, run_dir: Path, options: Any) -> None:
    from flame.sandbox.supervisor import read_instance  # noqa: PLC0415

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "flame"]
    if state.config_path is not None:
        argv += ["--config", str(state.config_path)]
    argv += ["up", "--_child", "--topology", options.topology]
    argv += ["--pce-port", str(options.pce_port), "--sr-port", str(options.sr_port)]
    argv += ["--dashboard-port", str(options.dashboard_port)]
    argv += ["--clmc-port", str(options.clmc_port)]
    argv += ["--orchestrator-port", str(options.orchestrator_port)]
    if not options.demo:
        argv.append("--no-demo")
    if options.free_ports:
        argv.append("--free-ports")
    if not options.emulate_latency:
        argv.append("--no-latency")
    if not options.egress_hop:
        argv.append("--no-egress-hop")
    if options.allow_unconfined_sfes:
        argv.append("--allow-unconfined-sfes")
    if options.netns:
        argv.append("--netns")
    argv += ["--hop-tls", options.hop_tls]
    started = time.monotonic()
    with (run_dir / "up.log").open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    while True:
        instance = read_instance(run_dir)
        if instance is not None and instance.get("ready") and instance.get("pid") == process.pid:
            break
        if process.poll() is not None:
            tail = (run_dir / "up.log").read_text(errors="replace").splitlines()[-20:]
            raise UserError("flame up failed to start:\n" + "\n".join(tail))
        if time.monotonic() - started > 180:
            process.terminate()
            raise UserError(f"flame up was not ready after 180 s; see {run_dir / 'up.log'}")
        time.sleep(0.1)
    tokens = json.loads((run_dir / "tokens.json").read_text(encoding="utf-8"))
    _print_summary(state, run_dir, tokens, time.monotonic() - started, None)
    click.echo("Running in the background; 'flame down' stops it.", err=True)


def _print_summary(
    state: CliState, run_dir: Path, tokens: dict[str, str], seconds: float, config_path: str | None
) -> None:
    from flame.sandbox.supervisor import read_instance  # noqa: PLC0415

    instance = read_instance(run_dir) or {}
    if state.json:
        click.echo(
            json.dumps({**instance, "tokens": tokens, "ready_s": round(seconds, 2)}, indent=2)
        )
        return
    click.echo(f"FLAME-in-a-box ready in {seconds:.1f}s (topology {instance.get('topology')})")
    for component in instance.get("components", []):
        click.echo(f"  {component['name']:<14} {component['url']}")
    if instance.get("dashboard_url"):
        operator = tokens.get("flame-up-operator", "")
        click.echo(f"Dashboard: {instance['dashboard_url']}/#token={operator}")
    click.echo("Tokens (operator, demo tenant):")
    for name, token in tokens.items():
        click.echo(f"  {name:<18} {token}")
    demo = instance.get("demo")
    if demo:
        states = ", ".join(f"{sfe} {state}" for sfe, state in sorted(demo["endpoints"].items()))
        click.echo(f"Demo service {demo['sfc']} ({demo['fqdn']}): {states}")
        urls = instance.get("sr_urls", {})
        if urls:
            first = sorted(urls)[-1] if "sr-ue-1" not in urls else "sr-ue-1"
            where = f"--sr {first}"
            netns = instance.get("netns") or {}
            ue = next((n for n in netns.get("namespaces", {}) if n.startswith("ue-")), None)
            if ue is not None:  # --netns: users are in their namespaces, SRs at their addresses
                where = f"--sr {urls[first]}"
                click.echo(f"  (as a user: sudo ip netns exec {netns['namespaces'][ue]} ...)")
            click.echo(
                f"  try: flame ue run {where} --fqdn {demo['fqdn']} --path /hls/master.m3u8 "
                "--rps 20 --duration 30"
            )
    if instance.get("ca_file"):
        click.echo(
            f"HTTPS at every SR ({', '.join(sorted(instance.get('sr_tls_urls', {}).values()))}); "
            f"trust the platform CA: {instance['ca_file']} (e.g. curl --cacert)"
        )
    click.echo(f"State and logs: {run_dir}")


@click.command("down")
@click.pass_obj
def down_cmd(state: CliState) -> None:
    """Stop a FLAME-in-a-box started with 'flame up -d' (or one left behind)."""
    from flame.sandbox.supervisor import stop_instance  # noqa: PLC0415
    from flame.sandbox.up import halt_sfes  # noqa: PLC0415

    config = state.config()
    run_dir = _run_dir(config)
    stopped = stop_instance(run_dir)
    # A supervisor killed outright leaves endpoint processes behind: stop those too.
    halted = halt_sfes(config.state_dir)
    if stopped or halted:
        click.echo("FLAME-in-a-box stopped")
    else:
        click.echo("FLAME-in-a-box is not running")


# -- ue -------------------------------------------------------------------------------------------


@click.group("ue")
def ue_group() -> None:
    """User equipment: load generators that request through a service router."""


@ue_group.command("run")
@click.option("--sr", "sr", required=True, help="An SR id of the running instance, or its URL.")
@click.option("--fqdn", required=True, help="The service's FQDN (sent as Host).")
@click.option("--rps", type=float, default=10.0, show_default=True, help="Requests per second.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option("--path", "paths", multiple=True, help="Paths to request in turn (default /).")
@click.option("--clmc", "clmc_url", help="Also write the UE's measurements to this CLMC.")
@click.option("--clmc-db", default="flame", show_default=True)
@click.pass_obj
def ue_run(
    state: CliState,
    sr: str,
    fqdn: str,
    rps: float,
    duration: float,
    paths: tuple[str, ...],
    clmc_url: str | None,
    clmc_db: str,
) -> None:
    """Issue real HTTP requests for FQDN through SR at a steady rate; report latency."""
    from flame.sandbox.ue import LoadSpec, run_load  # noqa: PLC0415
    from flame.sandbox.ue_clmc import ClmcReporter  # noqa: PLC0415

    config = state.config()
    base_url = _sr_url(config, sr)
    try:
        spec = LoadSpec(base_url, fqdn, rps, duration, paths or ("/",), ue=f"ue@{sr}")
    except ValueError as exc:
        raise UserError(str(exc)) from None

    async def drive() -> Any:
        reporter = ClmcReporter(clmc_url, clmc_db, config.token, spec) if clmc_url else None
        try:
            return await run_load(spec, on_second=reporter.second if reporter else None)
        finally:
            if reporter is not None:
                await reporter.close()

    report = asyncio.run(drive())
    data = report.as_dict()
    if state.json:
        click.echo(json.dumps(data, indent=2))
    else:
        lat = data["latency_ms"]
        click.echo(
            f"{data['requests']} requests in {report.elapsed_s:.1f}s "
            f"({data['rps_achieved']} req/s) to {fqdn} via {base_url}: "
            f"{data['failed']} failed, {data['skipped']} skipped"
        )
        click.echo(
            f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}"
        )
        click.echo("statuses: " + ", ".join(f"{k}: {v}" for k, v in data["statuses"].items()))
    if report.failed:
        raise UserError(f"{report.failed} of {report.requests} requests failed")


@ue_group.command("sr-url")
@click.argument("sr")
@click.pass_obj
def ue_sr_url(state: CliState, sr: str) -> None:
    """Print the URL of SR in the running FLAME-in-a-box (for curl, a browser or a player)."""
    click.echo(_sr_url(state.config(), sr))


def _sr_url(config: Config, sr: str) -> str:
    if sr.startswith(("http://", "https://")):
        return sr.rstrip("/")
    from flame.sandbox.supervisor import read_instance  # noqa: PLC0415

    instance = read_instance(_run_dir(config)) or {}
    urls: dict[str, str] = instance.get("sr_urls") or {}
    if sr not in urls:
        known = ", ".join(sorted(urls)) or "none: is 'flame up' running?"
        raise UserError(f"no SR {sr!r} in the running FLAME-in-a-box (SRs: {known}); or pass a URL")
    return urls[sr]


COMMANDS = (up_cmd, down_cmd, ue_group)
