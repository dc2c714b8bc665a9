"""CLMC commands (CLMC-8, 9, 16).

    flame serve clmc [--data DIR] [--port 8086] [--pce URL]   the InfluxDB-compatible monitoring
                                                              service

Heavy imports (DuckDB, Arrow, FastAPI, uvicorn) happen inside the command, so `flame --help`
stays fast. Errors are raised; `flame.cli.main.main` prints them and picks the exit code.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import click

from flame.cli._serve import run_server, tls_files, tls_options
from flame.cli._state import CliState
from flame.common.config import Config
from flame.common.logging import setup_logging

__all__ = ["serve_clmc"]


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
    "--webhook-scheme",
    "webhook_schemes",
    multiple=True,
    type=click.Choice(["http", "https"]),
    envvar="FLAME_CLMC_WEBHOOK_SCHEMES",
    help="Schemes tenants' alert webhooks may use (repeatable; default: http and https).",
)
@click.option(
    "--webhook-reach",
    type=click.Choice(["private", "public", "listed"]),
    default="private",
    show_default=True,
    envvar="FLAME_CLMC_WEBHOOK_REACH",
    help="Where webhooks may go: public and private networks, public addresses only, or only "
    "--webhook-allow destinations. Loopback, link-local, metadata addresses and the platform's "
    "hosts are refused unless allowed; the platform's own endpoints always.",
)
@click.option(
    "--webhook-allow",
    multiple=True,
    metavar="DEST",
    envvar="FLAME_CLMC_WEBHOOK_ALLOW",
    help="Allow webhooks to DEST even if refused by default: an address, CIDR or host name "
    "(*.example.org), optionally :port (repeatable).",
)
@click.option(
    "--webhook-deny",
    multiple=True,
    metavar="DEST",
    envvar="FLAME_CLMC_WEBHOOK_DENY",
    help="Always refuse webhooks to DEST (repeatable; same forms as --webhook-allow).",
)
@click.option(
    "--platform-url",
    "platform_urls",
    multiple=True,
    metavar="URL",
    help="Another of the platform's own endpoints (an SR, the dashboard), never a webhook; "
    "this CLMC, the SFEMC URL and the config's api_url, pce_url and clmc_url always count.",
)
@click.option(
    "--pce",
    "pce_urls",
    metavar="URL",
    multiple=True,
    help="Read the FQDN delegations from this PCE every second (GET /v1/delegations, with the "
    "config's token), so tenants can query the platform database 'flame' for their own names. "
    "Repeat for standby PCEs. Without it tenants see nothing of 'flame'.",
)
@click.option(
    "--retention-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds between retention-policy enforcement runs.",
)
@tls_options
@click.pass_obj
def serve_clmc(
    state: CliState,
    data_dir: Path | None,
    host: str,
    port: int,
    no_auth: bool,
    retention_interval: float,
    sfemc_url: str | None,
    nats_url: str | None,
    webhook_schemes: tuple[str, ...],
    webhook_reach: str,
    webhook_allow: tuple[str, ...],
    webhook_deny: tuple[str, ...],
    platform_urls: tuple[str, ...],
    pce_urls: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the CLMC's InfluxDB 1.x compatible API: /ping, /write, /api/v2/write, /query."""

    from flame.clmc.build import ClmcSettings, build_clmc  # noqa: PLC0415 - lazy, heavy

    config = state.config()
    setup_logging(config.log_level, config.log_format)
    directory = data_dir or config.state_dir / "clmc"
    listen = f"[{host}]" if ":" in host else host
    verify = _verify(config)
    settings = ClmcSettings(
        directory=directory,
        tokens_path=None if no_auth else config.state_dir / "tokens.json",
        own_url=f"http://{listen}:{port}",
        sfemc_url=sfemc_url or config.api_url.rstrip("/") + "/v1/sfemc/events",
        token=config.token,
        retention_interval_s=retention_interval,
        nats_url=nats_url,
        webhook_schemes=webhook_schemes or ("http", "https"),
        webhook_reach=webhook_reach,
        webhook_allow=webhook_allow,
        webhook_deny=webhook_deny,
        platform_urls=tuple(
            u for u in (config.api_url, config.pce_url, config.clmc_url, *platform_urls) if u
        ),
        pce_urls=pce_urls,
        verify=verify,
    )
    built = build_clmc(settings, warn=_warn, note=lambda m: click.echo(m, err=True))
    click.echo(f"CLMC on http://{host}:{port} (data in {directory})", err=True)
    from flame.clmc.httpserver import influx_http_protocol  # noqa: PLC0415 - lazy, heavy

    run_server(
        built.app,
        host,
        port,
        "the CLMC",
        tls=tls_files(tls_cert, tls_key),
        http=influx_http_protocol(),  # requests uvicorn refuses, answered InfluxDB-shaped
    )


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _verify(config: Config) -> ssl.SSLContext | bool:
    """The platform CA (`ca_file`) for https control-plane peers, else the system's."""
    from flame.common.tls import client_verify  # noqa: PLC0415

    return client_verify(config.ca_file)
