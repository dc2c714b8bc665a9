"""The Range header parser (RFC 9110 14): valid -> the right slice, invalid -> ignored or 416."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.media.ranges import UNSATISFIABLE, ByteRange, content_range, parse_range

from .helpers import ServerThread

SIZES = st.integers(min_value=1, max_value=5000)
NUMS = st.integers(min_value=0, max_value=6000)


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[str, tuple[int | None, int | None]]:
    """A well-formed single byte-range-spec or suffix-range, and its two numbers."""
    kind = draw(st.sampled_from(["closed", "open", "suffix"]))
    if kind == "closed":
        first = draw(NUMS)
        last = draw(st.integers(min_value=first, max_value=first + 6000))
        return f"{first}-{last}", (first, last)
    if kind == "open":
        first = draw(NUMS)
        return f"{first}-", (first, None)
    suffix = draw(NUMS)
    return f"-{suffix}", (None, suffix)


def expected(numbers: tuple[int | None, int | None], size: int) -> object:
    """The oracle, written from the RFC's prose rather than from the parser."""
    first, second = numbers
    if first is None:  # suffix of `second` bytes
        assert second is not None
        if second == 0:
            return UNSATISFIABLE
        return range(max(0, size - second), size)
    if first >= size:
        return UNSATISFIABLE
    last = size - 1 if second is None else min(second, size - 1)
    return range(first, last + 1)


@given(
    spec=valid_specs(),
    size=SIZES,
    unit=st.sampled_from(["bytes", "BYTES", "Bytes"]),
    pad=st.sampled_from(["", " ", "\t", " ,", ", "]),
)
def test_valid_single_ranges_select_the_right_bytes(
    spec: tuple[str, tuple[int | None, int | None]], size: int, unit: str, pad: str
) -> None:
    text, numbers = spec
    got = parse_range(f"{unit}={pad}{text}{pad.replace(',', '')}", size)
    want = expected(numbers, size)
    if want is UNSATISFIABLE:
        assert got is UNSATISFIABLE
    else:
        assert isinstance(got, ByteRange)
        assert range(got.start, got.end + 1) == want
        body = bytes(i % 251 for i in range(size))
        assert body[got.slice()] == bytes(body[i] for i in want)


@given(header=st.text(max_size=60), size=st.integers(min_value=0, max_value=10**6))
def test_any_header_is_answered_never_raises(header: str, size: int) -> None:
    got = parse_range(header, size)
    assert got is None or got is UNSATISFIABLE or isinstance(got, ByteRange)
    if isinstance(got, ByteRange):
        assert 0 <= got.start <= got.end < size


@given(
    header=st.from_regex(r"\A(bytes|items)=[0-9 ,\-]{0,12}\Z", fullmatch=True),
    size=SIZES,
)
def test_range_shaped_noise_is_answered(header: str, size: int) -> None:
    got = parse_range(header, size)
    if isinstance(got, ByteRange):
        assert 0 <= got.start <= got.end < size
        assert header.lower().startswith("bytes")


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",  # last < first: invalid, ignored (not 416)
        "bytes=-",
        "bytes=abc",
        "bytes=1-2-3",
        "items=0-5",
        "bytes 0-5",
        "bytes=0-1,4-5",  # several ranges: we serve the whole representation
        "bytes=+1-2",
        "bytes=٣-٤",
        "",
    ],
)
def test_invalid_or_multiple_ranges_are_ignored(header: str) -> None:
    assert parse_range(header, 100) is None


def test_edges() -> None:
    assert parse_range("bytes=0-0", 1) == ByteRange(0, 0)
    assert parse_range("bytes=-1000", 10) == ByteRange(0, 9)
    assert parse_range("bytes=0-" + "9" * 5000, 10) == ByteRange(0, 9)  # beyond int()'s limit
    assert parse_range("bytes=" + "9" * 5000 + "-", 10) is UNSATISFIABLE
    assert parse_range("bytes=10-", 10) is UNSATISFIABLE
    assert parse_range("bytes=-0", 10) is UNSATISFIABLE
    assert parse_range("bytes=0-5", 0) is None  # an empty body is answered whole
    assert parse_range("bytes=,0-5,", 10) == ByteRange(0, 5)  # empty list elements are allowed
    assert content_range(ByteRange(2, 4), 10) == "bytes 2-4/10"
    assert content_range(UNSATISFIABLE, 10) == "bytes */10"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=valid_specs())
def test_the_origin_answers_ranges_over_http(
    origin: ServerThread, http: httpx.Client, spec: tuple[str, tuple[int | None, int | None]]
) -> None:
    """Through the real server: 206 with the right bytes and Content-Range, or 416."""
    text, numbers = spec
    body = bytes(range(256)) * 40
    r = http.get(f"{origin.url}/files/blob.bin", headers={"Range": f"bytes={text}"})
    want = expected(numbers, len(body))
    if want is UNSATISFIABLE:
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(body)}"
        assert r.json()["error"] == "range_not_satisfiable"
    else:
        assert isinstance(want, range)
        assert r.status_code == 206
        assert r.content == body[want.start : want.stop]
        assert r.headers["content-range"] == f"bytes {want.start}-{want.stop - 1}/{len(body)}"
