"""Orchestrator commands (ORCH-1/2/6-9, SFEMC-5).

    flame deploy FILE... [--plan]     submit a service (or only show its plan), wait for its endpoints
    flame status [SFC]                chains, or one chain's endpoints with their states
    flame undeploy SFC                remove every endpoint of a chain
    flame logs SFE                    an endpoint's output
    flame serve orchestrator          the orchestrator and the SFEMC in one process
                                      (built by `flame.orchestrator.build`)

They talk to `--api URL` (default: `api_url` from the config) with the config's token, and
raise; `flame.cli.main.main` prints errors and picks the exit code (0 ok, 1 the user's
mistake, including endpoints that failed or did not settle in time, 2 internal).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import httpx

from flame.cli._serve import run_server, tls_files, tls_options
from flame.cli._state import CliState, emit
from flame.common.config import Config
from flame.common.diagnostics import Diagnostic, Position, Severity, ValidationFailed
from flame.common.errors import UserError
from flame.common.logging import setup_logging
from flame.common.tls import client_verify, require_private_url

__all__ = ["COMMANDS", "serve_orchestrator"]


class _Api:
    """A thin HTTP client turning the API's JSON errors back into our exceptions."""

    def __init__(self, state: CliState, url: str | None) -> None:
        config = state.config()
        self.url = (url or config.api_url).rstrip("/")
        require_private_url(self.url, config.token, what="the orchestrator")  # issue 15
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=30, verify=client_verify(config.ca_file)
        )

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise UserError(
                f"cannot reach the orchestrator at {self.url} ({type(exc).__name__}). Is it "
                "running ('flame serve orchestrator --topology FILE')? Point --api or api_url at it.",
                url=self.url,
            ) from None
        if r.status_code < 400:
            return r.json()
        try:
            body = r.json()
        except ValueError:
            body = {"message": r.text[:300] or r.reason_phrase}
        if r.status_code == 422 and body.get("diagnostics"):
            raise ValidationFailed(
                Diagnostic(
                    str(d.get("code")),
                    str(d.get("message")),
                    Position(
                        str(d.get("file")), int(d.get("line") or 0), int(d.get("column") or 0)
                    ),
                    Severity(d.get("severity", "error")),
                    d.get("value"),
                    d.get("hint"),
                )
                for d in body["diagnostics"]
            )
        message = str(body.get("message") or f"HTTP {r.status_code}")
        for err in body.get("errors", [])[1:] if isinstance(body.get("errors"), list) else []:
            if isinstance(err, dict) and "message" in err:
                message += f"\n  - {err['message']}"
        context = {k: v for k, v in body.items() if k not in ("error", "message")}
        raise UserError(message, status=r.status_code, **context)


_api_option = click.option(
    "--api", metavar="URL", help="Orchestrator URL (default: api_url from the config)."
)


def _files(paths: tuple[Path, ...]) -> dict[str, Any]:
    texts: dict[str, str] = {}
    for path in paths:
        try:
            # Named as given, so the orchestrator's diagnostics point at the file the user typed.
            texts[str(path)] = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    first = next(iter(texts))
    return {"name": first, "template": texts.pop(first), "files": texts}


def _progress(status: dict[str, Any]) -> str:
    eps = status["endpoints"]
    done = sum(
        1 for e in eps if e["state"] == (e["desired"] if e["desired"] != "absent" else "unplaced")
    )
    states = Counter(e["state"] for e in eps)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    restarts = sum(e.get("restarts") or 0 for e in eps)
    crashed = f"; {restarts} restart(s) after crashes" if restarts else ""
    return (
        f"{status['sfc']}: {done}/{len(eps)} endpoints at their desired state "
        f"({detail or 'none'}{crashed})"
    )


def _wait(
    api: _Api, sfc: str, timeout: float, quiet: bool, *, gone: bool = False
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] | None = None
    while True:
        try:
            status = api.call("GET", f"/v1/services/{sfc}", params={"history": "false"})
        except UserError as exc:
            if gone and exc.context.get("status") == 404:
                if not quiet:
                    click.echo(f"{sfc}: removed", err=True)
                return None
            raise
        line = _progress(status)
        if not quiet and line != last:
            click.echo(line, err=True)
            last = line
        if not gone and status["settled"]:
            return status
        if not gone and status["failed"]:
            raise UserError(
                f"{sfc}: endpoint(s) failed: {', '.join(status['failed'])}; "
                f"see 'flame status {sfc}' for the reasons and 'flame logs SFE'",
                sfc=sfc,
            )
        if time.monotonic() > deadline:
            why = "".join(
                f"\n  {e['sfe']} {e['state']}: {e['reason']}"
                for e in status["endpoints"]
                if e.get("reason")
            )
            raise UserError(
                f"{sfc}: not settled after {timeout:g}s ({line}); it goes on in the background, "
                f"check with 'flame status {sfc}' and 'flame logs SFE'{why}",
                sfc=sfc,
            )
        time.sleep(0.2)


@click.command("deploy")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--plan", "plan_only", is_flag=True, help="Only show what would change.")
@click.option("--tenant", help="The tenant the service belongs to (operator tokens only).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the endpoints.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0))
@_api_option
@click.pass_obj
def deploy_cmd(
    state: CliState,
    files: tuple[Path, ...],
    plan_only: bool,
    tenant: str | None,
    wait: bool,
    timeout: float,
    api: str | None,
) -> None:
    """Deploy a FLAME-TOSCA service (or, with --plan, show the plan against what is deployed).

    Give one template, or a resource specification and its alert specification together.
    Re-deploying a changed template changes only what changed.
    """
    body = _files(files)
    params = {"tenant": tenant} if tenant else {}
    with _Api(state, api) as client:
        if plan_only:
            from flame.tosca import validate_texts  # noqa: PLC0415 - only for the chain name

            texts = {body["name"]: body["template"], **body["files"]}
            model = validate_texts(texts).model
            sfc = model.sfc if model is not None else "-"
            plan = client.call("POST", f"/v1/services/{sfc}/plan", json=body, params=params)
            _show_plan(state, plan)
            if plan["errors"]:
                count = len(plan["errors"])
                raise UserError(
                    f"the plan has {count} blocker{'s' if count > 1 else ''}: deploying it would "
                    "change nothing",
                    sfc=plan["sfc"],
                )
            return
        result = client.call("POST", "/v1/services", json=body, params=params)
        plan = result["plan"]
        if not state.json:
            _show_plan(state, plan)
        status = None
        if wait and result["changed"]:
            status = _wait(client, plan["sfc"], timeout, state.json)
        if state.json:
            emit({**result, "status": status})


def _show_plan(state: CliState, plan: dict[str, Any]) -> None:
    if state.json:
        emit(plan)
        return
    click.echo(f"plan for {plan['sfc']} ({plan['sfci']}), tenant {plan['tenant']}:")
    for action, mark in (("add", "+"), ("change", "~"), ("remove", "-")):
        for e in plan[action]:
            why = f" ({', '.join(e['changes'])})" if e.get("changes") else ""
            click.echo(f"  {mark} {e['sfe']} -> {e['desired']}{why}")
    if plan["unchanged"]:
        click.echo(f"  = {len(plan['unchanged'])} unchanged")
    for err in plan["errors"]:
        click.echo(f"  ! {err['message']}", err=True)


@click.command("status")
@click.argument("sfc", required=False)
@_api_option
@click.pass_obj
def status_cmd(state: CliState, sfc: str | None, api: str | None) -> None:
    """List your service chains, or show one chain's endpoints and their states."""
    with _Api(state, api) as client:
        if sfc is None:
            services = client.call("GET", "/v1/services")["services"]
            if state.json:
                emit(services)
                return
            if not services:
                click.echo("no services deployed")
            for s in services:
                click.echo(_progress(s) + (" [removing]" if s["deleting"] else ""))
            return
        status = client.call("GET", f"/v1/services/{sfc}")
        if state.json:
            emit(status)
            return
        click.echo(_progress(status))
        for e in status["endpoints"]:
            reason = f"  ({e['reason']})" if e.get("reason") else ""
            restarts = e.get("restarts") or 0
            crashes = f"  [restarted {restarts}x: {e.get('last_crash')}]" if restarts else ""
            click.echo(f"  {e['sfe']:<40} {e['state']:<13} desired {e['desired']}{reason}{crashes}")
        _print_alerts(state, sfc)


def _print_alerts(state: CliState, sfc: str) -> None:
    """The chain's alert rules and latest events, from the CLMC, when the config names one."""
    config = state.config()
    if config.clmc_url is None:
        return
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    base = config.clmc_url.rstrip("/")
    require_private_url(base, config.token, what="the CLMC")  # issue 15
    try:
        with httpx.Client(
            timeout=5.0, headers=headers, trust_env=False, verify=client_verify(config.ca_file)
        ) as http:
            rules = http.get(base + "/v1/alerts").json()
            events = http.get(base + "/v1/alerts/events", params={"limit": "200"}).json()
    except (httpx.HTTPError, ValueError) as exc:
        click.echo(f"  (alerts: the CLMC at {base} did not answer: {type(exc).__name__})")
        return
    mine = [r for r in rules if isinstance(r, dict) and r.get("sfc") == sfc]
    if mine:
        click.echo("alerts:")
    for r in mine:
        what = f"{r['measurement']}.{r['field']}"
        rule = (
            f"sum({what}) below {r['threshold']:g} in {r['granularity_s']:g}s"
            if r.get("event_type") == "deadman" and r.get("aggregation") == "sum"
            else f"fewer than {r['threshold']:g} points of {what} in {r['granularity_s']:g}s"
            if r.get("event_type") == "deadman"
            else f"{r['aggregation']}({what}) {r.get('comparison')} {r['threshold']:g} "
            f"over {r['granularity_s']:g}s"
        )
        click.echo(f"  {r['name']:<28} {r['level']:<9} {rule}")
    recent = [e for e in events if isinstance(e, dict) and e.get("sfc") == sfc][-5:]
    for e in recent:
        when = time.strftime("%H:%M:%S", time.localtime(e["time_ns"] / 1e9))
        click.echo(f"  {when} {e['message']}")


@click.command("undeploy")
@click.argument("sfc")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0))
@_api_option
@click.pass_obj
def undeploy_cmd(state: CliState, sfc: str, wait: bool, timeout: float, api: str | None) -> None:
    """Remove every endpoint of a service chain (disconnect, drain, stop, remove)."""
    with _Api(state, api) as client:
        result = client.call("DELETE", f"/v1/services/{sfc}")
        if wait:
            _wait(client, sfc, timeout, state.json, gone=True)
        if state.json:
            emit(result)
        elif not wait:
            click.echo(f"{sfc}: removing {len(result['removing'])} endpoint(s)")


@click.command("logs")
@click.argument("sfe")
@click.option("--tail", default=100, show_default=True, type=click.IntRange(1, 10000))
@_api_option
@click.pass_obj
def logs_cmd(state: CliState, sfe: str, tail: int, api: str | None) -> None:
    """Show the last lines an endpoint wrote (stdout and stderr)."""
    with _Api(state, api) as client:
        result = client.call("GET", f"/v1/endpoints/{sfe}/logs", params={"tail": tail})
    if state.json:
        emit(result)
    else:
        for line in result["lines"]:
            click.echo(line)


def _pairs(pairs: tuple[str, ...], option: str, shape: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{option} expects {shape}, got {pair!r}")
        out[key] = value
    return out


def _kubeconfigs(pairs: tuple[str, ...]) -> dict[str | None, Path]:
    found: dict[str | None, Path] = {}
    for pair in pairs:
        cluster, sep, path = pair.partition("=")
        key: str | None = cluster if sep else None
        value = Path(path if sep else cluster).expanduser()
        if sep and (not cluster or not path):
            raise UserError(f"--kubeconfig expects [CLUSTER=]PATH, got {pair!r}")
        if key in found:
            raise UserError(f"--kubeconfig names {'cluster ' + key if key else 'a default'} twice")
        found[key] = value
    return found


def _delegations(pairs: tuple[str, ...]) -> dict[str, str]:
    named = _pairs(pairs, "--delegate", "NAME=TENANT (e.g. vod.example=acme)")
    return {name.lower(): tenant for name, tenant in named.items()}


@click.command("orchestrator")
@click.option(
    "--topology",
    "topology_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Topology file.",
)
@click.option(
    "--db",
    help="SFEMC state: a SQLite path or postgresql://... (default: <state_dir>/sfemc.sqlite3).",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Image repository (default: <state_dir>/images).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--pce",
    "pce_urls",
    multiple=True,
    metavar="URL",
    help="Register endpoints at this PCE (repeat for standbys); default: pce_url from the "
    "config, else an in-process registry.",
)
@click.option(
    "--pce-token",
    envvar="FLAME_PCE_TOKEN",
    help="Operator token for the PCE (default: the config's token).",
)
@click.option(
    "--clmc",
    "clmc_url",
    metavar="URL",
    help="Hand alert rules to this CLMC's API and send it configuration events "
    "(default: clmc_url from the config).",
)
@click.option(
    "--no-clmc",
    is_flag=True,
    help="Run without a CLMC: alert rules are accepted but never evaluated, so no policy fires.",
)
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    help="Also take CLMC alert events from this NATS server (flame.alerts.>).",
)
@click.option(
    "--sr",
    "sr_pairs",
    multiple=True,
    metavar="SR=URL",
    help="Where a service router listens; SFEs of its clusters get it as FLAME_SR_URL.",
)
@click.option(
    "--delegate",
    "delegate_pairs",
    multiple=True,
    metavar="NAME=TENANT",
    help="With the in-process registry: delegate a name to a tenant (SFEMC-7).",
)
@click.option(
    "--drain",
    "drain_s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to drain an endpoint after withdrawing it.",
)
@click.option(
    "--resync",
    "resync_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between full resyncs (0: only at start).",
)
@click.option(
    "--port-base",
    default=20000,
    show_default=True,
    type=click.IntRange(1024, 65000),
    help="First port of the SFE port ranges.",
)
@click.option(
    "--allow-unconfined-sfes",
    is_flag=True,
    envvar="FLAME_ALLOW_UNCONFINED_SFES",
    help="Where SFEs cannot be sandboxed (no bubblewrap), run tenant code unconfined as this "
    "user instead of refusing it.",
)
@click.option(
    "--vim",
    "vim_pairs",
    multiple=True,
    metavar="CLUSTER=URL",
    help="The VIM agent ('flame serve vim --cluster CLUSTER') running a process cluster on "
    "its own host; repeat per cluster. Other process clusters run on this host.",
)
@click.option(
    "--vim-token",
    envvar="FLAME_VIM_TOKEN",
    help="Operator token the VIM agents accept (default: the config's token).",
)
@click.option(
    "--kubeconfig",
    "kubeconfig_pairs",
    multiple=True,
    metavar="[CLUSTER=]PATH",
    help="Kubernetes credentials of a 'vim: kubernetes' cluster (its kubeconfig's current "
    "context); without CLUSTER=, for every Kubernetes cluster not named. Default: "
    "KUBECONFIG, ~/.kube/config or the in-cluster service account.",
)
@click.option(
    "--metrics-interval",
    "metrics_interval_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between SFE and host resource samples sent to the CLMC (0: none).",
)
@tls_options
@click.pass_obj
def serve_orchestrator(
    state: CliState,
    topology_path: Path,
    db: str | None,
    images_dir: Path | None,
    host: str,
    port: int,
    pce_urls: tuple[str, ...],
    pce_token: str | None,
    clmc_url: str | None,
    no_clmc: bool,
    sr_pairs: tuple[str, ...],
    nats_url: str | None,
    delegate_pairs: tuple[str, ...],
    drain_s: float,
    resync_s: float,
    port_base: int,
    allow_unconfined_sfes: bool,
    vim_pairs: tuple[str, ...],
    vim_token: str | None,
    kubeconfig_pairs: tuple[str, ...],
    metrics_interval_s: float,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the orchestrator API and the SFEMC (reconciler, VIMs, policy webhook) in one process.

    Each cluster's SFEs run where its topology entry says: process clusters on this host, or
    on their own host through a VIM agent (--vim CLUSTER=URL); Kubernetes clusters through
    their API server (--kubeconfig CLUSTER=PATH). See docs/deploy.md.

    SFE processes outlive this process on purpose: a restarted orchestrator adopts them.
    """
    # FastAPI and the SFEMC are heavy: imported when serving, so `flame --help` stays fast.
    from flame.orchestrator.build import OrchestratorSettings, build_orchestrator  # noqa: PLC0415
    from flame.sfemc.build import SfemcSettings  # noqa: PLC0415

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    tls = tls_files(tls_cert, tls_key)
    clmc = _clmc_choice(clmc_url or config.clmc_url, no_clmc)
    verify = client_verify(config.ca_file)
    sfemc = SfemcSettings(
        state_dir=config.state_dir,
        db=db,
        images_dir=images_dir,
        pce_urls=_pce_choice(pce_urls, config),
        pce_token=pce_token or config.token,
        delegations=_delegations(delegate_pairs),
        drain_s=drain_s,
        resync_s=resync_s,
        port_base=port_base,
        sr_urls=_pairs(sr_pairs, "--sr", "SR=URL"),
        allow_unconfined_sfes=allow_unconfined_sfes,
        vim_agents=_pairs(vim_pairs, "--vim", "CLUSTER=URL"),
        vim_token=vim_token or config.token,
        kubeconfigs=_kubeconfigs(kubeconfig_pairs),
        verify=verify,
    )
    settings = OrchestratorSettings(
        topology_path=topology_path,
        sfemc=sfemc,
        clmc_url=clmc,
        token=config.token,
        nats_url=nats_url,
        metrics_interval_s=metrics_interval_s,
        verify=verify,
    )
    built = build_orchestrator(settings, warn=_warn)
    click.echo(
        f"orchestrator + SFEMC on {'https' if tls else 'http'}://{host}:{port} "
        f"({built.describe()})",
        err=True,
    )
    run_server(built.app, host, port, "the orchestrator", tls=tls)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _clmc_choice(clmc_url: str | None, no_clmc: bool) -> str | None:
    """The CLMC, or None when the operator chose none (--no-clmc); never none by accident."""
    if not clmc_url and not no_clmc:
        # Alert rules would be kept in memory and never evaluated: the service's policies
        # would silently never fire.
        raise UserError(
            "no CLMC to hand alert rules to: pass --clmc URL (or set clmc_url in the config), "
            "or --no-clmc to run without monitoring (policies then never fire)"
        )
    if not clmc_url:
        _warn("--no-clmc: alert rules are not evaluated")
    return clmc_url or None


def _pce_choice(pce_urls: tuple[str, ...], config: Config) -> tuple[str, ...]:
    """--pce, else the config's pce_url, else none: then said, as no SR will route."""
    urls = pce_urls or ((config.pce_url,) if config.pce_url else ())
    if not urls:
        _warn(
            "no --pce (and no pce_url in the config): endpoints are registered in this "
            "process only, so no service router routes to them"
        )
    return urls


# `flame serve orchestrator` is `serve_orchestrator`.
COMMANDS = (deploy_cmd, status_cmd, undeploy_cmd, logs_cmd)
