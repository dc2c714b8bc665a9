"""Issue 15 item 4: the control plane over HTTPS, and no token in clear off loopback.

`flame cert issue-server` makes a certificate from the platform CA; `flame serve pce
--tls-cert/--tls-key` serves HTTPS with it (TLS 1.2+); the CLI verifies it with `ca_file` from
its config, and without that CA refuses the connection. The CLI refuses to send a token over
plain HTTP to anything but loopback, before anything is sent (no connection is attempted).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from eventually import Fatal, eventually
from flame.common.auth import Role, TokenStore
from flame.common.errors import UserError
from flame.common.ports import free_port
from flame.common.tls import ClearTextToken, require_private_url
from sfr.test_api import LINE


def flame(config: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state),
    }
    return subprocess.run(
        [sys.executable, "-m", "flame", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:7070", False),
        ("http://127.0.1.3:8080", False),
        ("http://localhost:7070", False),
        ("http://[::1]:7070", False),
        ("https://pce.example:7070", False),
        ("http://pce.example:7070", True),
        ("http://192.0.2.10:7070", True),
    ],
)
def test_a_token_goes_in_clear_only_to_loopback(url: str, refused: bool) -> None:
    if refused:
        with pytest.raises(ClearTextToken, match="in clear"):
            require_private_url(url, "flm_x")
    else:
        require_private_url(url, "flm_x")
    require_private_url(url, None)  # no token, nothing to protect


def test_the_cli_refuses_before_sending_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    token = TokenStore(state / "tokens.json").issue("ops", Role.OPERATOR)
    config.write_text(f'token = "{token}"\n')
    # pce.example is never resolved nor connected to: the refusal comes first.
    for args in (
        ("cert", "list", "--pce", "http://pce.example:7070"),
        ("delegations", "--pce", "http://pce.example:7070"),
        ("status", "--api", "http://pce.example:7080"),
    ):
        out = flame(config, state, *args)
        assert out.returncode == 1, (args, out.stderr)
        assert "refusing to send a token" in out.stderr, out.stderr
        assert token not in out.stderr + out.stdout


@pytest.mark.slow
def test_pce_over_https_verified_with_the_platform_ca(tmp_path: Path) -> None:
    state = tmp_path / "state"
    topology = tmp_path / "line.yaml"
    topology.write_text(LINE)
    token = TokenStore(state / "tokens.json").issue("ops", Role.OPERATOR)
    config = tmp_path / "config.toml"
    config.write_text(f'token = "{token}"\n')
    issued = flame(
        config,
        state,
        "cert",
        "issue-server",
        "localhost",
        "127.0.0.1",
        "--out",
        str(tmp_path / "tls"),
    )
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
    ca = state / "ca" / "ca.crt"
    port = free_port()
    log = tmp_path / "pce.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "flame", "serve", "pce", "--topology", str(topology)),
                *("--db", str(tmp_path / "pce.sqlite3"), "--port", str(port)),
                *("--tls-cert", str(tmp_path / "tls" / "server.crt")),
                *("--tls-key", str(tmp_path / "tls" / "server.key")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"https://localhost:{port}"
        verify = ssl.create_default_context(cafile=str(ca))

        def healthy() -> bool:
            if proc.poll() is not None:
                raise Fatal(f"the PCE exited {proc.returncode}:\n{log.read_text()}")
            return httpx.get(url + "/health", verify=verify, timeout=5).status_code == 200

        eventually(healthy, every=0.1, what=lambda: f"the PCE over TLS:\n{log.read_text()}")
        assert "on https://" in log.read_text()
        # Without the CA: refused (the platform CA is not a public one).
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=5)
        # TLS 1.1 and below: refused.
        old = ssl.create_default_context(cafile=str(ca))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.set_ciphers("AES128-SHA")
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", verify=old, timeout=5)
        # The CLI with ca_file in its config: works; without it, a clear error.
        plain = flame(config, state, "delegations", "--pce", url)
        assert plain.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in plain.stderr or "certificate" in plain.stderr
        config.write_text(f'token = "{token}"\nca_file = "{ca}"\n')
        ok = flame(config, state, "delegate", "x.example", "--tenant", "acme", "--pce", url)
        assert ok.returncode == 0, ok.stderr
        listed = flame(config, state, "delegations", "--pce", url)
        assert "x.example\tacme" in listed.stdout
        ca_out = flame(config, state, "cert", "ca", "--pce", url)
        assert ca_out.stdout == ca.read_text()
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    from flame.common.tls import client_verify

    with pytest.raises(UserError, match="does not exist"):
        client_verify(tmp_path / "nope.crt")


def test_log_lines_never_carry_a_private_key() -> None:
    import io
    import logging

    from flame.common.logging import TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("flame.test.keys")
    log.addHandler(handler)
    try:
        key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBm0secret\n-----END EC PRIVATE KEY-----\n"
        log.warning("uploaded %s", key)
        log.warning("cut short: %s", key[:40])
    finally:
        log.removeHandler(handler)
    assert "secret" not in stream.getvalue()
    assert "PRIVATE KEY" not in stream.getvalue()
