"""`flame config`: the CLMC's configuration store (CLMC-3), what was in force when.

    flame config history SFC [--kind template|policies|topology]   every version, oldest first
    flame config at SFC [--time T] [--kind ...] [--show]            the version in force at T

T is RFC 3339 (2026-12-06T05:00:00Z) or epoch nanoseconds; default now. The CLMC is the
config's `clmc_url`, asked with its token: a tenant sees only its own chains' records.
"""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from flame.cli._state import CliState
from flame.common.errors import UserError
from flame.common.tls import client_verify, require_private_url

__all__ = ["COMMANDS"]

_KINDS = click.Choice(["template", "policies", "topology"])


@click.group("config")
def config_group() -> None:
    """What the orchestrator put in force, when (the CLMC's configuration store, CLMC-3)."""


def _get(state: CliState, path: str, params: dict[str, str]) -> Any:
    config = state.config()
    if config.clmc_url is None:
        raise UserError("no CLMC: set clmc_url in the config (flame up writes it)")
    base = config.clmc_url.rstrip("/")
    require_private_url(base, config.token, what="the CLMC")
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    try:
        with httpx.Client(
            timeout=10.0, headers=headers, trust_env=False, verify=client_verify(config.ca_file)
        ) as http:
            response = http.get(base + path, params=params)
    except httpx.HTTPError as exc:
        raise UserError(f"the CLMC at {base} did not answer: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    if response.status_code >= 300:
        message = body.get("error") if isinstance(body, dict) else str(body)
        raise UserError(f"{message} (HTTP {response.status_code})", status=response.status_code)
    return body


def _line(item: dict[str, Any]) -> str:
    what = "deleted" if item.get("deleted") else item["version"]
    owner = f"  tenant {item['tenant']}" if item.get("tenant") else ""
    return f"{item['time']}  {item['kind']:<9} {what}{owner}"


@config_group.command("history")
@click.argument("name")
@click.option("--kind", type=_KINDS, help="Only this kind (default: template and policies).")
@click.pass_obj
def history(state: CliState, name: str, kind: str | None) -> None:
    """Every recorded version of chain NAME (or topology NAME with --kind topology)."""
    kinds = [kind] if kind else ["template", "policies"]
    versions: list[dict[str, Any]] = []
    for each in kinds:
        try:
            body = _get(state, f"/v1/config/{each}/{name}/history", {"bodies": "false"})
        except UserError as exc:
            if exc.context.get("status") == 404 and len(kinds) > 1:
                continue
            raise
        versions += body["versions"]
    if not versions:
        raise UserError(f"nothing recorded for {name!r}")
    versions.sort(key=lambda v: (v["time_ns"], v["kind"]))
    if state.json:
        click.echo(json.dumps({"name": name, "versions": versions}, indent=2))
        return
    for item in versions:
        click.echo(_line(item))


@config_group.command("at")
@click.argument("name")
@click.option("--time", "at", help="RFC 3339 time or epoch nanoseconds (default: now).")
@click.option("--kind", type=_KINDS, help="Only this kind (default: template and policies).")
@click.option("--show", is_flag=True, help="Print the content (template files, policies).")
@click.pass_obj
def at_time(state: CliState, name: str, at: str | None, kind: str | None, show: bool) -> None:
    """What of chain NAME was in force at a time."""
    params = {"at": at} if at else {}
    found: list[dict[str, Any]] = []
    for each in [kind] if kind else ["template", "policies"]:
        try:
            found.append(_get(state, f"/v1/config/{each}/{name}", params))
        except UserError as exc:
            if exc.context.get("status") != 404 or kind is not None:
                raise
    if not found:
        raise UserError(f"nothing of {name!r} was in force then")
    if state.json:
        click.echo(json.dumps({"name": name, "in_force": found}, indent=2))
        return
    for item in found:
        click.echo(_line(item))
        if show and not item.get("deleted"):
            content = item.get("content") or {}
            files = content.get("files") if item["kind"] == "template" else None
            if isinstance(files, dict):
                for file, text in files.items():
                    click.echo(f"--- {file}")
                    click.echo(str(text).rstrip("\n"))
            else:
                click.echo(json.dumps(content, indent=2))


COMMANDS = (config_group,)
