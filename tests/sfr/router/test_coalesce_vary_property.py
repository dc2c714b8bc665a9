"""FLIPS coincidental multicast honours `Vary` and credentials: the property, end to end.

For any two header sets (Client Hints, Accept-Language, Authorization, Cookie) sent together
for one URL, against an origin whose answer depends on what it says it varies on (nothing, a
few fields, the LOD SF's Client Hints, or `*`), each client gets exactly what it would have got
alone, the first time (the first response decides) and again once the `Vary` is learnt. One
router and origin on their own uvloop loop serve every example; each example has its own path.
"""

from __future__ import annotations

import itertools
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.sfr.router import Router, RouterConfig, StaticTableSource

from .helpers import SR, Upstream, close_loop
from .test_coalesce_vary import LOD_VARY, Headers, VaryOrigin, alone, lod_table, together

VARIES = ["", "Save-Data", "Save-Data, Downlink", "Accept-Language", "*", LOD_VARY]
_header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Save-Data": st.sampled_from(["on", "off", ""]),
        "Downlink": st.sampled_from(["1.5", "10"]),
        "Accept-Language": st.sampled_from(["en", "fr"]),
        "Authorization": st.sampled_from(["Bearer a", "Bearer b"]),
        "Cookie": st.sampled_from(["u=1", "u=2"]),
    },
)


class Live:
    """A router and a Vary origin on their own uvloop loop, kept across hypothesis examples."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.vary: dict[str, str] = {}
        self.origin: VaryOrigin
        self.up: Upstream
        self.router: Router
        self.paths = itertools.count()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        self.origin = VaryOrigin(lambda path: self.vary[path])
        self.up = await Upstream("origin", self.origin.handler).start()
        self.router = Router(
            RouterConfig(sr_id=SR, port=0), source=StaticTableSource(lod_table(self.up))
        )
        await self.router.start()

    async def stop(self) -> None:
        # Either may be missing if start() failed part way.
        if hasattr(self, "router"):
            await self.router.shutdown(grace=0.5)
        if hasattr(self, "up"):
            await self.up.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    live = Live()
    try:
        live.run(live.start())
        yield live
    finally:
        try:
            live.run(live.stop())
        finally:
            close_loop(live.loop)  # and what an example left on it: nothing for a later GC


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    vary=st.sampled_from(VARIES),
    a=_header_sets,
    b=st.one_of(st.none(), _header_sets),
    again=st.booleans(),
)
def test_sfr_vary_property_each_gets_what_it_would_alone(
    live: Live, vary: str, a: Headers, b: Headers | None, again: bool
) -> None:
    b = a if b is None else b  # often the same: those must still be right when shared
    path = f"/p{next(live.paths)}"
    live.vary[path] = vary
    r = live.router
    for _ in range(2 if again else 1):  # the second time, with what was learnt
        bodies = live.run(together([r.port], [r], live.up, live.origin, path, [a, b]))
        assert bodies == [alone(path, vary, a), alone(path, vary, b)]
