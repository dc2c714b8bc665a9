"""Service function routing commands (SFR-7, SFR-13, SFR-20).

    flame topology show FILE | --pce URL     nodes and links, as a file says or a PCE has them now
    flame topology validate FILE             the same check as `flame topology check`
    flame topology link-down A B             take a link down at the PCE (and link-up)
    flame routes FQDN [--from SR]            ranked routes with path and cost, per SR
    flame serve pce --topology FILE          run the PCE (active, or standby on a shared --db)
    flame serve sr --id SR --pce URL         run a service router's data plane
                   [--tls-port N]            ... with TLS (certificates from the PCE, SFR-19)

(`flame cert ...`, content certificates, is in `flame.cli.cert_commands`.)

The PCE commands talk to `--pce URL` (default: `pce_url` from the config) with the config's
token. They raise; `flame.cli.main.main` is the one place that prints errors and picks the exit
code. Heavy imports (FastAPI, uvicorn, numpy) happen inside the commands that need them, so
`flame --help` stays fast.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flame.cli._serve import run_server, tls_files, tls_options
from flame.cli._state import CliState as _CliState
from flame.common.errors import UserError
from flame.common.logging import setup_logging
from flame.sfr.store import encode_link, encode_node
from flame.topology.loader import load_topology

if TYPE_CHECKING:
    from flame.sfr.client import PceClient
    from flame.sfr.models import ForwardingTable

__all__ = ["COMMANDS", "link_down", "link_up", "serve_pce", "serve_sr", "topology_show"]


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _client(state: _CliState, pce: str | None) -> PceClient:
    from flame.common.tls import client_verify  # noqa: PLC0415
    from flame.sfr.client import PceClient  # noqa: PLC0415 - lazy, heavy

    config = state.config()
    return PceClient(_pce_url(state, pce), config.token, verify=client_verify(config.ca_file))


def _pce_url(state: _CliState, flag: str | None) -> str:
    """The PCE's URL: --pce, else pce_url from the config; never the orchestrator's api_url,
    which would send PCE calls to the wrong service."""
    url = flag or state.config().pce_url
    if not url:
        raise UserError(
            "no PCE URL: pass --pce URL, or set pce_url in the config file "
            "(~/.config/flame/config.toml) or $FLAME_PCE_URL; 'flame up' writes it for you"
        )
    return url


_pce_option = click.option(
    "--pce",
    metavar="URL",
    help="PCE API URL (default: pce_url from the config or $FLAME_PCE_URL).",
)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:g}"
    return f"{text} {unit}".rstrip()


def _bandwidth(bps: float | None) -> str:
    if bps is None:
        return "-"
    for factor, unit in ((1e12, "Tbps"), (1e9, "Gbps"), (1e6, "Mbps"), (1e3, "kbps")):
        if bps >= factor:
            return f"{bps / factor:g} {unit}"
    return f"{bps:g} bps"


# -- topology ------------------------------------------------------------------------------------


@click.command("show")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@_pce_option
@click.pass_obj
def topology_show(state: _CliState, file: Path | None, pce: str | None) -> None:
    """Show nodes and links: of a topology FILE, or as the PCE has them now (SFR-7).

    Without FILE, asks the PCE (--pce URL or pce_url from the config), so run-time changes
    such as links taken down show.
    """
    if file is not None and pce is not None:
        raise click.UsageError("give a topology FILE or --pce URL, not both")
    if file is not None:
        topology = load_topology(file)
        doc: dict[str, Any] = {
            "name": topology.name,
            "source": str(file),
            "nodes": [encode_node(n) for n in topology.nodes.values()],
            "links": [encode_link(k) for k in topology.links],
            "registrations": [
                {"sfe": r.sfe, "fqdn": r.fqdn, "cluster": r.cluster, "host": r.host, "port": r.port}
                for r in topology.registrations
            ],
        }
    else:
        with _client(state, pce) as client:
            doc = client.topology()
            doc["source"] = client.urls[0]
    if state.json:
        _emit(doc)
        return
    nodes, links = doc["nodes"], doc["links"]
    click.echo(
        f"topology '{doc['name']}' ({doc['source']}): {len(nodes)} node(s), {len(links)} link(s)"
    )
    click.echo()
    rows: list[tuple[str, ...]] = [("NODE", "KIND", "SR", "LOCATION", "ADDRESS")]
    for n in nodes:
        where = n["location_name"] or (
            f"{n['location']['latitude']:g},{n['location']['longitude']:g}"
            if n["location"]
            else "-"
        )
        rows.append((n["id"], n["kind"], n["sr"] or "-", where, n["address"] or "-"))
    for line in _columns(rows):
        click.echo(line)
    if links:
        click.echo()
        rows = [("LINK", "LATENCY", "BANDWIDTH", "COST", "CLASS", "STATE")]
        for k in links:
            rows.append(
                (
                    f"{k['a']} — {k['b']}",
                    _number(k["latency_ms"], "ms"),
                    _bandwidth(k["bandwidth_bps"]),
                    _number(k["cost"]),
                    k["class"] or "-",
                    k["state"],
                )
            )
        for line in _columns(rows):
            click.echo(line)
    if doc.get("registrations"):
        click.echo()
        rows = [("ENDPOINT", "FQDN", "CLUSTER", "ADDRESS")]
        for r in doc["registrations"]:
            rows.append((r["sfe"], r["fqdn"], r["cluster"], f"{r['host']}:{r['port']}"))
        for line in _columns(rows):
            click.echo(line)


def _link_command(up: bool) -> click.Command:
    word = "up" if up else "down"

    @click.command(f"link-{word}")
    @click.argument("a")
    @click.argument("b")
    @_pce_option
    @click.pass_obj
    def command(state: _CliState, a: str, b: str, pce: str | None) -> None:
        with _client(state, pce) as client:
            result = client.link_up(a, b) if up else client.link_down(a, b)
        if state.json:
            _emit({"link": [a, b], "state": word, **result})
            return
        if not result["changed"]:
            click.echo(f"link {a} — {b} was already {word}; nothing changed")
            return
        versions = result["versions"]
        updated = ", ".join(f"{sr} v{v}" for sr, v in versions.items()) or "none"
        click.echo(
            f"link {a} — {b} is {word}: {len(result['affected_srs'])} SR tree(s) changed; "
            f"new tables: {updated}"
        )

    command.help = (
        f"Bring the link between nodes A and B {word} at the PCE (operator; SFR-13).\n\n"
        "Only the SRs whose routes change get new forwarding tables."
    )
    return command


link_down = _link_command(up=False)
link_up = _link_command(up=True)


# -- routes --------------------------------------------------------------------------------------


@click.command("delegate")
@click.argument("fqdn")
@click.option("--tenant", required=True, help="The tenant (media service provider) to own it.")
@_pce_option
@click.pass_obj
def delegate_cmd(state: _CliState, fqdn: str, tenant: str, pce: str | None) -> None:
    """Delegate FQDN (and its subdomains) to a tenant, so its services may use it (operator)."""
    with _client(state, pce) as client:
        delegation = client.delegate(fqdn, tenant)
    if state.json:
        _emit({"name": delegation.name, "tenant": delegation.tenant})
    else:
        click.echo(f"{delegation.name} (and *.{delegation.name}) -> tenant {delegation.tenant}")


@click.command("undelegate")
@click.argument("fqdn")
@_pce_option
@click.pass_obj
def undelegate_cmd(state: _CliState, fqdn: str, pce: str | None) -> None:
    """Take FQDN back from its tenant (operator)."""
    with _client(state, pce) as client:
        delegation = client.undelegate(fqdn)
    if state.json:
        _emit({"name": delegation.name, "tenant": delegation.tenant})
    else:
        click.echo(f"{delegation.name} no longer delegated to {delegation.tenant}")


@click.command("delegations")
@_pce_option
@click.pass_obj
def delegations_cmd(state: _CliState, pce: str | None) -> None:
    """FQDNs and the tenants they are delegated to (a tenant sees its own)."""
    with _client(state, pce) as client:
        found = client.delegations()
    if state.json:
        _emit([{"name": d.name, "tenant": d.tenant} for d in found])
        return
    for d in found:
        click.echo(f"{d.name}\t{d.tenant}")


@click.command("routes")
@click.argument("fqdn")
@click.option("--from", "from_node", metavar="SR", help="Only from this SR (or this UE's SR).")
@_pce_option
@click.pass_obj
def routes_cmd(state: _CliState, fqdn: str, from_node: str | None, pce: str | None) -> None:
    """Ranked routes to FQDN's endpoints with path and cost, per ingress SR (SFR-4)."""
    with _client(state, pce) as client:
        tables = client.routes(fqdn, from_node)
    if state.json:
        _emit({"fqdn": fqdn, "tables": [t.to_dict() for t in tables]})
        return
    for i, table in enumerate(tables):
        if i:
            click.echo()
        _print_routes(table)


def _print_routes(table: ForwardingTable) -> None:
    for fqdn, routes in table.routes.items():
        click.echo(f"{fqdn} from {table.sr} (table v{table.version}):")
        if not routes:
            click.echo("  no reachable endpoint (requests get 503)")
            continue
        rows = [("#", "ENDPOINT", "CLUSTER", "ADDRESS", "COST", "LATENCY", "PATH")]
        for rank, r in enumerate(routes, start=1):
            e = r.endpoint
            rows.append(
                (
                    str(rank),
                    e.sfe,
                    e.cluster,
                    f"{e.host}:{e.port}",
                    _number(r.cost),
                    _number(r.latency_ms, "ms"),
                    " → ".join(r.path),
                )
            )
        for line in _columns(rows):
            click.echo("  " + line)


# -- serve ---------------------------------------------------------------------------------------


@click.command("pce")
@click.option(
    "--topology",
    "topology_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Topology file (SFR-7).",
)
@click.option(
    "--db",
    "db_path",
    metavar="FILE|URL",
    help="SQLite state file, shared with standby PCEs on this host, or postgresql://... shared "
    "with PCEs on other hosts (default: <state_dir>/pce.sqlite3).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7070, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--lease-ttl",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a standby waits after the active PCE stops renewing (SFR-20).",
)
@click.option("--name", help="This PCE's name in the lease (default: a random one).")
@click.option(
    "--no-certs",
    is_flag=True,
    help="Manage no content certificates (SFR-22/23): SRs then serve TLS from files only.",
)
@click.option(
    "--cert-days",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.0001),
    help="Lifetime of the certificates the platform CA issues to FQDNs (renewed with a third "
    "of it left).",
)
@click.option(
    "--acme-directory",
    metavar="URL",
    help="Obtain automatic certificates from this ACME directory (HTTP-01 answered by the SRs) "
    "instead of the platform CA (SFR-23, docs/tls.md).",
)
@click.option("--acme-email", metavar="ADDRESS", help="Contact address of the ACME account.")
@click.option(
    "--acme-ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificate(s) to verify the ACME directory's HTTPS (default: the system's).",
)
@click.option(
    "--hop-tls",
    type=click.Choice(["off", "endpoints", "all"]),
    default="off",
    show_default=True,
    help="Hop-by-hop TLS inside the platform (docs/tls.md): 'endpoints' gives every SR a "
    "platform identity and reaches endpoints registered with tls over mutual TLS; 'all' also "
    "sends egress hops between SRs over mutual TLS (to their --hop-tls-port).",
)
@tls_options
@click.pass_obj
def serve_pce(
    state: _CliState,
    topology_path: Path,
    db_path: str | None,
    host: str,
    port: int,
    lease_ttl: float,
    name: str | None,
    no_certs: bool,
    cert_days: float,
    acme_directory: str | None,
    acme_email: str | None,
    acme_ca_file: Path | None,
    hop_tls: str,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the path computation element and FQDN registry API (SFR-4..20).

    Start a second one with the same --db (and another --port) as a standby: it takes over when
    the active one stops renewing its lease. Content certificates are kept beside the database
    (<db>.certs.sqlite3), their keys sealed with <state_dir>/certs.key; the platform CA is in
    <state_dir>/ca (docs/tls.md).
    """

    from flame.sfr.build import PceSettings, build_pce  # noqa: PLC0415 - lazy, heavy

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    if acme_directory and no_certs:
        raise click.UsageError("--acme-directory needs certificates: drop --no-certs")
    if hop_tls != "off" and no_certs:
        raise click.UsageError("--hop-tls needs the platform CA: drop --no-certs")
    tls = tls_files(tls_cert, tls_key)
    settings = PceSettings(
        state_dir=config.state_dir,
        topology_path=topology_path,
        db=db_path,
        name=name,
        lease_ttl=lease_ttl,
        certs=not no_certs,
        cert_days=cert_days,
        acme_directory=acme_directory,
        acme_email=acme_email,
        acme_ca_file=acme_ca_file,
        hop_tls=hop_tls,
    )
    pce = build_pce(settings, warn=lambda message: click.echo(message, err=True))
    try:
        scheme = "https" if tls else "http"
        click.echo(
            f"PCE '{pce.store.holder}' on {scheme}://{host}:{port} ({pce.describe()})", err=True
        )
        run_server(pce.app, host, port, "the PCE", on_shutdown=pce.service.drain, tls=tls)
    finally:
        pce.close()


@click.command("sr")
@click.option("--id", "sr_id", required=True, help="This SR's node id in the topology.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes sharing the port (SO_REUSEPORT); default: one per CPU.",
)
@click.option(
    "--pce",
    "pce_urls",
    multiple=True,
    metavar="URL",
    help="PCE to take forwarding tables from; repeat for standbys, tried in order "
    "(default: pce_url from the config).",
)
@click.option(
    "--table-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the last forwarding table here, to forward while no PCE answers (SFR-20) "
    "(default: <state_dir>/sr-<id>.table.json).",
)
@click.option(
    "--clmc",
    "clmc_url",
    metavar="URL",
    help="CLMC to send measurements to (CLMC-8; default: clmc_url from the config).",
)
@click.option("--clmc-db", default="flame", show_default=True, help="CLMC database.")
@click.option("--metrics-interval", default=10.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option(
    "--no-coalescing",
    is_flag=True,
    help="Turn off coincidental multicast of identical concurrent GETs.",
)
@click.option(
    "--emulate-latency",
    is_flag=True,
    help="Delay each request by its route's round-trip path latency (FLAME-in-a-box, where "
    "every hop is loopback).",
)
@click.option(
    "--egress-hop",
    is_flag=True,
    help="Send requests for endpoints behind another SR to that egress SR (which hands them to "
    "the endpoint, as in FLIPS) instead of straight to the endpoint.",
)
@click.option(
    "--egress-port",
    type=click.IntRange(1, 65535),
    help="Port the egress SRs listen on (default: this SR's port; every SR on its own address).",
)
@click.option(
    "--tls-port",
    type=click.IntRange(0, 65535),
    help="Also listen with TLS on this port (SFR-19): each FQDN's certificate chosen by SNI, "
    "from the PCE (uploaded or platform-issued) and/or --tls-cert files.",
)
@click.option(
    "--tls-cert",
    "tls_cert_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A certificate chain to serve (PEM; its names from the certificate); repeat, with "
    "one --tls-key each, in the same order.",
)
@click.option(
    "--tls-key",
    "tls_key_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The private key of each --tls-cert.",
)
@click.option(
    "--tls-redirect",
    multiple=True,
    metavar="FQDN",
    help="Redirect plain HTTP for this FQDN of a --tls-cert to https (the PCE's certificates "
    "carry their own setting: 'flame cert redirect').",
)
@click.option(
    "--no-pce-certs",
    is_flag=True,
    help="Serve TLS from --tls-cert files only, without asking the PCE for certificates.",
)
@click.option(
    "--hop-tls",
    is_flag=True,
    help="Take this SR's platform identity from the PCE (its --hop-tls) and reach endpoints "
    "registered with tls over mutual TLS (docs/tls.md).",
)
@click.option(
    "--hop-tls-port",
    type=click.IntRange(1, 65535),
    help="Listen for egress hops over mutual TLS on this port (implies --hop-tls); with the "
    "PCE's --hop-tls all, egress hops go to this port of the other SRs, over TLS.",
)
@click.option(
    "--hop-tls-files",
    nargs=3,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="CHAIN KEY CA",
    help="A fixed hop-TLS identity from files instead of the PCE's (implies --hop-tls).",
)
@click.pass_obj
def serve_sr(
    state: _CliState,
    sr_id: str,
    host: str,
    port: int,
    workers: int | None,
    pce_urls: tuple[str, ...],
    table_file: Path | None,
    clmc_url: str | None,
    clmc_db: str,
    metrics_interval: float,
    no_coalescing: bool,
    emulate_latency: bool,
    egress_hop: bool,
    egress_port: int | None,
    tls_port: int | None,
    tls_cert_files: tuple[Path, ...],
    tls_key_files: tuple[Path, ...],
    tls_redirect: tuple[str, ...],
    no_pce_certs: bool,
    hop_tls: bool,
    hop_tls_port: int | None,
    hop_tls_files: tuple[Path, Path, Path] | None,
) -> None:
    """Run a service router's data plane (SFR-1, SFR-14).

    It routes each request by its Host header to the best endpoint in the forwarding table the
    PCE computes for this SR, and keeps forwarding on its last table while no PCE answers. The
    config's token authenticates it to the PCE and the CLMC.
    """
    from flame.common.tls import require_private_url  # noqa: PLC0415
    from flame.sfr.router.config import RouterConfig  # noqa: PLC0415 - lazy, heavy
    from flame.sfr.router.server import serve  # noqa: PLC0415 - lazy, heavy

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if len(tls_cert_files) != len(tls_key_files):
        raise UserError("give one --tls-key for each --tls-cert, in the same order")
    if (tls_cert_files or tls_redirect) and tls_port is None:
        raise UserError("--tls-cert and --tls-redirect need --tls-port")
    pce_list = pce_urls or (_pce_url(state, None),)
    for url in (*pce_list, clmc_url or config.clmc_url):
        if url:
            require_private_url(url, config.token, what="the control plane")
    router_config = RouterConfig(
        sr_id=sr_id,
        host=host,
        port=port,
        workers=workers,
        pce_urls=pce_list,
        token=config.token,
        clmc_url=clmc_url or config.clmc_url,
        clmc_token=config.token,
        clmc_db=clmc_db,
        metrics_interval=metrics_interval,
        table_file=str(table_file or config.state_dir / f"sr-{sr_id}.table.json"),
        coalescing=not no_coalescing,
        emulate_latency=emulate_latency,
        egress_hop=egress_hop,
        egress_port=egress_port,
        tls_port=tls_port,
        tls_certs=tuple(
            (str(c), str(k)) for c, k in zip(tls_cert_files, tls_key_files, strict=True)
        ),
        tls_redirect=tls_redirect,
        tls_from_pce=not no_pce_certs,
        hop_tls=hop_tls or hop_tls_port is not None or bool(hop_tls_files),
        hop_tls_port=hop_tls_port,
        hop_tls_files=(
            (str(hop_tls_files[0]), str(hop_tls_files[1]), str(hop_tls_files[2]))
            if hop_tls_files
            else None
        ),
        ca_file=str(config.ca_file) if config.ca_file else None,
    )

    def ready(bound_host: str, bound_port: int) -> None:
        click.echo(f"SR '{sr_id}' routing on http://{bound_host}:{bound_port}", err=True)

    def tls_ready(bound_host: str, bound_port: int) -> None:
        click.echo(f"SR '{sr_id}' routing on https://{bound_host}:{bound_port}", err=True)

    try:
        serve(router_config, on_ready=ready, on_tls_ready=tls_ready)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise UserError(
            f"SR '{sr_id}' cannot listen on {host} (port {port}"
            f"{'' if tls_port is None else f', TLS port {tls_port}'}): "
            f"{exc.strerror or exc}; stop what holds the port or pass another --port/--tls-port"
        ) from None


# The `flame` commands of this module (main.py declares the tree; topology and serve commands
# go in their groups there).
COMMANDS: tuple[click.Command, ...] = (routes_cmd, delegate_cmd, undelegate_cmd, delegations_cmd)
