"""Viewers in headless Chromium with hls.js and dash.js (vendored at src/flame/media/players/)
watch the live feed (HLS and MPEG-DASH) through the edge cache; glass-to-glass latency is read from the frames it displays
(the camera burns its wall clock into every frame; the page decodes it from a canvas)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from media.cdp import Chrome, chromium

from .livekit import BITS, BLOCK, NEWS_KEY, camera, start_cache, start_live, stop

PLAYERS = Path(__file__).resolve().parents[3] / "src" / "flame" / "media" / "players"
# Players hold a few segments back from the live edge: medians of 4.4 s (hls.js) and 5.1 s
# (dash.js) measured at a load of 21 on 2 cores; the bound is 3x that.
BROWSER_BOUND_MS = 16_000

# Two players side by side on one feed: hls.js on the HLS playlists, dash.js on the MPD. On
# every displayed frame: draw it at 640x360, read the clock blocks, keep [currentTime, now - clock].
_WATCH = (
    """
(() => {
  document.body.innerHTML = '<video id="hls" muted></video><video id="dash" muted></video>';
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 360;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  window.samples = {hls: [], dash: []}; window.errors = [];
  const sample = (video, out) => {
    const onFrame = () => {
      ctx.drawImage(video, 0, 0, 640, 360);
      const row = ctx.getImageData(0, 8, 640, 1).data;
      let clock = 0;
      for (let i = 0; i < __BITS__; i++) {
        const at = (i * __BLOCK__ + __HALF__) * 4;
        const luma = 0.299 * row[at] + 0.587 * row[at + 1] + 0.114 * row[at + 2];
        if (luma > 128) clock += 2 ** i;
      }
      const now = Date.now() % 2 ** __BITS__;
      out.push([video.currentTime, (now - clock + 2 ** __BITS__) % 2 ** __BITS__]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  const v1 = document.getElementById('hls');
  const hls = new Hls({liveSyncDurationCount: 2});
  hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.errors.push('hls ' + d.details); });
  hls.loadSource('/live/news/master.m3u8');
  hls.attachMedia(v1);
  hls.on(Hls.Events.MANIFEST_PARSED, () => v1.play());
  sample(v1, window.samples.hls);
  const v2 = document.getElementById('dash');
  const dash = dashjs.MediaPlayer().create();
  dash.on('error', (e) => window.errors.push('dash ' + JSON.stringify(e.error || e)));
  dash.initialize(v2, '/live/news/manifest.mpd', true);
  sample(v2, window.samples.dash);
  return true;
})()
""".replace("__BITS__", str(BITS))
    .replace("__BLOCK__", str(BLOCK))
    .replace("__HALF__", str(BLOCK // 2))
)
_PLAYED = (
    "['hls', 'dash'].every(k => { const s = window.samples[k]; "
    "return s.length > 0 && s[s.length - 1][0] - s[0][0] >= 5; })"
)


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium")
def test_mc9_hls_js_and_dash_js_play_the_live_feed_through_the_edge_cache(tmp_path: Path) -> None:
    sf = start_live(tmp_path, FLAME_PORT_SRT="off")
    cache, cache_url = start_cache(tmp_path, sf.url)
    # Long enough that both players, which start at the live edge whenever they are loaded,
    # still have 5 s of feed ahead (16 s ran out once); stopped in `finally` anyway.
    cam = camera(sf.rtmp_url(NEWS_KEY), 60)
    chrome = Chrome(tmp_path / "profile")
    try:
        sf.wait("two segments", lambda d: (d["feeds"][0]["current"] or {}).get("segments", 0) >= 2)
        chrome.navigate(f"{cache_url}/health")  # same origin as the stream: no CORS involved
        chrome.eval(PLAYERS.joinpath("hls.min.js").read_text())
        chrome.eval(PLAYERS.joinpath("dash.all.min.js").read_text())
        assert chrome.eval("Hls.isSupported()")
        assert chrome.eval(_WATCH)
        chrome.wait(_PLAYED, timeout=30)
        samples = chrome.eval("window.samples")
        assert chrome.eval("window.errors") == []
        for player, frames in samples.items():
            latencies = [ms for _, ms in frames[len(frames) // 3 :]]  # once playback settled
            median = statistics.median(latencies)
            print(f"{player} glass-to-glass via the cache: median {median:.0f} ms, "
                  f"min {min(latencies)} ms, max {max(latencies)} ms, {len(frames)} frames")  # fmt: skip
            assert 0 < median < BROWSER_BOUND_MS, (player, latencies[:20])
            assert frames[-1][0] - frames[0][0] >= 5  # played for real, not a frozen frame
    finally:
        chrome.close()
        stop(cam)
        assert cache.stop() == 0
        assert sf.proc.stop() == 0
