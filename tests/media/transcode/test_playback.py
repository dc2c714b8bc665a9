"""MC-9 in a browser: headless Chromium plays a transcoder job's output with hls.js (HLS fMP4)
and dash.js (MPEG-DASH) from the vendored npm builds; each player starts at the top rendition,
plays at least 10 s, and switches down when the link to the client is throttled (Chrome's
network emulation over the DevTools protocol). This Chromium has no HEVC decoder (asserted
below), so HEVC renditions are validated by decoding with ffmpeg in test_api."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.cdp import Chrome, chromium
from media.contentkit import make_clip

from .kit import Running, transcoder, upload, wait_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="chromium is not installed"),
]
THROTTLED = 320_000 // 8  # bytes/s: the 1 Mb/s rung no longer fits, the 150 kb/s one does


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    d = tmp_path_factory.mktemp("playback")
    source = make_clip(d / "src.mp4", size="640x360", seconds=20)
    with transcoder(d / "sf") as sf, sf.client() as http:
        upload(http, "src.mp4", source)
        r = http.post("/v1/jobs", json={
            "source": {"path": "src.mp4"}, "vmaf": False, "audio_bitrate": "64k",
            "rungs": [{"height": 360, "bitrate": "1M"}, {"height": 180, "bitrate": "150k"}]})  # fmt: skip
        job = wait_job(http, r.json()["id"], 90)
        assert job["state"] == "done", job["error"]
        yield sf, job["id"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chrome]:
    b = Chrome(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def _throttle(b: Chrome, bytes_per_s: float) -> None:
    b.send("Network.enable")
    b.send("Network.emulateNetworkConditions", offline=False, latency=20,
           downloadThroughput=bytes_per_s, uploadThroughput=-1)  # fmt: skip


@pytest.mark.parametrize("player", ["hls", "dash"])
def test_mc9_plays_10s_and_switches_down_when_throttled(
    played: tuple[Running, str], browser: Chrome, player: str
) -> None:
    sf, job_id = played
    browser.navigate(f"{sf.url}/play/{job_id}?player={player}")
    browser.wait("window.flame && window.flame.height === 360", 20)
    browser.wait("document.getElementById('video').currentTime > 1", 20)
    _throttle(browser, THROTTLED)
    browser.wait("window.flame.height === 180", 25)
    browser.wait("document.getElementById('video').currentTime >= 10", 30)
    state: dict[str, Any] = browser.eval(
        "({switches: flame.switches, heights: flame.heights, errors: flame.errors,"
        " paused: document.getElementById('video').paused,"
        " decoded: document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames})"
    )
    assert state["errors"] == [], state
    assert state["switches"][:2] == [360, 180], state
    assert 180 in state["heights"]
    assert 360 in state["heights"]
    assert not state["paused"]
    assert state["decoded"] >= 200  # 10 s at 25 fps, decoded by the browser


def test_this_chromium_has_no_hevc_decoder_but_plays_h264_and_av1(browser: Chrome) -> None:
    def supported(codecs: str) -> bool:
        return bool(browser.eval(f"MediaSource.isTypeSupported('video/mp4; codecs=\"{codecs}\"')"))

    assert supported("avc1.64001e")
    assert supported("av01.0.04M.08")
    # Debian's Chromium decodes HEVC only through a platform (hardware) decoder: none here.
    assert not supported("hvc1.1.6.L93.90")
