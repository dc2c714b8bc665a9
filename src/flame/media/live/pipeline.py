"""The ffmpeg command of one live session, what it reports, and closing a window it left open.

One ffmpeg per session does contribution, live ladder and packaging: it takes the feed (RTMP
in listen mode on a private loopback port behind the RTMP front, or SRT in listener mode with
the feed's key as passphrase), decodes once, scales to every rung, encodes each with libx264
(``zerolatency``: no B-frames, no look-ahead; a keyframe at every segment boundary, so all
rungs are aligned) and AAC, and its DASH muxer writes CMAF segments once for both the MPD and
the HLS playlists (``-hls_playlist``) with a sliding window. Segment names carry the session
id, so a URL never names two different segments and segments may be cached as immutable.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path

from flame.common.atomicfile import atomic_write
from flame.media.live.config import LiveConfig

__all__ = [
    "MANIFEST",
    "MASTER",
    "close_window",
    "ladder_filter",
    "parse_progress",
    "session_argv",
    "srt_url",
]

MANIFEST = "manifest.mpd"
MASTER = "master.m3u8"
_EXTRA_WINDOW = 2  # segments kept on disk after leaving the window, for players a little behind


def srt_url(host: str, port: int, passphrase: str) -> str:
    # latency is in microseconds for ffmpeg's srt protocol; 120 ms is SRT's own default.
    return f"srt://{host}:{port}?mode=listener&passphrase={passphrase}&pbkeylen=16&latency=120000"


def ladder_filter(config: LiveConfig) -> str:
    n = len(config.ladder)
    outs = "".join(f"[s{i}]" for i in range(n))
    chains = [f"[0:v:0]split={n}{outs}"]
    for i, rung in enumerate(config.ladder):
        chains.append(f"[s{i}]scale=-2:{rung.height}:flags=bicubic,format=yuv420p[v{i}]")
    return ";".join(chains)


def session_argv(
    ffmpeg: str, config: LiveConfig, session: str, out_dir: Path, source: list[str]
) -> list[str]:
    """`source` is the input part (``-listen 1 -i rtmp://...`` or ``-i srt://...``)."""
    seg = config.segment_s
    argv = [
        ffmpeg, "-hide_banner", "-loglevel", "warning", "-nostats", "-nostdin",
        "-progress", "pipe:1", "-stats_period", "1",
        *source,
        "-filter_complex", ladder_filter(config),
    ]  # fmt: skip
    for i in range(len(config.ladder)):
        argv += ["-map", f"[v{i}]"]
    argv += ["-map", "0:a:0?"]
    argv += [
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "main",
        "-force_key_frames", f"expr:gte(t,n_forced*{seg})", "-sc_threshold", "0",
    ]  # fmt: skip
    for i, rung in enumerate(config.ladder):
        argv += [
            f"-b:v:{i}", f"{rung.kbps}k",
            f"-maxrate:v:{i}", f"{rung.kbps * 6 // 5}k",
            f"-bufsize:v:{i}", f"{rung.kbps * 2}k",
        ]  # fmt: skip
    argv += ["-c:a", "aac", "-b:a", "96k", "-ac", "2"]
    argv += [
        "-f", "dash",
        "-seg_duration", str(seg),
        "-window_size", str(config.window),
        "-extra_window_size", str(_EXTRA_WINDOW),
        "-remove_at_exit", "0",
        "-use_template", "1", "-use_timeline", "1",
        "-hls_playlist", "1", "-hls_master_name", MASTER,
        "-adaptation_sets", "id=0,streams=v id=1,streams=a",
        "-init_seg_name", f"{session}-init-$RepresentationID$.m4s",
        "-media_seg_name", f"{session}-chunk-$RepresentationID$-$Number%05d$.m4s",
        "-write_prft", "1",
    ]  # fmt: skip
    argv.append(str(out_dir / MANIFEST))
    if config.dvr:
        # The contribution as received, without re-encoding.
        argv += ["-map", "0", "-c", "copy", "-f", "mpegts", str(out_dir / "dvr.ts")]
    return argv


def parse_progress(block: Mapping[str, str]) -> dict[str, float]:
    """Numbers of one ``-progress`` block (``frame=``, ``fps=``, ``drop_frames=``...)."""
    out: dict[str, float] = {}
    for key in ("frame", "fps", "drop_frames", "dup_frames", "total_size", "out_time_us"):
        try:
            out[key] = float(block[key])
        except (KeyError, ValueError):
            continue
    speed = block.get("speed", "").rstrip("x").strip()
    with contextlib.suppress(ValueError):
        out["speed"] = float(speed)
    return out


_DYNAMIC = re.compile(r'type="dynamic"')
_UPDATE = re.compile(r'\s+minimumUpdatePeriod="[^"]*"')


def close_window(out_dir: Path) -> bool:
    """End the live window of a session whose ffmpeg died before writing its final manifests:
    ``#EXT-X-ENDLIST`` on every media playlist, the MPD turned static. True if anything changed.
    Files are replaced by rename, so a reader sees the old or the new one whole."""
    changed = False
    for playlist in sorted(out_dir.glob("media_*.m3u8")):
        text = playlist.read_text()
        if "#EXT-X-ENDLIST" not in text:
            _replace(playlist, text.rstrip("\n") + "\n#EXT-X-ENDLIST\n")
            changed = True
    mpd = out_dir / MANIFEST
    if mpd.exists():
        text = mpd.read_text()
        if _DYNAMIC.search(text):
            _replace(mpd, _UPDATE.sub("", _DYNAMIC.sub('type="static"', text)))
            changed = True
    return changed


def _replace(path: Path, text: str) -> None:
    atomic_write(path, text)
