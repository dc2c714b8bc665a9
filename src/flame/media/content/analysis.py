"""Media quality analysis (MC-2): what a file is, and how good it looks.

- `probe`: container, duration, bitrate, and per stream codec, profile, resolution, frame
  rate, pixel format, sample rate and channel layout, read with PyAV (FFmpeg's libraries;
  headers only, milliseconds). Without PyAV, the same is parsed from ``ffmpeg -i`` (there is
  no ffprobe in the imageio-ffmpeg wheel).
- `no_reference`: one decode of the file through ffmpeg's ``blockdetect``, ``blurdetect``,
  ``freezedetect`` and ``blackdetect`` video filters and ``silencedetect`` on the audio, for
  uploads without a source to compare with (prosumer content).
- `full_reference`: VMAF (model vmaf_v0.6.1, built into libvmaf), PSNR and SSIM of a file
  against its reference, with the bundled ffmpeg's ``libvmaf`` filter; the distorted video is
  scaled (bicubic) to the reference's resolution and frame rate first, as VMAF expects.

Every ffmpeg run is a subprocess with a time limit, killed when it passes it, its stderr read
as it comes (only the lines we parse are kept). ``python -m flame.media.content.analysis FILE
[--reference REF]`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from flame.media.errors import MediaError
from flame.media.hls import ffmpeg_exe

__all__ = [
    "AnalysisError",
    "Options",
    "analyse",
    "full_reference",
    "no_reference",
    "probe",
    "vmaf_argv",
]

log = logging.getLogger(__name__)


class AnalysisError(MediaError):
    code = "analysis_error"


@dataclass(frozen=True)
class Options:
    threads: int = 2
    vmaf_subsample: int = 1  # compute VMAF on every n-th frame (1: all)
    timeout_s: float = 3600.0
    probe_timeout_s: float = 30.0
    freeze_min_s: float = 2.0
    black_min_s: float = 0.5
    silence_min_s: float = 2.0


# -- probe -----------------------------------------------------------------------------------


def _rate(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(Fraction(value))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return round(f, 3) if f > 0 else None


def probe_pyav(source: str, timeout_s: float = 30.0) -> dict[str, Any]:
    import av  # noqa: PLC0415 - optional: the ffmpeg fallback below works without it

    try:
        container = av.open(source, timeout=timeout_s)
    except (av.FFmpegError, OSError) as exc:
        raise AnalysisError(f"cannot read the media: {exc}") from None
    with container:
        streams = []
        for s in container.streams:
            cc: Any = s.codec_context
            entry: dict[str, Any] = {
                "index": s.index,
                "type": s.type,
                "codec": cc.name if cc else None,
            }
            if cc is not None and cc.bit_rate:
                entry["bitrate"] = int(cc.bit_rate)
            if s.type == "video":
                entry.update(
                    width=cc.width,
                    height=cc.height,
                    fps=_rate(s.average_rate) or _rate(s.base_rate),
                    pix_fmt=cc.pix_fmt,
                    profile=cc.profile,
                    frames=int(s.frames) or None,
                )
            elif s.type == "audio":
                entry.update(
                    sample_rate=cc.sample_rate,
                    channels=cc.layout.nb_channels,
                    layout=cc.layout.name,
                    profile=cc.profile,
                )
            if s.duration is not None and s.time_base is not None:
                entry["duration_s"] = round(float(s.duration * s.time_base), 3)
            streams.append(entry)
        duration = container.duration / 1_000_000 if container.duration else None
        return _technical(
            container.format.name,
            round(duration, 3) if duration else None,
            int(container.bit_rate) if container.bit_rate else None,
            streams,
            "pyav",
        )


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?), .*?bitrate: (\d+) kb/s")
_INPUT = re.compile(r"Input #0, ([^ ]+), from")
_STREAM = re.compile(
    r"Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (Video|Audio|Subtitle|Data): (\w+)(?: \(([^)]*)\))?(.*)"
)


def probe_ffmpeg(source: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The fallback: parse what ``ffmpeg -i`` prints about its input."""
    import subprocess  # noqa: PLC0415

    try:
        done = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", source],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnalysisError(f"cannot run ffmpeg: {exc}") from None
    text = done.stderr
    fmt = _INPUT.search(text)
    if fmt is None:
        raise AnalysisError(f"cannot read the media: {text.strip().splitlines()[-1:]}")
    m = _DURATION.search(text)
    duration = bitrate = None
    if m:
        duration = round(int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]), 3)
        bitrate = int(m[4]) * 1000
    streams = []
    for sm in _STREAM.finditer(text):
        kind, rest = sm[2].lower(), sm[5]
        entry: dict[str, Any] = {"index": int(sm[1]), "type": kind, "codec": sm[3]}
        if sm[4]:
            entry["profile"] = sm[4]
        if kind == "video":
            res = re.search(r", (\d+)x(\d+)", rest)
            fps = re.search(r", ([\d.]+) fps", rest)
            pix = re.search(r", ((?:yuv|rgb|bgr|gbr|gray|nv|p0)\w*)", rest)
            if res:
                entry.update(width=int(res[1]), height=int(res[2]))
            entry["fps"] = float(fps[1]) if fps else None
            entry["pix_fmt"] = pix[1] if pix else None
        elif kind == "audio":
            hz = re.search(r", (\d+) Hz, ([^,]+)", rest)
            if hz:
                entry.update(sample_rate=int(hz[1]), layout=hz[2].strip())
        br = re.search(r", (\d+) kb/s", rest)
        if br:
            entry["bitrate"] = int(br[1]) * 1000
        streams.append(entry)
    return _technical(fmt[1], duration, bitrate, streams, "ffmpeg")


def _technical(
    container: str,
    duration: float | None,
    bitrate: int | None,
    streams: list[dict[str, Any]],
    how: str,
) -> dict[str, Any]:
    video = next((s for s in streams if s["type"] == "video"), None)
    audio = next((s for s in streams if s["type"] == "audio"), None)
    return {
        "container": container,
        "duration_s": duration,
        "bitrate": bitrate,
        "video": video,
        "audio": audio,
        "streams": streams,
        "probed_with": how,
    }


async def probe(source: str, options: Options | None = None) -> dict[str, Any]:
    opts = options or Options()
    try:
        import av  # noqa: F401, PLC0415
    except ImportError:
        return await asyncio.to_thread(probe_ffmpeg, source, opts.probe_timeout_s)
    return await asyncio.to_thread(probe_pyav, source, opts.probe_timeout_s)


# -- ffmpeg runs -----------------------------------------------------------------------------


async def _ffmpeg(
    argv: list[str], timeout_s: float, keep: re.Pattern[str] | None = None
) -> list[str]:
    """Run ffmpeg; returns the stderr lines matching `keep` (+ the last ones on failure)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    kept: list[str] = []
    tail: deque[str] = deque(maxlen=8)
    assert proc.stderr is not None

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip()
            tail.append(text)
            if keep is not None and keep.search(text):
                kept.append(text)

    try:
        await asyncio.wait_for(asyncio.gather(read(), proc.wait()), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise AnalysisError(f"ffmpeg ran past {timeout_s:g} s and was stopped") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise AnalysisError(
            f"ffmpeg exited with {proc.returncode}: {' | '.join(list(tail)[-3:]) or 'no message'}"
        )
    return kept


def _filter_path(path: Path) -> str:
    """A path as a filter option value (escaped for the filtergraph parser)."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


def no_reference_argv(source: str, meta: Path, options: Options, has_audio: bool) -> list[str]:
    vf = (
        f"blockdetect,blurdetect,freezedetect=n=-60dB:d={options.freeze_min_s:g},"
        f"blackdetect=d={options.black_min_s:g}:pix_th=0.10,"
        f"metadata=mode=print:file={_filter_path(meta)}"
    )
    argv = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "info",
        "-threads",
        str(options.threads),
    ]
    argv += ["-i", source, "-map", "0:v:0", "-vf", vf]
    if has_audio:
        argv += ["-map", "0:a:0", "-af", f"silencedetect=n=-50dB:d={options.silence_min_s:g}"]
    argv += ["-f", "null", "-"]
    return argv


_SILENCE = re.compile(r"silence_(start|end): ([-\d.]+)(?: \| silence_duration: ([\d.]+))?")


def _intervals(starts: list[float], ends: list[float], last: float) -> tuple[int, float]:
    total = 0.0
    for i, start in enumerate(starts):
        end = ends[i] if i < len(ends) else last
        total += max(0.0, end - start)
    return len(starts), round(total, 3)


def parse_frame_metadata(path: Path) -> dict[str, Any]:
    frames = 0
    last = 0.0
    sums = {"block": 0.0, "blur": 0.0}
    maxes = {"block": 0.0, "blur": 0.0}
    counts = {"block": 0, "blur": 0}
    freeze_starts: list[float] = []
    freeze_ends: list[float] = []
    black_starts: list[float] = []
    black_ends: list[float] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            text = raw.strip()
            if text.startswith("frame:"):
                frames += 1
                m = re.search(r"pts_time:([-\d.]+)", text)
                if m:
                    last = float(m[1])
                continue
            key, _, value = text.partition("=")
            try:
                number = float(value)
            except ValueError:
                continue
            if key in ("lavfi.block", "lavfi.blur"):
                name = key[6:]
                sums[name] += number
                counts[name] += 1
                maxes[name] = max(maxes[name], number)
            elif key == "lavfi.freezedetect.freeze_start":
                freeze_starts.append(number)
            elif key == "lavfi.freezedetect.freeze_end":
                freeze_ends.append(number)
            elif key == "lavfi.black_start":
                black_starts.append(number)
            elif key == "lavfi.black_end":
                black_ends.append(number)
    return {
        "frames": frames,
        "last_pts_s": last,
        "blockiness": _stat(sums["block"], counts["block"], maxes["block"]),
        "blur": _stat(sums["blur"], counts["blur"], maxes["blur"]),
        "freeze": _intervals(freeze_starts, freeze_ends, last),
        "black": _intervals(black_starts, black_ends, last),
    }


def _stat(total: float, count: int, peak: float) -> dict[str, float] | None:
    if not count:
        return None
    return {"mean": round(total / count, 4), "max": round(peak, 4)}


async def no_reference(
    source: str, technical: dict[str, Any], options: Options | None = None
) -> dict[str, Any]:
    opts = options or Options()
    if not technical.get("video"):
        return {"skipped": "no video stream"}
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="flame-nr-"))
    try:
        meta = tmp / "frames.txt"
        argv = no_reference_argv(source, meta, opts, bool(technical.get("audio")))
        lines = await _ffmpeg(argv, opts.timeout_s, _SILENCE)
        parsed = await asyncio.to_thread(parse_frame_metadata, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    duration = technical.get("duration_s") or parsed["last_pts_s"] or 0.0
    silences: list[float] = []
    for text in lines:
        m = _SILENCE.search(text)
        if m and m[1] == "end" and m[3]:
            silences.append(float(m[3]))
    out: dict[str, Any] = {
        "frames": parsed["frames"],
        "blockiness": parsed["blockiness"],
        "blur": parsed["blur"],
    }
    for name in ("freeze", "black"):
        count, seconds = parsed[name]
        out[name] = {
            "count": count,
            "seconds": seconds,
            "ratio": round(seconds / duration, 4) if duration else None,
        }
    if technical.get("audio"):
        out["silence"] = {"count": len(silences), "seconds": round(sum(silences), 3)}
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def vmaf_argv(
    distorted: str,
    reference: str,
    log_path: Path,
    *,
    width: int,
    height: int,
    fps: float | None,
    options: Options,
) -> list[str]:
    scale = f"scale={width}:{height}:flags=bicubic,format=yuv420p"
    if fps:
        scale += f",fps={fps:g}"
    graph = (
        f"[0:v:0]{scale},setpts=PTS-STARTPTS[dist];"
        f"[1:v:0]format=yuv420p{f',fps={fps:g}' if fps else ''},setpts=PTS-STARTPTS[ref];"
        f"[dist][ref]libvmaf=log_fmt=json:log_path={_filter_path(log_path)}"
        f":n_threads={options.threads}:n_subsample={options.vmaf_subsample}"
        ":feature=name=psnr|name=float_ssim"
    )
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
        "-i", distorted, "-i", reference, "-lavfi", graph, "-f", "null", "-",
    ]  # fmt: skip


async def full_reference(
    distorted: str, reference: str, ref_technical: dict[str, Any], options: Options | None = None
) -> dict[str, Any]:
    opts = options or Options()
    video = ref_technical.get("video")
    if not video or not video.get("width"):
        raise AnalysisError("the reference has no video stream")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="flame-vmaf-"))
    try:
        log_path = tmp / "vmaf.json"
        argv = vmaf_argv(
            distorted, reference, log_path,
            width=int(video["width"]), height=int(video["height"]), fps=video.get("fps"),
            options=opts,
        )  # fmt: skip
        await _ffmpeg(argv, opts.timeout_s)
        doc = json.loads(await asyncio.to_thread(log_path.read_text))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pooled = doc.get("pooled_metrics", {})

    def mean(name: str) -> float | None:
        value = pooled.get(name, {}).get("mean")
        return round(float(value), 4) if value is not None else None

    return {
        "vmaf": mean("vmaf"),
        "vmaf_min": round(float(pooled["vmaf"]["min"]), 4) if "vmaf" in pooled else None,
        "vmaf_harmonic_mean": round(float(pooled["vmaf"]["harmonic_mean"]), 4)
        if "vmaf" in pooled
        else None,
        "psnr_y": mean("psnr_y"),
        "ssim": mean("float_ssim"),
        "frames": len(doc.get("frames", [])),
        "model": "vmaf_v0.6.1",
        "compared_at": f"{video['width']}x{video['height']}",
        "subsample": opts.vmaf_subsample,
        "seconds": round(time.monotonic() - started, 3),
    }


async def analyse(
    source: str,
    *,
    reference: str | None = None,
    options: Options | None = None,
    nr: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(technical parameters, quality report) of `source`, against `reference` if given."""
    opts = options or Options()
    started = time.monotonic()
    technical = await probe(source, opts)
    quality: dict[str, Any] = {}
    if nr:
        quality["no_reference"] = await no_reference(source, technical, opts)
    if reference is not None and technical.get("video"):
        ref_technical = await probe(reference, opts)
        quality["full_reference"] = await full_reference(source, reference, ref_technical, opts)
    quality["seconds"] = round(time.monotonic() - started, 3)
    return technical, quality


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flame.media.content.analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("source", help="a file or URL")
    p.add_argument("--reference", help="its source, for VMAF/PSNR/SSIM")
    p.add_argument("--no-nr", action="store_true", help="skip the no-reference filters")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--subsample", type=int, default=1, help="VMAF on every n-th frame")
    args = p.parse_args(argv)
    opts = Options(threads=args.threads, vmaf_subsample=args.subsample)
    try:
        technical, quality = asyncio.run(
            analyse(args.source, reference=args.reference, options=opts, nr=not args.no_nr)
        )
    except MediaError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"technical": technical, "quality": quality}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
