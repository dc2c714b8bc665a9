"""`flame token ...`: API tokens, kept hashed in the state directory (flame.common.auth)."""

from __future__ import annotations

from datetime import timedelta

import click

from flame.cli._state import CliState, emit
from flame.common.auth import Role, TokenStore
from flame.common.errors import UserError
from flame.common.units import ScalarError, parse_scalar

__all__ = ["token_group"]


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


token_group = click.Group(
    "token",
    help="API tokens: an operator, or a tenant (media service provider) who sees only its own "
    "services.",
    commands=[token_issue, token_list, token_revoke],
)
