"""`flame serve dashboard`: the web dashboard (topology, KPIs, alerts, timeline)."""

from __future__ import annotations

from pathlib import Path

import click

from flame.cli._serve import run_server, tls_files, tls_options
from flame.cli._state import CliState
from flame.common.logging import setup_logging

__all__ = ["serve_dashboard"]


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--pce", "pce_url", metavar="URL", help="The PCE (default: the config's pce_url).")
@click.option(
    "--clmc", "clmc_url", metavar="URL", help="The CLMC (default: the config's clmc_url)."
)
@click.option(
    "--orchestrator",
    "orchestrator_url",
    metavar="URL",
    help="Checks every request's token (GET /v1/whoami); default: the config's api_url.",
)
@click.option("--clmc-db", default="flame", show_default=True)
@tls_options
@click.pass_obj
def serve_dashboard(
    state: CliState,
    host: str,
    port: int,
    pce_url: str | None,
    clmc_url: str | None,
    orchestrator_url: str | None,
    clmc_db: str,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve the dashboard. It holds no token: the browser's token, checked with the
    orchestrator on every request, is passed to each API."""

    from flame.clmc.dashboard.app import DashboardConfig, create_dashboard_app  # noqa: PLC0415

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    app = create_dashboard_app(
        DashboardConfig(
            pce_url=pce_url or config.pce_url,
            clmc_url=clmc_url or config.clmc_url,
            orchestrator_url=orchestrator_url or config.api_url,
            clmc_db=clmc_db,
        )
    )
    tls = tls_files(tls_cert, tls_key)
    click.echo(f"dashboard on {'https' if tls else 'http'}://{host}:{port}/", err=True)
    run_server(app, host, port, "the dashboard", tls=tls)
