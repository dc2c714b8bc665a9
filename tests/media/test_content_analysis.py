"""Media quality analysis with the bundled ffmpeg and PyAV on clips it generates: probe,
no-reference checks, VMAF/PSNR/SSIM against a reference; then the SF's worker end to end:
upload, job status, acceptance rule, the metadata DB and points in a real CLMC."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from eventually import eventually
from flame.common.ports import free_port
from flame.media.content.analysis import (
    analyse,
    full_reference,
    no_reference,
    probe,
    probe_ffmpeg,
    probe_pyav,
)
from flame.media.content.errors import BadRequest
from flame.media.content.rules import check_rule, evaluate

from .contentkit import (
    KEY_A,
    content_server,
    create,
    make_clip,
    patch,
)


@dataclass(frozen=True)
class Clips:
    source: Path  # 640x360, 3 s, h264 + aac
    good: Path  # the same, re-encoded at 640x360
    low: Path  # a poor 320x180 rendition of it
    black: Path  # 2 s of black, no audio
    still: Path  # 3 s of one unchanging frame


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    d = tmp_path_factory.mktemp("clips")
    source = make_clip(d / "source.mp4", size="640x360", seconds=3, crf=16)
    return Clips(
        source=source,
        good=make_clip(d / "good.mp4", size="640x360", source=source, crf=23),
        low=make_clip(d / "low.mp4", size="320x180", source=source, crf=42),
        black=make_clip(d / "black.mp4", size="160x120", seconds=2, black=True, audio=False),
        still=_still(d / "still.mp4"),
    )


def _still(out: Path) -> Path:
    import subprocess

    from flame.media.hls import ffmpeg_exe

    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", "color=c=0x3366cc:size=160x120:rate=25:duration=3", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", "-preset", "veryfast", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out


def test_probe_reads_container_codecs_resolution_rate_duration_and_audio(clips: Clips) -> None:
    t = asyncio.run(probe(str(clips.source)))
    assert t["probed_with"] == "pyav"
    assert t["container"].startswith("mov,mp4")
    assert t["duration_s"] == pytest.approx(3.0, abs=0.1)
    assert t["bitrate"] > 0
    v, a = t["video"], t["audio"]
    assert (v["codec"], v["width"], v["height"], v["fps"], v["pix_fmt"]) == (
        "h264",
        640,
        360,
        25.0,
        "yuv420p",
    )
    assert (a["codec"], a["sample_rate"], a["channels"], a["layout"]) == ("aac", 48000, 1, "mono")
    assert asyncio.run(probe(str(clips.black)))["audio"] is None


def test_the_ffmpeg_fallback_agrees_with_pyav(clips: Clips) -> None:
    a, b = probe_pyav(str(clips.source)), probe_ffmpeg(str(clips.source))
    assert b["probed_with"] == "ffmpeg"
    for key in ("codec", "width", "height", "fps", "pix_fmt"):
        assert a["video"][key] == b["video"][key], key
    assert a["audio"]["codec"] == b["audio"]["codec"]
    assert a["audio"]["sample_rate"] == b["audio"]["sample_rate"]
    assert a["duration_s"] == pytest.approx(b["duration_s"], abs=0.05)


def test_probe_refuses_what_is_not_media(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    from flame.media.content.analysis import AnalysisError

    with pytest.raises(AnalysisError, match="cannot read the media"):
        asyncio.run(probe(str(junk)))


def test_no_reference_checks_see_black_and_frozen_video(clips: Clips) -> None:
    async def nr(path: Path) -> dict[str, Any]:
        return await no_reference(str(path), await probe(str(path)))

    moving = asyncio.run(nr(clips.source))
    assert moving["frames"] == 75
    assert moving["black"]["seconds"] == 0
    assert moving["freeze"]["seconds"] == 0
    assert moving["blockiness"]["mean"] > 0
    assert moving["blur"]["mean"] > 0
    assert moving["silence"]["count"] == 0  # a steady tone
    black = asyncio.run(nr(clips.black))
    assert black["black"]["ratio"] > 0.9
    assert "silence" not in black  # no audio stream
    still = asyncio.run(nr(clips.still))
    assert still["freeze"]["count"] == 1
    assert still["freeze"]["seconds"] >= 0.9
    assert still["black"]["seconds"] == 0


def test_full_reference_ranks_renditions(clips: Clips) -> None:
    async def fr(path: Path) -> dict[str, Any]:
        return await full_reference(str(path), str(clips.source), await probe(str(clips.source)))

    same, good, low = (
        asyncio.run(fr(clips.source)),
        asyncio.run(fr(clips.good)),
        asyncio.run(fr(clips.low)),
    )
    assert same["vmaf"] > 95
    assert same["psnr_y"] > 50 or same["psnr_y"] > good["psnr_y"]
    assert same["ssim"] > 0.99
    assert low["vmaf"] < good["vmaf"] < same["vmaf"] + 0.5
    assert low["psnr_y"] < good["psnr_y"]
    assert low["compared_at"] == "640x360"  # the rendition was scaled up to its reference
    assert low["frames"] == 75


def test_analyse_combines_both(clips: Clips) -> None:
    technical, quality = asyncio.run(analyse(str(clips.low), reference=str(clips.source)))
    assert technical["video"]["height"] == 180
    assert set(quality) == {"no_reference", "full_reference", "seconds"}


def test_the_acceptance_rule() -> None:
    tech = {"duration_s": 20.0, "bitrate": 3_000_000,
            "video": {"codec": "h264", "width": 1280, "height": 720, "fps": 25.0}, "audio": None}  # fmt: skip
    quality = {"full_reference": {"vmaf": 78.5, "psnr_y": 38.0, "ssim": 0.97},
               "no_reference": {"black": {"ratio": 0.0}, "freeze": {"ratio": 0.3}}}  # fmt: skip
    fails, unchecked = evaluate(
        {"min_height": 1080, "min_vmaf": 80, "video_codecs": ["h264"], "max_freeze_ratio": 0.1,
         "audio_codecs": ["aac"]}, tech, quality,
    )  # fmt: skip
    assert fails == [
        "height 720 is below min_height 1080",
        "VMAF 78.5 is below min_vmaf 80",
        "frozen share 0.3 is above max_freeze_ratio 0.1",
    ]
    assert unchecked == ["audio_codecs: no audio stream"]
    assert evaluate({"min_height": 720, "min_vmaf": 75}, tech, quality) == ([], [])
    fails, unchecked = evaluate({"min_vmaf": 80}, tech, {})
    assert (fails, unchecked) == ([], ["min_vmaf: no reference to compare with"])
    fails, _ = evaluate({"min_vmaf": 80, "require_reference": True}, tech, {})
    assert fails == ["min_vmaf: no reference to compare with (require_reference)"]
    with pytest.raises(BadRequest, match="min_heigth"):
        check_rule({"min_heigth": 720})
    with pytest.raises(BadRequest, match="min_vmaf"):
        check_rule({"min_vmaf": 120})


# -- the worker in the SF, with a real CLMC ----------------------------------------------------


@pytest.fixture
def clmc(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real CLMC (the platform's) on loopback; yields (url, a token of tenant acme)."""
    from flame.clmc.service import ClmcService
    from flame.clmc.tenancy import StaticDelegations
    from flame.common.auth import Role, TokenStore

    store = TokenStore(tmp_path / "clmc-tokens.json")
    token = store.issue("acme-content", Role.TENANT, "acme")
    service = ClmcService(tmp_path / "clmc", store, fsync=False, delegations=StaticDelegations({}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, every=0.02, what="the server to start")
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)


def upload_file(http: httpx.Client, path: Path, **meta: str) -> str:
    data = path.read_bytes()
    loc = create(http, len(data), filename=path.name, **meta)
    r = patch(http, loc, 0, data)
    assert r.status_code == 204, r.text
    return str(r.headers["flame-asset"])


def settled(http: httpx.Client, asset_id: str) -> dict[str, Any]:
    return dict(
        eventually(
            lambda: http.get(f"/v1/assets/{asset_id}").json(),
            until=lambda a: a["status"] in ("accepted", "rejected", "analysis_failed"),
            timeout=90,
            every=0.1,
            what=f"asset {asset_id} to be settled",
        )
    )


def test_ingest_analyses_off_the_request_path_and_reports_to_the_clmc(
    tmp_path: Path, clips: Clips, clmc: tuple[str, str]
) -> None:
    clmc_url, clmc_token = clmc
    env = {"MEDIA_ANALYSIS": "on", "CLMC_URL": clmc_url, "CLMC_TOKEN": clmc_token,
           "MEDIA_RULE": '{"min_height": 360}'}  # fmt: skip
    with content_server(tmp_path, **env) as sf, sf.client() as http:
        started = time.monotonic()
        source = upload_file(http, clips.source, tags="demo")
        upload_s = time.monotonic() - started
        asset = http.get(f"/v1/assets/{source}").json()
        assert asset["status"] in ("queued", "analysing", "accepted")  # the PATCH did not wait
        job = http.get(asset["links"]["job"]).json()
        assert job["asset"] == source
        assert job["state"] in ("queued", "running", "done")
        asset = settled(http, source)
        assert asset["status"] == "accepted", asset["reason"]
        assert (asset["video_codec"], asset["width"], asset["height"]) == ("h264", 640, 360)
        assert asset["technical"]["audio"]["layout"] == "mono"
        assert asset["quality"]["no_reference"]["frames"] == 75
        assert asset["quality"]["verdict"]["accepted"] is True
        assert http.get(asset["links"]["job"]).json()["state"] == "done"
        low = upload_file(http, clips.low, reference=source)
        good = upload_file(http, clips.good, reference=source)
        low_a, good_a = settled(http, low), settled(http, good)
        assert low_a["status"] == "rejected"
        assert low_a["reason"] == "height 180 is below min_height 360"
        assert good_a["status"] == "accepted"
        assert low_a["vmaf"] < good_a["vmaf"]
        assert good_a["quality"]["full_reference"]["reference"] == source
        # the provider tightens its rule and re-runs the analysis
        assert http.put("/v1/rule", json={"min_vmaf": 99.5}).status_code == 200
        job = http.post(f"/v1/assets/{good}/analyse", json={}).json()
        eventually(lambda: http.get(f"/v1/jobs/{job['id']}").json()["state"] == "done",
                   what="the job to be done")  # fmt: skip
        again = http.get(f"/v1/assets/{good}").json()
        assert again["status"] == "rejected"
        assert again["reason"].startswith("VMAF ")
        assert "below min_vmaf 99.5" in again["reason"]
        assert http.post(f"/v1/assets/{good}/publish").status_code == 409
        found = http.get("/v1/assets", params={"min_vmaf": 50, "resolution": "640x360"}).json()
        assert [a["id"] for a in found["assets"]] == [good]
        assert http.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
        eventually(lambda: sf.service.reporter.stats()["sent"] >= 5, what="5 reports sent")
        assert sf.service.reporter.stats()["dropped"] == 0
    assert upload_s < 10
    with httpx.Client(base_url=clmc_url, headers={"Authorization": f"Bearer {clmc_token}"},
                      trust_env=False) as q:  # fmt: skip
        rows = q.get("/query", params={"db": "acme", "q": 'SELECT "vmaf", "asset", "height" '
                     "FROM \"media_quality\" WHERE \"verdict\" = 'rejected'"}).json()  # fmt: skip
        series = rows["results"][0]["series"][0]
        assert len(series["values"]) == 2  # low, then good after the new rule
        ingest = q.get(
            "/query", params={"db": "acme", "q": 'SELECT sum("bytes") FROM "media_ingest"'}
        ).json()
        total = sum(p.stat().st_size for p in (clips.source, clips.low, clips.good))
        assert ingest["results"][0]["series"][0]["values"][0][1] == total
        tags = q.get(
            "/query",
            params={"db": "acme", "q": 'SHOW TAG VALUES FROM "media_ingest" WITH KEY = "sfe"'},
        ).json()
        assert tags["results"][0]["series"][0]["values"][0][1] == "vod-1.content.metro"


def test_a_rendition_uploaded_before_its_source_is_compared_when_the_source_arrives(
    tmp_path: Path, clips: Clips
) -> None:
    with content_server(tmp_path, MEDIA_ANALYSIS="probe") as sf, sf.client() as http:
        src_bytes = clips.source.read_bytes()
        src_loc = create(http, len(src_bytes), filename="source.mp4")
        source_id = src_loc.rsplit("/", 1)[1]  # the asset id is the upload id, known now
        low = upload_file(http, clips.low, reference=source_id)
        first = settled(http, low)
        assert first["vmaf"] is None
        assert "full_reference_skipped" in first["quality"]
        assert patch(http, src_loc, 0, src_bytes).status_code == 204
        eventually(lambda: http.get(f"/v1/assets/{low}").json()["vmaf"] is not None,
                   what="the VMAF of the low rendition")  # fmt: skip


def test_media_that_cannot_be_read_fails_analysis_with_the_reason(tmp_path: Path) -> None:
    with content_server(tmp_path, MEDIA_ANALYSIS="on") as sf, sf.client() as http:
        r = http.post(
            "/v1/assets", files={"file": ("notes.mp4", b"not a video at all" * 50, "video/mp4")}
        )
        asset = settled(http, r.json()["id"])
        assert asset["status"] == "analysis_failed"
        assert "cannot read the media" in asset["reason"]
        assert http.get(asset["links"]["job"]).json()["state"] == "failed"


@pytest.mark.asyncio
async def test_platform_tokens_are_checked_with_the_orchestrators_whoami(tmp_path: Path) -> None:
    """A real orchestrator answers /v1/whoami; the SF lets in its own tenant's tokens only."""
    from flame.sfemc.registrar import InProcessRegistrar
    from orchestrator.harness import running_platform
    from sfemc.fakes import FakeVim

    from .contentkit import base_env

    vim = FakeVim()
    registrar = InProcessRegistrar({})
    clusters = dict.fromkeys(("edge-bristol", "edge-bath", "metro-london"), vim)
    async with running_platform(tmp_path / "orch", clusters, registrar) as platform:
        env = base_env(tmp_path, MEDIA_AUTH_URL=platform.url)
        del env["MEDIA_API_KEYS"]
        with content_server(tmp_path, env) as sf:
            async with httpx.AsyncClient(base_url=sf.url, timeout=30) as http:

                async def call(token: str) -> httpx.Response:
                    return await http.get(
                        "/v1/assets", headers={"Authorization": f"Bearer {token}"}
                    )

                assert (await call(platform.acme)).status_code == 200
                r = await call(platform.globex)
                assert r.status_code == 403
                assert "tenant 'globex'" in r.json()["message"]
                r = await call(platform.operator)
                assert r.status_code == 403
                assert "never send operator" in r.json()["message"]
                assert (await call("flm_" + "x" * 43)).status_code == 401
                assert (await call(KEY_A)).status_code == 401  # API keys are not configured here
                r = await http.post(
                    "/v1/assets", files={"file": ("a.bin", b"abc", "application/octet-stream")},
                    headers={"Authorization": f"Bearer {platform.acme}"},
                )  # fmt: skip
                assert r.status_code == 201
                assert r.json()["owner"] == "acme"
