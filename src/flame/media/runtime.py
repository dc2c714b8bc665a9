"""What both media SF commands share: host/port flags, the event loop, signals, exit codes.

The port comes from ``--port``, else ``FLAME_PORT`` (set by the process VIM), else the SF's
default. SIGTERM or SIGINT stops the server in stages (`HttpServer.stop`) and the process
exits 0. A `ConfigError` exits 1 and a `MediaError` 2, each as one line on stderr: this is
the one place where the media commands turn errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from flame.common.errors import ConfigError, FlameError

__all__ = ["add_listen_args", "listen_port", "run"]

log = logging.getLogger(__name__)


def add_listen_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default=os.environ.get("FLAME_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=None, help=f"default: $FLAME_PORT, else {default_port}"
    )
    parser.add_argument("--log-level", default=os.environ.get("FLAME_LOG_LEVEL", "info"))
    parser.set_defaults(default_port=default_port)


def listen_port(args: argparse.Namespace) -> int:
    if args.port is not None:
        port = int(args.port)
    else:
        raw = os.environ.get("FLAME_PORT")
        try:
            port = int(raw) if raw else int(args.default_port)
        except ValueError:
            raise ConfigError(
                f"FLAME_PORT={raw!r} is not a port number", variable="FLAME_PORT"
            ) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range 0-65535")
    return port


def run(main: Callable[[asyncio.Event], Awaitable[None]], log_level: str) -> int:
    """Run `main(stop)` on uvloop until it returns; signals set `stop`. Returns the exit code."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every origin fetch at INFO: far too chatty for a cache on the data path.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def _with_signals() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        import uvloop  # noqa: PLC0415 - optional speed-up (absent on Windows)

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_with_signals())
    except FlameError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
