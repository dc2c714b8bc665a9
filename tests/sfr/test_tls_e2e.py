"""HTTPS end to end with real processes (issue 15): `flame serve pce` (certificates on) and
`flame serve sr --tls-port`, two tenants, the `flame cert` CLI, curl and Python's ssl.

Tenant A uploads its own certificate for a.example (from its own CA); tenant B's b.example gets
one from the platform CA. The SR serves each with its own certificate by SNI; tenant B cannot
upload for a.example; no command or answer shows a key. Under load over TLS (500 requests/s
asked for) the platform certificate is renewed and A's upload replaced: no request fails, and
new handshakes see each new certificate (how soon is printed; throughput figures belong to
bench/sr_tls_vs_nginx.py, not to this test). Taking a.example's delegation back removes its
certificate from the SR.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventually import Fatal, eventually, eventually_async
from flame.common.auth import Role, TokenStore
from flame.common.pki import inspect_chain
from flame.common.ports import free_port
from flame.sfr.client import PceClient
from flame.sfr.models import Endpoint

from .test_api import LINE, live_pce
from .test_certs import own_chain
from .test_e2e import named_server

pytestmark = pytest.mark.slow


def flame(state: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = state / f"cli-{hashlib.sha1(token.encode()).hexdigest()[:8]}.toml"
    config.write_text(f'token = "{token}"\n', encoding="utf-8")
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


@contextlib.contextmanager
def live_tls_sr(state: Path, sr_id: str, pce_url: str, token: str) -> Iterator[tuple[int, int]]:
    port, tls_port = free_port(), free_port()
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
                *("--port", str(port), "--tls-port", str(tls_port), "--workers", "1"),
                *("--pce", pce_url),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def started() -> bool:
            if process.poll() is not None:
                raise Fatal(f"the SR exited:\n{log.read_text()}")
            return "routing on https" in log.read_text()

        eventually(started, what=lambda: f"the SR to start:\n{log.read_text()}")
        yield port, tls_port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert "PRIVATE KEY" not in log.read_text()


def handshake(port: int, name: str, cafile: Path) -> str:
    """A new TLS connection: the SHA-256 of the certificate served for `name` (verified)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with ctx.wrap_socket(
        __import__("socket").create_connection(("127.0.0.1", port), timeout=5),
        server_hostname=name,
    ) as tls:
        return hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()


def curl(port: int, name: str, cafile: Path) -> tuple[str, str]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(cafile),
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            "-w",
            "\n%{http_code} %{ssl_verify_result}",
            f"https://{name}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    body, _, trailer = out.stdout.rpartition("\n")
    return body, trailer


class Load:
    """`connections` keep-alive TLS clients at `rate` requests/s in all, with a new
    connection for a fraction of requests, counting failures."""

    def __init__(self, port: int, names: dict[str, Path], rate: float, connections: int = 10):
        self.port, self.names, self.rate, self.connections = port, names, rate, connections
        self.ok = 0
        self.failed: list[str] = []
        self.stop = False

    async def client(self, index: int) -> None:
        name = list(self.names)[index % len(self.names)]
        ctx = ssl.create_default_context(cafile=str(self.names[name]))
        interval = self.connections / self.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        sent = 0
        reader = writer = None
        while not self.stop:
            try:
                if writer is None or sent % 50 == 0:  # a fresh handshake every 50 requests
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, ssl=ctx, server_hostname=name
                    )
                assert reader is not None
                writer.write(f"GET /{sent} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
                length = int(
                    next(
                        x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")
                    ).split(b":")[1]
                )
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    self.failed.append(head[:40].decode())
                else:
                    self.ok += 1
            except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                self.failed.append(repr(exc))
                writer = None
            sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        if writer is not None:
            writer.close()

    async def run(self, during) -> float:
        tasks = [asyncio.create_task(self.client(i)) for i in range(self.connections)]
        started = time.monotonic()
        try:
            await during()
        finally:
            self.stop = True
            await asyncio.gather(*tasks)
        return self.ok / (time.monotonic() - started)


def test_two_tenants_over_https_rotation_under_load_and_undelegation(tmp_path: Path) -> None:
    topology = tmp_path / "line.yaml"
    topology.write_text(LINE, encoding="utf-8")
    state = tmp_path / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    router = tokens.issue("sr-a", Role.ROUTER)
    acme = tokens.issue("acme-bot", Role.TENANT, "acme")
    globex = tokens.issue("globex-bot", Role.TENANT, "globex")
    platform_ca = state / "ca" / "ca.crt"
    a_chain, a_key = own_chain(["a.example"])
    a2_chain, a2_key = own_chain(["a.example"])  # its next certificate, from another CA
    # A's users trust both of A's CAs (what a tenant changing CA arranges first).
    tenant_ca = tmp_path / "acme-cas.crt"
    tenant_ca.write_text(
        a_chain.split("-----END CERTIFICATE-----\n", 1)[1]
        + a2_chain.split("-----END CERTIFICATE-----\n", 1)[1]
    )
    for name, text in (
        ("a.crt", a_chain),
        ("a.key", a_key),
        ("a2.crt", a2_chain),
        ("a2.key", a2_key),
    ):
        (tmp_path / name).write_text(text)
    fp_a2 = inspect_chain(a2_chain).fingerprint
    with (
        named_server("A") as port_a,
        named_server("B") as port_b,
        live_pce(state, topology, tmp_path / "pce.sqlite3", "tls-pce") as pce,
    ):
        pce.wait_role("active")
        with PceClient(pce.url, operator) as client:
            client.delegate("a.example", "acme")
            client.delegate("b.example", "globex")
            for sfe, fqdn, port in (("a-1", "a.example", port_a), ("b-1", "b.example", port_b)):
                client.register(
                    Endpoint(sfe=sfe, fqdn=fqdn, cluster="c-a", host="127.0.0.1", port=port)
                )
        # Tenant B may not upload for A's name; A may, with the CLI.
        denied = flame(
            state,
            globex,
            "cert",
            "put",
            "a.example",
            "--cert",
            str(tmp_path / "a.crt"),
            "--key",
            str(tmp_path / "a.key"),
            "--pce",
            pce.url,
        )
        assert denied.returncode == 1
        assert "not delegated" in denied.stderr
        put = flame(
            state,
            acme,
            "cert",
            "put",
            "a.example",
            "--cert",
            str(tmp_path / "a.crt"),
            "--key",
            str(tmp_path / "a.key"),
            "--pce",
            pce.url,
        )
        assert put.returncode == 0, put.stderr
        assert "manual certificate for a.example" in put.stdout
        for args in (
            ("cert", "list"),
            ("cert", "show", "a.example"),
            ("--json", "cert", "show", "a.example"),
        ):
            shown = flame(state, acme, *args, "--pce", pce.url)
            assert shown.returncode == 0, shown.stderr
            assert "PRIVATE KEY" not in shown.stdout + shown.stderr
        assert "a.example" in flame(state, acme, "cert", "list", "--pce", pce.url).stdout

        with live_tls_sr(state, "sr-a", pce.url, router) as (plain_port, tls_port):
            eventually(
                lambda: (
                    curl(tls_port, "a.example", tenant_ca)[1] == "200 0"
                    and curl(tls_port, "b.example", platform_ca)[1] == "200 0"
                ),
                what="both FQDNs over https",
            )
            assert curl(tls_port, "a.example", tenant_ca)[0] == "A"
            assert curl(tls_port, "b.example", platform_ca)[0] == "B"
            # Each with its own certificate: A's does not verify with the platform CA.
            assert curl(tls_port, "a.example", platform_ca)[1] != "200 0"
            # The plain listener stays; B asks for https and plain HTTP is redirected.
            plain = f"http://127.0.0.1:{plain_port}/x"
            assert httpx.get(plain, headers={"Host": "b.example"}).text == "B"
            on = flame(state, globex, "cert", "redirect", "b.example", "--pce", pce.url)
            assert on.returncode == 0, on.stderr
            eventually(
                lambda: httpx.get(plain, headers={"Host": "b.example"}).status_code == 308,
                what="the redirect",
            )
            moved = httpx.get(plain, headers={"Host": "b.example"})
            assert moved.headers["location"] == f"https://b.example:{tls_port}/x"
            fp_a = handshake(tls_port, "a.example", tenant_ca)
            fp_b = handshake(tls_port, "b.example", platform_ca)

            # Rotation under load: renew B's platform certificate, replace A's upload.
            load = Load(tls_port, {"a.example": tenant_ca, "b.example": platform_ca}, rate=500)
            seen: dict[str, float] = {}

            async def rotate() -> None:
                await eventually_async(lambda: load.ok >= 200, what="load before the renewal")
                renewed = await asyncio.to_thread(
                    flame, state, globex, "--json", "cert", "renew", "b.example", "--pce", pce.url
                )
                at = time.monotonic()
                assert renewed.returncode == 0, renewed.stderr
                new_b = json.loads(renewed.stdout)["fingerprint_sha256"]
                assert new_b != fp_b
                await eventually_async(
                    lambda: asyncio.to_thread(handshake, tls_port, "b.example", platform_ca),
                    until=lambda fp: fp == new_b,
                    every=0.02,
                    what="the renewed certificate",
                )
                seen["b"] = time.monotonic() - at
                replaced = await asyncio.to_thread(
                    flame,
                    state,
                    acme,
                    "cert",
                    "put",
                    "a.example",
                    "--cert",
                    str(tmp_path / "a2.crt"),
                    "--key",
                    str(tmp_path / "a2.key"),
                    "--pce",
                    pce.url,
                )
                at = time.monotonic()
                assert replaced.returncode == 0, replaced.stderr
                await eventually_async(
                    lambda: asyncio.to_thread(handshake, tls_port, "a.example", tenant_ca),
                    until=lambda fp: fp == fp_a2,
                    every=0.02,
                    what="the new upload",
                )
                seen["a"] = time.monotonic() - at
                after = load.ok
                await eventually_async(lambda: load.ok >= after + 200, what="load after both")

            rate = asyncio.run(load.run(rotate))
            # Every request answered 200 (the rate depends on the machine's load: not asserted).
            assert load.failed == [], load.failed[:5]
            assert load.ok >= 400
            print(f"rotation under {rate:.0f} req/s: 0 failed of {load.ok}; seen after {seen}")
            assert handshake(tls_port, "a.example", tenant_ca) not in (fp_a, fp_b)

            # Undelegation: a.example's certificate leaves the SR (B's stays).
            with PceClient(pce.url, operator) as client:
                client.undelegate("a.example")
            eventually(
                lambda: curl(tls_port, "a.example", tenant_ca)[1] != "200 0",
                what="a.example's certificate to leave the SR",
            )
            with pytest.raises(ssl.SSLError):
                handshake(tls_port, "a.example", tenant_ca)
            assert curl(tls_port, "b.example", platform_ca)[1] == "200 0"
