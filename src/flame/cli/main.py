"""The `flame` command. Exit codes: 0 ok, 1 the user's mistake, 2 an internal error.

Deep code raises; `main()` is the one place that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flame import __version__
from flame.cli._lazy import Lazy, LazyGroup
from flame.cli._state import CliState, State, emit
from flame.common.diagnostics import Diagnostic, Severity, ValidationFailed
from flame.common.errors import FlameError, UserError

if TYPE_CHECKING:
    from flame.topology.model import Topology
    from flame.tosca.validator import ValidationResult

# httpx imports its own command-line client (`httpx._main`: rich, pygments) whenever rich is
# installed (a dev dependency here): ~70 ms of every `flame` command that talks HTTP, for a
# client `flame` never runs. None in sys.modules makes that import fail, and httpx falls back
# to a stub `httpx.main` (its own `except ImportError`).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

EXIT_OK = 0
EXIT_USER = 1
EXIT_INTERNAL = 2


# -- validate ------------------------------------------------------------------------------


def validate(files: Sequence[Path], **kwargs: Any) -> ValidationResult:
    """`flame.tosca.validator.validate`, imported only by the commands that validate."""
    from flame.tosca.validator import validate as validate_templates  # noqa: PLC0415 - heavy

    return validate_templates(files, **kwargs)


def load_topology(path: Path) -> Topology:
    """`flame.topology.loader.load_topology`, imported only by the commands that read one."""
    from flame.topology.loader import load_topology as load  # noqa: PLC0415 - heavy (YAML)

    return load(path)


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--input expects NAME=VALUE, got {pair!r}")
        try:
            inputs[key] = json.loads(value)
        except json.JSONDecodeError:
            inputs[key] = value
    return inputs


def _summary(result: ValidationResult) -> str:
    model = result.model
    if model is None:
        if result.ok:
            return "valid TOSCA (no FLAME service functions)"
        return f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
    placements = sum(len(p.states) for p in model.initial_policies)
    return (
        f"valid: service function chain '{model.sfc}' (instance '{model.sfci}'), "
        f"{len(model.service_functions)} service function(s), {placements} initial endpoint(s), "
        f"{len(model.alert_rules)} alert rule(s), {len(model.state_change_policies)} state-change trigger(s)"
        + (f", {len(result.warnings)} warning(s)" if result.warnings else "")
    )


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(path_type=Path),
    help="Topology file: check that clusters and locations exist.",
)
@click.option(
    "--runtime",
    "runtimes",
    multiple=True,
    help="Runtimes with a VIM on the target platform (default: process, kubernetes).",
)
@click.option(
    "--input", "input_pairs", multiple=True, metavar="NAME=VALUE", help="Template input value."
)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.pass_obj
def validate_cmd(
    state: CliState,
    files: tuple[Path, ...],
    topology_path: Path | None,
    runtimes: tuple[str, ...],
    input_pairs: tuple[str, ...],
    strict: bool,
) -> None:
    """Validate FLAME-TOSCA templates, reporting every error as file:line:col.

    Give one template, or a resource specification and its alert specification together.
    Files may be YAML or CSAR archives.
    """
    topology: Topology | None = None
    if topology_path is not None:
        topology = load_topology(topology_path)
    kwargs: dict[str, Any] = {"topology": topology, "inputs": _parse_inputs(input_pairs)}
    if runtimes:
        kwargs["runtimes"] = frozenset(runtimes)
    result = validate(files, **kwargs)
    failed = not result.ok or (strict and bool(result.warnings))
    if state.json:
        emit(
            {
                "ok": not failed,
                "errors": len(result.errors),
                "warnings": len(result.warnings),
                "diagnostics": [d.as_dict() for d in result.diagnostics],
                "model": result.model.to_dict() if result.model is not None else None,
            }
        )
    else:
        for d in result.diagnostics:
            _print_diagnostic(d)
        if failed and result.ok:
            click.echo(f"{len(result.warnings)} warning(s), treated as errors (--strict)", err=True)
        else:
            click.echo(_summary(result), err=failed)
    if failed:
        raise SystemExit(EXIT_USER)


def _print_diagnostic(d: Diagnostic) -> None:
    colour = "red" if d.severity is Severity.ERROR else "yellow"
    label = click.style(d.code, fg=colour, bold=True)
    line = f"{d.position}: {label} {d.message}"
    if d.hint:
        line += click.style(f"\n    hint: {d.hint}", fg="cyan")
    click.echo(line, err=True)


# -- topology ------------------------------------------------------------------------------


@click.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_obj
def topology_check(state: CliState, file: Path) -> None:
    """Check a topology file and summarise it."""
    topology = load_topology(file)
    routers, clusters = sorted(topology.service_routers), sorted(topology.clusters)
    if state.json:
        emit(
            {
                "ok": True,
                "name": topology.name,
                "service_routers": routers,
                "clusters": clusters,
                "links": len(topology.links),
            }
        )
    else:
        click.echo(
            f"valid topology '{topology.name}': {len(routers)} service router(s), "
            f"{len(clusters)} cluster(s), {len(topology.links)} link(s)"
        )


# -- the command tree --------------------------------------------------------------------------
# Declared in one place, as name -> where the command lives and its one-line help: a command's
# module is imported only when that command runs (`flame --help` imports none of them; issue 18).
# A command added to a module's `COMMANDS` must be declared here too (tests/cli/test_lazy_cli.py).

SFR = "flame.cli.sfr_commands"
ORCHESTRATOR = "flame.cli.orchestrator_commands"
SFEMC = "flame.cli.sfemc_commands"
SANDBOX = "flame.cli.sandbox_commands"

TOPOLOGY_COMMANDS: dict[str, click.Command | Lazy] = {
    "check": topology_check,
    "validate": topology_check,  # the same check, under the name `flame validate` suggests
    "show": Lazy(
        f"{SFR}:topology_show",
        "Show nodes and links: of a topology FILE, or as the PCE has them now (SFR-7).",
    ),
    "link-down": Lazy(
        f"{SFR}:link_down",
        "Bring the link between nodes A and B down at the PCE (operator; SFR-13).",
    ),
    "link-up": Lazy(
        f"{SFR}:link_up",
        "Bring the link between nodes A and B up at the PCE (operator; SFR-13).",
    ),
}
topology_group = LazyGroup(
    "topology",
    help="Topology files: service routers, clusters, user equipment and links.",
    commands=TOPOLOGY_COMMANDS,
)

SERVE_COMMANDS: dict[str, click.Command | Lazy] = {
    "pce": Lazy(
        f"{SFR}:serve_pce",
        "Run the path computation element and FQDN registry API (SFR-4..20).",
    ),
    "sr": Lazy(f"{SFR}:serve_sr", "Run a service router's data plane (SFR-1, SFR-14)."),
    "vim": Lazy(
        f"{SFEMC}:serve_vim",
        "Run a cluster's VIM agent: the process VIM (sandboxed SFEs) on this host, for the SFEMC.",
    ),
    "orchestrator": Lazy(
        f"{ORCHESTRATOR}:serve_orchestrator",
        "Run the orchestrator API and the SFEMC (reconciler, VIMs, policy webhook) in one process.",
    ),
    "clmc": Lazy(
        "flame.cli.clmc_commands:serve_clmc",
        "Run the CLMC's InfluxDB 1.x compatible API: /ping, /write, /api/v2/write, /query.",
    ),
    "dashboard": Lazy(
        "flame.cli.dashboard_commands:serve_dashboard",
        "Serve the dashboard. It holds no token: the browser's token, checked with the "
        "orchestrator on every request, is passed to each API.",
    ),
}
serve_group = LazyGroup(
    "serve", help="Run a FLAME component as a service.", commands=SERVE_COMMANDS
)

ROOT_COMMANDS: dict[str, click.Command | Lazy] = {
    "validate": validate_cmd,
    "topology": topology_group,
    "token": Lazy(
        "flame.cli.token_commands:token_group",
        "API tokens: an operator, or a tenant (media service provider) who sees only its own "
        "services.",
    ),
    "serve": serve_group,
    # sfr_commands.COMMANDS
    "routes": Lazy(
        f"{SFR}:routes_cmd",
        "Ranked routes to FQDN's endpoints with path and cost, per ingress SR (SFR-4).",
    ),
    "delegate": Lazy(
        f"{SFR}:delegate_cmd",
        "Delegate FQDN (and its subdomains) to a tenant, so its services may use it (operator).",
    ),
    "undelegate": Lazy(f"{SFR}:undelegate_cmd", "Take FQDN back from its tenant (operator)."),
    "delegations": Lazy(
        f"{SFR}:delegations_cmd",
        "FQDNs and the tenants they are delegated to (a tenant sees its own).",
    ),
    "cert": Lazy(
        "flame.cli.cert_commands:cert_group",
        "Content certificates of FQDNs, served by the SRs over TLS (SFR-22, SFR-23).",
    ),
    # orchestrator_commands.COMMANDS
    "deploy": Lazy(
        f"{ORCHESTRATOR}:deploy_cmd",
        "Deploy a FLAME-TOSCA service (or, with --plan, show the plan against what is deployed).",
    ),
    "status": Lazy(
        f"{ORCHESTRATOR}:status_cmd",
        "List your service chains, or show one chain's endpoints and their states.",
    ),
    "logs": Lazy(
        f"{ORCHESTRATOR}:logs_cmd", "Show the last lines an endpoint wrote (stdout and stderr)."
    ),
    "undeploy": Lazy(
        f"{ORCHESTRATOR}:undeploy_cmd",
        "Remove every endpoint of a service chain (disconnect, drain, stop, remove).",
    ),
    # sfemc_commands.COMMANDS
    "package": Lazy(
        f"{SFEMC}:package_cmd",
        "Build an SF image from DIRECTORY (with its flame-sf.yaml) and print its digest.",
    ),
    "push": Lazy(
        f"{SFEMC}:push_cmd",
        "Build an SF image from SOURCE (a directory, or an archive from `flame package -o`) and "
        "upload it to the orchestrator with this config's token: a tenant's image is its own.",
    ),
    "images": Lazy(f"{SFEMC}:images_group", "SF images in the repository (list by default)."),
    # sandbox_commands.COMMANDS
    "up": Lazy(
        f"{SANDBOX}:up_cmd",
        "Run FLAME-in-a-box: PCE, service routers (and the rest of the platform) as processes.",
    ),
    "down": Lazy(
        f"{SANDBOX}:down_cmd",
        "Stop a FLAME-in-a-box started with 'flame up -d' (or one left behind).",
    ),
    "ue": Lazy(
        f"{SANDBOX}:ue_group",
        "User equipment: load generators that request through a service router.",
    ),
    # config_commands.COMMANDS, health_commands.COMMANDS
    "config": Lazy(
        "flame.cli.config_commands:config_group",
        "What the orchestrator put in force, when (the CLMC's configuration store, CLMC-3).",
    ),
    "health": Lazy(
        "flame.cli.health_commands:health_cmd",
        "Check a component's health URL (e.g. https://10.0.0.1:7070/health); exit 0 when it "
        "answers 2xx, 1 otherwise. https:// is verified with the config's ca_file.",
    ),
}


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    commands=ROOT_COMMANDS,
)
@click.version_option(__version__, prog_name="flame")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON output.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $FLAME_CONFIG or ~/.config/flame/config.toml).",
)
@click.pass_context
def cli(ctx: click.Context, json_output: bool, config_path: Path | None) -> None:
    """FLAME: media service delivery on edge infrastructure.

    Describe a service in FLAME-TOSCA, validate it, deploy it, and run the whole platform on
    this machine with `flame up` (FLAME-in-a-box).
    """
    ctx.obj = State(json_output, config_path)


# -- entry point ---------------------------------------------------------------------------


def _fail(message: str, code: int, as_json: bool, body: dict[str, object] | None = None) -> int:
    if as_json:
        click.echo(
            json.dumps(body or {"error": "error", "message": message}, indent=2, default=str)
        )
    else:
        click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; never lets a traceback reach a user unless FLAME_DEBUG is set."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    try:
        cli.main(args=args, prog_name="flame", standalone_mode=False)
    except ValidationFailed as exc:
        if as_json:
            return _fail(str(exc), EXIT_USER, True, exc.as_dict())
        for d in exc.diagnostics:
            _print_diagnostic(d)
        errors = sum(1 for d in exc.diagnostics if d.severity is Severity.ERROR)
        click.echo(f"{errors} error(s)", err=True)
        return EXIT_USER
    except UserError as exc:
        return _fail(exc.message, EXIT_USER, as_json, exc.as_dict())
    except click.exceptions.Abort:
        return _fail("aborted", EXIT_USER, as_json)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if not as_json:
            exc.show()
            return EXIT_USER
        return _fail(
            exc.format_message(),
            EXIT_USER,
            True,
            {"error": "usage_error", "message": exc.format_message()},
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USER
    except FlameError as exc:
        return _fail(exc.message, EXIT_INTERNAL, as_json, exc.as_dict())
    except Exception as exc:  # the last resort: an internal error, reported without a traceback
        if os.environ.get("FLAME_DEBUG"):
            traceback.print_exc()
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set FLAME_DEBUG=1 for a traceback and report it)",
            EXIT_INTERNAL,
            as_json,
            {"error": "internal_error", "message": str(exc)},
        )
    return EXIT_OK
