"""CLMC commands (CLMC-8, 9, 16).

    flame serve clmc [--data DIR] [--port 8086]   the InfluxDB-compatible monitoring service

Heavy imports (DuckDB, Arrow, FastAPI, uvicorn) happen inside the command, so `flame --help`
stays fast. Errors are raised; `flame.cli.main.main` prints them and picks the exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import click

from flame.cli._serve import run_server
from flame.common.auth import TokenStore
from flame.common.config import Config
from flame.common.logging import setup_logging

__all__ = ["install"]


class _CliState(Protocol):
    json: bool

    def config(self) -> Config: ...


def install(cli: click.Group) -> None:
    """Add `flame serve clmc` (creating the `serve` group if no one did yet)."""
    serve = cli.commands.get("serve")
    if not isinstance(serve, click.Group):
        serve = click.Group("serve", help="Run a FLAME component as a service.")
        cli.add_command(serve)
    serve.add_command(serve_clmc)


@click.command("clmc")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the DuckDB file and the write-ahead log (default: <state_dir>/clmc).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8086, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--no-auth",
    is_flag=True,
    help="Accept requests without a token (a laptop or a test; never on a shared network).",
)
@click.option(
    "--sfemc",
    "sfemc_url",
    metavar="URL",
    help="Send alert events of rules handled by `flame_sfemc` to this SFEMC webhook, with the "
    "config's token (default: <api_url from the config>/v1/sfemc/events).",
)
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    help="Also publish alert events on this NATS server (subjects flame.alerts.<tenant>.<sfc>).",
)
@click.option(
    "--retention-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds between retention-policy enforcement runs.",
)
@click.pass_obj
def serve_clmc(
    state: _CliState,
    data_dir: Path | None,
    host: str,
    port: int,
    no_auth: bool,
    retention_interval: float,
    sfemc_url: str | None,
    nats_url: str | None,
) -> None:
    """Run the CLMC's InfluxDB 1.x compatible API: /ping, /write, /api/v2/write, /query."""

    from flame.clmc.alerts.notify import Notifier  # noqa: PLC0415 - lazy, heavy
    from flame.clmc.alerts.service import AlertService  # noqa: PLC0415 - lazy, heavy
    from flame.clmc.service import ClmcService  # noqa: PLC0415 - lazy, heavy

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    tokens = None if no_auth else TokenStore(config.state_dir / "tokens.json")
    if tokens is not None and not tokens.list():
        click.echo(
            f"warning: no API tokens in {tokens.path}; every request will get 401. "
            "Issue one with 'flame token issue NAME --operator', or use --no-auth locally.",
            err=True,
        )
    directory = data_dir or config.state_dir / "clmc"
    alerts = AlertService(
        directory / "alert-rules.json",
        Notifier(sfemc_url or config.api_url.rstrip("/") + "/v1/sfemc/events", token=config.token),
        nats_url=nats_url,
    )
    directory.mkdir(parents=True, exist_ok=True)
    service = ClmcService(directory, tokens, retention_interval_s=retention_interval, alerts=alerts)
    click.echo(f"CLMC on http://{host}:{port} (data in {directory})", err=True)
    run_server(service.app, host, port, "the CLMC")
