"""The SFR end to end with real processes: `flame serve pce` + `flame serve sr` + two HTTP
endpoints on loopback (SFR-1, SFR-10, SFR-11, SFR-13, SFR-14, SFR-20).

An endpoint registered at the PCE becomes reachable through the SR by its FQDN; registering a
nearer endpoint switches the next request to it; taking the link to it down switches back; with
the PCE stopped the SR keeps forwarding on its last table.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventually import Fatal, eventually
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfr.client import PceClient
from flame.sfr.models import Endpoint

from .test_api import LINE, live_pce


class _Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def named_server(name: str) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def live_sr(state: Path, sr_id: str, pce_url: str, token: str) -> Iterator[str]:
    port = free_port()
    config = state / "sr-config.toml"
    config.write_text(f'token = "{token}"\n', encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state),
    }
    log = state / f"{sr_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "flame", "serve", "sr", "--id", sr_id),
                *("--port", str(port), "--workers", "1", "--pce", pce_url),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def started() -> bool:
            if process.poll() is not None:
                raise Fatal(f"the SR exited:\n{log.read_text()}")
            return "routing on" in log.read_text()

        eventually(started, what=lambda: f"the SR to start:\n{log.read_text()}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_body(url: str, host: str, expected: str) -> httpx.Response:
    """The first response from `host` at `url` whose body is `expected` (the table moved)."""
    return eventually(
        lambda: httpx.get(url + "/", headers={"Host": host}, timeout=5),
        until=lambda r: r.text == expected,
        every=0.02,
        what=f"{host} to answer {expected!r}",
    )


@pytest.mark.slow
def test_pce_and_sr_processes_route_switch_and_survive_the_pce(tmp_path: Path) -> None:
    topology = tmp_path / "line.yaml"
    topology.write_text(LINE, encoding="utf-8")
    state = tmp_path / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    with (
        named_server("far") as far_port,
        named_server("near") as near_port,
        live_pce(state, topology, tmp_path / "pce.sqlite3", "e2e-pce") as pce,
    ):
        pce.wait_role("active")
        with (
            PceClient(pce.url, operator) as client,
            live_sr(state, "sr-a", pce.url, operator) as sr,
        ):
            # Unknown FQDN: 404 naming it.
            unknown = httpx.get(sr + "/", headers={"Host": "nobody.example"}, timeout=5)
            assert unknown.status_code == 404
            assert "nobody.example" in unknown.text

            # An endpoint at c-d (sr-a -> sr-d: 7 ms) becomes reachable by FQDN.
            client.register(
                Endpoint(
                    sfe="x-far",
                    fqdn="x.example",
                    cluster="c-d",
                    host="127.0.0.1",
                    port=far_port,
                )
            )
            assert wait_for_body(sr, "x.example", "far").text == "far"

            # A nearer one (c-a hangs off sr-a itself): the next request switches (SFR-14).
            client.register(
                Endpoint(
                    sfe="x-near",
                    fqdn="x.example",
                    cluster="c-a",
                    host="127.0.0.1",
                    port=near_port,
                )
            )
            switched = wait_for_body(sr, "x.example", "near")
            assert switched.text == "near"
            assert "sr-a" in switched.headers.get("via", "")

            # Withdrawn: back to the far one; then the far one's last link path goes down.
            client.withdraw("x-near")
            assert wait_for_body(sr, "x.example", "far").text == "far"
            client.link_down("sr-c", "sr-d")
            # sr-d is now unreachable from sr-a: no route, 503 with Retry-After.
            gone = eventually(
                lambda: httpx.get(sr + "/", headers={"Host": "x.example"}, timeout=5),
                until=lambda r: r.status_code == 503,
                every=0.02,
                what="x.example to have no route",
            )
            assert "retry-after" in gone.headers
            client.link_up("sr-c", "sr-d")
            assert wait_for_body(sr, "x.example", "far").text == "far"

            # The PCE stops: the SR keeps forwarding on its last table (SFR-20).
            pce.process.terminate()
            pce.process.wait(15)
            for _ in range(20):
                still = httpx.get(sr + "/", headers={"Host": "x.example"}, timeout=5)
                assert still.status_code == 200
                assert still.text == "far"
