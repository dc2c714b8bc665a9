"""The store's indexes (variants per URL, tags) stay exact under any sequence of puts,
evictions, purges and bans, in RAM and on disk, and the byte bounds always hold."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flame.media.store import CachedObject, ObjectStore, variant_key

BASES = ["/a/1.ts", "/a/2.ts", "/b/1.ts", "/b/2.ts?x=1"]
TAGS = ["t1", "t2", "t3"]

put = st.tuples(
    st.just("put"),
    st.sampled_from(BASES),
    st.sampled_from(["", "en", "fr", "de"]),
    st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
    st.integers(0, 3000),
)
ops = st.lists(
    st.one_of(
        put,
        st.tuples(st.just("purge"), st.sampled_from(BASES)),
        st.tuples(st.just("prefix"), st.sampled_from(["/a/", "/b/", "/"])),
        st.tuples(st.just("ban"), st.sampled_from(TAGS)),
        st.tuples(st.just("get"), st.sampled_from(BASES)),
    ),
    max_size=40,
)


def check(store: ObjectStore) -> None:
    held = set(store.mem) | set(store.disk_lru.sizes)
    assert set(store.indexed) == held
    assert {k for ks in store.bases.values() for k in ks} == held
    assert all(len(ks) <= store.max_variants for ks in store.bases.values())
    for tag, keys in store.tagged.items():
        assert keys
        assert all(tag in store.indexed[k][1] for k in keys)
    assert store.mem_lru.bytes <= store.mem_lru.max_bytes
    assert store.disk_lru.bytes <= store.disk_lru.max_bytes
    assert store.mem_lru.bytes == sum(o.size for o in store.mem.values())


@settings(max_examples=60, deadline=None)
@given(ops, st.booleans())
def test_indexes_match_what_is_held(sequence: list[tuple], disk: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = ObjectStore(12_000, disk_dir=Path(d) if disk else None, disk_max_bytes=20_000,
                            max_variants=2)  # fmt: skip
        for op in sequence:
            if op[0] == "put":
                _, base, lang, tags, size = op
                vary = ("accept-language",) if lang else ()
                key = variant_key(base, vary, {"accept-language": lang}) if vary else base
                now = time.time()
                store.put(CachedObject(key, 200, [], b"x" * size, None, None, now, now + 60,
                                       base=base, vary=vary, tags=tuple(tags)))  # fmt: skip
            elif op[0] == "purge":
                store.purge(op[1])
                assert op[1] not in store.bases
            elif op[0] == "prefix":
                store.purge_prefix(op[1])
                assert not any(b.startswith(op[1]) for b in store.bases)
            elif op[0] == "ban":
                store.ban(op[1])
                assert op[1] not in store.tagged
            else:
                store.get(store.variant_key(op[1], {}))
            check(store)
        if disk:  # a restart rebuilds the same indexes from the disk tier
            again = ObjectStore(12_000, disk_dir=Path(d), disk_max_bytes=20_000, max_variants=2)
            check(again)
            assert set(again.indexed) == set(store.disk_lru.sizes)
            assert again.tagged.keys() <= store.tagged.keys()
