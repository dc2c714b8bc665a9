"""The live SF's pure parts: reading the RTMP publish (property-tested against an encoder of
the chunk stream written here from the RTMP 1.0 spec), settings, the ffmpeg command, closing
a window an ffmpeg left open."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.common.errors import ConfigError
from flame.media.live.config import LiveConfig, parse_keys, parse_ladder
from flame.media.live.pipeline import close_window, parse_progress, session_argv
from flame.media.live.rtmp import HANDSHAKE_BYTES, MAX_SNIFF, PublishSniffer, RtmpRefused

KEY = "news-key-0123456789abcdef"


def amf_string(s: str) -> bytes:
    raw = s.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def amf_number(n: float) -> bytes:
    return b"\x00" + struct.pack(">d", n)


def command(name: str, tid: float, *rest: bytes) -> bytes:
    return amf_string(name) + amf_number(tid) + b"".join(rest)


def connect_body() -> bytes:
    obj = b"\x03" + struct.pack(">H", 3) + b"app" + amf_string("live")
    obj += struct.pack(">H", 5) + b"tcUrl" + amf_string("rtmp://h/live") + b"\x00\x00\x09"
    return command("connect", 1, obj)


def chunk(csid: int, type_id: int, body: bytes, size: int, ts: int) -> bytes:
    """One message as chunks: a type-0 header, then type-3 continuations."""

    def basic(fmt: int) -> bytes:
        if csid < 64:
            return bytes([fmt << 6 | csid])
        if csid < 320:
            return bytes([fmt << 6, csid - 64])
        return bytes([fmt << 6 | 1]) + struct.pack("<H", csid - 64)

    ext = ts >= 0xFFFFFF
    field = 0xFFFFFF if ext else ts
    extended = struct.pack(">I", ts) if ext else b""
    out = basic(0) + field.to_bytes(3, "big") + len(body).to_bytes(3, "big")
    out += bytes([type_id]) + struct.pack("<I", 0) + extended
    for i in range(0, max(len(body), 1), size):
        if i:
            out += basic(3) + extended
        out += body[i : i + size]
    return out


def client_bytes(name: str, size: int, csid: int, ts: int, amf3: bool) -> bytes:
    hs = b"\x03" + bytes(1536) + bytes(range(256)) * 6
    out = hs + chunk(2, 1, struct.pack(">I", size), 128, 0)  # Set Chunk Size, then at `size`
    out += chunk(3, 20, connect_body(), size, ts)
    out += chunk(3, 20, command("releaseStream", 2, b"\x05", amf_string(name)), size, ts)
    out += chunk(3, 20, command("createStream", 4, b"\x05"), size, ts)
    publish = command("publish", 5, b"\x05", amf_string(name), amf_string("live"))
    out += chunk(csid, 17 if amf3 else 20, (b"\x00" if amf3 else b"") + publish, size, ts)
    return out


@settings(max_examples=150, deadline=None)
@given(
    name=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80),
    size=st.integers(1, 5000),
    csid=st.integers(3, 65599),
    ts=st.sampled_from([0, 40, 0xFFFFFE, 0xFFFFFF, 0x1234567]),
    amf3=st.booleans(),
    cuts=st.lists(st.integers(1, 400), max_size=30),
)
def test_the_publish_name_is_read_however_the_stream_is_chunked_and_split(
    name: str, size: int, csid: int, ts: int, amf3: bool, cuts: list[int]
) -> None:
    data = client_bytes(name, size, csid, ts, amf3)
    sniffer = PublishSniffer()
    pos, found = 0, None
    for cut in [*cuts, len(data)]:
        found = sniffer.feed(data[pos : pos + cut])
        pos += cut
        if pos >= len(data):
            break
    if pos < len(data):
        found = sniffer.feed(data[pos:])
    assert found == name
    assert sniffer.commands[:2] == ["connect", "releaseStream"]


def test_nothing_is_admitted_before_the_publish_command() -> None:
    data = client_bytes(KEY, 4096, 8, 0, False)
    sniffer = PublishSniffer()
    assert sniffer.feed(data[:-1]) is None  # one byte short of the publish message
    assert sniffer.feed(data[-1:]) == KEY


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x06" + bytes(3072), "RTMP version 6"),
        (bytes([3]) + bytes(3072) + b"\x43\x00\x00\x00", "without a full header"),
        (bytes([3]) + bytes(3072) + chunk(3, 20, b"\x00" * 70_000, 128, 0)[:20],
         "message before publish"),
        (bytes([3]) + bytes(3072) + chunk(3, 20, b"\x02\x00\x07publish\x00", 128, 0),
         "truncated AMF0"),
    ],
)  # fmt: skip
def test_hostile_streams_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RtmpRefused, match=reason):
        PublishSniffer().feed(data)


def test_a_client_that_never_publishes_is_bounded() -> None:
    sniffer = PublishSniffer()
    sniffer.feed(bytes([3]) + bytes(HANDSHAKE_BYTES - 1))
    filler = chunk(3, 20, command("createStream", 4, b"\x05"), 128, 0)
    for _ in range((MAX_SNIFF - HANDSHAKE_BYTES) // len(filler) - 1):
        assert sniffer.feed(filler) is None
    with pytest.raises(RtmpRefused, match="no publish command"):
        sniffer.feed(filler * 4)


def test_keys_plain_and_digest_and_their_errors_never_echo_the_key() -> None:
    digest = hashlib.sha256(b"sport-key-0123456789abcdef").hexdigest()
    keys = parse_keys(f"news={KEY}, sport=sha256:{digest}")
    assert keys["news"].plain == KEY
    assert keys["sport"].plain is None
    assert keys["sport"].matches("sport-key-0123456789abcdef")
    assert not keys["news"].matches("news-key-0123456789abcdeX")
    assert KEY not in repr(keys)
    for bad in ("news=tiny-secret", "News=" + KEY, "news", f"a={KEY},a={KEY}", "",
                "x=a secret with spaces"):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            parse_keys(bad)
        assert "secret" not in err.value.message


def test_the_config_and_the_srt_feed() -> None:
    env = {"LIVE_KEYS": f"news={KEY}", "HOME": "/h", "MAX_FEEDS": "2", "LADDER": "180p,720p:2500k"}
    config = LiveConfig.from_env(env)
    assert config.srt_feed == "news"
    assert config.max_feeds == 2
    assert [(r.height, r.kbps) for r in config.ladder] == [(720, 2500), (180, 144)]
    assert config.data_dir == Path("/h/live-ingest")
    digest = "sha256:" + "0" * 64
    assert LiveConfig.from_env({"LIVE_KEYS": f"news={digest}"}).srt_feed is None
    with pytest.raises(ConfigError, match="SRT_FEED"):
        LiveConfig.from_env({"LIVE_KEYS": f"news={digest}", "SRT_FEED": "news"})
    for name, value in (("MAX_FEEDS", "0"), ("PLAYLIST_WINDOW", "x"), ("LADDER", "361p")):
        with pytest.raises(ConfigError, match=name):
            LiveConfig.from_env({"LIVE_KEYS": f"news={KEY}", name: value})
    with pytest.raises(ConfigError, match="twice"):
        parse_ladder("360p,360p:900k")


def test_the_command_aligns_keyframes_and_names_segments_by_session(tmp_path: Path) -> None:
    config = LiveConfig.from_env({"LIVE_KEYS": f"news={KEY}", "SEGMENT_SECONDS": "2",
                                  "PLAYLIST_WINDOW": "5", "RECORD_DVR": "true"})  # fmt: skip
    argv = session_argv("ffmpeg", config, "s1", tmp_path, ["-i", "x"])
    assert argv[argv.index("-force_key_frames") + 1] == "expr:gte(t,n_forced*2)"
    assert argv[argv.index("-window_size") + 1] == "5"
    assert argv[argv.index("-media_seg_name") + 1].startswith("s1-chunk-")
    assert argv[-1] == str(tmp_path / "dvr.ts")
    assert parse_progress({"fps": "25.0", "drop_frames": "3", "speed": "1.01x", "frame": "N/A"}) == {
        "fps": 25.0, "drop_frames": 3.0, "speed": 1.01}  # fmt: skip


def test_closing_a_window_left_open(tmp_path: Path) -> None:
    (tmp_path / "media_0.m3u8").write_text("#EXTM3U\n#EXTINF:1.0,\na.m4s\n")
    (tmp_path / "manifest.mpd").write_text('<MPD type="dynamic" minimumUpdatePeriod="PT1S">')
    assert close_window(tmp_path)
    assert (tmp_path / "media_0.m3u8").read_text().endswith("a.m4s\n#EXT-X-ENDLIST\n")
    assert (tmp_path / "manifest.mpd").read_text() == '<MPD type="static">'
    assert not close_window(tmp_path)  # idempotent
