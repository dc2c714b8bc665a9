"""Running a media SF's ASGI app until SIGTERM/SIGINT, shared by the content, transcoder and LOD
SFs: uvicorn on uvloop/httptools with bounded concurrency, a graceful shutdown and exit status 0
(uvicorn itself would re-raise SIGTERM after shutting down, exit status -15).

Hop-by-hop TLS (docs/tls.md): with FLAME_TLS_CERT and FLAME_TLS_KEY set (files of a
certificate the platform CA issued for the endpoint's host), the SF serves HTTPS only; with
FLAME_TLS_CA as well it asks every client for a certificate of that CA and refuses those
without one (the SRs present their platform identity)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

__all__ = ["serve_app", "tls_settings"]

TLS_ENV = ("FLAME_TLS_CERT", "FLAME_TLS_KEY", "FLAME_TLS_CA")


class _Server(uvicorn.Server):
    """Signals are handled by `serve_app`, not by uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tls_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """uvicorn's TLS settings from FLAME_TLS_CERT/KEY/CA; {} when the SF serves plain HTTP."""
    env = os.environ if env is None else env
    cert, key, ca = (env.get(name) or None for name in TLS_ENV)
    if cert is None and key is None:
        if ca is not None:
            raise SystemExit("FLAME_TLS_CA is set without FLAME_TLS_CERT and FLAME_TLS_KEY")
        return {}
    if cert is None or key is None:
        raise SystemExit("set both FLAME_TLS_CERT and FLAME_TLS_KEY (or neither)")
    from flame.common.tls import MODERN_CIPHERS  # noqa: PLC0415

    settings: dict[str, Any] = {
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_ciphers": MODERN_CIPHERS,
    }
    if ca is not None:
        settings["ssl_ca_certs"] = ca
        settings["ssl_cert_reqs"] = ssl.CERT_REQUIRED  # only clients of the platform CA
    return settings


def serve_app(app: Any, host: str, port: int) -> int:
    """Serve `app` on host:port until SIGTERM or SIGINT; returns the exit status (0)."""
    tls = tls_settings()
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            limit_concurrency=512,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            **tls,
        )
    )
    print(f"listening on {'https' if tls else 'http'}://{host}:{port}/", flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        await server.serve()

    import uvloop  # noqa: PLC0415

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0
