"""The live-transcoding example as a tenant deploys it: the template is valid and configures what
the live SF reads, the image's entrypoint starts our server from the manifest's environment,
and (slow, `-m slow`) the README's deployment on `flame up --topology sandpit` carries a
camera's feed through the SRs and the edge cache with glass-to-glass latency measured.
tests/examples/test_readmes.py also runs every ```sh block of the README exactly as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flame.common.ports import free_port
from flame.media.live.config import LiveConfig
from flame.sfemc.images import load_manifest
from media.helpers import Proc

from .livekit import Viewer, camera, stop

ROOT = Path(__file__).resolve().parents[3]
IMAGE = ROOT / "examples" / "sf" / "live-ingest"
EXAMPLE = ROOT / "examples" / "live-transcoding"
TOPOLOGY = ROOT / "examples" / "topology" / "sandpit.yaml"
EXAMPLE_KEY = "change-me-news-key-0123456789"  # the template's default news_key
_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def validated() -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "flame", "--json", "validate", "--strict", "--topology",
         str(TOPOLOGY), str(EXAMPLE / "service.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["warnings"] == 0
    return dict(doc["model"])


def test_the_template_configures_what_the_live_sf_reads() -> None:
    model = validated()
    sfs = {sf["name"]: sf for sf in model["service_functions"]}
    ingest, cache = sfs["ingest"], sfs["cache"]
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    assert ingest["image"] == f"{manifest.name}:{manifest.version}" == "live-ingest:2.1"
    assert [p["name"] for p in ingest["ports"]] == ["api", "rtmp", "srt"]  # the SRs route `api`
    assert [p.name for p in manifest.ports] == ["api", "rtmp", "srt"]
    env = {**manifest.environment, **dict(ingest["environment"]), "HOME": "/nonexistent"}
    config = LiveConfig.from_env(env)
    assert config.feed_for(EXAMPLE_KEY) is not None
    assert config.srt_feed == "news"
    assert config.dvr
    assert [r.name for r in config.ladder] == ["360p", "180p"]
    assert cache["image"] == "edge-cache:1.0"
    assert cache["upstream"] == ["ingest"]
    assert ["ORIGIN", "http://ingest.live.flame.example"] in cache["environment"]
    triggers = {p["alert"] for p in model["state_change_policies"]}
    assert triggers == {"cache_cpu_high", "cache_cpu_low"}


def test_the_manifest_starts_our_server(tmp_path: Path) -> None:
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    assert manifest.entrypoint == ("python3", "-m", "flame.media.live")
    assert manifest.health is not None
    assert manifest.health.path == "/healthz"
    api, rtmp, srt = free_port(), free_port(), free_port()
    env = {**manifest.environment, "LIVE_KEYS": f"news={EXAMPLE_KEY}", "HOME": str(tmp_path),
           "FLAME_PORT": str(api), "FLAME_PORT_API": str(api), "FLAME_PORT_RTMP": str(rtmp),
           "FLAME_PORT_SRT": str(srt)}  # fmt: skip
    proc = Proc(manifest.entrypoint[2], [], env, tmp_path / "sf.log")
    try:
        proc.wait_healthy(f"http://127.0.0.1:{api}")
        doc = httpx.get(f"http://127.0.0.1:{api}/v1/feeds", trust_env=False).json()
        assert doc["contribution"]["rtmp"] == f"rtmp://127.0.0.1:{rtmp}/live/"
        assert doc["segment_seconds"] == 2
        assert doc["playlist_window"] == 6
    finally:
        assert proc.stop() == 0
    assert (tmp_path / "live-ingest" / "sessions").is_dir()  # its data in its HOME


def test_without_keys_the_sf_exits_1_with_the_reason(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flame.media.live"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "LIVE_KEYS" in done.stderr


@pytest.mark.slow
def test_the_readme_deployment_on_sandpit_carries_a_feed_to_viewers(tmp_path: Path) -> None:
    """Follows examples/live-transcoding/README.md on `flame up --topology sandpit` (its first
    block as written), then a camera with a burnt-in clock and a viewer at sr-ue-1; stops all."""
    config = tmp_path / "config.toml"
    config.touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config), "FLAME_STATE_DIR": str(tmp_path / "state"),
        "HOME": str(tmp_path / "home"), "FLAME_FREE_PORTS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # fmt: skip
    blocks = _BLOCK.findall((EXAMPLE / "README.md").read_text())

    def sh(script: str) -> str:
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert run.returncode == 0, f"{script}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return run.stdout

    cam = None
    try:
        assert blocks[0].startswith("flame up -d --topology sandpit")
        sh(blocks[0])
        sr = sh("flame ue sr-url sr-ue-1").strip()
        with httpx.Client(base_url=sr, trust_env=False, timeout=10) as http:
            feeds = http.get("/v1/feeds", headers={"Host": "ingest.live.flame.example"}).json()
            cam = camera(feeds["contribution"]["rtmp"] + EXAMPLE_KEY, 14)
            http.headers["Host"] = "live.flame.example"  # a viewer, through the edge cache
            viewer = Viewer(f"{sr}/live/news/", "media_1.m3u8", http, tmp_path)
            viewer.follow(segments=3)
            assert cam.wait(60) == 0
            viewer.follow(segments=100)  # until the end, once the cache's 1 s playlist TTL is up
            assert viewer.ended
            latencies = viewer.measure()
            print(f"sandpit glass-to-glass via sr-ue-1 and the edge cache (ms): {latencies}")
            assert 0 < viewer.median_ms() < 12_000  # 2 s segments, 1 s playlist TTL, 3 SR hops
            final = http.get("/live/news/manifest.mpd")
            assert final.headers["x-flame-sfe"] == "live-evening-news.cache.metro-london"
            assert 'type="static"' in final.text
        sh("flame undeploy live")
    finally:
        if cam is not None:
            stop(cam)
        subprocess.run([sys.executable, "-m", "flame", "down"], env=env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
