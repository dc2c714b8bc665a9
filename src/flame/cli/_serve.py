"""Running one component's ASGI app for `flame serve ...` (uvicorn, our logging, JSON errors),
over HTTPS when given a certificate (`--tls-cert/--tls-key`, issue 15)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from flame.common.errors import UserError

__all__ = ["run_server", "tls_files", "tls_options"]

F = TypeVar("F", bound=Callable[..., Any])


def tls_options(command: F) -> F:
    """`--tls-cert FILE --tls-key FILE` on a `flame serve` command (HTTPS when given)."""
    command = click.option(
        "--tls-key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Its private key (PEM).",
    )(command)
    return click.option(
        "--tls-cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Serve HTTPS with this certificate chain (PEM, server's first); e.g. one from "
        "'flame cert issue-server'.",
    )(command)


def tls_files(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """Both or neither (UserError otherwise)."""
    if (cert is None) != (key is None):
        raise UserError("give --tls-cert and --tls-key together")
    if cert is None or key is None:
        return None
    return cert, key


def run_server(
    app: Any,
    host: str,
    port: int,
    what: str,
    *,
    on_shutdown: Callable[[], None] | None = None,
    tls: tuple[Path, Path] | None = None,
    http: Any = "auto",
) -> None:
    """Serve `app` until SIGTERM/SIGINT; a port it cannot bind or a failed start-up is the
    user's to fix (UserError naming `what`), not a traceback. `on_shutdown` runs when the
    shutdown begins, before uvicorn waits for open requests (to answer long polls at once).
    With `tls` (certificate chain, key) it serves HTTPS only: TLS 1.2+, ECDHE + AEAD suites
    (`flame.common.tls`)."""
    import ssl  # noqa: PLC0415 - lazy: every command module imports this one for its options

    import uvicorn  # noqa: PLC0415 - lazy, heavy

    from flame.common.tls import MODERN_CIPHERS, harden  # noqa: PLC0415 - lazy (ssl)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    ssl_args: dict[str, Any] = {}
    if tls is not None:
        ssl_args = {
            "ssl_certfile": str(tls[0]),
            "ssl_keyfile": str(tls[1]),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER,
            "ssl_ciphers": MODERN_CIPHERS,
        }
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # flame.common.logging's setup stays in charge
        access_log=False,
        timeout_graceful_shutdown=2,
        http=http,  # uvicorn's HTTP protocol, or a subclass (the CLMC's answers InfluxDB-shaped)
        **ssl_args,
    )
    if tls is not None:
        try:
            config.load()  # builds config.ssl from the files
        except (ssl.SSLError, OSError) as exc:
            raise UserError(
                f"{what}: cannot use the certificate {tls[0]} with the key {tls[1]} "
                f"({getattr(exc, 'reason', None) or exc.strerror or type(exc).__name__})"
            ) from None
        assert config.ssl is not None
        harden(config.ssl)  # TLS 1.2+ (uvicorn sets the ciphers, not the minimum version)
    server = Server(config)
    try:
        server.run()
    except SystemExit:  # how uvicorn reports a port it cannot bind or a failed startup
        started = False
    else:
        started = server.started
    if not started:
        raise UserError(f"{what} could not start on {host}:{port}; see the log above")
