"""The live ingest SF's settings, from the environment the process VIM gives it.

=================  =====================================================================
``LIVE_KEYS``      feeds and their stream keys: ``news=KEY,sport=sha256:HEX``. A plain key
                   (16-79 printable characters, no ``,=?/``) works for RTMP and SRT; a
                   ``sha256:`` digest only for RTMP (SRT needs the passphrase itself).
``MAX_FEEDS``      feeds live at once (default 4); more publishers are refused
``LADDER``         renditions, e.g. ``360p,180p`` or ``720p:2500k,360p:800k`` (default
                   ``360p,180p``; bitrates default from the height)
``SEGMENT_SECONDS``  segment (and GOP) duration, default 2
``PLAYLIST_WINDOW``  segments in the live window, default 6
``RECORD_DVR``     ``true``: the contribution is recorded as received (MPEG-TS) per session
``SRT_FEED``       the feed the SRT port takes (default: the first with a plain key)
``LIVE_DATA_DIR``  where sessions and recordings go (default ``$HOME/live-ingest``)
``CLMC_URL``, ``CLMC_DB``, ``CLMC_TOKEN``  measurements (none when ``CLMC_URL`` is unset)
``FLAME_PORT_API``, ``FLAME_PORT_RTMP``, ``FLAME_PORT_SRT``  ports (the VIM's names;
                   ``FLAME_PORT_SRT=off``: no SRT listener)
=================  =====================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flame.common.errors import ConfigError

__all__ = ["LiveConfig", "Rung", "StreamKey", "parse_keys", "parse_ladder"]

_FEED = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_KEY = re.compile(r"^[A-Za-z0-9._~!$&'()*+;:@-]{16,79}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_RUNG = re.compile(r"^(\d{2,4})p(?::(\d{2,6})k)?$")
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class StreamKey:
    feed: str
    digest: bytes  # sha256 of the key
    plain: str | None = field(default=None, repr=False)  # kept only when given plain (SRT)

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self.digest)


@dataclass(frozen=True, slots=True)
class Rung:
    height: int
    kbps: int

    @property
    def name(self) -> str:
        return f"{self.height}p"


def parse_keys(raw: str) -> dict[str, StreamKey]:
    feeds: dict[str, StreamKey] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        feed, eq, key = item.partition("=")
        feed = feed.strip()
        if not eq or not _FEED.match(feed):
            raise ConfigError(
                f"LIVE_KEYS: {feed!r} is not a feed name (a-z, 0-9, '-', at most 32)",
                variable="LIVE_KEYS",
            )
        if feed in feeds:
            raise ConfigError(f"LIVE_KEYS: feed {feed!r} is named twice", variable="LIVE_KEYS")
        if _DIGEST.match(key):
            feeds[feed] = StreamKey(feed, bytes.fromhex(key.removeprefix("sha256:")))
        elif _KEY.match(key):
            feeds[feed] = StreamKey(feed, hashlib.sha256(key.encode()).digest(), key)
        else:  # never echo the key itself
            raise ConfigError(
                f"LIVE_KEYS: the key of feed {feed!r} is not 16-79 characters of "
                "[A-Za-z0-9._~!$&'()*+;:@-] nor sha256:<64 hex>",
                variable="LIVE_KEYS",
            )
    if not feeds:
        raise ConfigError("LIVE_KEYS names no feed: feed=KEY,...", variable="LIVE_KEYS")
    return feeds


def _default_kbps(height: int) -> int:
    # Roughly 0.1 bit per pixel at 25 fps for H.264 (enough for a test pattern and talking heads).
    return max(100, int(height * height * 16 / 9 * 25 * 0.1 / 1000))


def parse_ladder(raw: str) -> tuple[Rung, ...]:
    rungs: list[Rung] = []
    for item in filter(None, (part.strip().lower() for part in raw.split(","))):
        m = _RUNG.match(item)
        if not m or not 90 <= int(m.group(1)) <= 2160 or int(m.group(1)) % 2:
            raise ConfigError(
                f"LADDER: {item!r} is not HEIGHTp[:KBPSk] (an even height 90-2160)",
                variable="LADDER",
            )
        height = int(m.group(1))
        rungs.append(Rung(height, int(m.group(2)) if m.group(2) else _default_kbps(height)))
    if not rungs or len(rungs) > 6:
        raise ConfigError("LADDER needs 1 to 6 renditions", variable="LADDER")
    if len({r.height for r in rungs}) != len(rungs):
        raise ConfigError("LADDER names a height twice", variable="LADDER")
    return tuple(sorted(rungs, key=lambda r: -r.height))


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number", variable=name) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range {low}-{high}", variable=name)
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return _int(env, name, default, 0, 65535)


@dataclass(frozen=True, slots=True)
class LiveConfig:
    keys: dict[str, StreamKey]
    ladder: tuple[Rung, ...]
    max_feeds: int = 4
    segment_s: int = 2
    window: int = 6
    dvr: bool = False
    srt_feed: str | None = None
    data_dir: Path = Path("live-ingest")
    host: str = "127.0.0.1"
    api_port: int = 8090
    rtmp_port: int = 1935
    srt_port: int | None = 9000
    clmc_url: str | None = None
    clmc_db: str | None = None
    clmc_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LiveConfig:
        env = os.environ if env is None else env
        keys = parse_keys(env.get("LIVE_KEYS", ""))
        srt_feed = env.get("SRT_FEED", "").strip() or next(
            (k.feed for k in keys.values() if k.plain is not None), None
        )
        if srt_feed is not None and (srt_feed not in keys or keys[srt_feed].plain is None):
            raise ConfigError(
                f"SRT_FEED={srt_feed!r} needs a feed of LIVE_KEYS with a plain key "
                "(the SRT passphrase)",
                variable="SRT_FEED",
            )
        home = Path(env.get("HOME") or ".")
        srt_raw = env.get("FLAME_PORT_SRT", "").strip()
        return cls(
            keys=keys,
            ladder=parse_ladder(env.get("LADDER", "") or "360p,180p"),
            max_feeds=_int(env, "MAX_FEEDS", 4, 1, 64),
            segment_s=_int(env, "SEGMENT_SECONDS", 2, 1, 10),
            window=_int(env, "PLAYLIST_WINDOW", 6, 3, 60),
            dvr=env.get("RECORD_DVR", "").strip().lower() in _TRUE,
            srt_feed=None if srt_raw == "off" else srt_feed,
            data_dir=Path(env.get("LIVE_DATA_DIR") or home / "live-ingest"),
            host=env.get("FLAME_HOST", "127.0.0.1") or "127.0.0.1",
            api_port=_port(env, "FLAME_PORT_API", _port(env, "FLAME_PORT", 8090)),
            rtmp_port=_port(env, "FLAME_PORT_RTMP", 1935),
            srt_port=None if srt_raw == "off" else _port(env, "FLAME_PORT_SRT", 9000),
            clmc_url=env.get("CLMC_URL") or None,
            clmc_db=env.get("CLMC_DB") or env.get("FLAME_TENANT") or None,
            clmc_token=env.get("CLMC_TOKEN") or None,
        )

    def feed_for(self, presented: str) -> StreamKey | None:
        """The feed whose key was presented (every key is compared: no early exit on a match)."""
        found = None
        for key in self.keys.values():
            if key.matches(presented):
                found = key
        return found
