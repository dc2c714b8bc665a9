"""Coalescing keys honour `Vary` and credentials: the pure rules (FLIPS coincidental multicast).

What a response varies on is parsed conservatively (`Vary: *`, per-client or odd fields: never
share), learnt per (FQDN, path) in a bounded table, and folded into the key of later requests;
credentials are keyed by a hash of their values, never by the values themselves.
"""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from flame.sfr.router.coalesce import (
    ANY,
    MAX_PATH,
    VaryTable,
    coalesce_key,
    request_fields,
    response_vary,
)
from flame.sfr.router.request import RequestHead, analyze_request
from flame.sfr.router.response import ResponseHead

from .helpers import SR

HOST = (b"Host", b"lod.example")


def analyze(headers: list[tuple[bytes, bytes]], url: bytes = b"/model.glb?v=1") -> RequestHead:
    return analyze_request(b"GET", url, "1.1", [HOST, *headers], keep_alive=True, sr_id=SR)


def vary_of(*values: bytes) -> tuple[bytes, ...] | None:
    return response_vary(ResponseHead(200, b"OK", [(b"Vary", v) for v in values]))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


# -- parsing Vary -----------------------------------------------------------------------------------


def test_vary_names_are_lower_cased_sorted_and_merged_across_lines() -> None:
    assert response_vary(ResponseHead(200, b"OK", [])) is None
    assert vary_of(b"Save-Data, Downlink", b" accept-language ") == (
        b"accept-language",
        b"downlink",
        b"save-data",
    )
    assert vary_of(b"Downlink,,Downlink") == (b"downlink",)


def test_vary_on_fields_already_in_the_key_adds_nothing() -> None:
    # Accept, Accept-Encoding, Range and the credentials are keyed on anyway.
    assert vary_of(b"Accept-Encoding") is None
    assert vary_of(b"Accept, Range, Cookie, Authorization, Proxy-Authorization") is None
    assert vary_of(b"Accept-Encoding, Save-Data") == (b"save-data",)


def test_vary_star_per_client_and_hostile_values_mean_never_share() -> None:
    assert vary_of(b"*") == ANY
    assert vary_of(b"Save-Data, *") == ANY
    assert vary_of(b"X-Forwarded-For") == ANY  # the router writes it per client
    assert vary_of(b"Via") == ANY
    assert vary_of(b"x" * 65) == ANY
    assert vary_of(b"bad name") == ANY
    assert vary_of(b"a(b)") == ANY
    assert vary_of(b", ".join(b"h%d" % i for i in range(17))) == ANY
    assert vary_of(b", ".join(b"h%d" % i for i in range(16))) is not ANY


# -- keys -----------------------------------------------------------------------------------------------


def test_learnt_vary_puts_the_request_fields_values_in_the_key() -> None:
    table = VaryTable()
    off = analyze([(b"Save-Data", b"off")])
    on = analyze([(b"Save-Data", b"on")])
    absent = analyze([])
    empty = analyze([(b"Save-Data", b"")])
    assert coalesce_key(off, table) == coalesce_key(on, table)  # nothing learnt yet
    table.learn("lod.example", b"/model.glb?v=2", (b"save-data",))  # any query: same path
    keys = [coalesce_key(r, table) for r in (off, on, absent, empty)]
    assert None not in keys
    assert len(set(keys)) == 4  # absent and empty differ too
    assert coalesce_key(analyze([(b"Save-Data", b"on")]), table) == keys[1]
    # Another field, or another path, is not affected.
    assert coalesce_key(analyze([(b"Save-Data", b"on"), (b"X-Other", b"1")]), table) == keys[1]
    other = analyze([(b"Save-Data", b"on")], url=b"/other.glb")
    assert coalesce_key(other, table) == coalesce_key(analyze([], url=b"/other.glb"), table)


def test_values_are_taken_as_sent_upstream() -> None:
    req = analyze(
        [(b"Downlink", b" 1.5 "), (b"save-data", b"on"), (b"DOWNLINK", b"2")],
        url=b"/m?q=1",
    )
    assert request_fields(req, (b"downlink", b"ect", b"host", b"save-data")) == [
        b"1.5, 2",
        None,
        b"lod.example",
        b"on",
    ]
    # A field the client marked hop-by-hop (Connection) is not sent, so not compared either.
    hop = analyze([(b"Connection", b"save-data"), (b"Save-Data", b"on")])
    assert request_fields(hop, (b"save-data",)) == [None]


def test_vary_star_disables_coalescing_for_a_while() -> None:
    clock = Clock()
    table = VaryTable(any_memory=30.0, clock=clock)
    req = analyze([])
    table.learn("lod.example", b"/model.glb", ANY)
    assert coalesce_key(req, table) is None
    clock.now += 29.0
    assert coalesce_key(req, table) is None
    clock.now += 2.0
    assert coalesce_key(req, table) is not None  # the next response decides again
    assert len(table) == 0
    assert table.fqdns == {}


def test_credentials_share_only_with_identical_values_and_are_hashed() -> None:
    base = coalesce_key(analyze([]))
    alice = coalesce_key(analyze([(b"Authorization", b"Bearer alice-secret-token")]))
    alice2 = coalesce_key(analyze([(b"authorization", b"Bearer alice-secret-token")]))
    bob = coalesce_key(analyze([(b"Authorization", b"Bearer bob-secret-token")]))
    assert alice == alice2
    assert len({base, alice, bob}) == 3
    assert b"secret" not in repr(alice).encode()  # only a hash of the value is kept
    cookie = [coalesce_key(analyze([(b"Cookie", v)])) for v in (b"s=1", b"s=1", b"s=2")]
    assert cookie[0] == cookie[1] != cookie[2]
    proxy = [coalesce_key(analyze([(b"Proxy-Authorization", v)])) for v in (b"Basic a", b"Basic b")]
    assert base not in proxy
    assert proxy[0] != proxy[1]
    # Where each credential sits matters: a cookie is not an Authorization of the same value.
    assert coalesce_key(analyze([(b"Cookie", b"x")])) != coalesce_key(
        analyze([(b"Authorization", b"x")])
    )


# -- the learnt table is bounded ------------------------------------------------------------------------


def test_the_learnt_table_is_bounded_least_recently_seen_first() -> None:
    table = VaryTable(capacity=8)
    for i in range(100):
        table.learn(f"s{i % 3}.example", b"/r%d" % i, (b"save-data",))
    assert len(table) == 8
    assert table.evicted == 92
    assert sum(table.fqdns.values()) == 8
    assert table.names("s0.example", b"/r99") == (b"save-data",)
    assert table.names("s0.example", b"/r0") is None
    table.learn("s2.example", b"/r92", (b"downlink",))  # seen again: now the newest
    table.learn("new.example", b"/x", (b"ect",))
    assert table.names("s2.example", b"/r92") == (b"downlink",)
    assert table.names("s1.example", b"/r91") is None  # the oldest went instead
    table.learn("long.example", b"/" + b"p" * MAX_PATH, (b"ect",))
    assert "long.example" not in table.fqdns  # not learnt: the first response decides


_ops = st.lists(
    st.tuples(
        st.sampled_from(["learn", "forget", "look"]),
        st.sampled_from(["a.example", "b.example"]),
        st.integers(0, 9),
        st.sampled_from([(b"save-data",), (b"downlink", b"save-data"), ANY]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(capacity=st.integers(1, 5), ops=_ops)
def test_the_learnt_table_is_an_lru_of_what_responses_said(
    capacity: int, ops: list[tuple[str, str, int, tuple[bytes, ...]]]
) -> None:
    """Against a model: at most `capacity` entries, the most recently learnt ones, and the
    per-FQDN counts that make the no-Vary path one look-up always match the entries."""
    clock = Clock()
    table = VaryTable(capacity=capacity, clock=clock)
    model: OrderedDict[tuple[str, bytes], tuple[bytes, ...]] = OrderedDict()
    for op, fqdn, n, names in ops:
        path = b"/r%d" % n
        if op == "learn":
            table.learn(fqdn, path + b"?q=%d" % n, names)
            model.pop((fqdn, path), None)
            model[(fqdn, path)] = names
            while len(model) > capacity:
                model.popitem(last=False)
        elif op == "forget":
            table.learn(fqdn, path, None)
            model.pop((fqdn, path), None)
        else:
            assert table.names(fqdn, path) == model.get((fqdn, path))
        assert len(table) == len(model) <= capacity
        counts: dict[str, int] = {}
        for f, _ in model:
            counts[f] = counts.get(f, 0) + 1
        assert table.fqdns == counts


_field = st.sampled_from([None, b"", b"on", b"off", b"1.5", b"10"])


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    a=st.tuples(_field, _field, _field),
    b=st.tuples(_field, _field, _field),
    learnt=st.sampled_from([None, (b"save-data",), (b"downlink", b"save-data")]),
)
def test_keys_are_equal_exactly_when_the_learnt_fields_and_credentials_are(
    a: tuple[bytes | None, ...], b: tuple[bytes | None, ...], learnt: tuple[bytes, ...] | None
) -> None:
    table = VaryTable()
    if learnt is not None:
        table.learn("lod.example", b"/model.glb", learnt)
    names = (b"save-data", b"downlink", b"authorization")

    def request(values: tuple[bytes | None, ...]) -> RequestHead:
        return analyze([(n, v) for n, v in zip(names, values, strict=True) if v is not None])

    ka, kb = coalesce_key(request(a), table), coalesce_key(request(b), table)
    compared = {b"authorization"} | set(learnt or ())
    same = all(x == y for n, x, y in zip(names, a, b, strict=True) if n in compared)
    assert (ka == kb) == same
