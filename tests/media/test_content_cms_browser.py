"""The CMS page in headless Chromium: a tenant signs in, uploads a real generated clip with the
tus.io JavaScript client (throttled so that it can be paused mid-way), pauses, sees the
server hold part of it, resumes, sees the analysis (codec, resolution, VMAF against its source)
and publishes the asset, which then serves without a token, directly and through a service
router (the SR's real data plane, routing the SF's FQDN to it) as users reach it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flame.sfr.models import Endpoint, ForwardingTable, Route
from flame.sfr.router import RouterConfig
from flame.sfr.router.subscriber import save_table_file

from .cdp import Chrome, chromium
from .contentkit import KEY_A, content_server, create, make_clip, patch, sha256

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium() is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


FQDN = "content.cms.example"
_SR = """
import json, sys
from flame.sfr.router import RouterConfig, serve
serve(RouterConfig.from_dict(json.loads(sys.argv[1])), on_ready=lambda h, p: print("READY", p, flush=True))
"""


@contextlib.contextmanager
def service_router(tmp_path: Path, sf_port: int) -> Iterator[str]:
    """An SR (one worker) whose table routes FQDN to the SF; yields its URL."""
    endpoint = Endpoint(
        sfe="media.content.c1", fqdn=FQDN, cluster="c1", host="127.0.0.1", port=sf_port
    )
    route = Route(endpoint, egress_sr="sr-cms", cost=0.0, latency_ms=0.0, path=("sr-cms",))
    table_file = tmp_path / "sr-table.json"
    save_table_file(table_file, ForwardingTable(sr="sr-cms", version=1, routes={FQDN: (route,)}))
    config = RouterConfig(sr_id="sr-cms", port=0, workers=1, table_file=str(table_file))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SR, json.dumps(config.to_dict())], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_upload_pause_resume_analyse_and_publish_from_the_browser(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "source.mp4", size="1280x720", seconds=4, crf=16)
    rendition = make_clip(tmp_path / "rendition.mp4", size="640x360", source=source, crf=14)
    size = rendition.stat().st_size
    env = {"MEDIA_ANALYSIS": "on", "MEDIA_RULE": '{"min_height": 360, "min_vmaf": 40}'}
    with content_server(tmp_path, **env) as sf, sf.client() as http:
        data = source.read_bytes()
        loc = create(http, len(data), filename="source.mp4", synopsis="the master")
        source_id = patch(http, loc, 0, data).headers["flame-asset"]
        browser = Chrome(tmp_path / "profile")
        try:
            browser.navigate(sf.url + "/")
            browser.type("#token", KEY_A)
            browser.click("#signin-button")
            browser.wait("document.body.dataset.signedIn === 'yes'")
            browser.wait("document.body.dataset.assets === '1'")
            browser.set_files("#file", rendition)
            browser.type("#synopsis", "a 360p rendition")
            browser.type("#tags", "rendition, test")
            browser.eval(f"document.querySelector('#reference').value = '{source_id}'")
            browser.throttle_upload(max(64_000, size / 4))  # about 4 s for the whole file
            browser.click("#upload")
            # Past the first 256 kB chunk means its PATCH was answered: the server holds it. (The
            # browser's own progress counts bytes still in socket buffers, which a pause discards.)
            browser.wait("Number(document.querySelector('#progress').dataset.bytes) > 262144", 30)
            browser.click("#pause")
            browser.wait("document.body.dataset.upload === 'paused'")
            upload_url = browser.eval("state.upload.url")
            assert upload_url
            head = http.head(upload_url, headers={"Tus-Resumable": "1.0.0"})
            held = int(head.headers["upload-offset"])
            assert 262144 <= held < size, (held, size)  # interrupted: part of it is on the server
            assert http.get("/v1/assets").json()["total"] == 1
            browser.throttle_upload(-1)
            browser.click("#resume")
            browser.wait("document.body.dataset.upload === 'done'", 60)
            asset_id = browser.eval("document.body.dataset.assetId")
            assert asset_id == upload_url.rsplit("/", 1)[1]
            browser.wait("document.body.dataset.assetStatus === 'accepted'", 120)
            shown = browser.eval(
                "Object.fromEntries([...document.querySelectorAll('dd')].map(d => [d.dataset.key, d.textContent]))"
            )
            assert shown["video codec"] == "h264"
            assert shown["resolution"] == "640x360"
            assert 40 < float(shown["VMAF"]) <= 100
            assert shown["reference"] == source_id
            assert shown["verdict"] == "accepted"
            browser.click("#publish")
            browser.wait("!document.querySelector('#public-link').hidden")
            browser.wait("document.querySelectorAll('#assets tbody tr').length === 2")
            browser.screenshot(ARTIFACTS / "media-cms.png")
        finally:
            browser.close()
        asset = http.get(f"/v1/assets/{asset_id}").json()
        assert asset["published"] is True
        assert asset["tags"] == ["rendition", "test"]
        assert asset["sha256"] == sha256(rendition.read_bytes())
        with httpx.Client(base_url=sf.url, trust_env=False) as anon:
            assert anon.get(f"/p/{asset_id}").content == rendition.read_bytes()
        # Served through a service router by the SF's FQDN, whole and by range (MC-6, SFR-1).
        with (
            service_router(tmp_path, sf.port) as sr,
            httpx.Client(base_url=sr, trust_env=False, headers={"Host": FQDN}) as user,
        ):
            whole = user.get(f"/p/{asset_id}")
            assert whole.status_code == 200
            assert whole.content == rendition.read_bytes()
            assert whole.headers["via"].endswith("sr-cms")  # it crossed the SR
            part = user.get(f"/p/{asset_id}", headers={"Range": "bytes=100-199"})
            assert part.status_code == 206
            assert part.content == rendition.read_bytes()[100:200]
