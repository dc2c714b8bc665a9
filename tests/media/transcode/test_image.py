"""The abr-transcoder and hls-dash-packager images as a tenant packages them: their manifests
build, their entrypoint starts our server with the manifest's environment, and the packager
image packages existing renditions without re-encoding them (MC-9) and refuses ladders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventually import eventually_async
from flame.common.ports import free_port
from flame.media.hls import ffmpeg_exe
from flame.media.transcode.jobs import ACTIVE
from flame.sfemc.images import ImageRepository, build_image, load_manifest
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.process import ProcessVim
from media.contentkit import make_clip
from media.helpers import Proc
from ranges import sandbox_uid_base, sfe_port_base

from .kit import API_KEYS, KEY, wait_job

ROOT = Path(__file__).resolve().parents[3]
IMAGES = {"abr-transcoder": "3.4", "hls-dash-packager": "1.8"}


@pytest.mark.parametrize(("name", "version"), IMAGES.items())
def test_the_images_build_and_run_the_transcoder_module(name: str, version: str) -> None:
    blob, manifest = build_image(ROOT / "examples" / "sf" / name)
    assert blob
    assert (manifest.name, manifest.version) == (name, version)
    assert manifest.entrypoint == ("python3", "-m", "flame.media.transcode")
    assert manifest.health is not None
    assert manifest.health.path == "/health"
    mode = manifest.environment["TRANSCODE_MODE"]
    assert mode == ("package" if name == "hls-dash-packager" else "transcode")
    assert (ROOT / "examples" / "sf" / name / "README.md").is_file()


def _rendition(out: Path, height: int, bitrate: str, audio: bool) -> Path:
    """A rendition as an encoder outside the platform would make it: 2 s closed GOPs."""
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=4"]  # fmt: skip
    if audio:
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4",
                 "-c:a", "aac", "-b:a", "64k"]  # fmt: skip
    argv += ["-vf", f"scale=-2:{height}", "-c:v", "libx264", "-preset", "veryfast",
             "-b:v", bitrate, "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
             "-pix_fmt", "yuv420p", str(out)]  # fmt: skip
    subprocess.run(argv, check=True, timeout=60)
    return out


def _video_md5(path: Path) -> str:
    """The digest of the coded video bitstream (stream copy: equal means not re-encoded)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                           "-map", "0:v:0", "-c", "copy", "-f", "md5", "-"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.strip()


def test_mc9_the_packager_image_packages_renditions_as_they_are(tmp_path: Path) -> None:
    manifest = load_manifest(ROOT / "examples/sf/hls-dash-packager/flame-sf.yaml", default_name="x")
    port = free_port()
    env = {**manifest.environment, "FLAME_PORT": str(port), "FLAME_TENANT": "acme",
           "MEDIA_API_KEYS": API_KEYS, "HOME": str(tmp_path)}  # fmt: skip
    top = _rendition(tmp_path / "r360.mp4", 360, "700k", audio=True)
    low = _rendition(tmp_path / "r180.mp4", 180, "200k", audio=False)
    proc = Proc(manifest.entrypoint[2], [], env, tmp_path / "sf.log")
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(url)
        with httpx.Client(base_url=url, trust_env=False, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"}) as http:  # fmt: skip
            for path in (top, low):
                assert (
                    http.put(f"/v1/sources/{path.name}", content=path.read_bytes()).status_code
                    == 201
                )
            r = http.post(
                "/v1/jobs", json={"source": {"path": "r360.mp4"}, "rungs": [{"bitrate": "1M"}]}
            )
            assert (r.status_code, r.json()["error"]) == (409, "transcoding_off")
            r = http.post(
                "/v1/jobs", json={"renditions": [{"path": "r360.mp4"}, {"path": "r180.mp4"}]}
            )
            assert r.status_code == 202, r.text
            job = wait_job(http, r.json()["id"])
            assert job["state"] == "done", job["error"]
            assert job["spec"]["kind"] == "package"
            res = job["result"]
            assert [(x["width"], x["height"]) for x in res["renditions"]] == [
                (640, 360),
                (320, 180),
            ]
            assert [x["segments"] for x in res["renditions"]] == [2, 2]
            assert res["audio"]["codecs"] == "mp4a.40.2"
            master = http.get(f"/o/{job['id']}/master.m3u8")
            assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
            assert master.text.count("#EXT-X-STREAM-INF") == 2
            mpd = http.get(f"/o/{job['id']}/manifest.mpd")
            assert mpd.headers["content-type"] == "application/dash+xml"
            for i, source in enumerate((top, low)):
                joined = tmp_path / f"joined-{i}.mp4"
                parts = [f"init-{i}.m4s", f"seg-{i}-00001.m4s", f"seg-{i}-00002.m4s"]
                joined.write_bytes(b"".join(http.get(f"/o/{job['id']}/{p}").content for p in parts))
                assert _video_md5(joined) == _video_md5(source)  # packaged, not re-encoded
    finally:
        assert proc.stop() == 0
    assert "listening on" in (tmp_path / "sf.log").read_text()
    assert hashlib.sha256(KEY.encode()).hexdigest() not in (tmp_path / "sf.log").read_text()


def test_a_missing_authentication_setting_is_a_clear_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flame.media.transcode", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FLAME_TENANT": "demo"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "MEDIA_API_KEYS" in done.stderr
    from flame.common.errors import ConfigError
    from flame.media.transcode.service import Config

    with pytest.raises(ConfigError, match="TRANSCODE_MODE"):
        Config.from_env({"HOME": str(tmp_path), "TRANSCODE_MODE": "live"})
    assert Config.from_env(
        {"HOME": str(tmp_path), "TRANSCODE_MODE": "package"}
    ).settings.package_only


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None,
                    reason="sandboxed SFEs need root and bubblewrap")  # fmt: skip
async def test_the_transcoder_image_runs_sandboxed_and_encodes_a_ladder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged abr-transcoder under the process VIM's bubblewrap sandbox: the platform's
    read-only Python and ffmpeg (x264, libvmaf), outputs in the SFE's private HOME."""
    home = tmp_path / "platform-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    repo = ImageRepository(home / ".local" / "share" / "flame" / "images")
    digest = repo.put(build_image(ROOT / "examples" / "sf" / "abr-transcoder")[0]).digest
    base = sfe_port_base()  # apart from free_port's and other workers' (tests/ranges.py)
    uids = sandbox_uid_base(16, block=2)  # this file's uid block (tests/ranges.py)
    vim = ProcessVim(home / ".local" / "share" / "flame" / "vim", {"c1": range(base, base + 10)},
                     repo, grace_s=2.0, boot_timeout_s=60.0, sandbox="required",
                     sandbox_uids=range(uids, uids + 16))  # fmt: skip
    sfe = "t1.transcode.c1"
    clip = make_clip(tmp_path / "clip.mp4", size="320x240", seconds=2)
    try:
        await vim.place(EndpointSpec(
            sfe=sfe, tenant="acme", sfc="media", sfci="t1", sf="transcode", cluster="c1",
            fqdn="transcode.example", image=digest, environment={"MEDIA_API_KEYS": API_KEYS}))  # fmt: skip
        up = await vim.boot(sfe)
        state = json.loads((vim.sfes_dir / sfe / "state.json").read_text())
        assert str(state["sandbox"]).startswith(f"bwrap uid={uids}"), state["sandbox"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.ports['http']}",
                                     trust_env=False, timeout=30,
                                     headers={"Authorization": f"Bearer {KEY}"}) as http:  # fmt: skip
            r = await http.put("/v1/sources/clip.mp4", content=clip.read_bytes())
            assert r.status_code == 201, r.text
            r = await http.post("/v1/jobs", json={"source": {"path": "clip.mp4"},
                                                  "rungs": [{"height": 120, "bitrate": "150k"}]})  # fmt: skip
            job_id = r.json()["id"]

            async def job_now() -> dict[str, Any]:
                return dict((await http.get(f"/v1/jobs/{job_id}")).json())

            job = await eventually_async(job_now, until=lambda j: j["state"] not in ACTIVE,
                                         timeout=90, every=0.2, what="the job to finish")  # fmt: skip
            assert job["state"] == "done", job["error"]
            assert 0 < job["result"]["renditions"][0]["vmaf"] <= 100
            assert (await http.get(f"/o/{job_id}/manifest.mpd")).status_code == 200
        out = vim.sfes_dir / sfe / "home" / "transcode" / "jobs" / job_id / "out" / "init-0.m4s"
        assert out.stat().st_uid == uids  # written by the tenant's own uid
    finally:
        for status in await vim.list():
            await vim.remove(status.sfe)
        await vim.close()
