"""The `flame` command. Exit codes: 0 ok, 1 the user's mistake, 2 an internal error.

Deep code raises; `main()` is the one place that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from flame import __version__
from flame.cli import (
    cert_commands,
    clmc_commands,
    config_commands,
    dashboard_commands,
    health_commands,
    orchestrator_commands,
    sandbox_commands,
    sfemc_commands,
    sfr_commands,
)
from flame.cli._state import CliState, State, emit
from flame.common.auth import Role, TokenStore
from flame.common.diagnostics import Diagnostic, Severity, ValidationFailed
from flame.common.errors import FlameError, UserError
from flame.common.units import ScalarError, parse_scalar
from flame.topology.loader import load_topology
from flame.topology.model import Topology
from flame.tosca.validator import ValidationResult, validate

EXIT_OK = 0
EXIT_USER = 1
EXIT_INTERNAL = 2


# -- validate ------------------------------------------------------------------------------


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


# -- tokens --------------------------------------------------------------------------------


def _token_store(state: CliState) -> TokenStore:
    config = state.config()
    return TokenStore(config.state_dir / "tokens.json")


@click.command("issue")
@click.argument("name")
@click.option(
    "--operator", "role", flag_value=Role.OPERATOR.value, help="Full control of the platform."
)
@click.option(
    "--router",
    "role",
    flag_value=Role.ROUTER.value,
    help="A service router: reads its forwarding tables, reports measurements; nothing else.",
)
@click.option("--tenant", "tenant", help="The media service provider this token acts for.")
@click.option(
    "--ttl",
    help="Expire the token after this long: a number and a unit, e.g. 12h, 30d, 90m (default: never).",
)
@click.pass_obj
def token_issue(
    state: CliState, name: str, role: str | None, tenant: str | None, ttl: str | None
) -> None:
    """Issue a token; it is shown once and stored only hashed."""
    if (role is None) == (tenant is None):
        raise UserError("give exactly one of --operator, --router or --tenant TENANT")
    lifetime = None if ttl is None else _parse_ttl(ttl)
    store = _token_store(state)
    token = store.issue(name, Role(role) if role else Role.TENANT, tenant, ttl=lifetime)
    if state.json:
        expires = None if lifetime is None else store.list()[-1].expires_at
        emit(
            {
                "name": name,
                "role": role or "tenant",
                "tenant": tenant,
                "expires": expires,
                "token": token,
            }
        )
    else:
        click.echo(token)
        click.echo("store it now: it cannot be shown again", err=True)


@click.command("list")
@click.pass_obj
def token_list(state: CliState) -> None:
    """List issued tokens (names, roles and ids, never the tokens)."""
    infos = _token_store(state).list()
    if state.json:
        emit(
            [
                {
                    "name": i.name,
                    "role": i.role.value,
                    "tenant": i.tenant,
                    "id": i.token_id,
                    "created": i.created_at,
                    "expires": i.expires_at,
                    "expired": i.expired(),
                    "last_used": i.last_used_at,
                }
                for i in infos
            ]
        )
        return
    click.echo("NAME\tROLE\tTENANT\tID\tCREATED\tEXPIRES\tLAST USED")
    for i in infos:
        expires = "never" if i.expires_at is None else f"{i.expires_at:%Y-%m-%d %H:%M}"
        if i.expired():
            expires += " (expired)"
        used = "never" if i.last_used_at is None else f"{i.last_used_at:%Y-%m-%d %H:%M}"
        click.echo(
            f"{i.name}\t{i.role.value}\t{i.tenant or '-'}\t{i.token_id}…"
            f"\t{i.created_at:%Y-%m-%d %H:%M}\t{expires}\t{used}"
        )


def _parse_ttl(text: str) -> timedelta:
    try:
        seconds = parse_scalar(text, "scalar-unit.time")
    except ScalarError as exc:
        raise UserError(f"--ttl {text!r}: {exc}; e.g. --ttl 12h or --ttl 30d") from None
    if not 1 <= seconds <= 10 * 366 * 86400:
        raise UserError(f"--ttl {text!r}: give between 1 s and 10 years")
    return timedelta(seconds=seconds)


@click.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(state: CliState, name: str) -> None:
    """Revoke a token by name."""
    _token_store(state).revoke(name)
    if not state.json:
        click.echo(f"revoked '{name}'")


# -- the command tree --------------------------------------------------------------------------
# Declared in one place: each component's module lists its commands (`COMMANDS`) and its
# `flame serve` command; nothing depends on the order of imports or install calls.

topology_group = click.Group(
    "topology",
    help="Topology files: service routers, clusters, user equipment and links.",
    commands={
        "check": topology_check,
        "validate": topology_check,  # the same check, under the name `flame validate` suggests
        "show": sfr_commands.topology_show,
        "link-down": sfr_commands.link_down,
        "link-up": sfr_commands.link_up,
    },
)

token_group = click.Group(
    "token",
    help="API tokens: an operator, or a tenant (media service provider) who sees only its own "
    "services.",
    commands=[token_issue, token_list, token_revoke],
)

serve_group = click.Group(
    "serve",
    help="Run a FLAME component as a service.",
    commands=[
        sfr_commands.serve_pce,
        sfr_commands.serve_sr,
        sfemc_commands.serve_vim,
        orchestrator_commands.serve_orchestrator,
        clmc_commands.serve_clmc,
        dashboard_commands.serve_dashboard,
    ],
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    commands=[
        validate_cmd,
        topology_group,
        token_group,
        serve_group,
        *sfr_commands.COMMANDS,
        cert_commands.cert_group,
        *orchestrator_commands.COMMANDS,
        *sfemc_commands.COMMANDS,
        *sandbox_commands.COMMANDS,
        *config_commands.COMMANDS,
        *health_commands.COMMANDS,
    ],
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
