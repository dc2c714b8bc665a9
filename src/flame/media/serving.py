"""Running a media SF's ASGI app until SIGTERM/SIGINT, shared by the content, transcoder and LOD
SFs: uvicorn on uvloop/httptools with bounded concurrency, a graceful shutdown and exit status 0
(uvicorn itself would re-raise SIGTERM after shutting down, exit status -15)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["serve_app"]


class _Server(uvicorn.Server):
    """Signals are handled by `serve_app`, not by uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve_app(app: Any, host: str, port: int) -> int:
    """Serve `app` on host:port until SIGTERM or SIGINT; returns the exit status (0)."""
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
        )
    )
    print(f"listening on http://{host}:{port}/", flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        await server.serve()

    import uvloop  # noqa: PLC0415

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0
