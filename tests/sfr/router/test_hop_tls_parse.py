"""The SR's reading of its hop-TLS identity from a bundle (SFR-19, docs/tls.md): any input
gives an identity or an error the certificate subscriber handles."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flame.sfr.router.upstream_tls import parse_identity

_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    client=_json
    | st.fixed_dictionaries({"chain": _json, "key": _json}, optional={"not_after": _json}),
    trust=_json,
    mode=_json | st.sampled_from(["endpoints", "all", "off"]),
)
def test_sfr19_parse_identity_takes_any_bundle_or_says_why(client, trust, mode) -> None:
    """Whatever a PCE (or something posing as one) sends, the bundle parser returns an
    identity or raises one of the errors CertSubscriber handles (never anything else)."""
    data = {"client": client, "trust": trust, "hop_tls": mode}
    try:
        identity = parse_identity(data)
    except (ValueError, KeyError, TypeError):
        return
    assert identity is None or identity.mode in ("endpoints", "all")
