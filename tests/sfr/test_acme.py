"""ACME content certificates (SFR-23) against a real local ACME server: Debian's `pebble`.

pebble runs on loopback with its own test CA; `pebble-challtestsrv` is its DNS server, answering
every name with 127.0.0.1, and pebble's HTTP-01 port is the SR's plain port, so pebble's
validation requests reach the SR, which answers them from the PCE's certificate bundle.

* End to end (`flame serve pce --acme-directory`, `flame serve sr --tls-port`): a delegated
  FQDN gets a certificate from pebble, served by SNI and verified with pebble's root; a renewal
  (asked by the tenant) is validated even with the FQDN redirecting plain HTTP to https, and the
  new certificate reaches new handshakes; the account key is sealed at rest; no key in logs.
* A failed validation backs off per FQDN (doubling), a rate-limit error waits longer, and an
  order asked by the owner skips the back-off (but never a rate limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from acme import messages

from eventually import Fatal, eventually
from flame.common.auth import Role, TokenStore
from flame.common.pki import PlatformCA, SecretBox
from flame.common.ports import free_port
from flame.sfr.acme import AcmeConfig, AcmeIssuer
from flame.sfr.client import PceClient
from flame.sfr.models import Endpoint

from .test_api import LINE, LivePce
from .test_e2e import named_server
from .test_tls_e2e import curl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pebble") is None, reason="apt-get install -y pebble"),
]


@dataclass
class Pebble:
    directory: str
    ca_file: Path  # verifies pebble's own HTTPS (API and management)
    management: str

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def root(self) -> str:
        """The root of the certificates pebble issues (made anew at each start)."""
        answer = httpx.get(f"{self.management}/roots/0", verify=self.verify(), timeout=5)
        answer.raise_for_status()
        return answer.text


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _udp_port() -> int:
    # Below the ephemeral range, as free_port's: a released bind(0) port may be handed out
    # again (an outgoing DNS query's) before pebble binds it.
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free UDP port below the ephemeral range")


@contextlib.contextmanager
def pebble(tmp: Path, http_port: int) -> Iterator[Pebble]:
    """pebble + its DNS server on loopback; HTTP-01 validations go to 127.0.0.1:`http_port`."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca = PlatformCA.open(tmp / "ca", name="pebble listener CA")
    listener = ca.issue(["localhost"], ip_addresses=["127.0.0.1"], days=1)
    (tmp / "cert.pem").write_text(listener.chain_pem)
    (tmp / "key.pem").write_text(listener.key_pem)
    api, management, dns = free_port(), free_port(), _udp_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{api}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(tmp / "cert.pem"),
            "privateKey": str(tmp / "key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp / "pebble.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",  # validate at once
        "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce: deterministic test runs
        "PEBBLE_AUTHZREUSE": "0",  # every order is validated again
    }
    dns_log, pebble_log = (tmp / "dns.log").open("wb"), (tmp / "pebble.log").open("wb")
    resolver = subprocess.Popen(
        [
            "pebble-challtestsrv",
            *("-dns01", f"127.0.0.1:{dns}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
            *("-http01", "", "-https01", "", "-tlsalpn01", ""),
            *("-management", f"127.0.0.1:{free_port()}"),
        ],
        stdout=dns_log,
        stderr=subprocess.STDOUT,
    )
    server = subprocess.Popen(
        ["pebble", "-config", str(tmp / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
        stdout=pebble_log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp,
    )
    try:
        found = Pebble(
            f"https://127.0.0.1:{api}/dir", ca.cert_path, f"https://127.0.0.1:{management}"
        )

        def up() -> bool:
            if server.poll() is not None:
                raise Fatal(f"pebble exited:\n{(tmp / 'pebble.log').read_text()}")
            return httpx.get(found.directory, verify=found.verify(), timeout=1).is_success

        eventually(up, what=with_logs("pebble to start", tmp / "pebble.log"))
        yield found
    finally:
        _stop(server)
        _stop(resolver)
        dns_log.close()
        pebble_log.close()


def _env(state: Path, token: str | None = None) -> dict[str, str]:
    config = state / f"config-{token[:6] if token else 'none'}.toml"
    config.write_text(f'token = "{token}"\n' if token else "", encoding="utf-8")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(state),
        "FLAME_LOG_LEVEL": "INFO",
    }


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc)


def served(port: int, name: str, cafile: Path) -> tuple[str, str]:
    """(SHA-256 of the certificate served for `name`, its issuer's CN), verified by `cafile`."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=name
    ) as tls:
        import hashlib

        peer = tls.getpeercert() or {}
        issuer = dict(x[0] for x in peer.get("issuer", ()))  # type: ignore[misc]
        der = tls.getpeercert(binary_form=True) or b""
        return hashlib.sha256(der).hexdigest(), str(issuer.get("commonName", ""))


def with_logs(what: str, *logs: Path) -> Callable[[], str]:
    """`what` for `eventually`, with the tails of these logs at the time-out."""
    return lambda: f"{what}\n" + "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in logs)


def test_sfr23_acme_certificate_from_pebble_served_and_renewed_through_the_sr(
    tmp_path: Path,
) -> None:
    topology = tmp_path / "line.yaml"
    topology.write_text(LINE, encoding="utf-8")
    state = tmp_path / "state"
    tokens = TokenStore(state / "tokens.json")
    operator = tokens.issue("ops", Role.OPERATOR)
    router = tokens.issue("sr-a", Role.ROUTER)
    tenant = tokens.issue("acme-bot", Role.TENANT, "acme")
    fqdn = "vod.acme.test"
    plain_port, tls_port, pce_port = free_port(), free_port(), free_port()
    pce_url = f"http://127.0.0.1:{pce_port}"
    with (
        pebble(tmp_path / "pebble", plain_port) as ca,
        named_server("VOD") as endpoint_port,
        process(
            [
                *(sys.executable, "-m", "flame", "serve", "pce", "--topology", str(topology)),
                *("--db", str(tmp_path / "pce.sqlite3"), "--port", str(pce_port)),
                *("--lease-ttl", "1", "--name", "acme-pce"),
                *("--acme-directory", ca.directory, "--acme-ca-file", str(ca.ca_file)),
                *("--acme-email", "ops@acme.test"),
            ],
            _env(state),
            state / "pce.log",
        ) as pce_process,
    ):
        LivePce(pce_process, pce_url, state / "pce.log").wait_role("active")
        with PceClient(pce_url, operator) as client:
            client.delegate("acme.test", "acme")
            client.register(
                Endpoint(sfe="v-1", fqdn=fqdn, cluster="c-a", host="127.0.0.1", port=endpoint_port)
            )
        with process(
            [
                *(sys.executable, "-m", "flame", "serve", "sr", "--id", "sr-a", "--pce", pce_url),
                *("--port", str(plain_port), "--tls-port", str(tls_port), "--workers", "1"),
            ],
            _env(state, router),
            state / "sr.log",
        ):
            root = tmp_path / "pebble-root.pem"
            root.write_text(ca.root())
            logs = (state / "pce.log", state / "sr.log", tmp_path / "pebble" / "pebble.log")
            first, issuer = eventually(
                lambda: served(tls_port, fqdn, root),
                what=with_logs("the ACME certificate at the SR", *logs),
            )
            assert issuer.startswith("Pebble Intermediate")
            assert curl(tls_port, fqdn, root) == ("VOD", "200 0")  # curl verifies it too
            headers = {"Authorization": f"Bearer {tenant}"}
            shown = httpx.get(f"{pce_url}/v1/certs/{fqdn}", headers=headers).json()
            assert shown["source"] == "acme"
            assert "PRIVATE KEY" not in json.dumps(shown)

            # Renewal asked by the tenant, with plain HTTP redirected to https meanwhile: the
            # http-01 validation is still answered on the plain port.
            assert httpx.patch(
                f"{pce_url}/v1/certs/{fqdn}", json={"redirect_http": True}, headers=headers
            ).is_success
            eventually(
                lambda: (
                    httpx.get(f"http://127.0.0.1:{plain_port}/", headers={"Host": fqdn}).status_code
                    == 308
                ),
                what="the redirect",
            )
            assert httpx.post(f"{pce_url}/v1/certs/{fqdn}/renew", headers=headers).is_success
            second, _ = eventually(
                lambda: served(tls_port, fqdn, root),
                until=lambda s: s[0] != first,
                what=with_logs("the renewed ACME certificate", *logs),
            )
            assert second != first
            counts = httpx.get(f"{pce_url}/health").json()["certificates"]["acme"]
            assert counts["issued"] == 2  # the open /health counts, names no FQDN
            assert fqdn not in json.dumps(counts)
            pebble_log = (tmp_path / "pebble" / "pebble.log").read_text()
            assert pebble_log.count("/.well-known/acme-challenge/") >= 2  # two validations
        account = json.loads((state / "acme" / "account.json").read_text())
        assert account["account"].startswith(ca.directory.rsplit("/", 1)[0])
        assert "PRIVATE KEY" not in (state / "acme" / "account.json").read_text()
        assert oct((state / "acme" / "account.json").stat().st_mode & 0o777) == "0o600"
        for log in (state / "pce.log", state / "sr.log"):
            assert "PRIVATE KEY" not in log.read_text()


def test_sfr23_acme_failures_back_off_and_rate_limits_wait_longer(tmp_path: Path) -> None:
    # Nothing listens on pebble's HTTP-01 port: the validation fails, for real.
    box = SecretBox.open(tmp_path / "certs.key")
    with pebble(tmp_path / "pebble", free_port()) as ca:
        config = AcmeConfig(ca.directory, ca_file=ca.ca_file, retry_base=30.0, retry_max=100.0)
        issuer = AcmeIssuer(config, box, tmp_path / "acme")
        done: list[int] = []
        issuer.notify = lambda: done.append(1)
        try:
            assert issuer.want("nobody.acme.test", "t")
            eventually(
                lambda: issuer.status()["backing_off"],
                what=with_logs("the failure", tmp_path / "pebble" / "pebble.log"),
            )
            backoff = issuer.status()["backing_off"]["nobody.acme.test"]
            assert backoff["failures"] == 1
            assert 25 < backoff["retry_in_s"] <= 30
            assert issuer.take_results() == []
            assert not issuer.want("nobody.acme.test", "t")  # backing off
            issuer._failed("nobody.acme.test", RuntimeError("again"))
            again = issuer.status()["backing_off"]["nobody.acme.test"]
            assert again["failures"] == 2
            assert 55 < again["retry_in_s"] <= 60
            for _ in range(3):
                issuer._failed("nobody.acme.test", RuntimeError("again"))
            assert issuer.status()["backing_off"]["nobody.acme.test"]["retry_in_s"] <= 100
            limited = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="slow")
            issuer._failed("limited.acme.test", limited)
            waits = issuer.status()["backing_off"]["limited.acme.test"]
            assert waits["retry_in_s"] > 3500  # a rate limit waits an hour, not 30 s
            assert not issuer.want("limited.acme.test", "t", force=True)  # not even forced
            assert issuer.want("nobody.acme.test", "t", force=True)  # the owner asks: retried
        finally:
            issuer.stop()
        # The account key is sealed under the PCE's key, bound to the directory URL.
        text = (tmp_path / "acme" / "account.json").read_text()
        assert "PRIVATE KEY" not in text
        uri = json.loads(text)["account"]
        other = AcmeIssuer(config, box, tmp_path / "acme")
        _key, again_uri = other._load_account()
        assert again_uri == uri
        moved = AcmeIssuer(AcmeConfig("https://other.example/dir"), box, tmp_path / "acme")
        assert moved._load_account()[1] is None  # another CA: a new account, never this key
