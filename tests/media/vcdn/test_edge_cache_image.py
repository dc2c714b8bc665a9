"""Issue 16/17: the image `edge-cache:1.0` that examples/vod-edge-cache and
examples/live-transcoding name exists, packages, and its entrypoint runs our cache with the
templates' environment (ORIGIN, CACHE_SIZE, PLAYLIST_TTL)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from flame.common.errors import ConfigError
from flame.common.ports import free_port
from flame.common.units import parse_scalar
from flame.media.cache import EdgeCache
from flame.media.store import ObjectStore
from flame.media.vcdn.service import configure
from flame.sfemc.images import build_image, load_manifest
from media.conftest import Stream
from media.helpers import Proc

ROOT = Path(__file__).resolve().parents[3]
IMAGE = ROOT / "examples" / "sf" / "edge-cache"
CACHE_ENV = {
    "ORIGIN", "ORIGIN_URL", "FLAME_ORIGIN", "ORIGIN_HOST", "CACHE_SIZE", "PLAYLIST_TTL",
    "CACHE_DISK_DIR", "CACHE_DISK_SIZE", "CACHE_STALE_IF_ERROR", "MEDIA_API_KEYS",
    "MEDIA_AUTH_URL", "MEDIA_TENANTS", "CLMC_URL", "CLMC_TOKEN", "CLMC_DB",
    "CACHE_REPORT_INTERVAL", "CACHE_REPORT_PATHS",
}  # fmt: skip


def template_env(name: str) -> dict[str, object]:
    doc = yaml.safe_load((ROOT / "examples" / name / "service.yaml").read_text())
    cache = doc["topology_template"]["node_templates"]["cache"]["properties"]
    assert cache["image"] == "edge-cache:1.0"
    return dict(cache["environment"])


def test_the_image_packages_under_the_name_the_templates_use() -> None:
    _, manifest = build_image(IMAGE)
    assert f"{manifest.name}:{manifest.version}" == "edge-cache:1.0"
    assert manifest.entrypoint == ("python3", "-m", "flame.media.cache")
    # the templates set only variables the cache reads (docs/media-vcdn.md), ORIGIN always
    for template in ("live-transcoding", "vod-edge-cache"):
        env = set(template_env(template))
        assert "ORIGIN" in env
        assert env <= CACHE_ENV, env - CACHE_ENV
    vod = load_manifest(ROOT / "examples/sf/vod-cache/flame-sf.yaml", default_name="x")
    assert f"{vod.name}:{vod.version}" == "vod-cache:1.0"  # the demo's image is kept


def test_the_entrypoint_runs_with_the_live_templates_settings(
    stream: Stream, tmp_path: Path
) -> None:
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    live = template_env("live-transcoding")
    oport, cport = free_port(), free_port()
    origin = Proc("flame.media.origin", ["--media-dir", str(stream.root)],
                  {"FLAME_PORT": str(oport)}, tmp_path / "o.log")  # fmt: skip
    env = {**manifest.environment, "CACHE_SIZE": str(live["CACHE_SIZE"]),
           "PLAYLIST_TTL": "0s",  # the template says 2s; 0 shows the cap without a sleep
           "ORIGIN": f"http://127.0.0.1:{oport}", "FLAME_ORIGIN": "", "ORIGIN_URL": "",
           "FLAME_PORT": str(cport)}  # fmt: skip
    cache = Proc(manifest.entrypoint[2], [], env, tmp_path / "c.log")
    try:
        origin.wait_healthy(f"http://127.0.0.1:{oport}")
        cache.wait_healthy(f"http://127.0.0.1:{cport}")
        with httpx.Client(base_url=f"http://127.0.0.1:{cport}", trust_env=False) as c:
            for _ in range(2):  # playlists: capped at 0 s, revalidated every time
                r = c.get("/hls/360p/index.m3u8")
                assert (r.status_code, r.headers["x-cache"]) == (200, "MISS")
            c.get("/hls/360p/seg_000.ts")
            assert c.get("/hls/360p/seg_000.ts").headers["x-cache"] == "HIT"
            want = int(parse_scalar(str(live["CACHE_SIZE"]), "scalar-unit.size"))
            assert c.get("/metrics").json()["store"]["max_bytes"] == want
    finally:
        assert (cache.stop(), origin.stop()) == (0, 0)


def test_bad_settings_stop_the_cache_with_one_clear_line(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    env = {"ORIGIN": "http://127.0.0.1:9", "FLAME_ORIGIN": "", "CACHE_SIZE": "lots",
           "FLAME_PORT": str(free_port())}  # fmt: skip
    proc = Proc("flame.media.cache", [], env, log)
    assert proc.popen.wait(30) == 1
    proc.stop()
    text = log.read_text()
    assert "CACHE_SIZE" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDIA_API_KEYS": "ops=" + "k" * 30}, "needs FLAME_TENANT"),
        ({"MEDIA_API_KEYS": "ops=short", "FLAME_TENANT": "acme"}, "shorter than 24"),
        ({"CLMC_URL": "http://c", "CACHE_REPORT_INTERVAL": "-1"}, "must be positive"),
        ({"CLMC_URL": "http://c", "CACHE_REPORT_PATHS": "many"}, "not a number"),
    ],
)
def test_bad_management_or_report_settings_are_config_errors(
    env: dict[str, str], message: str
) -> None:
    cache = EdgeCache("http://127.0.0.1:9", ObjectStore(1 << 20))
    with pytest.raises(ConfigError, match=message):
        configure(cache, env)
