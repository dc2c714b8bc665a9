"""Running one component's ASGI app for `flame serve ...` (uvicorn, our logging, JSON errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flame.common.errors import UserError

__all__ = ["run_server"]


def run_server(
    app: Any, host: str, port: int, what: str, *, on_shutdown: Callable[[], None] | None = None
) -> None:
    """Serve `app` until SIGTERM/SIGINT; a port it cannot bind or a failed start-up is the
    user's to fix (UserError naming `what`), not a traceback. `on_shutdown` runs when the
    shutdown begins, before uvicorn waits for open requests (to answer long polls at once)."""
    import uvicorn  # noqa: PLC0415 - lazy, heavy

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # flame.common.logging's setup stays in charge
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    try:
        server.run()
    except SystemExit:  # how uvicorn reports a port it cannot bind or a failed startup
        started = False
    else:
        started = server.started
    if not started:
        raise UserError(f"{what} could not start on {host}:{port}; see the log above")
