"""In-session switching under load (SFR-14).

Several keep-alive clients send requests without pause while the forwarding table is replaced
again and again, each time pointing the FQDN at another endpoint and withdrawing the old one.
Properties: zero failed requests; every request sent after a switch reaches an endpoint of that
table (or a later one) on the same client connection; requests in flight at a switch finish
on the endpoint they started on; the withdrawn endpoints' pooled connections are drained.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from .helpers import Client, UpRequest, Upstream, table

pytestmark = pytest.mark.asyncio


async def slowish(up: Upstream, req: UpRequest, w: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(0.002)  # so that requests are in flight when the table changes
    body = up.name.encode()
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return True


@dataclass
class Load:
    done: int = 0
    failures: list[str] = field(default_factory=list)
    misrouted: list[str] = field(default_factory=list)
    per_version: dict[int, set[str]] = field(default_factory=dict)


async def run_switching(
    upstreams, make_router, *, seconds: float, clients: int, every: float
) -> Load:
    ups = [await upstreams(name, slowish) for name in ("a", "b", "c", "d")]
    owner = {}  # version -> upstream name
    version = 1
    router = await make_router(table(version, {"vod.example": [(ups[0].endpoint(), 1.0)]}))
    owner[version] = ups[0].name
    load = Load()
    stop = asyncio.Event()

    async def client(n: int) -> None:
        c = await Client.connect(router.port)
        try:
            i = 0
            while not stop.is_set():
                sent_version = router.routing.version
                assert sent_version is not None
                try:
                    resp = await c.get(f"/c{n}/{i}")
                except Exception as exc:  # any failure counts, whatever it is
                    load.failures.append(f"client {n} request {i}: {exc!r}")
                    return
                if resp.status != 200:
                    load.failures.append(
                        f"client {n} request {i}: {resp.status} {resp.body[:200]!r}"
                    )
                    continue
                name = resp.body.decode()
                allowed = {owner[v] for v in owner if v >= sent_version}
                if name not in allowed:
                    load.misrouted.append(f"v{sent_version} -> {name}, allowed {allowed}")
                load.per_version.setdefault(sent_version, set()).add(name)
                load.done += 1
                i += 1
        finally:
            await c.close()

    async def switcher() -> None:
        nonlocal version
        k = 0
        while not stop.is_set():
            await asyncio.sleep(every)
            k += 1
            version += 1
            up = ups[k % len(ups)]
            owner[version] = up.name
            assert router.set_table(table(version, {"vod.example": [(up.endpoint(), 1.0)]}))

    tasks = [asyncio.create_task(client(n)) for n in range(clients)]
    switching = asyncio.create_task(switcher())
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, switching)
    # Withdrawn endpoints keep no idle connection.
    pools = router.stats()["upstream_pools"]
    current = f"127.0.0.1:{ups[(version - 1) % len(ups)].port}"
    assert all(p["idle"] == 0 for addr, p in pools.items() if addr != current), pools
    assert router.stats()["fqdns"]["vod.example"]["switches"] == version - 1
    return load


async def test_switching_under_load_loses_nothing(upstreams, make_router) -> None:
    load = await run_switching(upstreams, make_router, seconds=3.0, clients=6, every=0.3)
    assert load.failures == []
    assert load.misrouted == []
    assert load.done > 300
    assert len(load.per_version) >= 8  # requests were made under many tables


@pytest.mark.slow
async def test_switching_under_load_for_twenty_seconds(upstreams, make_router) -> None:
    load = await run_switching(upstreams, make_router, seconds=21.0, clients=16, every=0.2)
    assert load.failures == []
    assert load.misrouted == []
    assert len(load.per_version) >= 90
