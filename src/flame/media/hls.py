"""The demo's HLS test stream, generated once with the ffmpeg of the imageio-ffmpeg wheel.

One ffmpeg run encodes `testsrc2` video and a sine tone into every rendition at once (split +
scale, `var_stream_map`), with a key frame every segment so that each segment starts cleanly.
The stream lands in ``<root>/hls-<key>/``, where the key hashes the `StreamSpec`: a changed
spec makes a new directory, an unchanged one is reused.

Concurrent first starts (several SFEs on one host) are safe twice over: an exclusive lock file
makes the others wait instead of encoding the same thing again, and the stream is written into
a temporary directory that is renamed into place only after ffmpeg succeeded and the
`.complete` marker was written; a crash leaves a temporary directory, never a half stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from flame.media.errors import StreamError

__all__ = ["COMPLETE_MARKER", "Rendition", "StreamSpec", "default_media_dir", "ensure_stream"]

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
_LAYOUT_VERSION = 1  # bump when the layout of the output changes


@dataclass(frozen=True, slots=True)
class Rendition:
    name: str
    width: int
    height: int
    video_kbps: int


@dataclass(frozen=True, slots=True)
class StreamSpec:
    duration_s: int = 8
    segment_s: int = 2
    fps: int = 25
    audio_kbps: int = 64
    segment_type: Literal["mpegts", "fmp4"] = "mpegts"
    renditions: tuple[Rendition, ...] = field(
        default=(Rendition("360p", 640, 360, 800), Rendition("180p", 320, 180, 300))
    )

    def key(self) -> str:
        doc = json.dumps({"v": _LAYOUT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def default_media_dir() -> Path:
    """``$FLAME_MEDIA_DIR``, else ``$XDG_CACHE_HOME/flame/media`` (``~/.cache/flame/media``)."""
    env = os.environ.get("FLAME_MEDIA_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flame" / "media"


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415 - first start only
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise StreamError("imageio-ffmpeg is not installed: pip install imageio-ffmpeg") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ensure_stream(root: Path, spec: StreamSpec | None = None) -> Path:
    """The directory of the stream for `spec` under `root`, generating it on first use."""
    spec = spec or StreamSpec()
    final = root / f"hls-{spec.key()}"
    if (final / COMPLETE_MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".hls-{spec.key()}.lock"):
        if (final / COMPLETE_MARKER).is_file():
            return final  # another process generated it while we waited
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-hls-{spec.key()}-", dir=root))
        try:
            started = time.monotonic()
            _encode(tmp, spec)
            elapsed = time.monotonic() - started
            _check_outputs(tmp, spec)
            marker = {"spec": asdict(spec), "generated_s": round(elapsed, 3)}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            _publish(tmp, final)
            log.info("generated the HLS test stream in %.2f s at %s", elapsed, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished stream into place, unless another process's is there already.

    The lock makes that rare, but a lock file on a shared or odd filesystem may not lock:
    rename(2) is the guarantee. A complete stream already in place is kept (it may be serving);
    a directory without the marker is a leftover and is replaced.
    """
    if final.is_dir() and not (final / COMPLETE_MARKER).is_file():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / COMPLETE_MARKER).is_file():
            raise StreamError(f"cannot move the generated stream to {final}") from None
        # another process won the race with an identical stream: ours is discarded


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ffmpeg_argv(out: Path, spec: StreamSpec) -> list[str]:
    n = len(spec.renditions)
    gop = spec.fps * spec.segment_s  # one key frame per segment: every segment starts clean
    first = spec.renditions[0]
    video = f"testsrc2=size={first.width}x{first.height}:rate={spec.fps}:duration={spec.duration_s}"
    audio = f"sine=frequency=440:sample_rate=48000:duration={spec.duration_s}"
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";"
    graph += ";".join(
        f"[s{i}]scale={r.width}:{r.height}[v{i}]" for i, r in enumerate(spec.renditions)
    )
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    argv += ["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio, "-filter_complex", graph]
    for i in range(n):
        argv += ["-map", f"[v{i}]"]
    for _ in range(n):
        argv += ["-map", "1:a"]
    # Two encoder threads: the stream is short, and under a process VIM memory limit every
    # thread's stack and lookahead counts, which x264's default (one per core, x1.5) multiplies.
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-pix_fmt", "yuv420p"]
    argv += ["-threads", "2", "-filter_threads", "1"]
    argv += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    for i, r in enumerate(spec.renditions):
        kbps = r.video_kbps
        argv += [f"-b:v:{i}", f"{kbps}k", f"-maxrate:v:{i}", f"{kbps * 11 // 10}k"]
        argv += [f"-bufsize:v:{i}", f"{kbps * 2}k"]
    argv += ["-c:a", "aac", "-b:a", f"{spec.audio_kbps}k", "-ac", "2"]
    ext = "ts" if spec.segment_type == "mpegts" else "m4s"
    argv += ["-f", "hls", "-hls_time", str(spec.segment_s), "-hls_playlist_type", "vod"]
    argv += ["-hls_segment_type", spec.segment_type, "-hls_flags", "independent_segments"]
    if spec.segment_type == "fmp4":
        argv += ["-hls_fmp4_init_filename", "init.mp4"]
    streams = " ".join(f"v:{i},a:{i},name:{r.name}" for i, r in enumerate(spec.renditions))
    argv += ["-master_pl_name", "master.m3u8", "-var_stream_map", streams]
    argv += [
        "-hls_segment_filename",
        str(out / "%v" / f"seg_%03d.{ext}"),
        str(out / "%v" / "index.m3u8"),
    ]
    return argv


def _encode(out: Path, spec: StreamSpec) -> None:
    argv = ffmpeg_argv(out, spec)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StreamError(f"cannot run ffmpeg: {exc}", ffmpeg=argv[0]) from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise StreamError(
            f"ffmpeg exited with {proc.returncode}: {' | '.join(tail) or 'no message'}",
            ffmpeg=argv[0],
        )


def _check_outputs(out: Path, spec: StreamSpec) -> None:
    missing = [str(p) for p in [out / "master.m3u8"] if not p.is_file()]
    for r in spec.renditions:
        playlist = out / r.name / "index.m3u8"
        if not playlist.is_file():
            missing.append(str(playlist))
    if missing:
        raise StreamError(f"ffmpeg finished but did not write {', '.join(missing)}")
