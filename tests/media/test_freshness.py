"""What the cache may store and for how long (RFC 9111 as the edge cache applies it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flame.media.freshness import (
    MAX_TAG_LEN,
    MAX_TAGS,
    lifetime,
    parse_cache_control,
    stale_windows,
    storable,
    surrogate_keys,
    vary_names,
)


def ttl(status: int, header: str | None) -> float:
    return lifetime(status, parse_cache_control(header), default_ttl=10.0, negative_ttl=2.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 10.0),  # no directive: the cache's default
        ("public, max-age=31536000, immutable", 31536000.0),
        ("max-age=60, s-maxage=5", 5.0),  # s-maxage is for shared caches like us
        ('max-age="7"', 7.0),
        ("max-age=soon", 0.0),  # an invalid delta-seconds is stale
        ("no-cache, max-age=60", 0.0),  # stored, revalidated on every use
        ("MAX-AGE=3", 3.0),
    ],
)
def test_lifetimes(header: str | None, seconds: float) -> None:
    assert ttl(200, header) == seconds


def test_negative_answers_are_kept_briefly() -> None:
    assert ttl(404, "max-age=600") == 2.0
    assert ttl(410, None) == 2.0
    assert ttl(404, "max-age=1") == 1.0


@pytest.mark.parametrize(
    ("status", "header", "ok"),
    [
        (200, "public, max-age=5", True),
        (200, "no-store", False),
        (200, "private, max-age=60", False),
        (404, None, True),
        (206, None, False),  # partial answers are never stored (we fetch whole objects)
        (500, None, False),
    ],
)
def test_what_may_be_stored(status: int, header: str | None, ok: bool) -> None:
    assert storable(status, parse_cache_control(header)) is ok


# -- RFC 5861, Vary and tags (issue 17 item 4) -------------------------------------------------


def windows(header: str | None) -> tuple[float, float]:
    w = stale_windows(parse_cache_control(header), default_if_error=600.0)
    return (w.while_revalidate, w.if_error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (0.0, 600.0)),  # nothing said: our default covers errors, no SWR
        ("max-age=2, stale-while-revalidate=30", (30.0, 600.0)),
        ("max-age=2, stale-if-error=5", (0.0, 5.0)),
        ("max-age=2, stale-while-revalidate=x", (0.0, 600.0)),  # invalid: ignored
        ("max-age=2, must-revalidate, stale-while-revalidate=30", (0.0, 0.0)),
        ("proxy-revalidate, stale-if-error=60", (0.0, 0.0)),
        ("s-maxage=5", (0.0, 0.0)),  # s-maxage implies proxy-revalidate: no default window
        ("s-maxage=5, stale-if-error=9, stale-while-revalidate=3", (3.0, 9.0)),
    ],
)
def test_stale_windows(header: str | None, expected: tuple[float, float]) -> None:
    assert windows(header) == expected


def test_vary_star_is_never_stored() -> None:
    assert not storable(200, {}, "Accept-Language, *")
    assert storable(200, {}, "Accept-Language")


@pytest.mark.parametrize(
    ("header", "names"),
    [
        (None, ()),
        ("Accept-Language", ("accept-language",)),
        ("accept-encoding", ()),  # we always fetch identity: not a key
        ("X-Device, Accept-Language, x-device", ("accept-language", "x-device")),
        ("bad header, , Accept", ("accept",)),  # not a field name: dropped
    ],
)
def test_vary_names(header: str | None, names: tuple[str, ...]) -> None:
    assert vary_names(header) == names


def test_surrogate_keys_are_bounded() -> None:
    assert surrogate_keys("a  b a", "c, b,,d") == ("a", "b", "c", "d")
    many = " ".join(f"t{i}" for i in range(100))
    assert len(surrogate_keys(many, None)) == MAX_TAGS
    assert surrogate_keys("x" * (MAX_TAG_LEN + 1), None) == ()


@given(st.text(max_size=200), st.text(max_size=200))
def test_parsers_take_any_header_text(cc: str, vary: str) -> None:
    directives = parse_cache_control(cc)
    swr, sie = stale_windows(directives, default_if_error=1.0)
    assert swr >= 0
    assert sie >= 0
    assert lifetime(200, directives, default_ttl=1.0, negative_ttl=1.0) >= 0
    assert all(n == n.lower() and n != "accept-encoding" for n in vary_names(vary))
    assert len(surrogate_keys(vary, cc)) <= MAX_TAGS
