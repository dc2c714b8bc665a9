"""Hop-by-hop TLS end to end with real processes (SFR-19, issue 15 item 3; docs/tls.md).

`flame serve pce --hop-tls endpoints` issues the SR's identity (in its bundle) and, through
`POST /v1/certs/endpoint`, the endpoint's server certificate; a media SF's `serve_app` serves
HTTPS with it (FLAME_TLS_CERT/KEY/CA) and requires a client certificate of the platform CA;
`flame serve sr --hop-tls` reaches the endpoint, registered with `tls`, over mutual TLS.
curl without the SR's certificate is refused by the endpoint.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
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

pytestmark = pytest.mark.slow

ENDPOINT_APP = """
import sys
from flame.media.serving import serve_app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"hello over mutual TLS"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sys.exit(serve_app(app, "127.0.0.1", int(sys.argv[1])))
"""


def _clean_env(state: Path, config: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state),
    }


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path, ready: str) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def started() -> bool:
            if proc.poll() is not None:
                raise Fatal(f"{argv[:4]} exited:\n{log.read_text(errors='replace')}")
            return ready in log.read_text(errors="replace")

        eventually(started, what=lambda: f"{argv[:4]} to start:\n{log.read_text(errors='replace')}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sfr19_sr_reaches_a_tls_endpoint_over_mutual_tls(tmp_path: Path) -> None:
    topology = tmp_path / "line.yaml"
    topology.write_text(LINE, encoding="utf-8")
    state = tmp_path / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    router = tokens.issue("sr-a", Role.ROUTER)
    with live_pce(
        state, topology, tmp_path / "pce.sqlite3", "hop-pce", extra=("--hop-tls", "endpoints")
    ) as pce:
        pce.wait_role("active")
        # The endpoint's certificate, asked for as a VIM would (router token).
        answer = httpx.post(
            f"{pce.url}/v1/certs/endpoint",
            json={"host": "127.0.0.1"},
            headers={"Authorization": f"Bearer {router}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        files = {}
        for name, field in (("cert", "chain"), ("key", "key"), ("ca", "ca")):
            path = tmp_path / f"endpoint.{name}"
            path.write_text(answer.json()[field])
            files[name] = path
        port = free_port()
        app = tmp_path / "endpoint_app.py"
        app.write_text(ENDPOINT_APP)
        endpoint_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
            "FLAME_TLS_CERT": str(files["cert"]),
            "FLAME_TLS_KEY": str(files["key"]),
            "FLAME_TLS_CA": str(files["ca"]),
        }
        with process(
            [sys.executable, str(app), str(port)],
            endpoint_env,
            tmp_path / "endpoint.log",
            f"listening on https://127.0.0.1:{port}/",
        ):
            # Without a client certificate the endpoint refuses (curl, trusting the CA).
            refused = subprocess.run(
                ["curl", "-sS", "--cacert", str(files["ca"]), f"https://127.0.0.1:{port}/"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            assert refused.returncode != 0
            assert "hello" not in refused.stdout
            with PceClient(pce.url, operator) as client:
                client.register(Endpoint("tls-1", "t.example", "c-a", "127.0.0.1", port, tls=True))
            sr_port = free_port()
            config = state / "sr.toml"
            config.write_text(f'token = "{router}"\n', encoding="utf-8")
            sr_log = tmp_path / "sr.log"
            with process(
                [
                    *(sys.executable, "-m", "flame", "serve", "sr", "--id", "sr-a"),
                    *("--port", str(sr_port), "--workers", "1", "--hop-tls"),
                    *("--pce", pce.url),
                ],
                _clean_env(state, config),
                sr_log,
                "routing on http",
            ):
                response = _until_routed(sr_port)
                assert response.text == "hello over mutual TLS"
                status = httpx.get(
                    f"http://127.0.0.1:{sr_port}/.flame/status",
                    headers={"Host": "_flame", "Authorization": f"Bearer {router}"},
                    timeout=10,
                ).json()
                hop = status["hop_tls"]
                assert hop["mode"] == "endpoints"
                assert hop["connects"] >= 1
                assert any(k.startswith("tls:127.0.0.1:") for k in status["upstream_pools"])
            assert "PRIVATE KEY" not in sr_log.read_text()
        assert "PRIVATE KEY" not in pce.log.read_text()


def _until_routed(sr_port: int) -> httpx.Response:
    """The SR answers 200 once it has both its table and its identity."""
    return eventually(
        lambda: httpx.get(
            f"http://127.0.0.1:{sr_port}/", headers={"Host": "t.example"}, timeout=10
        ),
        until=lambda r: r.status_code == 200,
        every=0.2,
        what="the SR to route over TLS",
    )
