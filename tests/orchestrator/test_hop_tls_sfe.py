"""The SFEMC hands endpoint certificates to SFEs that opt in to hop-by-hop TLS (SFR-19, issue 15
item 3; docs/tls.md "The SFEMC's part").

Real processes throughout: `flame serve pce` (with `--hop-tls endpoints`, or off), `flame serve
sr --hop-tls`, `flame serve orchestrator --pce` (process VIM, sandboxed SFEs) and an SF image
built with `flame package` whose manifest says `tls: true` and which serves through
`flame.media.serving.serve_app`. With the switch on, the SFE serves mutual TLS with the PCE's
certificate (a client without the SR's certificate is refused) and the SR reaches it over TLS;
with it off, the same image runs plain, is reachable, and its log says why.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tlsecho
from eventually import eventually
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.sfr.client import PceClient

from .served import FLAME, ServedPlatform, served_platform, sfe_processes

pytestmark = pytest.mark.slow

SFE = "tlsecho-1.web.edge-a"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[ServedPlatform]:
    sp = served_platform(tmp_path)
    try:
        yield sp
        if "orchestrator" in sp.procs:  # SFEs outlive their controller: undeploy them
            undeployed = _flame(sp, "undeploy", "tlsecho")
            assert undeployed.returncode == 0, undeployed.stderr
    finally:
        assert sp.close() == []


def _flame(sp: ServedPlatform, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**sp.env, "FLAME_API_URL": sp.api_url, "FLAME_TOKEN": sp.acme}
    return subprocess.run(
        [*FLAME, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _start(sp: ServedPlatform, *pce_args: str) -> tuple[int, str]:
    """PCE (with `pce_args`), the tenant's delegation, the image, SR sr-a, the orchestrator;
    returns the SR's port and token."""
    sp.start_pce(*pce_args)
    with PceClient(sp.pce_url, sp.operator) as pce:
        pce.delegate("tls.example", "acme")
    sf = tlsecho.write_sf(sp.tmp / "tlsecho")
    packaged = subprocess.run(
        [*FLAME, "package", str(sf), "--tag", "1.0"],
        env=sp.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert packaged.returncode == 0, packaged.stderr
    router = TokenStore(sp.state_dir / "tokens.json").issue("sr-a", Role.ROUTER)
    sr_port = free_port()
    sp._start(
        "sr",
        [
            *("serve", "sr", "--id", "sr-a", "--pce", sp.pce_url, "--hop-tls"),
            *("--port", str(sr_port), "--workers", "1"),
        ],
        f"http://127.0.0.1:{sr_port}/.flame/health",
        env={**sp.env, "FLAME_TOKEN": router},
        headers={"Host": "_flame"},
    )
    sp.start_orchestrator()
    template = sp.tmp / "tlsecho.yaml"
    template.write_text(tlsecho.template("edge-a"))
    deployed = _flame(sp, "deploy", str(template))
    assert deployed.returncode == 0, deployed.stderr + _logs(sp)
    return sr_port, router


def _logs(sp: ServedPlatform) -> str:
    return "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sp.tmp.glob("*.log")
    )


def _through_sr(sr_port: int) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{sr_port}/", headers={"Host": "web.tls.example"}, timeout=10
    )


def _sfe_dir(sp: ServedPlatform) -> Path:
    return sp.state_dir / "vim" / "sfes" / SFE


def test_sfr19_sfemc_hands_an_opted_in_sfe_its_certificate(platform: ServedPlatform) -> None:
    sr_port, router = _start(platform, "--hop-tls", "endpoints")
    state = json.loads((_sfe_dir(platform) / "state.json").read_text())
    port = state["ports"]["http"]
    assert state["tls"]["on"] is True
    assert "PRIVATE KEY" not in json.dumps(state)  # the key is only in the SFE's own files
    # The files are in the SFE's private home, 0600, and the key is a key.
    tls_dir = _sfe_dir(platform) / "home" / ".flame-tls"
    for name in ("cert.pem", "key.pem", "ca.pem"):
        assert (tls_dir / name).stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" in (tls_dir / "key.pem").read_text()

    # The registration says tls, so the SR reaches it over mutual TLS.
    with PceClient(platform.pce_url, platform.operator) as pce:
        (registered,) = [r.endpoint for r in pce.registrations() if r.endpoint.sfe == SFE]
    assert registered.tls is True
    answer = eventually(
        lambda: _through_sr(sr_port),
        until=lambda r: r.status_code == 200,
        what=lambda: f"the SR to reach the TLS SFE{_logs(platform)}",
    )
    assert answer.text == f"tlsecho {SFE} tls=True"

    # The SFE serves HTTPS only, with the PCE's certificate for its host, and refuses a
    # client without the SR's platform certificate.
    ctx = ssl.create_default_context(cadata=(tls_dir / "ca.pem").read_text())
    with pytest.raises(httpx.HTTPError):  # certificate required
        httpx.get(f"https://127.0.0.1:{port}/", verify=ctx, timeout=10)
    with pytest.raises(httpx.HTTPError):  # not plain HTTP either
        httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    curl = subprocess.run(
        ["curl", "-sS", "--cacert", str(tls_dir / "ca.pem"), f"https://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert curl.returncode != 0
    assert "tlsecho" not in curl.stdout

    status = httpx.get(
        f"http://127.0.0.1:{sr_port}/.flame/status",
        headers={"Host": "_flame", "Authorization": f"Bearer {router}"},
        timeout=10,
    ).json()
    assert status["hop_tls"]["connects"] >= 1
    assert any(k == f"tls:127.0.0.1:{port}" for k in status["upstream_pools"])

    # A crash: the VIM restarts it with a fresh certificate (renewed at every start).
    fingerprint = state["tls"]["fingerprint_sha256"]
    (pid,) = [p for p, sfe in sfe_processes(platform.tmp).items() if sfe == SFE]
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    renewed = eventually(
        lambda: json.loads((_sfe_dir(platform) / "state.json").read_text()),
        until=lambda s: s["tls"]["fingerprint_sha256"] != fingerprint and s["restarts"] == 1,
        what="the SFE restarted with a new certificate",
    )
    assert renewed["tls"]["on"] is True
    eventually(
        lambda: _through_sr(sr_port),
        until=lambda r: r.status_code == 200 and r.text.endswith("tls=True"),
        what="the restarted SFE reachable over TLS again",
    )
    assert "PRIVATE KEY" not in _logs(platform)


def test_sfr19_hop_tls_off_the_opted_in_sfe_runs_plain(platform: ServedPlatform) -> None:
    sr_port, _ = _start(platform)  # the PCE's switch off (the default)
    state = json.loads((_sfe_dir(platform) / "state.json").read_text())
    assert state["tls"]["on"] is False
    assert "the PCE says: hop TLS is off at this PCE" in state["tls"]["note"]
    with PceClient(platform.pce_url, platform.operator) as pce:
        (registered,) = [r.endpoint for r in pce.registrations() if r.endpoint.sfe == SFE]
    assert registered.tls is False
    answer = eventually(
        lambda: _through_sr(sr_port),
        until=lambda r: r.status_code == 200,
        what=lambda: f"the SR to reach the plain SFE{_logs(platform)}",
    )
    assert answer.text == f"tlsecho {SFE} tls=False"
    direct = httpx.get(f"http://127.0.0.1:{state['ports']['http']}/", timeout=10)
    assert direct.status_code == 200
    # Said where the tenant looks: the SFE's log (flame logs).
    logs = _flame(platform, "logs", SFE)
    assert "hop-by-hop TLS is off, serving plain HTTP" in logs.stdout, logs.stdout
    assert not (_sfe_dir(platform) / "home" / ".flame-tls" / "key.pem").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
