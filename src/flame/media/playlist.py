"""Reading HLS playlists (RFC 8216) far enough to check and navigate a VoD stream.

Master playlists give variants (`EXT-X-STREAM-INF` with BANDWIDTH, RESOLUTION, CODECS and the
URI on the next line); media playlists give segments (`EXTINF` duration + URI), the target
duration and whether `EXT-X-ENDLIST` closes them. A malformed playlist raises `PlaylistError`
naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MasterPlaylist",
    "MediaPlaylist",
    "PlaylistError",
    "Segment",
    "Variant",
    "parse_attributes",
    "parse_master",
    "parse_media",
]

# AttributeName=AttributeValue, the value quoted or not (RFC 8216 4.2).
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",\s]*)')


class PlaylistError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Variant:
    uri: str
    bandwidth: int
    resolution: tuple[int, int] | None
    codecs: str | None


@dataclass(frozen=True, slots=True)
class MasterPlaylist:
    variants: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class Segment:
    uri: str
    duration: float


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    target_duration: int
    segments: tuple[Segment, ...]
    ended: bool
    playlist_type: str | None

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)


def parse_attributes(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip('"') for m in _ATTR.finditer(text)}


def _lines(text: str) -> list[tuple[int, str]]:
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines or lines[0][1] != "#EXTM3U":
        raise PlaylistError("a playlist starts with #EXTM3U", lines[0][0] if lines else 1)
    return lines[1:]


def parse_master(text: str) -> MasterPlaylist:
    variants: list[Variant] = []
    pending: tuple[int, dict[str, str]] | None = None
    for n, line in _lines(text):
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = (n, parse_attributes(line.partition(":")[2]))
        elif line.startswith("#"):
            continue
        elif pending is not None:
            at, attrs = pending
            if "BANDWIDTH" not in attrs or not attrs["BANDWIDTH"].isdigit():
                raise PlaylistError("EXT-X-STREAM-INF needs an integer BANDWIDTH", at)
            res = attrs.get("RESOLUTION")
            resolution = None
            if res is not None:
                w, _, h = res.partition("x")
                if not (w.isdigit() and h.isdigit()):
                    raise PlaylistError(f"RESOLUTION {res!r} is not WxH", at)
                resolution = (int(w), int(h))
            variants.append(Variant(line, int(attrs["BANDWIDTH"]), resolution, attrs.get("CODECS")))
            pending = None
        else:
            raise PlaylistError(f"URI {line!r} follows no EXT-X-STREAM-INF", n)
    if pending is not None:
        raise PlaylistError("EXT-X-STREAM-INF without a URI", pending[0])
    if not variants:
        raise PlaylistError("a master playlist without variants", 1)
    return MasterPlaylist(tuple(variants))


def parse_media(text: str) -> MediaPlaylist:
    target: int | None = None
    segments: list[Segment] = []
    ended = False
    playlist_type: str | None = None
    duration: float | None = None
    for n, line in _lines(text):
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-TARGETDURATION":
            if not value.isdigit():
                raise PlaylistError("EXT-X-TARGETDURATION must be an integer", n)
            target = int(value)
        elif tag == "#EXTINF":
            try:
                duration = float(value.partition(",")[0])
            except ValueError:
                raise PlaylistError(f"EXTINF duration {value!r} is not a number", n) from None
        elif tag == "#EXT-X-ENDLIST":
            ended = True
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            playlist_type = value
        elif line.startswith("#"):
            continue
        elif duration is None:
            raise PlaylistError(f"segment {line!r} has no EXTINF", n)
        else:
            segments.append(Segment(line, duration))
            duration = None
    if target is None:
        raise PlaylistError("EXT-X-TARGETDURATION is missing", 1)
    for seg in segments:
        # RFC 8216 4.3.3.1: each EXTINF, rounded to an integer, is at most the target duration.
        if round(seg.duration) > target:
            raise PlaylistError(f"segment {seg.uri} is longer than the target duration", 1)
    return MediaPlaylist(target, tuple(segments), ended, playlist_type)
