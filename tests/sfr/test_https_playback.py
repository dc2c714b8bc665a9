"""SFR-19 with a real browser (issue 15, "done means"): on `flame up`, headless Chromium plays the
demo's HLS stream over https through a service router, from a page that is itself https.

- The platform runs as a user runs it: `flame up -d --free-ports` (the demo VoD service, the
  platform CA issuing vod.flame.example's certificate, every SR with its TLS listener).
- Chromium resolves vod.flame.example to the UE's SR (`--host-resolver-rules`) and trusts the
  certificate the SR serves by pinning its public key (`--ignore-certificate-errors-spki-list`,
  which accepts only a chain carrying that key, not any certificate). The key pinned is the one
  Python's ssl saw while verifying the chain against the platform CA `flame up` names, for the
  same name at the same SR: trust comes from the platform CA, handed to the browser as a pin
  (this Debian has no `certutil` to add the CA to Chromium's NSS store).
- The page is the demo service's own document at https://vod.flame.example:<tls-port>/, served
  through the SR over TLS; the player's markup and the vendored hls.js go into it over the
  DevTools protocol, as in the project's other browser tests. Page and stream share one origin,
  so no CORS is involved (the demo's cache sends no CORS headers).
- Asserted: a secure context on https, hls.js plays >= 5 s of
  https://vod.flame.example:<tls-port>/hls/master.m3u8 with no error, every resource the page
  loaded was https from that origin, the answers came through the SR (`Via`), and the SR's TLS
  listener counted handshakes for vod.flame.example with the very certificate Chromium pinned;
  and the pin is no blanket trust: origin.vod.flame.example, a certificate of the same CA at the
  same SR, gets Chromium's certificate error page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from eventually import eventually
from flame.common.pki import PlatformCA, inspect_chain
from flame.sfr.router.tls import Site, TlsSites
from media.cdp import Chrome, chromium

needs_chromium = pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium")

PLAYERS = Path(__file__).resolve().parents[2] / "src" / "flame" / "media" / "players"
FQDN = "vod.flame.example"
SR = "sr-ue-1"  # the Bristol UE's SR


def flame(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flame", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`flame up -d --free-ports` with the demo, isolated from the user's own FLAME-in-a-box."""
    config = tmp_path / "config.toml"
    config.touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path / "home"),
    }
    try:
        up = flame(env, "--json", "up", "-d", "--free-ports")
        assert up.returncode == 0, up.stderr[-3000:]
        yield json.loads(up.stdout)
    finally:
        flame(env, "down")  # whatever happened, nothing is left running


def served_leaf(host: str, port: int, ca_file: str) -> bytes:
    """The certificate the SR serves for FQDN, verified against the platform CA (DER). The
    PCE's certificate bundle may reach the SR a moment after `flame up` returns: retried."""
    context = ssl.create_default_context(cafile=ca_file)

    def leaf() -> bytes:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=FQDN) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    return eventually(leaf, every=0.2, what=f"the SR's certificate for {FQDN}")


def spki_pin(der: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): the form Chromium's SPKI list takes."""
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def sr_status(platform: dict[str, Any]) -> dict[str, Any]:
    """The SR's /.flame/status, with the router token `flame up` gave that SR (in its
    environment only: `flame up` hands the user no router token)."""
    component = next(c for c in platform["components"] if c["name"] == SR)
    environ = Path(f"/proc/{component['pid']}/environ").read_bytes().split(b"\0")
    token = next(e.split(b"=", 1)[1] for e in environ if e.startswith(b"FLAME_TOKEN="))
    resp = httpx.get(
        platform["sr_urls"][SR] + "/.flame/status",
        headers={"Host": "_flame", "Authorization": f"Bearer {token.decode()}"},
        trust_env=False,
    )
    resp.raise_for_status()
    status: dict[str, Any] = resp.json()
    return status


_PLAY = """
(() => {
  document.body.innerHTML = '<video id="v" muted playsinline></video>';
  const video = document.getElementById('v');
  window.errors = [];
  window.firstTime = null;
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (_, d) => window.errors.push((d.fatal ? 'fatal ' : '') + d.details));
  hls.loadSource(__URL__);
  hls.attachMedia(video);
  hls.on(Hls.Events.MANIFEST_PARSED, () => video.play());
  video.addEventListener('playing', () => { window.firstTime ??= video.currentTime; });
  return true;
})()
"""


@pytest.mark.slow
@needs_chromium
def test_sfr19_chromium_plays_the_demo_hls_over_https_through_the_sr(
    platform: dict[str, Any], tmp_path: Path
) -> None:
    tls_url = urlsplit(platform["sr_tls_urls"][SR])
    assert tls_url.scheme == "https"
    host, port = tls_url.hostname, tls_url.port
    assert host is not None
    assert port is not None
    leaf = served_leaf(host, port, platform["ca_file"])
    origin = f"https://{FQDN}:{port}"
    chrome = Chrome(
        tmp_path / "profile",
        (
            f"--host-resolver-rules=MAP {FQDN} {host}, MAP origin.{FQDN} {host}",
            f"--ignore-certificate-errors-spki-list={spki_pin(leaf)}",
            "--autoplay-policy=no-user-gesture-required",
        ),
    )
    try:
        chrome.navigate(origin + "/")
        page = chrome.eval("({href: location.href, secure: isSecureContext})")
        assert page == {"href": origin + "/", "secure": True}, page
        chrome.eval(PLAYERS.joinpath("hls.min.js").read_text(encoding="utf-8"))
        assert chrome.eval("Hls.isSupported()")
        stream = f"{origin}/hls/master.m3u8"
        assert chrome.eval(_PLAY.replace("__URL__", json.dumps(stream)))
        chrome.wait(
            "window.firstTime !== null && document.getElementById('v').currentTime"
            " - window.firstTime >= 5 || window.errors.some(e => e.startsWith('fatal'))",
            timeout=40,
        )
        state: dict[str, Any] = chrome.eval(
            "({time: document.getElementById('v').currentTime, errors: window.errors,"
            " paused: document.getElementById('v').paused,"
            " frames: document.getElementById('v').getVideoPlaybackQuality().totalVideoFrames,"
            " resources: performance.getEntriesByType('resource').map(e => e.name)})"
        )
        # No error but hls.js's skip over the gap before the first frame (MPEG-TS timestamps
        # start after 0: a property of the stream, reported as a non-fatal "error").
        assert set(state["errors"]) <= {"bufferSeekOverHole"}, state["errors"]
        assert state["time"] >= 5, state
        assert not state["paused"], state
        assert state["frames"] >= 100  # 5 s at 25 fps, decoded by the browser
        # Every request the player made: https, to the SR's TLS listener, for the stream.
        media = [r for r in state["resources"] if "/hls/" in r]
        assert stream in media, media
        assert any(r.endswith(".ts") for r in media), media
        assert all(r.startswith(origin + "/") for r in state["resources"]), state["resources"]
        # The answers came through the UE's SR (the last to add itself to Via).
        via = chrome.eval("fetch('/hls/master.m3u8').then(r => r.headers.get('via'))")
        assert via is not None
        assert via.split(", ")[-1] == f"1.1 {SR}", via
        # A pin, not blanket trust: the origin's name, at the same SR with a certificate of
        # the same CA but another key, gets Chromium's certificate error page.
        chrome.navigate(f"https://origin.{FQDN}:{port}/health")
        assert chrome.eval("location.href").startswith("chrome-error://"), chrome.console
    finally:
        chrome.close()

    # The SR's side: its TLS listener served the name, with the certificate Chromium pinned.
    tls = sr_status(platform)["tls"]
    assert tls["port"] == port
    assert tls["sites"][FQDN]["fingerprint_sha256"] == hashlib.sha256(leaf).hexdigest()
    assert tls["sites"][FQDN]["source"] == "platform"  # issued by the platform CA
    assert tls["handshakes"].get(FQDN, 0) >= 2  # Python's check, then Chromium's
    # Chromium did reach the SR for the origin's name and refused what it was shown.
    assert tls["handshakes"].get(f"origin.{FQDN}", 0) >= 1
    print(f"played {state['time']:.1f} s ({state['frames']} frames) over https via {via}; "
          f"{len(media)} media requests; SR TLS handshakes: {tls['handshakes']}")  # fmt: skip


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bool:
    """One TLS handshake in memory (no sockets): did the server accept `name`?"""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=name)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((tls_client, c_out, s_in), (tls_server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
            peer_in.write(out.read())
        if tls_client.version() and tls_server.version():
            try:
                tls_client.do_handshake()
            except ssl.SSLError:
                return False
            return True
    return False


def test_sfr19_the_sr_counts_handshakes_per_name_served_bounded_by_its_certificates(
    tmp_path: Path,
) -> None:
    """`tls.handshakes` in the SR's status (what the browser test reads): one count per
    accepted ClientHello under the name the table matched (exact or `*.parent`); refused
    names go to `unknown_names`, never into the map, and a name whose certificate leaves the
    SR leaves the map, so a client sending random names cannot grow it."""
    ca = PlatformCA.open(tmp_path / "ca")

    def site(fqdn: str, *names: str) -> Site:
        issued = ca.issue(list(names), days=2)
        fingerprint = inspect_chain(issued.chain_pem).fingerprint
        return Site(fqdn, names, issued.chain_pem, issued.key_pem, fingerprint=fingerprint)

    sites = TlsSites()
    sites.update([site("a.example", "a.example"), site("b.example", "*.b.example")])
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    assert _handshake(sites.context, client, "a.example")
    assert _handshake(sites.context, client, "A.EXAMPLE")  # names are case-insensitive
    assert _handshake(sites.context, client, "x.b.example")
    assert _handshake(sites.context, client, "y.b.example")
    for name in ("nobody.example", "c.a.example"):
        assert not _handshake(sites.context, client, name)
    described = sites.describe()
    assert described["handshakes"] == {"*.b.example": 2, "a.example": 2}
    assert described["unknown_names"] == 2
    sites.update([site("a.example", "a.example")])  # b.example's certificate is withdrawn
    assert sites.describe()["handshakes"] == {"a.example": 2}
