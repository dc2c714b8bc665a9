"""The content SF as a tenant deploys it: its image manifest and example template are valid, its
entrypoint starts our server from the manifest's environment, and the packaged image runs in the
process VIM's bubblewrap sandbox (read-only platform Python with PyAV, ffmpeg, libvmaf) where
an upload is stored in the SFE's private HOME and analysed."""

from __future__ import annotations

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
from flame.sfemc.images import ImageRepository, build_image, load_manifest
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.process import ProcessVim
from ranges import sandbox_uid_base, sfe_port_base

from .contentkit import create, make_clip, metadata, patch, tus_headers
from .helpers import Proc

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "sf" / "media-content"
TEMPLATE = ROOT / "examples" / "media-content" / "service.yaml"
TOPOLOGY = ROOT / "examples" / "topology" / "sandpit.yaml"
EXAMPLE_KEY = "change-me-media-key-0123456789"  # the example template's default key


def test_the_example_template_is_valid_and_configures_what_the_sf_reads() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flame", "--json", "validate", "--strict", "--topology",
         str(TOPOLOGY), str(TEMPLATE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    (sf,) = doc["model"]["service_functions"]
    env = dict(sf["environment"])
    from flame.media.content.service import Config

    config = Config.from_env({**env, "FLAME_TENANT": "demo", "HOME": "/nonexistent"})
    assert config.rule == {"min_height": 720, "min_vmaf": 80, "max_black_ratio": 0.5}
    assert config.limits.quota == 20 * 10**9
    from flame.media.content.auth import parse_api_keys

    keys = parse_api_keys(env["MEDIA_API_KEYS"], "demo")
    import hashlib

    assert hashlib.sha256(EXAMPLE_KEY.encode()).hexdigest() in keys
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    assert manifest.entrypoint == ("python3", "-m", "flame.media.content")
    assert sf["image"] == f"{manifest.name}:{manifest.version}"


def test_the_manifest_starts_our_server(tmp_path: Path) -> None:
    manifest = load_manifest(IMAGE / "flame-sf.yaml", default_name="x")
    port = free_port()
    env = {
        **manifest.environment,
        "FLAME_PORT": str(port),
        "FLAME_TENANT": "demo",
        "MEDIA_API_KEYS": f"editor={EXAMPLE_KEY}",
        "MEDIA_DATA_DIR": str(tmp_path / "data"),
        "MEDIA_ANALYSIS": "off",
    }
    proc = Proc(manifest.entrypoint[2], [], env, tmp_path / "sf.log")
    try:
        proc.wait_healthy(f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                          headers={"Authorization": f"Bearer {EXAMPLE_KEY}"}) as http:  # fmt: skip
            loc = create(http, 5, filename="a.txt")
            assert patch(http, loc, 0, b"hello").status_code == 204
            assert http.get("/v1/assets").json()["total"] == 1
    finally:
        assert proc.stop() == 0
    assert "listening on" in (tmp_path / "sf.log").read_text()


def test_a_missing_authentication_setting_is_a_clear_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flame.media.content", "--port", "0"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "FLAME_TENANT": "demo"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "MEDIA_API_KEYS" in done.stderr


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None,
                    reason="sandboxed SFEs need root and bubblewrap")  # fmt: skip
async def test_the_image_runs_sandboxed_and_analyses_an_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "platform-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))  # the controller's HOME, as in production
    repo = ImageRepository(home / ".local" / "share" / "flame" / "images")
    digest = repo.put(build_image(IMAGE)[0]).digest
    base = sfe_port_base()  # apart from free_port's and other workers' (tests/ranges.py)
    uids = sandbox_uid_base(16, block=1)  # this file's uid block (tests/ranges.py)
    vim = ProcessVim(
        home / ".local" / "share" / "flame" / "vim",
        {"c1": range(base, base + 10)},
        repo,
        grace_s=2.0,
        boot_timeout_s=60.0,
        sandbox="required",
        sandbox_uids=range(uids, uids + 16),
    )
    sfe = "m1.content.c1"
    clip = make_clip(tmp_path / "clip.mp4", size="320x240", seconds=2)
    data = clip.read_bytes()
    try:
        await vim.place(
            EndpointSpec(
                sfe=sfe, tenant="acme", sfc="media", sfci="m1", sf="content", cluster="c1",
                fqdn="content.example", image=digest,
                environment={"MEDIA_API_KEYS": f"editor={EXAMPLE_KEY}",
                             "MEDIA_RULE": '{"min_height": 720}'},
            )
        )  # fmt: skip
        up = await vim.boot(sfe)
        state = json.loads((vim.sfes_dir / sfe / "state.json").read_text())
        assert str(state["sandbox"]).startswith(f"bwrap uid={uids}"), state["sandbox"]
        url = f"http://127.0.0.1:{up.ports['http']}"
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30,
                                     headers={"Authorization": f"Bearer {EXAMPLE_KEY}"}) as http:  # fmt: skip
            r = await http.post("/v1/uploads", headers=tus_headers(**{
                "Upload-Length": str(len(data)), "Upload-Metadata": metadata(filename="clip.mp4")}))  # fmt: skip
            assert r.status_code == 201, r.text
            r = await http.patch(r.headers["location"], content=data, headers=tus_headers(**{
                "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
            assert r.status_code == 204, r.text
            asset_id = r.headers["flame-asset"]

            async def asset_now() -> dict[str, Any]:
                return dict((await http.get(f"/v1/assets/{asset_id}")).json())

            asset = await eventually_async(
                asset_now,
                until=lambda a: a["status"] in ("accepted", "rejected", "analysis_failed"),
                timeout=90,
                every=0.2,
                what="the asset's analysis",
            )
        assert asset["status"] == "rejected", asset
        assert asset["reason"] == "height 240 is below min_height 720"
        assert asset["technical"]["probed_with"] == "pyav"
        assert asset["quality"]["no_reference"]["frames"] == 50
        stored = vim.sfes_dir / sfe / "home" / "media-content" / "objects" / "acme" / asset_id
        assert stored.read_bytes() == data
        assert stored.stat().st_uid == uids  # written by the tenant's own uid
    finally:
        for status in await vim.list():
            await vim.remove(status.sfe)
        await vim.close()
