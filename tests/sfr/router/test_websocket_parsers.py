"""Property tests of what the SR parses for WebSocket tunnels and ACME challenges: hostile
endpoint answers and PCE bundles never raise out of the parsers (issue 15, SFR-23)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.sfr.router.tls import parse_challenges
from flame.sfr.router.tunnel import _content_length, is_websocket


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"Content-Length", b"content-length", b"X-A", b"Upgrade"]),
            st.binary(max_size=12),
        ),
        max_size=6,
    ),
    st.integers(100, 599),
)
def test_answer_length_parser_never_raises(headers: list[tuple[bytes, bytes]], status: int) -> None:
    """Hostile endpoint answers: the body length of a refused upgrade is a length, 0, or
    -1 (until the endpoint closes), never an exception."""
    head = b"HTTP/1.1 %d X\r\n" % status + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    length = _content_length(head + b"\r\n")
    assert length >= -1
    if status in (204, 304) or status < 200:
        assert length == 0


@given(st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=8))
def test_is_websocket_only_for_an_upgrade_header_naming_it(
    headers: list[tuple[bytes, bytes]],
) -> None:
    expected = next(
        (b"websocket" in v.lower() for n, v in headers if n.lower() == b"upgrade"), False
    )
    assert is_websocket(headers) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_entry = st.fixed_dictionaries(
    {
        "fqdn": st.text(max_size=10),
        "token": st.text(max_size=10),
        "key_authorization": st.text(max_size=10),
    }
)


@given(
    st.dictionaries(
        st.sampled_from(["acme_challenges", "certs"]), _json | st.lists(_entry | _json, max_size=3)
    )
)
def test_sfr23_challenges_in_a_bundle_parse_or_fail_cleanly(data: dict[str, Any]) -> None:
    """The SR's subscriber rejects a bundle on ValueError/KeyError/TypeError only."""
    try:
        found = parse_challenges(data)
    except (ValueError, KeyError, TypeError):
        return
    for fqdn, tokens in found.items():
        assert fqdn == fqdn.lower().rstrip(".")
        assert all(isinstance(t, bytes) and isinstance(a, bytes) for t, a in tokens.items())


def test_sfr23_challenges_parsed() -> None:
    data = {
        "acme_challenges": [
            {"fqdn": "A.Example.", "token": "tok", "key_authorization": "tok.thumb"},
            {"fqdn": "a.example", "token": "t2", "key_authorization": "t2.thumb"},
        ]
    }
    assert parse_challenges(data) == {"a.example": {b"tok": b"tok.thumb", b"t2": b"t2.thumb"}}
    assert parse_challenges({"certs": []}) == {}
    with pytest.raises(UnicodeEncodeError):
        parse_challenges(
            {"acme_challenges": [{"fqdn": "a", "token": "é", "key_authorization": "x"}]}
        )
