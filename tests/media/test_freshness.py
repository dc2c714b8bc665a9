"""What the cache may store and for how long (RFC 9111 as the edge cache applies it)."""

from __future__ import annotations

import pytest

from flame.media.freshness import lifetime, parse_cache_control, storable


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
