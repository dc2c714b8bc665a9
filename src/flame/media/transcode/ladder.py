"""A transcoding job's request: its source, its ladder of rungs, its codec; and the one ffmpeg
command that encodes every rung once and packages the fragments for HLS and DASH together.

`parse_job` never trusts its input: every field is checked, bounded and reported with its
path (``rungs[2].bitrate``) in a 422. `ladder_argv` builds the command from a checked
`JobSpec` and the probed source only, never from strings the caller wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flame.media.content.errors import Invalid

__all__ = [
    "CODECS",
    "PRESETS",
    "SOURCE_FORMATS",
    "Codec",
    "JobLimits",
    "JobSpec",
    "Rung",
    "Source",
    "ladder_argv",
    "package_argv",
    "parse_bitrate",
    "parse_job",
]


@dataclass(frozen=True)
class Codec:
    name: str
    encoder: str
    tag: str | None  # the sample entry HLS players want (hvc1, not hev1, for HEVC)


CODECS: Final = {
    "h264": Codec("h264", "libx264", "avc1"),
    "hevc": Codec("hevc", "libx265", "hvc1"),
    "av1": Codec("av1", "libsvtav1", None),
}
PRESETS: Final = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
# SVT-AV1 counts presets 0 (slowest) to 13; the same names map onto its fast half.
_SVT_PRESET: Final = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9,
                      "fast": 8, "medium": 7, "slow": 5}  # fmt: skip
# Demuxers a source may be read with: plain media files. Playlist and concat demuxers (hls,
# concat, image2...) would let a crafted file name other local files as its input.
SOURCE_FORMATS: Final = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi,flv,mxf,mpeg,ivf,y4m"

_BITRATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|b)?", re.ASCII)
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_RUNG_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)


@dataclass(frozen=True)
class JobLimits:
    max_rungs: int = 6
    max_height: int = 2160
    min_bitrate: int = 50_000
    max_bitrate: int = 40_000_000


@dataclass(frozen=True)
class Rung:
    """One rendition: a height (None: the source's, i.e. transrating only) and a bitrate."""

    name: str
    bitrate: int  # bits/s, the encoder's target (maxrate 1.1x, buffer 2x)
    height: int | None = None


@dataclass(frozen=True)
class Source:
    url: str | None = None
    path: str | None = None  # a file uploaded to this SF (`PUT /v1/sources/{name}`)
    token: str | None = field(default=None, repr=False)  # sent to `url`, never stored


@dataclass(frozen=True)
class JobSpec:
    source: Source
    rungs: tuple[Rung, ...]
    codec: str = "h264"
    preset: str = "veryfast"
    segment_s: float = 2.0
    audio_bitrate: int = 128_000
    vmaf: bool = True
    vmaf_subsample: int = 1
    # A packaging job: existing renditions, packaged without re-encoding (then `rungs` and
    # `source` are derived from them and nothing is scored).
    renditions: tuple[Source, ...] = ()

    @property
    def kind(self) -> str:
        return "package" if self.renditions else "transcode"

    def public(self) -> dict[str, Any]:
        """The spec as the job shows it: the source token is never echoed or stored."""
        if self.renditions:
            return {
                "kind": "package",
                "renditions": [{"url": r.url, "path": r.path} for r in self.renditions],
                "segment_s": self.segment_s,
            }
        return {
            "kind": "transcode",
            "source": {"url": self.source.url, "path": self.source.path},
            "rungs": [
                {"name": r.name, "height": r.height, "bitrate": r.bitrate} for r in self.rungs
            ],
            "codec": self.codec,
            "preset": self.preset,
            "segment_s": self.segment_s,
            "audio_bitrate": self.audio_bitrate,
            "vmaf": self.vmaf,
            "vmaf_subsample": self.vmaf_subsample,
        }


def _fail(path: str, message: str) -> Invalid:
    return Invalid(f"{path}: {message}", code="invalid_job", path=path)


def parse_bitrate(value: Any, path: str = "bitrate") -> int:
    """``800000``, ``"800k"``, ``"2.5M"``, ``"800kbps"`` -> bits/s."""
    if isinstance(value, bool):
        raise _fail(path, "a bitrate is a number of bits/s or a string like '800k'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 24:
        m = _BITRATE.fullmatch(value.strip())
        if m:
            scale = {"": 1, "k": 1_000, "m": 1_000_000}[m[2].lower()]
            return int(float(m[1]) * scale)
    raise _fail(path, f"{str(value)[:40]!r} is not a bitrate (800000, '800k', '2.5M')")


def _int(doc: dict[str, Any], key: str, path: str, lo: int, hi: int, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(f"{path}{key}", f"an integer from {lo} to {hi}")
    return value


def _source(doc: Any, where: str = "source") -> Source:
    if not isinstance(doc, dict) or set(doc) - {"url", "path", "token"}:
        raise _fail(where, 'send {"url": ..., "token"?: ...} or {"path": "<uploaded name>"}')
    url, path, token = doc.get("url"), doc.get("path"), doc.get("token")
    if (url is None) == (path is None):
        raise _fail(where, "give exactly one of url and path")
    if url is not None and (
        not isinstance(url, str) or len(url) > 2048 or not re.match(r"https?://", url)
    ):
        raise _fail(f"{where}.url", "an http:// or https:// URL of at most 2048 characters")
    if path is not None and (not isinstance(path, str) or not _SOURCE_NAME.fullmatch(path)):
        raise _fail(f"{where}.path", "the name of an uploaded source ([A-Za-z0-9._-], no '/')")
    if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 4096):
        raise _fail(f"{where}.token", "a bearer token string")
    if token is not None and url is None:
        raise _fail(f"{where}.token", "a token is only sent with a url")
    return Source(url=url, path=path, token=token)


def _rung(doc: Any, i: int, limits: JobLimits) -> Rung:
    path = f"rungs[{i}]"
    if not isinstance(doc, dict) or set(doc) - {"name", "height", "bitrate"}:
        raise _fail(path, 'each rung is {"height"?: int, "bitrate": "800k", "name"?: str}')
    if "bitrate" not in doc:
        raise _fail(f"{path}.bitrate", "required")
    bitrate = parse_bitrate(doc["bitrate"], f"{path}.bitrate")
    if not limits.min_bitrate <= bitrate <= limits.max_bitrate:
        raise _fail(f"{path}.bitrate",
                    f"from {limits.min_bitrate} to {limits.max_bitrate} bits/s")  # fmt: skip
    height = doc.get("height")
    if height is not None:
        if isinstance(height, bool) or not isinstance(height, int):
            raise _fail(f"{path}.height", "an integer (or null: the source's height)")
        if not 64 <= height <= limits.max_height or height % 2:
            raise _fail(f"{path}.height", f"an even number from 64 to {limits.max_height}")
    name = doc.get("name") or (f"{height}p-{bitrate // 1000}k" if height else f"{bitrate // 1000}k")
    if not isinstance(name, str) or not _RUNG_NAME.fullmatch(name):
        raise _fail(f"{path}.name", "lower-case letters, digits, '-' and '_', 32 at most")
    return Rung(name=name, bitrate=bitrate, height=height)


def parse_job(doc: Any, limits: JobLimits | None = None) -> JobSpec:
    """A checked `JobSpec` from a request body, or `Invalid` (422) naming the bad field."""
    lim = limits or JobLimits()
    known = {"source", "rungs", "ladder", "codec", "preset", "segment_s", "audio_bitrate",
             "vmaf", "vmaf_subsample"}  # fmt: skip
    if not isinstance(doc, dict):
        raise _fail("$", "send a JSON object")
    if "renditions" in doc:
        return _package_job(doc, lim)
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _fail(unknown[0], "unknown field")
    rungs_doc = doc.get("rungs", doc.get("ladder"))
    if not isinstance(rungs_doc, list) or not 1 <= len(rungs_doc) <= lim.max_rungs:
        raise _fail("rungs", f"a list of 1 to {lim.max_rungs} rungs")
    rungs = tuple(_rung(r, i, lim) for i, r in enumerate(rungs_doc))
    if len({r.name for r in rungs}) != len(rungs):
        raise _fail("rungs", "two rungs have the same name")
    if len({(r.height, r.bitrate) for r in rungs}) != len(rungs):
        raise _fail("rungs", "two rungs have the same height and bitrate")
    codec = doc.get("codec", "h264")
    if codec not in CODECS:
        raise _fail("codec", f"one of {', '.join(CODECS)}")
    preset = doc.get("preset", "veryfast")
    if preset not in PRESETS:
        raise _fail("preset", f"one of {', '.join(PRESETS)}")
    seg = doc.get("segment_s", 2.0)
    if isinstance(seg, bool) or not isinstance(seg, int | float) or not 1.0 <= seg <= 10.0:
        raise _fail("segment_s", "a number of seconds from 1 to 10")
    audio = parse_bitrate(doc.get("audio_bitrate", 128_000), "audio_bitrate")
    if not 32_000 <= audio <= 512_000:
        raise _fail("audio_bitrate", "from 32000 to 512000 bits/s")
    vmaf = doc.get("vmaf", True)
    if not isinstance(vmaf, bool):
        raise _fail("vmaf", "true or false")
    return JobSpec(
        source=_source(doc.get("source")),
        rungs=rungs,
        codec=str(codec),
        preset=str(preset),
        segment_s=float(seg),
        audio_bitrate=audio,
        vmaf=vmaf,
        vmaf_subsample=_int(doc, "vmaf_subsample", "", 1, 100, 1),
    )


def _package_job(doc: dict[str, Any], lim: JobLimits) -> JobSpec:
    unknown = sorted(set(doc) - {"renditions", "segment_s"})
    if unknown:
        raise _fail(unknown[0], "not a field of a packaging job (renditions, segment_s)")
    items = doc["renditions"]
    if not isinstance(items, list) or not 1 <= len(items) <= lim.max_rungs:
        raise _fail("renditions", f"a list of 1 to {lim.max_rungs} sources")
    renditions = tuple(_source(r, f"renditions[{i}]") for i, r in enumerate(items))
    seg = doc.get("segment_s", 2.0)
    if isinstance(seg, bool) or not isinstance(seg, int | float) or not 1.0 <= seg <= 10.0:
        raise _fail("segment_s", "a number of seconds from 1 to 10")
    return JobSpec(source=renditions[0], rungs=(), segment_s=float(seg), vmaf=False,
                   renditions=renditions)  # fmt: skip


def _gop(fps: float, segment_s: float) -> int:
    return max(1, round(fps * segment_s))


def _video_options(spec: JobSpec, fps: float, threads: int) -> list[str]:
    codec = CODECS[spec.codec]
    gop = _gop(fps, spec.segment_s)
    argv = ["-c:v", codec.encoder, "-pix_fmt", "yuv420p"]
    if codec.name == "h264":
        # A closed GOP of exactly one segment: every segment starts with an IDR frame, so the
        # renditions switch at any segment boundary.
        argv += ["-preset", spec.preset, "-g", str(gop), "-keyint_min", str(gop),
                 "-sc_threshold", "0", "-threads", str(threads)]  # fmt: skip
    elif codec.name == "hevc":
        argv += ["-preset", spec.preset, "-x265-params",
                 f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:pools={threads}:"
                 "log-level=error"]  # fmt: skip
    else:
        argv += ["-preset", str(_SVT_PRESET[spec.preset]), "-g", str(gop),
                 "-svtav1-params", f"lp={threads}"]  # fmt: skip
    if codec.tag:
        argv += ["-tag:v", codec.tag]
    return argv


def _dash_muxer(segment_s: float, has_audio: bool, manifest: Path) -> list[str]:
    sets = "id=0,streams=v id=1,streams=a" if has_audio else "id=0,streams=v"
    return [
        "-f", "dash", "-seg_duration", f"{segment_s:g}", "-use_template", "1",
        "-use_timeline", "0", "-hls_playlist", "1", "-hls_master_name", "master.m3u8",
        "-adaptation_sets", sets,
        "-init_seg_name", "init-$RepresentationID$.$ext$",
        "-media_seg_name", "seg-$RepresentationID$-$Number%05d$.$ext$",
        str(manifest),
    ]  # fmt: skip


def ladder_argv(
    ffmpeg: str,
    source: Path,
    out_dir: Path,
    spec: JobSpec,
    *,
    heights: list[int],
    fps: float,
    has_audio: bool,
    threads: int = 2,
) -> list[str]:
    """One decode, one scaler per rung, one encoder per rung, all packaged together by ffmpeg's
    DASH muxer with ``hls_playlist``: CMAF fragments under an MPD and HLS playlists.
    `heights` are the output heights (a transrating rung's is the source's)."""
    n = len(spec.rungs)
    chains = [f"[0:v:0]split={n}" + "".join(f"[s{i}]" for i in range(n))] if n > 1 else []
    for i, height in enumerate(heights):
        src = f"[s{i}]" if n > 1 else "[0:v:0]"
        chains.append(f"{src}scale=-2:{height}:flags=bicubic,format=yuv420p[o{i}]")
    argv = [
        ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
        "-progress", "pipe:1", "-nostats",
        "-protocol_whitelist", "file", "-format_whitelist", SOURCE_FORMATS,
        "-i", str(source), "-filter_complex", ";".join(chains),
    ]  # fmt: skip
    for i in range(n):
        argv += ["-map", f"[o{i}]"]
    if has_audio:
        argv += ["-map", "0:a:0"]
    argv += _video_options(spec, fps, threads)
    for i, rung in enumerate(spec.rungs):
        argv += [f"-b:v:{i}", str(rung.bitrate), f"-bufsize:v:{i}", str(rung.bitrate * 2)]
        if spec.codec != "av1":  # SVT-AV1 refuses a maxrate in its VBR mode
            argv += [f"-maxrate:v:{i}", str(int(rung.bitrate * 1.1))]
    if has_audio:
        argv += ["-c:a", "aac", "-b:a", str(spec.audio_bitrate), "-ac", "2"]
    return argv + _dash_muxer(spec.segment_s, has_audio, out_dir / "manifest.mpd")


def package_argv(
    ffmpeg: str,
    renditions: list[Path],
    out_dir: Path,
    *,
    segment_s: float,
    audio_from: Path | None,
) -> list[str]:
    """Package existing renditions (no re-encoding) into the same CMAF HLS + DASH layout. The
    renditions' keyframes must already fall on the segment boundaries."""
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
            "-progress", "pipe:1", "-nostats",
            "-protocol_whitelist", "file", "-format_whitelist", SOURCE_FORMATS]  # fmt: skip
    for path in renditions:
        argv += ["-i", str(path)]
    if audio_from is not None:
        argv += ["-i", str(audio_from)]
    for i in range(len(renditions)):
        argv += ["-map", f"{i}:v:0"]
    if audio_from is not None:
        argv += ["-map", f"{len(renditions)}:a:0"]
    argv += ["-c", "copy"]
    return argv + _dash_muxer(segment_s, audio_from is not None, out_dir / "manifest.mpd")
