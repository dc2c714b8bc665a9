"""MC-7/8: a job's request is checked field by field before anything runs, and the one ffmpeg
command encodes each rung once with segment-aligned keyframes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.media.content.errors import Invalid
from flame.media.transcode.ladder import (
    SOURCE_FORMATS,
    JobLimits,
    ladder_argv,
    package_argv,
    parse_bitrate,
    parse_job,
)

SRC = {"path": "src.mp4"}


def job(**kw: Any) -> dict[str, Any]:
    return {"source": SRC, "rungs": [{"height": 360, "bitrate": "800k"}], **kw}


def test_bitrates_in_the_usual_spellings() -> None:
    assert parse_bitrate(800_000) == 800_000
    assert parse_bitrate("800k") == 800_000
    assert parse_bitrate("2.5M") == 2_500_000
    assert parse_bitrate("640kbps") == 640_000
    for bad in ("fast", "-1k", "1e9", True, None, [1], "9" * 30):
        with pytest.raises(Invalid):
            parse_bitrate(bad)


def test_a_ladder_with_a_transrating_rung_and_defaults() -> None:
    spec = parse_job(job(rungs=[{"height": 360, "bitrate": "800k"}, {"bitrate": "300k"}],
                         codec="hevc"))  # fmt: skip
    assert [(r.name, r.height, r.bitrate) for r in spec.rungs] == [
        ("360p-800k", 360, 800_000), ("300k", None, 300_000)]  # fmt: skip
    assert (spec.codec, spec.preset, spec.segment_s, spec.vmaf) == ("hevc", "veryfast", 2.0, True)
    assert spec.public()["source"] == {"url": None, "path": "src.mp4"}


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (job(rungs=[]), "rungs"),
        (job(rungs=[{"height": 361, "bitrate": "1M"}]), "rungs[0].height"),
        (job(rungs=[{"height": 9000, "bitrate": "1M"}]), "rungs[0].height"),
        (job(rungs=[{"height": 360}]), "rungs[0].bitrate"),
        (job(rungs=[{"height": 360, "bitrate": "1k"}]), "rungs[0].bitrate"),
        (job(rungs=[{"height": 360, "bitrate": "1M", "fps": 60}]), "rungs[0]"),
        (job(rungs=[{"bitrate": "1M"}, {"bitrate": "1000k"}]), "rungs"),
        (job(rungs=[{"bitrate": "1M", "name": "../x"}]), "rungs[0].name"),
        (job(codec="vp9"), "codec"),
        (job(preset="placebo"), "preset"),
        (job(segment_s=0.1), "segment_s"),
        (job(vmaf="yes"), "vmaf"),
        (job(extra=1), "extra"),
        (job(source={"url": "file:///etc/passwd"}), "source.url"),
        (job(source={"path": "../other/x.mp4"}), "source.path"),
        (job(source={"path": "a", "url": "http://x/"}), "source"),
        (job(source={"path": "a", "token": "t"}), "source.token"),
        ([], "$"),
    ],
)
def test_bad_fields_are_named(doc: Any, path: str) -> None:
    with pytest.raises(Invalid) as err:
        parse_job(doc)
    assert err.value.as_dict()["path"] == path
    assert err.value.http_status == 422


def test_the_ladder_limits_are_the_sfs() -> None:
    with pytest.raises(Invalid, match="1 to 2 rungs"):
        parse_job(job(rungs=[{"bitrate": f"{n}00k"} for n in (1, 2, 3)]), JobLimits(max_rungs=2))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(["source", "rungs", "codec", "preset", "segment_s", "vmaf",
                           "audio_bitrate", "vmaf_subsample", "ladder"])  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=6) | _json)
def test_any_json_is_a_spec_or_a_named_422(doc: Any) -> None:
    """Hostile bodies: parse_job raises nothing but Invalid, and what it accepts is bounded."""
    try:
        spec = parse_job(doc)
    except Invalid as exc:
        error = exc.as_dict()
        assert error["error"] == "invalid_job", error
        return
    assert 1 <= len(spec.rungs) <= JobLimits().max_rungs
    assert all(50_000 <= r.bitrate <= 40_000_000 for r in spec.rungs)


def test_one_decode_one_encoder_per_rung_keyframes_on_segment_boundaries() -> None:
    spec = parse_job(job(rungs=[{"height": 360, "bitrate": "800k"}, {"height": 180, "bitrate": 200000},
                                {"bitrate": "400k"}], segment_s=2))  # fmt: skip
    argv = ladder_argv("ffmpeg", Path("/s/in.mp4"), Path("/o"), spec, heights=[360, 180, 360],
                       fps=30.0, has_audio=True)  # fmt: skip
    assert argv.count("-i") == 1
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.startswith("[0:v:0]split=3[s0][s1][s2]")
    assert "[s1]scale=-2:180" in graph
    assert argv[argv.index("-g") + 1] == "60"  # 2 s at 30 fps: one closed GOP per segment
    assert argv[argv.index("-sc_threshold") + 1] == "0"
    assert argv[argv.index("-b:v:1") + 1] == "200000"
    assert argv[argv.index("-maxrate:v:2") + 1] == "440000"
    assert argv[argv.index("-format_whitelist") + 1] == SOURCE_FORMATS
    assert "hls" not in SOURCE_FORMATS.split(",")
    assert argv[argv.index("-protocol_whitelist") + 1] == "file"
    assert argv[argv.index("-f") + 1] == "dash"
    assert argv[argv.index("-hls_playlist") + 1] == "1"
    assert argv[-1] == "/o/manifest.mpd"
    hevc = ladder_argv("ffmpeg", Path("i"), Path("/o"), parse_job(job(codec="hevc")),
                       heights=[360], fps=25.0, has_audio=False)  # fmt: skip
    assert hevc[hevc.index("-tag:v") + 1] == "hvc1"
    assert "keyint=50:min-keyint=50:scenecut=0:open-gop=0" in hevc[hevc.index("-x265-params") + 1]
    assert "-map" in hevc
    assert "0:a:0" not in hevc
    av1 = ladder_argv("ffmpeg", Path("i"), Path("/o"), parse_job(job(codec="av1")),
                      heights=[360], fps=25.0, has_audio=False)  # fmt: skip
    assert av1[av1.index("-c:v") + 1] == "libsvtav1"
    assert not any(a.startswith("-maxrate") for a in av1)


def test_packaging_copies_streams() -> None:
    argv = package_argv("ffmpeg", [Path("a.mp4"), Path("b.mp4")], Path("/o"), segment_s=2,
                        audio_from=Path("a.mp4"))  # fmt: skip
    assert argv[argv.index("-c") + 1] == "copy"
    assert argv.count("-i") == 3
    assert argv[argv.index("2:a:0") - 1 : argv.index("2:a:0") + 1] == ["-map", "2:a:0"]
