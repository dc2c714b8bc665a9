"""MC-10 replica distribution with a real CLMC: the caches' measurements arrive in the CLMC
(`media_cache`, `media_cache_requests`), the replica planner reads demand from it over InfluxQL
and prefetches the top paths to an edge, so the edge's first user request is a hit that the
origin never sees; a demand forecast written to the CLMC does the same before any request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from eventually import eventually
from flame.common.ports import free_port
from flame.media.origin import Origin
from flame.media.vcdn.planner import Edge, ReplicaPlanner
from media.conftest import Stream
from media.helpers import Proc, ServerThread, running

from .kit import KEY, ReportingCache

SEGS = [f"/hls/360p/seg_00{i}.ts" for i in range(4)]


@pytest.fixture
def clmc(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The platform's CLMC on loopback; yields (url, a token of tenant acme)."""
    from flame.clmc.service import ClmcService
    from flame.clmc.tenancy import StaticDelegations
    from flame.common.auth import Role, TokenStore

    store = TokenStore(tmp_path / "clmc-tokens.json")
    token = store.issue("acme-vcdn", Role.TENANT, "acme")
    service = ClmcService(tmp_path / "clmc", store, fsync=False, delegations=StaticDelegations({}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, every=0.02, what="the CLMC to start")
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)


def start_cache(
    tmp_path: Path, origin: ServerThread, clmc: tuple[str, str], cluster: str
) -> tuple[Proc, str]:
    port = free_port()
    env = {
        "FLAME_PORT": str(port),
        "ORIGIN": origin.url,
        "FLAME_ORIGIN": "",
        "FLAME_TENANT": "acme",
        "FLAME_SFE": f"vod-1.cache.{cluster}",
        "FLAME_CLUSTER": cluster,
        "MEDIA_API_KEYS": f"planner={KEY}",
        "CLMC_URL": clmc[0],
        "CLMC_TOKEN": clmc[1],
        "CACHE_REPORT_INTERVAL": "0.2",
    }
    proc = Proc("flame.media.cache", [], env, tmp_path / f"{cluster}.log")
    return proc, f"http://127.0.0.1:{port}"  # the caller waits (two start in parallel)


def thread_cache(origin: ServerThread, clmc: tuple[str, str], cluster: str) -> ServerThread:
    """The same cache in a thread of this process (quicker to start than `start_cache`)."""
    env = {"FLAME_SFE": f"vod-1.cache.{cluster}", "FLAME_CLUSTER": cluster,
           "CLMC_URL": clmc[0], "CLMC_TOKEN": clmc[1], "CACHE_REPORT_INTERVAL": "0.2",
           "MEDIA_API_KEYS": f"planner={KEY}"}  # fmt: skip
    return ServerThread(lambda: ReportingCache(origin.url, env)).start()


def query(clmc: tuple[str, str], q: str) -> list[dict[str, Any]]:
    r = httpx.get(clmc[0] + "/query", params={"db": "acme", "q": q},
                  headers={"Authorization": f"Bearer {clmc[1]}"}, trust_env=False)  # fmt: skip
    assert r.status_code == 200, r.text
    return list(r.json()["results"][0].get("series", []))


def plan(clmc: tuple[str, str], edge: Edge, top: int) -> dict[str, Any]:
    async def once() -> dict[str, Any]:
        planner = ReplicaPlanner(clmc[0], "acme", [edge], clmc_token=clmc[1], cache_token=KEY,
                                 top_n=top, window="10m")  # fmt: skip
        try:
            return await planner.plan_once()
        finally:
            await planner.close()

    return asyncio.run(once())


def test_mc10_predicted_demand_puts_the_asset_at_the_edge_before_the_first_request(
    stream: Stream, tmp_path: Path, clmc: tuple[str, str]
) -> None:
    with running(lambda: Origin({"/hls": stream.path})) as origin:
        london, london_url = start_cache(tmp_path, origin, clmc, "metro-london")
        bristol, bristol_url = start_cache(tmp_path, origin, clmc, "edge-bristol")
        try:
            london.wait_healthy(london_url)
            bristol.wait_healthy(bristol_url)
            with httpx.Client(trust_env=False, timeout=10) as http:
                # users in London watch the first three segments (seg 0 most), seg 3 once
                for path, n in zip(SEGS, (5, 4, 3, 1), strict=True):
                    for _ in range(n):
                        assert http.get(london_url + path).status_code == 200
                m = http.get(london_url + "/metrics").json()

                # CLMC: the cache's counters and the demand per path have arrived
                def reported() -> list[dict[str, Any]]:
                    return query(clmc, 'SELECT sum("requests") FROM "media_cache_requests" '
                                       'WHERE "sfe" = \'vod-1.cache.metro-london\' '
                                       'GROUP BY "path"')  # fmt: skip

                def demand() -> dict[str, Any]:
                    return {s["tags"]["path"]: s["values"][0][1] for s in reported()}

                # Reports are periodic: one may hold part of the requests; the next the rest.
                want = dict(zip(SEGS, (5, 4, 3, 1), strict=True))
                eventually(demand, until=lambda d: d == want, what="the demand per path")
                counters = [m["hits"], m["misses"], m["origin_fetches"]]
                eventually(lambda: query(
                    clmc, 'SELECT last("hits"), last("misses"), last("origin_fetches") '
                    'FROM "media_cache" WHERE "cluster" = \'metro-london\''),
                    until=lambda series: series[0]["values"][0][1:] == counters,
                    what="the cache's counters at the CLMC")  # fmt: skip
                assert (m["hits"], m["misses"]) == (9, 4)

                # the planner pushes the top three to Bristol
                got = plan(clmc, Edge(bristol_url, "edge-bristol"), top=3)
                assert got[bristol_url]["paths"] == SEGS[:3]
                assert got[bristol_url]["fetched"] == 3
                before = origin.call(lambda: origin.app.requests)
                for path in SEGS[:3]:
                    r = http.get(bristol_url + path)
                    assert (r.status_code, r.headers["x-cache"]) == (200, "HIT")
                assert origin.call(lambda: origin.app.requests) == before  # no origin fetch
                assert http.get(bristol_url + SEGS[3]).headers["x-cache"] == "MISS"  # not pushed
                assert http.get(bristol_url + "/metrics").json()["prefetched"] == 3

                # a forecast for Bristol: a premiere nobody has asked for yet
                premiere = "/hls/180p/seg_002.ts"
                point = f"media_demand_forecast,path={premiere},cluster=edge-bristol requests=500i"
                r = httpx.post(clmc[0] + "/write", params={"db": "acme"}, content=point,
                               headers={"Authorization": f"Bearer {clmc[1]}"},
                               trust_env=False)  # fmt: skip
                assert r.status_code == 204, r.text
                got = plan(clmc, Edge(bristol_url, "edge-bristol"), top=2)
                assert got[bristol_url]["paths"][0] == premiere
                before = origin.call(lambda: origin.app.requests)
                assert http.get(bristol_url + premiere).headers["x-cache"] == "HIT"
                assert origin.call(lambda: origin.app.requests) == before
                # London's own ranking does not get Bristol's forecast twice
                assert plan(clmc, Edge(london_url, "metro-london"), top=1)[london_url]["paths"] == [
                    premiere
                ]  # 500 predicted requests still lead everywhere
        finally:
            assert (bristol.stop(), london.stop()) == (0, 0)


def test_the_planner_without_demand_or_with_a_refusing_edge(
    stream: Stream, tmp_path: Path, clmc: tuple[str, str]
) -> None:
    with running(lambda: Origin({"/hls": stream.path})) as origin:
        cache = thread_cache(origin, clmc, "edge-bath")
        url = cache.url
        try:
            assert plan(clmc, Edge(url), top=5) == {
                url: {"paths": [], "skipped": "no demand known"}
            }
            point = f"media_demand_forecast,path={SEGS[0]} requests=3i"
            eventually(  # the database exists once the cache has reported (it creates it)
                lambda: httpx.post(clmc[0] + "/write", params={"db": "acme"}, content=point,
                                   headers={"Authorization": f"Bearer {clmc[1]}"},
                                   trust_env=False).status_code == 204,
                what="a forecast write to be accepted")  # fmt: skip

            async def wrong_key() -> dict[str, Any]:
                planner = ReplicaPlanner(clmc[0], "acme", [Edge(url)], clmc_token=clmc[1],
                                         cache_token="not-the-key-" * 3)  # fmt: skip
                try:
                    return await planner.plan_once()
                finally:
                    await planner.close()

            assert "answered 401" in asyncio.run(wrong_key())[url]["error"]
            assert plan(clmc, Edge(url), top=5)[url]["fetched"] == 1
        finally:
            cache.stop()
    assert Edge.parse("edge-bath=http://h:1/") == Edge("http://h:1", "edge-bath")
    assert Edge.parse("http://h:1") == Edge("http://h:1")
    with pytest.raises(ValueError, match="window"):
        ReplicaPlanner("http://c", "acme", [], window="soon")


def test_mc10_cache_measurements_arrive_in_the_clmc_with_every_documented_field(
    stream: Stream, tmp_path: Path, clmc: tuple[str, str]
) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "media-vcdn.md").read_text()
    table = doc.split("`media_cache` (counters", 1)[1].split("`media_cache_requests`", 1)[0]
    documented = {
        name.strip("` ")
        for row in table.splitlines()
        if row.startswith("| `")
        for name in row.split("|")[1].split(",")
    }
    with running(lambda: Origin({"/hls": stream.path})) as origin:
        cache = thread_cache(origin, clmc, "edge-bath")
        url = cache.url
        try:
            with httpx.Client(trust_env=False, timeout=10) as http:
                for _ in range(3):
                    http.get(url + SEGS[0])
                r = http.post(url + "/_cache/v1/purge", json={"paths": [SEGS[0]]},
                              headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
                assert r.json() == {"purged": 1}

            def latest() -> dict[str, Any] | None:
                series = query(clmc, 'SELECT * FROM "media_cache" WHERE "purges" > 0 '
                                     "ORDER BY time DESC LIMIT 1")  # fmt: skip
                return (
                    dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
                    if series
                    else None
                )

            row = eventually(latest, what="a purge reported to the CLMC")
            assert row is not None  # eventually returns a truthy answer
        finally:
            cache.stop()
    assert documented - {"hit_ratio"} <= row.keys(), documented - row.keys()
    assert (row["hits"], row["misses"], row["purges"], row["purged_objects"]) == (2, 1, 1, 1)
    assert (row["sfe"], row["cluster"], row["tenant"]) == (
        "vod-1.cache.edge-bath",
        "edge-bath",
        "acme",
    )
    assert row["objects"] == 0  # the purge emptied the store
