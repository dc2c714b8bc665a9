"""An SR that cannot listen says so and exits as a user's problem (seen in CI: a port taken
between bind() and listen() made uvloop log the failure and the SR die on an AttributeError)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flame.sfr.router import Router, RouterConfig, StaticTableSource


def _reuse_socket(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s


@pytest.mark.asyncio
async def test_a_port_taken_between_bind_and_listen_raises_a_clear_error() -> None:
    # Both bound with SO_REUSEADDR; the other one listens first, so ours can bind but not listen.
    other = _reuse_socket()
    port = other.getsockname()[1]
    ours = _reuse_socket(port)
    other.listen()
    router = Router(RouterConfig(sr_id="sr-x", port=port), source=StaticTableSource(None))
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}") as caught:
            await router.start(ours)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        ours.close()
        other.close()


def test_serve_sr_on_a_held_port_is_a_user_error_that_names_the_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "HOME": str(tmp_path), "FLAME_ROUTER_TOKEN": "t"}
        result = subprocess.run(
            [
                *(sys.executable, "-m", "flame", "--json", "serve", "sr", "--id", "sr-x"),
                *("--port", str(port), "--workers", "1", "--pce", "http://127.0.0.1:9"),
                *("--table-file", str(tmp_path / "t.json")),
            ],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1 (port {port})" in result.stdout
    assert "internal error" not in result.stdout
